"""Virtual time as a test sees it: read the clock, move it by hours in no wall time.

The engine, its timer service, anyio deadlines and the simulator's latencies all read the
running loop's clock, so virtual time is a property of the loop (:class:`VirtualTimeLoop`): it
jumps to the next timer whenever nothing else can run. Advancing is therefore just waiting on
that loop; everything due on the way fires in order, at its own virtual instant.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, final

from ..clock import VirtualClock, VirtualTimeLoop, virtual_loop_factory
from ..errors import InvalidRequest, IsmError

__all__ = ["NotOnVirtualTime", "VirtualTime", "virtual_anyio_backend"]

HOW_TO = (
    "With pytest-asyncio (>= 1.4), ism's plugin gives tests that use its fixtures a virtual "
    "loop by itself; with anyio, define an `anyio_backend` fixture returning "
    "statemachine.testing.virtual_anyio_backend(); elsewhere, run on "
    "statemachine.run_virtual or asyncio.Runner(loop_factory=virtual_loop_factory())."
)


class NotOnVirtualTime(IsmError, RuntimeError):
    """Something that needs virtual time ran on an ordinary event loop."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what} needs virtual time, but the running event loop is not a VirtualTimeLoop. "
            + HOW_TO
        )


def virtual_anyio_backend(start: float = 0.0) -> tuple[str, dict[str, Any]]:
    """What an ``anyio_backend`` fixture returns to run anyio tests on virtual time.

    Args:
        start: The virtual seconds each new loop starts at.

    Returns:
        ``("asyncio", {"loop_factory": ...})``: anyio's asyncio backend on a fresh
        :class:`VirtualTimeLoop` per runner.
    """
    return ("asyncio", {"loop_factory": virtual_loop_factory(start)})


def _virtual_loop(what: str) -> VirtualTimeLoop:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise NotOnVirtualTime(what) from None
    if not isinstance(loop, VirtualTimeLoop):
        raise NotOnVirtualTime(what)
    return loop


@final
class VirtualTime:
    """The running loop's virtual clock, for a test to read and advance.

    Every method looks the loop up when called, so one object serves whichever loop the test
    runs on (pytest-asyncio may share a loop across a module's tests: the clock then keeps
    counting from one test to the next).

    Args:
        epoch: The wall time at virtual second 0, as the engine's :class:`VirtualClock` has it.
    """

    def __init__(self, *, epoch: dt.datetime | None = None) -> None:
        self._clock = VirtualClock() if epoch is None else VirtualClock(epoch)

    def now(self) -> float:
        """Virtual seconds on the running loop.

        Raises:
            NotOnVirtualTime: the running loop is not virtual.
        """
        return _virtual_loop("VirtualTime.now").time()

    def wall(self) -> dt.datetime:
        """The wall time the engine stamps now (UTC): the epoch plus :meth:`now` seconds.

        Raises:
            NotOnVirtualTime: the running loop is not virtual.
        """
        _virtual_loop("VirtualTime.wall")
        return self._clock.wall()

    async def advance(self, seconds: float) -> float:
        """Let ``seconds`` of virtual time pass; return the new :meth:`now`.

        Every timer due on the way fires at its own instant and what it starts runs as far as
        it can meanwhile (a timed transition at 3600 s starts its action then, and the action
        proceeds on the same clock). It takes no wall time beyond running that work.

        Raises:
            NotOnVirtualTime: the running loop is not virtual (waiting would take real time).
            InvalidRequest: ``seconds`` is negative or not a number.
        """
        loop = _virtual_loop("VirtualTime.advance")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise InvalidRequest(f"advance needs seconds >= 0, not {seconds!r}")
        await asyncio.sleep(seconds)
        return loop.time()

    async def advance_to(self, when: float) -> float:
        """Let virtual time pass until :meth:`now` is ``when``; return it.

        Raises:
            NotOnVirtualTime: the running loop is not virtual.
            InvalidRequest: ``when`` is in the past.
        """
        now = self.now()
        if not when >= now:
            raise InvalidRequest(f"cannot go back in time: it is {now:g} s, asked for {when!r}")
        return await self.advance(when - now)
