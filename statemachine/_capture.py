"""The waits of :class:`~statemachine.sinks.MemoryCapture` and how they describe a timeout.

Each pending wait is fed every arriving notification and sets its event once satisfied, so a
wait costs nothing until something arrives and never polls.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import anyio

from .notify import Notification

__all__ = ["Count", "WaitSequence", "Waiter", "describe", "object_data"]


class Waiter(abc.ABC):
    """A pending wait, fed every arriving notification (of its instance, if it names one)."""

    def __init__(self, instance: str | None) -> None:
        self.instance = instance
        self.done = anyio.Event()

    def offer(self, notification: Notification) -> None:
        if self.instance is None or notification.instance_uuid == self.instance:
            self.take(notification)

    @abc.abstractmethod
    def take(self, notification: Notification) -> None:
        """Account for one notification; set :attr:`done` once the wait is satisfied."""


class Count(Waiter):
    """``count`` notifications of one event type; remembers the latest."""

    def __init__(self, event_type: str, instance: str | None, count: int) -> None:
        super().__init__(instance)
        self.event_type = event_type
        self.count = count
        self.seen = 0
        self.last: Notification | None = None

    def take(self, notification: Notification) -> None:
        if notification.event_type == self.event_type:
            self.seen += 1
            self.last = notification
            self.check()

    def check(self) -> None:
        """Set :attr:`done` if enough arrived (also after :attr:`seen` was set directly)."""
        if self.seen >= self.count:
            self.done.set()


class WaitSequence(Waiter):
    """Event types in order, anything else allowed between them; keeps what matched."""

    def __init__(self, event_types: tuple[str, ...], instance: str | None) -> None:
        super().__init__(instance)
        self.event_types = event_types
        self.matched: list[Notification] = []

    def take(self, notification: Notification) -> None:
        if self.done.is_set():
            return
        if notification.event_type == self.event_types[len(self.matched)]:
            self.matched.append(notification)
            if len(self.matched) == len(self.event_types):
                self.done.set()


def object_data(obj: object) -> Mapping[str, Any]:
    """The data of a versioned object (a payload, a nested ``state_update``), whatever the
    namespace (``ism_object.data`` or ``nova_object.data``); empty if it has none."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if str(key).endswith("_object.data") and isinstance(value, Mapping):
                return value
    return {}


def _state(notification: Notification) -> str:
    data = object_data(notification.payload)
    return (
        f"vm_state={data.get('state')} task_state={data.get('task_state')} "
        f"power_state={data.get('power_state')}"
    )


def _line(notification: Notification) -> str:
    return (
        f"#{notification.sequence} {notification.instance_uuid[:8]} "
        f"{notification.event_type} ({_state(notification)})"
    )


def describe(held: list[Notification], last: int = 20) -> str:
    """The last ``last`` of ``held`` and the state the latest notification of each of the
    ``last`` most recently notified instances reported."""
    lines = [f"last {min(last, len(held))} of {len(held)} notifications:"]
    lines += [f"  {_line(n)}" for n in held[-last:]] or ["  (none)"]
    latest: dict[str, Notification] = {}
    for n in reversed(held):
        if len(latest) == last:
            break
        latest.setdefault(n.instance_uuid, n)
    if latest:
        lines.append("instances, as their latest notification reported them:")
        lines += [f"  {uuid}: {_state(n)}" for uuid, n in reversed(latest.items())]
    return "\n".join(lines)
