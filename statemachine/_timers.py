"""One timer service for every timed transition: a heap and one task, whatever the fleet size.

Idle instances own no task. Each armed timer is a heap entry; cancelling marks it dead (lazy
deletion) so cancel is O(1) and the heap is compacted when dead entries dominate.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import anyio
import attrs

from ._histogram import LATENESS_BUCKETS, Histogram, HistogramRecorder

__all__ = ["TimerHandle", "TimerService", "TimerStatistics"]


@attrs.define(eq=False)
class TimerHandle:
    """An armed timer; :meth:`cancel` disarms it."""

    when: float
    callback: Callable[[], None] | None

    def cancel(self) -> None:
        """Disarm; a no-op once fired."""
        self.callback = None

    @property
    def armed(self) -> bool:
        """Whether it will still fire."""
        return self.callback is not None


@attrs.frozen
class TimerStatistics:
    """A snapshot of the service: armed entries, fired count, worst and recent lateness."""

    armed: int
    fired: int
    max_lateness: float
    recent_lateness: tuple[float, ...]
    lateness: Histogram
    """Every firing's lateness since the start, in fixed buckets (the metrics' histogram)."""


class TimerService:
    """Fires callbacks at loop-clock instants. Callbacks are synchronous and must not block."""

    def __init__(self, *, lateness_window: int = 10_000) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._wake = anyio.Event()
        self._dead = 0
        self._fired = 0
        self._max_late = 0.0
        self._late: list[float] = []
        self._window = lateness_window
        self._lateness = HistogramRecorder(LATENESS_BUCKETS)

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Arm ``callback`` for loop time ``when``."""
        handle = TimerHandle(when, callback)
        first = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (when, next(self._seq), handle))
        if first is None or when < first:
            self._wake.set()
        return handle

    def cancel(self, handle: TimerHandle) -> None:
        """Disarm ``handle`` and account for it so the heap can be compacted."""
        if handle.armed:
            handle.cancel()
            self._dead += 1
            if self._dead > 1024 and self._dead > len(self._heap) // 2:
                self._heap = [e for e in self._heap if e[2].armed]
                heapq.heapify(self._heap)
                self._dead = 0

    def statistics(self) -> TimerStatistics:
        """A frozen snapshot for introspection and the benchmark."""
        return TimerStatistics(
            armed=len(self._heap) - self._dead,
            fired=self._fired,
            max_lateness=self._max_late,
            recent_lateness=tuple(self._late),
            lateness=self._lateness.snapshot(),
        )

    async def run(self) -> None:
        """Fire due timers forever; cancel the enclosing scope to stop."""
        while True:
            now = anyio.current_time()
            while self._heap and self._heap[0][0] <= now:
                when, _, handle = heapq.heappop(self._heap)
                callback = handle.callback
                if callback is None:
                    self._dead = max(0, self._dead - 1)
                    continue
                handle.callback = None
                late = now - when
                self._fired += 1
                self._max_late = max(self._max_late, late)
                if len(self._late) >= self._window:
                    del self._late[: self._window // 2]
                self._late.append(late)
                self._lateness.observe(late)
                callback()
            self._wake = anyio.Event()
            delay = self._heap[0][0] - now if self._heap else None
            if delay is None:
                await self._wake.wait()
            else:
                with anyio.move_on_after(delay):
                    await self._wake.wait()
