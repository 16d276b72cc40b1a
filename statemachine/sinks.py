"""Where notifications go: in-memory capture, JSON Lines file, Python logging.

Sinks are synchronous and must not block: emission happens inside a state change, in order.
Slow transports (a broker) belong behind the outbox of the durable store, not here.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from pathlib import Path
from typing import IO, Protocol

import anyio

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
    and wakes waiters as they arrive: waits are driven by events, never by polling."""

    def __init__(self, maxlen: int | None = 1_000_000) -> None:
        self.notifications: deque[Notification] = deque(maxlen=maxlen)
        self._counts: dict[str, int] = {}
        self._arrived = anyio.Event()

    def send(self, notification: Notification) -> None:
        self.notifications.append(notification)
        self._counts[notification.event_type] = self._counts.get(notification.event_type, 0) + 1
        self._arrived.set()

    def close(self) -> None:
        pass

    def clear(self) -> None:
        """Forget everything captured (the counts too)."""
        self.notifications.clear()
        self._counts.clear()

    def event_types(self) -> list[str]:
        """The captured event types, in order."""
        return [n.event_type for n in self.notifications]

    def for_instance(self, uuid: str) -> list[Notification]:
        """One instance's notifications, in order."""
        return [n for n in self.notifications if n.instance_uuid == uuid]

    def count(self, event_type: str) -> int:
        """How many of ``event_type`` arrived since the last :meth:`clear`."""
        return self._counts.get(event_type, 0)

    async def wait_for(self, event_type: str, *, count: int = 1, timeout: float) -> None:
        """Wait until ``count`` notifications of ``event_type`` have arrived.

        Raises:
            AssertionError: not within ``timeout``; lists the last event types observed.
        """
        with anyio.move_on_after(timeout):
            while self.count(event_type) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
            return
        seen = ", ".join(self.event_types()[-20:]) or "nothing"
        raise AssertionError(
            f"{count} x {event_type} not received within {timeout:g} s "
            f"(got {self.count(event_type)}); last events: {seen}"
        )


class JsonlSink:
    """Writes each envelope as one JSON line, in emission order."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = self.path.open("w", encoding="utf-8")

    def send(self, notification: Notification) -> None:
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        self._file.write(json.dumps(notification.envelope(), separators=(",", ":")) + "\n")

    def flush(self) -> None:
        """Push buffered lines to the OS."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
