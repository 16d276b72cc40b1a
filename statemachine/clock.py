"""Clocks, and deterministic virtual time for asyncio.

The engine reads time only through the running event loop (anyio deadlines, the timer service)
and a :class:`Clock` for wall-clock stamps. Virtual time is therefore a property of the loop:
:class:`VirtualTimeLoop` is an ordinary asyncio selector loop whose ``time()`` is a counter that
jumps straight to the next timer whenever the loop would otherwise wait for it. Hours of timed
transitions pass in milliseconds, and a run is deterministic: the same program and seed give the
same order of events at the same virtual instants.

The one thing a jumping clock must not do is jump while work is running in a thread, since that
work takes real time the loop cannot see. The loop counts work offloaded through
``run_in_executor`` and through :func:`to_thread`, and while any is outstanding it waits for real
(the worker's completion wakes the loop through its self-pipe) without moving the clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, final

import anyio
import anyio.to_thread
import attrs

__all__ = [
    "Clock",
    "SystemClock",
    "VirtualClock",
    "VirtualTimeLoop",
    "is_virtual",
    "run_virtual",
    "to_thread",
    "virtual_loop_factory",
]

T = TypeVar("T")
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Clock(Protocol):
    """Where the engine reads time: the loop's monotonic seconds and a UTC wall clock."""

    def monotonic(self) -> float:
        """Seconds on the running loop's clock (what anyio deadlines use)."""
        ...

    def wall(self) -> dt.datetime:
        """Timezone-aware UTC time for timestamps."""
        ...


@final
@attrs.frozen
class SystemClock:
    """Real time."""

    def monotonic(self) -> float:
        """The running loop's clock."""
        return anyio.current_time()

    def wall(self) -> dt.datetime:
        """Now, in UTC."""
        return dt.datetime.now(dt.UTC)


@final
@attrs.frozen
class VirtualClock:
    """Wall time derived from the loop's (virtual) seconds: never reads the real clock."""

    epoch: dt.datetime = EPOCH

    def monotonic(self) -> float:
        """The running loop's clock."""
        return anyio.current_time()

    def wall(self) -> dt.datetime:
        """``epoch`` plus the loop's seconds."""
        return self.epoch + dt.timedelta(seconds=anyio.current_time())


class _JumpingSelector(selectors.BaseSelector):
    """A real selector that, instead of sleeping until the next timer, moves the clock there."""

    def __init__(self, loop_time: Callable[[], float], jump: Callable[[float], None]) -> None:
        self._real = selectors.DefaultSelector()
        self._jump = jump
        self.busy = 0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if self.busy:
            # a thread works in real time: wait for it (its completion wakes us), clock still
            return self._real.select(None if timeout is None else max(timeout, 0.05))
        if timeout is None:
            return self._real.select(None)  # nothing scheduled: only I/O can wake us
        self._jump(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time that auto-jumps to the next timer when idle."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = float(start)
        self._jumping = _JumpingSelector(self.time, self._advance)
        super().__init__(self._jumping)

    def time(self) -> float:
        """Virtual seconds."""
        return self._virtual_now

    def _advance(self, seconds: float) -> None:
        self._virtual_now += seconds

    @property
    def threads_busy(self) -> int:
        """Offloaded calls still running; the clock holds still while there are any."""
        return self._jumping.busy

    def _hold(self) -> None:
        self._jumping.busy += 1

    def _release(self) -> None:
        self._jumping.busy -= 1

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """As asyncio's, counted so the clock does not jump while the call runs."""
        future = super().run_in_executor(executor, func, *args)
        self._hold()
        future.add_done_callback(lambda _: self._release())
        return future


async def to_thread(func: Callable[..., T], *args: Any) -> T:
    """Run ``func`` in a worker thread; on a virtual loop, the clock waits for it."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        return await anyio.to_thread.run_sync(func, *args)
    loop._hold()
    try:
        return await anyio.to_thread.run_sync(func, *args)
    finally:
        loop._release()


def is_virtual() -> bool:
    """Whether the running loop is on virtual time."""
    try:
        return isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
    except RuntimeError:
        return False


def virtual_loop_factory(start: float = 0.0) -> Callable[[], asyncio.AbstractEventLoop]:
    """A loop factory for ``asyncio.Runner`` or anyio's ``backend_options``."""
    return lambda: VirtualTimeLoop(start)


def run_virtual(main: Callable[..., Awaitable[T]], *args: Any, start: float = 0.0) -> T:
    """Run ``main(*args)`` with anyio on a fresh virtual-time loop."""
    return anyio.run(
        main,
        *args,
        backend="asyncio",
        backend_options={"loop_factory": virtual_loop_factory(start)},
    )
