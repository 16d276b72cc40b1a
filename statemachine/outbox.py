"""Delivering committed notifications: at least once per ``message_id``, in commit order.

A notification enters the outbox in the transaction of the change that caused it and leaves only
after that transaction committed. The engine hands each committed batch to :meth:`Outbox.deliver`,
which calls every sink in order and remembers the message as sent; the "sent" marks reach the
store with its next transaction. So a crash between commit and send re-sends on restart
(:meth:`Outbox.replay`), and duplicates are possible only for messages in flight at the crash —
consumers de-duplicate by ``message_id`` (:class:`~statemachine.sinks.JsonlSink` does).

A sink that raises does not fail the change (it is already committed): the message stays unsent
and the outbox enters *backlog* mode, where every later message waits behind it (order is kept)
and a retry loop re-reads the unsent messages from the store with capped exponential back-off.
Retries go on while the engine runs (giving up would lose committed notifications); what bounds
them is the back-off cap and the backlog bound: past ``max_backlog`` undelivered messages the
engine refuses new actions with ``Busy`` until the sinks recover.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import anyio
import attrs

from .redact import scrub

if TYPE_CHECKING:
    from .notify import Notification
    from .sinks import Sink
    from .store import Store

__all__ = ["Outbox", "OutboxStatistics"]

log = logging.getLogger("ism.outbox")


@attrs.frozen
class OutboxStatistics:
    """Delivery so far: sent, failed attempts, the backlog, and whether it is blocked."""

    delivered: int
    failures: int
    backlog: int
    blocked: bool


class Outbox:
    """Hands committed notifications to the sinks; retries what they refused."""

    def __init__(
        self,
        store: Store,
        sinks: Sequence[Sink],
        *,
        flush_marks: Callable[[], Awaitable[None]],
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        max_backlog: int = 100_000,
        chunk: int = 1000,
    ) -> None:
        self._store = store
        self.sinks = list(sinks)
        self._flush_marks = flush_marks
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self.max_backlog = max_backlog
        self._chunk = chunk
        self._sent: list[str] = []
        self._blocked = False
        self._warned = False
        self._backlog = 0
        self._delivered = 0
        self._failures = 0
        self._wake = anyio.Event()

    @property
    def backlog(self) -> int:
        """Committed messages not yet handed to every sink (an estimate while blocked)."""
        return self._backlog

    @property
    def overloaded(self) -> bool:
        """Whether the backlog has reached its bound (the engine then refuses new actions)."""
        return self._backlog >= self.max_backlog

    def statistics(self) -> OutboxStatistics:
        """A snapshot of delivery."""
        return OutboxStatistics(self._delivered, self._failures, self._backlog, self._blocked)

    def take_sent(self) -> list[str]:
        """The ids delivered since the last call (the committer marks them in storage).

        Sinks with a ``flush()`` (``JsonlSink``) are flushed first: a message is marked sent
        only once the sink has handed it to the OS, so a killed process cannot lose a message
        whose mark survived (an fsync would be needed against a power cut; see the README).
        """
        if self._sent:
            for sink in self.sinks:
                flush = getattr(sink, "flush", None)
                if callable(flush):
                    flush()
        sent, self._sent = self._sent, []
        return sent

    def deliver(self, notifications: Sequence[Notification]) -> None:
        """Send a committed batch now, unless older messages are still waiting."""
        if self._blocked:
            self._backlog += len(notifications)
            return
        for index, notification in enumerate(notifications):
            if not self._send(notification):
                self._backlog += len(notifications) - index
                return

    def _send(self, notification: Notification) -> bool:
        try:
            for sink in self.sinks:
                sink.send(notification)
        except Exception as exc:  # a sink's failure is retried, never the change's failure
            self._failures += 1
            if not self._warned:  # once per outage; the retries are visible in statistics()
                self._warned = True
                log.warning(
                    "delivery of %s %s failed, retrying from the outbox: %s",
                    notification.event_type,
                    notification.message_id,
                    scrub(str(exc)),
                )
            self._blocked = True
            self._wake.set()
            return False
        self._sent.append(notification.message_id)
        self._delivered += 1
        self._warned = False
        return True

    async def replay(self) -> int:
        """Send what the store holds unsent (a restart after a crash); return how many went.

        Stops at the first refusal (the rest waits for :meth:`run`'s retries).
        """
        total = 0
        while True:
            await self._flush_marks()
            pending = await self._store.unsent(self._chunk)
            if not pending:
                self._blocked, self._backlog = False, 0
                return total
            for notification in pending:
                if not self._send(notification):
                    # exact while the backlog fits in one read, a lower bound beyond
                    short = len(pending) < self._chunk
                    self._backlog = len(pending) if short else max(self._backlog, len(pending))
                    return total
                total += 1
                self._backlog = max(0, self._backlog - 1)
            await self._flush_marks()

    async def run(self) -> None:
        """Retry a blocked outbox with capped exponential back-off, until cancelled."""
        delay = self._retry_initial
        while True:
            if not self._blocked:
                self._wake = anyio.Event()
                await self._wake.wait()
                delay = self._retry_initial
                continue
            with anyio.move_on_after(delay):
                await anyio.Event().wait()  # the back-off; cancelled by the engine on exit
            self._blocked = False
            await self.replay()
            delay = min(delay * 2, self._retry_max)
