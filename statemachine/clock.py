"""Clocks, and deterministic virtual time for asyncio.

The engine reads time only from the running event loop (anyio deadlines, the timer service) and
from a :class:`Clock` for wall-clock stamps, so virtual time is a property of the loop.
:class:`VirtualTimeLoop` is an ordinary asyncio selector loop whose ``time()`` is a counter that
jumps straight to the next timer whenever the loop would otherwise sit waiting for it. Hours of
timed transitions pass in milliseconds, and a run is deterministic: the same program and seed
give the same events at the same virtual instants.

A jumping clock must not jump while work is offloaded to threads: that work takes real time the
loop cannot see, and every timer would fire "early" relative to it. The loop therefore counts
offloaded calls and, while any is outstanding, waits for real without moving the clock. Code that
may run under virtual time must offload through :func:`to_thread` or ``loop.run_in_executor``
(which also covers ``asyncio.to_thread``); a bare ``anyio.to_thread.run_sync`` or a hand-made
thread is invisible to the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import selectors
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, TypeVarTuple, final

import anyio
import anyio.to_thread
import attrs

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = [
    "Clock",
    "SystemClock",
    "VirtualClock",
    "VirtualTimeLoop",
    "is_virtual",
    "real_time",
    "run_virtual",
    "to_thread",
    "virtual_loop_factory",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_DEFAULT_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Clock(Protocol):
    """Where the engine reads time, so tests can swap real time for virtual time."""

    def monotonic(self) -> float:
        """Seconds on the running loop's clock: the scale anyio deadlines are measured on."""
        ...

    def wall(self) -> dt.datetime:
        """Timezone-aware UTC time, for timestamps on records and notifications."""
        ...


@final
@attrs.frozen
class SystemClock:
    """Real time: the loop's monotonic clock and the system's wall clock."""

    def monotonic(self) -> float:
        """The running loop's clock (real on an ordinary loop)."""
        return anyio.current_time()

    def wall(self) -> dt.datetime:
        """Now, in UTC."""
        return dt.datetime.now(dt.UTC)


def _as_utc(when: dt.datetime) -> dt.datetime:
    """Normalise an aware datetime to UTC; reject naive ones, whose meaning depends on the host."""
    if when.utcoffset() is None:
        raise ValueError(f"epoch must be timezone-aware, got {when!r}")
    return when.astimezone(dt.UTC)


@attrs.frozen
class VirtualClock:
    """Wall time derived from the loop's seconds, so stamps are as deterministic as the loop.

    Never reads the real clock: on a :class:`VirtualTimeLoop` that started at 0, ``wall()`` is
    ``epoch`` plus the virtual seconds elapsed.

    Attributes:
        epoch: The wall time at loop second 0 (converted to UTC; must be timezone-aware).
    """

    epoch: dt.datetime = attrs.field(default=_DEFAULT_EPOCH, converter=_as_utc)

    def monotonic(self) -> float:
        """The running loop's (virtual) seconds."""
        return anyio.current_time()

    def wall(self) -> dt.datetime:
        """``epoch`` plus the loop's seconds, in UTC."""
        return self.epoch + dt.timedelta(seconds=anyio.current_time())


class _JumpingSelector(selectors.BaseSelector):
    """A real selector that, instead of sleeping until the next timer, moves the clock there.

    The loop passes ``select`` the delay until its earliest timer (``None`` when there is none,
    0 when callbacks are ready). Real I/O always wins: the real selector is polled first.
    """

    def __init__(
        self,
        jump: Callable[[float], None],
        offloaded: Callable[[], int],
        realtime: Callable[[], int] = lambda: 0,
    ) -> None:
        self._real = selectors.DefaultSelector()
        self._jump = jump
        self._offloaded = offloaded
        self._realtime = realtime

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Return ready I/O now, or jump the clock by ``timeout``, or wait for real.

        While a thread works, wait without a timeout: ``timeout`` is virtual seconds and says
        nothing about how long the thread takes, and every counted offload ends with
        ``call_soon_threadsafe``, which wakes this wait through the loop's self-pipe. A real
        timeout would only add spurious wake-ups, since the clock may not move anyway.
        """
        ready = self._real.select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None or self._offloaded():
            return self._real.select(None)
        if self._realtime():
            # a network peer is awaited (real_time()): wait for real, at most until the next
            # timer, and let virtual time flow with the real time that passed
            started = time.monotonic()
            ready = self._real.select(timeout)
            self._jump(min(timeout, time.monotonic() - started))
            return ready
        self._jump(timeout)
        return []

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        """Delegate to the real selector."""
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        """Delegate to the real selector."""
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        """Delegate to the real selector (epoll modifies in place)."""
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        """Delegate to the real selector."""
        return self._real.get_map()

    def close(self) -> None:
        """Close the real selector."""
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time that jumps to the next timer instead of waiting for it.

    Built only on public extension points: the selector handed to ``SelectorEventLoop`` decides
    whether to wait or jump, and ``time()`` is overridden. When callbacks are ready, the loop
    asks the selector for a zero timeout, so the clock only moves once everything runnable ran.

    Args:
        start: The loop's ``time()`` before any jump, in seconds.
    """

    def __init__(self, start: float = 0.0) -> None:
        # Set before the base initialiser, which may already read time().
        self._now = float(start)
        self._offloaded = 0
        self._realtime = 0
        super().__init__(
            _JumpingSelector(self._advance, lambda: self._offloaded, lambda: self._realtime)
        )

    def time(self) -> float:
        """Virtual seconds: what every loop timer and anyio deadline is measured against."""
        return self._now

    @property
    def offloaded(self) -> int:
        """Counted thread calls still running; the clock holds still while there are any."""
        return self._offloaded

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[*Ts], T],
        *args: *Ts,
    ) -> asyncio.Future[T]:
        """As asyncio's, but counted so the clock does not jump while ``func`` runs.

        The count drops when the returned future is done. If that future is cancelled while
        ``func`` still runs, the clock may move again before the thread ends: the caller has
        abandoned the result, and holding the clock for it could stall the loop for good.
        """
        future = super().run_in_executor(executor, func, *args)
        self._hold()
        future.add_done_callback(self._release)
        return future

    def _advance(self, seconds: float) -> None:
        self._now += seconds

    def _hold(self) -> None:
        self._offloaded += 1

    def _release(self, _: object = None) -> None:
        self._offloaded -= 1


def _running_virtual_loop() -> VirtualTimeLoop | None:
    """The running loop if it is virtual; ``None`` otherwise, or outside asyncio."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop if isinstance(loop, VirtualTimeLoop) else None


async def to_thread(func: Callable[[*Ts], T], *args: *Ts) -> T:
    """Run ``func(*args)`` in a worker thread, holding a virtual clock still until it returns.

    Use this rather than ``anyio.to_thread.run_sync`` for anything that may run under virtual
    time. On any other loop it is exactly ``anyio.to_thread.run_sync``.

    Args:
        func: A blocking callable. It must not wait for a virtual-time timer on the loop (say,
            through ``anyio.from_thread.run(anyio.sleep, ...)``): the clock cannot move while
            it runs, so that would never return.
        *args: Positional arguments for ``func``.

    Returns:
        What ``func`` returns.
    """
    loop = _running_virtual_loop()
    if loop is None:
        return await anyio.to_thread.run_sync(func, *args)
    loop._hold()
    try:
        # Not abandoned on cancellation, so the count drops only once the thread is done.
        return await anyio.to_thread.run_sync(func, *args)
    finally:
        loop._release()


@contextlib.contextmanager
def real_time() -> Iterator[None]:
    """While inside, a virtual clock flows with real time instead of jumping.

    For awaiting a peer on the network (a message broker's confirms, a database server): the
    loop cannot see when the answer will come, and a jump would fire every timeout at once.
    Timeouts set inside keep their meaning in real seconds. On any other loop it does nothing.
    """
    loop = _running_virtual_loop()
    if loop is None:
        yield
        return
    loop._realtime += 1
    try:
        yield
    finally:
        loop._realtime -= 1


def is_virtual() -> bool:
    """Whether the running loop is on virtual time (``False`` outside a loop)."""
    return _running_virtual_loop() is not None


def virtual_loop_factory(start: float = 0.0) -> Callable[[], asyncio.AbstractEventLoop]:
    """A loop factory for ``asyncio.Runner(loop_factory=...)`` or anyio's ``backend_options``.

    Args:
        start: The virtual seconds each new loop starts at.

    Returns:
        A callable making a fresh :class:`VirtualTimeLoop` per call.
    """

    def factory() -> asyncio.AbstractEventLoop:
        return VirtualTimeLoop(start)

    return factory


def run_virtual(main: Callable[[*Ts], Awaitable[T]], *args: *Ts, start: float = 0.0) -> T:
    """Run ``main(*args)`` with anyio on a fresh :class:`VirtualTimeLoop`.

    Keyword arguments for ``main`` go through ``functools.partial``.

    Args:
        main: The async function to run.
        *args: Positional arguments for ``main``.
        start: The loop's virtual seconds at the start.

    Returns:
        What ``main`` returns.
    """
    return anyio.run(
        main,
        *args,
        backend="asyncio",
        backend_options={"loop_factory": virtual_loop_factory(start)},
    )
