"""Group commit: many engine changes, one transaction, one fsync; each caller told "done" only
after its own unit is durable.

Batches form by themselves: while one batch is being written, the changes that arrive queue up
and become the next batch, so a busy engine commits in large batches and an idle one commits
each change at once, with no lingering timer. ``group=False`` writes one change per transaction
(the benchmark's baseline). The queue is bounded: a full queue makes callers wait for room
(back-pressure), bounded in time by ``timeout``.

A store that is not durable (the memory store) is written inline, without the queue or a task.
After a batch commits, its notifications are handed to the outbox in commit order; a storage
failure is fatal (:class:`~statemachine.errors.StoreError` propagates out of :meth:`run` and ends
the engine) after every waiter of the batch has been told.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio
import attrs

from .errors import Conflict, StoreError

if TYPE_CHECKING:
    from .notify import Notification
    from .store import Store, Write

__all__ = ["CommitStatistics", "Committer"]


@attrs.define(eq=False)
class _Slot:
    write: Write
    done: anyio.Event
    error: Conflict | StoreError | None = None


@attrs.frozen
class CommitStatistics:
    """How the committer has batched so far."""

    transactions: int
    units: int
    largest_batch: int
    queued: int


class Committer:
    """Writes :class:`~statemachine.store.Write` units through a store, grouped."""

    def __init__(
        self,
        store: Store,
        *,
        deliver: Callable[[Sequence[Notification]], None],
        take_sent: Callable[[], list[str]],
        group: bool = True,
        max_batch: int = 1024,
        max_pending: int = 10_000,
        timeout: float = 60.0,
    ) -> None:
        self._store = store
        self._deliver = deliver
        self._take_sent = take_sent
        self._max_batch = max_batch if group else 1
        self._max_pending = max_pending
        self._timeout = timeout
        self._queue: deque[_Slot] = deque()
        self._wake = anyio.Event()
        self._room = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._failed: StoreError | None = None
        self._transactions = 0
        self._units = 0
        self._largest = 0

    @property
    def inline(self) -> bool:
        """Whether writes go straight to the store (no queue, no task)."""
        return not self._store.durable

    def statistics(self) -> CommitStatistics:
        """A snapshot of the batching so far."""
        return CommitStatistics(self._transactions, self._units, self._largest, len(self._queue))

    async def persist(self, write: Write) -> None:
        """Write one unit and return once it is durable and its notifications were handed on.

        Raises:
            Conflict: the unit lost its compare-and-swap in storage; nothing of it was written.
            StoreError: storage failed, or did not answer within the timeout.
        """
        if self._failed is not None:
            raise self._failed
        if self.inline:
            (result,) = await self._store.persist([write], sent=self._take_sent())
            self._count(1)
            if result is not None:
                raise result
            self._deliver(write.notifications)
            return
        try:
            with anyio.fail_after(self._timeout):
                while len(self._queue) >= self._max_pending:
                    self._room = anyio.Event() if self._room.is_set() else self._room
                    await self._room.wait()
                slot = _Slot(write, anyio.Event())
                self._queue.append(slot)
                self._idle = anyio.Event() if self._idle.is_set() else self._idle
                self._wake.set()
                await slot.done.wait()
        except TimeoutError:
            # the unit may still be written later: nobody can be told either way, so the
            # engine stops (fail-stop) and a restart reads what the store holds
            self._failed = StoreError(f"a commit did not complete within {self._timeout:g} s")
            raise self._failed from None
        if slot.error is not None:
            raise slot.error

    async def flush_marks(self) -> None:
        """Persist the outbox's pending "sent" marks now (idle engine, shutdown)."""
        if self._failed is None and (self.inline or not self._queue):
            sent = self._take_sent()
            if sent:
                await self._store.persist([], sent=sent)

    async def wait_idle(self) -> None:
        """Wait until every queued unit was written (bounded by the caller's scope)."""
        if not self.inline:
            await self._idle.wait()

    def _count(self, units: int) -> None:
        self._transactions += 1
        self._units += units
        self._largest = max(self._largest, units)

    async def run(self) -> None:
        """Write batches until cancelled; a storage failure ends it (and the engine)."""
        if self.inline:
            return
        while True:
            while not self._queue:
                self._idle.set()
                self._wake = anyio.Event()
                await self._wake.wait()
            batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            self._room.set()
            try:
                with anyio.CancelScope(shield=True):
                    results = await self._store.persist(
                        [s.write for s in batch], sent=self._take_sent()
                    )
            except StoreError as exc:
                self._failed = exc
                for slot in (*batch, *self._queue):
                    slot.error = exc
                    slot.done.set()
                self._queue.clear()
                self._idle.set()
                raise
            self._count(len(batch))
            for slot, result in zip(batch, results, strict=True):
                slot.error = result
                if result is None:
                    self._deliver(slot.write.notifications)
                slot.done.set()
