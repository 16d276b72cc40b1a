"""Where notifications go: in-memory capture, JSON Lines file, Python logging.

Sinks are synchronous and must not block: emission happens inside a state change, in order.
Slow transports (a broker) belong behind the outbox of the durable store, not here.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol

import anyio

from ._capture import Count, Waiter, WaitSequence, describe
from ._validate import wait_timeout
from .notify import Notification

__all__ = ["JsonlSink", "LoggingSink", "MemoryCapture", "Notification", "Sink"]


class Sink(Protocol):
    """Receives every notification, in emission order."""

    def send(self, notification: Notification) -> None:
        """Take one notification; errors propagate to the emitter."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...


class MemoryCapture:
    """Keeps notifications in memory (bounded by ``maxlen``; None means unbounded, for tests)
    and wakes waiters as they arrive: waits are driven by events, never by polling.

    Waits count what arrived since the last :meth:`clear` (an instance filter or a sequence
    looks at the notifications still held, so a bounded capture forgets the oldest). On timeout
    they raise :class:`AssertionError` listing the last notifications and, per instance, the
    state its latest notification reported, so a failing test explains itself.
    """

    def __init__(self, maxlen: int | None = 1_000_000) -> None:
        self.notifications: deque[Notification] = deque(maxlen=maxlen)
        self._counts: dict[str, int] = {}
        self._latest: dict[str, Notification] = {}
        self._waiters: list[Waiter] = []

    def send(self, notification: Notification) -> None:
        self.notifications.append(notification)
        self._counts[notification.event_type] = self._counts.get(notification.event_type, 0) + 1
        self._latest[notification.event_type] = notification
        for waiter in list(self._waiters):
            waiter.offer(notification)

    def close(self) -> None:
        pass

    def clear(self) -> None:
        """Forget everything captured (the counts too)."""
        self.notifications.clear()
        self._counts.clear()
        self._latest.clear()

    def event_types(self) -> list[str]:
        """The captured event types, in order."""
        return [n.event_type for n in self.notifications]

    def for_instance(self, uuid: str) -> list[Notification]:
        """One instance's notifications, in order."""
        return [n for n in self.notifications if n.instance_uuid == uuid]

    def count(self, event_type: str, *, instance: str | None = None) -> int:
        """How many of ``event_type`` arrived since the last :meth:`clear` (of one instance:
        among the notifications still held)."""
        if instance is None:
            return self._counts.get(event_type, 0)
        return sum(
            1
            for n in self.notifications
            if n.event_type == event_type and n.instance_uuid == instance
        )

    async def wait_for(
        self,
        event_type: str,
        *,
        count: int = 1,
        instance: str | None = None,
        timeout: float,
    ) -> Notification:
        """Wait until ``count`` notifications of ``event_type`` (of ``instance``, if given)
        have arrived since the last :meth:`clear`.

        Args:
            event_type: The full event type, e.g. ``"instance.power_off.end"``.
            count: How many must have arrived, those already captured included.
            instance: Only count this instance's (uuid).
            timeout: Seconds on the running loop's clock (virtual seconds on virtual time).

        Returns:
            The latest matching notification.

        Raises:
            AssertionError: not within ``timeout``; lists what was observed.
            ValueError: ``count`` is below 1.
        """
        __tracebackhide__ = True  # pytest shows the caller's line and the message, not this
        if count < 1:
            raise ValueError("count must be >= 1")
        waiter = Count(event_type, instance, count)
        if instance is None:  # the counters also remember what a bounded capture dropped
            waiter.seen = self.count(event_type)
            waiter.last = self._latest.get(event_type)
            waiter.check()
        else:
            for notification in self._held(instance):
                waiter.offer(notification)
        await self._wait(waiter, timeout)
        if not waiter.done.is_set():
            what = f"{count} x {event_type}" + (f" of {instance}" if instance else "")
            raise AssertionError(
                f"{what} not received within {timeout:g} s (got {waiter.seen})\n" + self.describe()
            )
        assert waiter.last is not None, "a completed count has seen its event"
        return waiter.last

    async def wait_for_sequence(
        self, event_types: Sequence[str], *, instance: str | None = None, timeout: float
    ) -> list[Notification]:
        """Wait until ``event_types`` have arrived in this order since the last :meth:`clear`;
        other notifications may come between them (``instance.update``, another instance's).

        Args:
            event_types: Full event types, in the order they must arrive.
            instance: Only this instance's notifications take part (uuid).
            timeout: Seconds on the running loop's clock.

        Returns:
            The notifications that matched, one per entry of ``event_types``.

        Raises:
            AssertionError: not within ``timeout``; says how far the sequence got and what
                was observed.
            ValueError: ``event_types`` is empty.
        """
        __tracebackhide__ = True
        if not event_types:
            raise ValueError("event_types must not be empty")
        waiter = WaitSequence(tuple(event_types), instance)
        for notification in self._held(instance):
            waiter.offer(notification)
        await self._wait(waiter, timeout)
        if not waiter.done.is_set():
            got = list(event_types[: len(waiter.matched)])
            missing = list(event_types[len(waiter.matched) :])
            what = " of " + instance if instance else ""
            raise AssertionError(
                f"sequence{what} not complete within {timeout:g} s: "
                f"saw {got}, still waiting for {missing}\n" + self.describe()
            )
        return waiter.matched

    def describe(self, last: int = 20) -> str:
        """The last ``last`` notifications and each instance's state as its latest notification
        reported it: what a failing wait shows."""
        return describe(list(self.notifications), last)

    def _held(self, instance: str | None) -> list[Notification]:
        return list(self.notifications) if instance is None else self.for_instance(instance)

    async def _wait(self, waiter: Waiter, timeout: float) -> None:
        timeout = wait_timeout(timeout)
        if waiter.done.is_set():
            return
        self._waiters.append(waiter)
        try:
            with anyio.move_on_after(timeout):
                await waiter.done.wait()
        finally:
            self._waiters.remove(waiter)


class JsonlSink:
    """Writes each envelope as one JSON line, in emission order, once per ``message_id``.

    The outbox delivers at least once: after a crash, messages in flight are sent again. This
    sink drops a ``message_id`` it has already written, remembering the last ``window`` ids
    (re-sent messages are the newest ones, so a bounded memory suffices). With ``append`` it
    continues an existing file and first reads the ids at its end. ``dedupe=False`` writes
    re-sent messages again (still counting them), to observe at-least-once delivery.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        append: bool = False,
        window: int = 100_000,
        dedupe: bool = True,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.path = Path(path)
        self._window = window
        self._dedupe = dedupe
        self._seen: dict[str, None] = {}  # insertion-ordered: the oldest id is dropped first
        self.duplicates = 0
        if append and self.path.exists():
            with self.path.open(encoding="utf-8") as existing:
                for line in existing:
                    message_id = _message_id(line)
                    if message_id is not None:
                        self._remember(message_id)
        self._file: IO[str] | None = self.path.open("a" if append else "w", encoding="utf-8")

    def _remember(self, message_id: str) -> None:
        self._seen[message_id] = None
        if len(self._seen) > self._window:
            del self._seen[next(iter(self._seen))]

    def send(self, notification: Notification) -> None:
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        if notification.message_id in self._seen:
            self.duplicates += 1
            if self._dedupe:
                return
        self._file.write(json.dumps(notification.envelope(), separators=(",", ":")) + "\n")
        self._remember(notification.message_id)

    def flush(self) -> None:
        """Push buffered lines to the OS."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _message_id(line: str) -> str | None:
    """The ``message_id`` of a line written by :class:`JsonlSink`; None for a torn line (a
    crash mid-write leaves at most the last one incomplete)."""
    try:
        value = json.loads(line).get("message_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


class LoggingSink:
    """Logs each event type at INFO (ERROR for error notifications)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("ism.notifications")

    def send(self, notification: Notification) -> None:
        level = logging.ERROR if notification.priority == "ERROR" else logging.INFO
        self.logger.log(
            level,
            "%s %s seq=%d",
            notification.event_type,
            notification.instance_uuid,
            notification.sequence,
        )

    def close(self) -> None:
        pass
