"""Delivering committed notifications: at least once per ``message_id``, in commit order.

A notification enters the outbox in the transaction of the change that caused it and leaves only
after that transaction committed. The engine hands each committed batch to :meth:`Outbox.deliver`:
every in-process sink gets it at once, in order; then, when the engine has transports (a message
broker, :class:`~statemachine.AmqpTransport`), they publish it with confirms, in order, from a
task of their own. A message is marked sent (in the store's next transaction) only once every
sink took it and every transport confirmed it. So a crash between commit and send re-sends on
restart (:meth:`Outbox.replay`), and duplicates are possible only for messages in flight at the
crash — consumers de-duplicate by ``message_id`` (:class:`~statemachine.sinks.JsonlSink` does).

Nothing here can block a state change: it is already committed. A sink that raises puts the
outbox in *backlog* mode (later messages wait behind the refused one, order is kept) and a retry
loop re-reads the unsent messages from the store with capped exponential back-off; a transport
that cannot publish (the broker is down) keeps its queue and retries likewise, publishing what
the broker confirmed and no more. Retries go on while the engine runs (giving up would lose
committed notifications); what bounds them is the back-off cap and the backlog bound: past
``max_backlog`` undelivered messages the engine refuses new actions with ``Busy`` until the
destinations recover.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import anyio
import attrs

from .clock import real_time
from .errors import InvalidRequest, TransportError
from .redact import scrub

if TYPE_CHECKING:
    from .notify import Notification
    from .sinks import Sink
    from .store import Store

__all__ = ["Outbox", "OutboxStatistics", "Transport"]

log = logging.getLogger("ism.outbox")


class Transport(Protocol):
    """An asynchronous destination with confirms (a message broker)."""

    async def open(self) -> None:
        """Connect; a typed error (``TransportError``) when it cannot."""
        ...

    async def publish(self, notifications: Sequence[Notification]) -> None:
        """Publish in order; return once every one is confirmed.

        Raises:
            TransportError: not all were confirmed; ``confirmed`` counts the leading ones that
                were.
        """
        ...

    async def close(self) -> None:
        """Disconnect; idempotent."""
        ...


@attrs.frozen
class OutboxStatistics:
    """Delivery so far: sent, failed attempts, the backlog, and whether it is blocked."""

    delivered: int
    failures: int
    backlog: int
    blocked: bool
    published: int = 0
    publish_failures: int = 0
    oldest_timestamp: str | None = None
    """The envelope ``timestamp`` of the oldest message some destination has not taken yet
    (None when nothing waits): its age is how far behind delivery runs."""


class Outbox:
    """Hands committed notifications to the sinks and transports; retries what they refused."""

    def __init__(
        self,
        store: Store,
        sinks: Sequence[Sink],
        *,
        flush_marks: Callable[[], Awaitable[None]],
        transports: Sequence[Transport] = (),
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        max_backlog: int = 100_000,
        chunk: int = 1000,
        publish_batch: int = 256,
    ) -> None:
        self._store = store
        self.sinks = list(sinks)
        self.transports = list(transports)
        self._flush_marks = flush_marks
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self.max_backlog = max_backlog
        self._chunk = chunk
        self._publish_batch = publish_batch
        self._sent: list[str] = []
        self._blocked = False
        self._warned = False
        self._backlog = 0
        self._delivered = 0
        self._failures = 0
        self._wake = anyio.Event()
        self._publishing: deque[Notification] = deque()
        self._queued: set[str] = set()
        self._publish_wake = anyio.Event()
        self._publish_lock = anyio.Lock()  # the publisher task and a drain take turns
        self._published = 0
        self._publish_failures = 0
        self._progress = anyio.Event()
        self._first_refused: Notification | None = None
        """The oldest message a sink refused and has not taken since (sinks take in order)."""

    @property
    def backlog(self) -> int:
        """Committed messages not yet taken by every destination (an estimate while blocked)."""
        return self._backlog + len(self._publishing)

    @property
    def overloaded(self) -> bool:
        """Whether the backlog has reached its bound (the engine then refuses new actions)."""
        return self.backlog >= self.max_backlog

    def statistics(self) -> OutboxStatistics:
        """A snapshot of delivery."""
        return OutboxStatistics(
            self._delivered,
            self._failures,
            self.backlog,
            self._blocked,
            self._published,
            self._publish_failures,
            self._oldest_timestamp(),
        )

    def _oldest_timestamp(self) -> str | None:
        """The oldest undelivered message's timestamp: the transports' queue head passed the
        sinks before anything a sink refused, but both are compared (same format, UTC)."""
        stamps = [n.timestamp for n in (self._first_refused,) if n is not None]
        if self._publishing:
            stamps.append(self._publishing[0].timestamp)
        return min(stamps, default=None)

    async def wait_delivered(self) -> None:
        """Return once nothing committed waits for a destination (unbounded: the caller's
        scope bounds it, as :meth:`Engine.wait_delivered` does)."""
        while self.backlog:
            self._progress = anyio.Event()
            await self._progress.wait()

    def take_sent(self) -> list[str]:
        """The ids every destination took since the last call (the committer marks them).

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
        """To every sink, then into the transports' queue; False when a sink refused."""
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
            if self._first_refused is None:
                self._first_refused = notification
            return False
        if (
            self._first_refused is not None
            and self._first_refused.message_id == notification.message_id
        ):
            self._first_refused = None
        self._delivered += 1
        self._warned = False
        if self.transports:
            self._publishing.append(notification)
            self._queued.add(notification.message_id)
            self._publish_wake.set()
        else:
            self._sent.append(notification.message_id)
        return True

    async def replay(self) -> int:
        """Send what the store holds unsent (a restart after a crash, a sink's recovery);
        return how many went. Stops at the first refusal (the rest waits for the retries)."""
        total, cursor = 0, 0
        while True:
            await self._flush_marks()
            rows = await self._store.unsent(self._chunk, after=cursor)
            if not rows:
                self._blocked, self._backlog, self._first_refused = False, 0, None
                self._progress.set()
                return total
            for position, notification in rows:
                cursor = position
                if notification.message_id in self._queued:
                    continue  # the sinks have it; the transports still publish it
                if not self._send(notification):
                    # exact while the backlog fits in one read, a lower bound beyond
                    short = len(rows) < self._chunk
                    self._backlog = len(rows) if short else max(self._backlog, len(rows))
                    return total
                total += 1
                self._backlog = max(0, self._backlog - 1)

    async def run(self) -> None:
        """Retry a blocked outbox with capped exponential back-off, until cancelled."""
        delay = self._retry_initial
        while True:
            if not self._blocked:
                self._wake = anyio.Event()
                await self._wake.wait()
                delay = self._retry_initial
                continue
            await _pause(delay)
            self._blocked = False
            await self.replay()
            delay = min(delay * 2, self._retry_max)

    async def open_transports(self) -> None:
        """Connect every transport (on a virtual clock, in real time). A broker that is down
        does not stop the engine: publishing retries, and the outbox holds the messages."""
        with real_time():
            for transport in self.transports:
                try:
                    await transport.open()
                except TransportError as exc:
                    log.warning("notification transport unavailable, retrying: %s", exc)

    async def close_transports(self) -> None:
        """Disconnect every transport; what they did not publish stays unsent in the store."""
        with real_time():
            for transport in self.transports:
                await transport.close()

    async def publish_all(self) -> None:
        """Publish what is queued, once (the engine's drain calls this, bounded)."""
        while self._publishing:
            if not await self._publish_once():
                return

    async def publish(self) -> None:
        """Publish the queue in order, forever: on a failure keep the unconfirmed rest at the
        head and retry with capped back-off (the store holds it meanwhile)."""
        delay = self._retry_initial
        while True:
            while not self._publishing:
                self._publish_wake = anyio.Event()
                await self._publish_wake.wait()
            if await self._publish_once():
                delay = self._retry_initial
            else:
                await _pause(delay)
                delay = min(delay * 2, self._retry_max)

    async def _publish_once(self) -> bool:
        async with self._publish_lock:
            return await self._publish_locked()

    async def _publish_locked(self) -> bool:
        if not self._publishing:
            return True  # another turn published it
        batch = [
            self._publishing[i] for i in range(min(self._publish_batch, len(self._publishing)))
        ]
        confirmed = len(batch)
        try:
            with real_time():
                for transport in self.transports:
                    await transport.open()  # a no-op when open; reconnects one that never was
                    await transport.publish(batch)
        except InvalidRequest as exc:
            # cannot be delivered, ever (no notification ism builds is): logged and passed
            # over rather than retried without end; it stays in the outbox as a record
            log.error("notification %s is undeliverable: %s", batch[0].message_id, exc)
            confirmed = 1
        except TransportError as exc:
            self._publish_failures += 1
            # with one transport its confirmed prefix is done; with several, only what all
            # confirmed is (the others get those again: at least once)
            confirmed = min(exc.confirmed, len(batch)) if len(self.transports) == 1 else 0
            log.warning("publishing %d notifications failed: %s", len(batch), scrub(str(exc)))
        for _ in range(confirmed):
            notification = self._publishing.popleft()
            self._queued.discard(notification.message_id)
            self._sent.append(notification.message_id)
        self._published += confirmed
        if confirmed:
            self._progress.set()
        return confirmed == len(batch)


async def _pause(seconds: float) -> None:
    """A retry's back-off (cancelled with the engine's tasks)."""
    with anyio.move_on_after(seconds):
        await anyio.Event().wait()
