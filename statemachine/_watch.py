"""Watching committed changes: bounded watcher streams and event-driven state waits.

Neither polls: a commit publishes its change to every watcher's bounded buffer and wakes the
waiters of that instance whose condition it meets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from drivers.base import PowerState

from .errors import InvalidRequest, WaitTimeout, WatchOverflow
from .handles import StateChange
from .model import Instance
from .states import TaskState, VmState

__all__ = ["ChangeFeed"]

_FIELDS = frozenset(f.name for f in attrs.fields(Instance))


class ChangeFeed:
    """The engine's commits, fanned out to watchers and waiters."""

    def __init__(self) -> None:
        self._watchers: list[MemoryObjectSendStream[StateChange | WatchOverflow]] = []
        self._waiters: dict[str, list[tuple[Callable[[Instance], bool], anyio.Event]]] = {}

    @property
    def active(self) -> bool:
        """Whether anyone listens (commits skip building a change otherwise)."""
        return bool(self._watchers or self._waiters)

    def publish(self, change: StateChange) -> None:
        """Hand one committed change to every watcher and the instance's waiters."""
        for send in list(self._watchers):
            stats = send.statistics()
            if stats.current_buffer_used >= stats.max_buffer_size - 1:
                # the last slot is kept for this notice: the watcher learns it was dropped
                send.send_nowait(WatchOverflow("watcher fell behind its buffer; dropped"))
                self._watchers.remove(send)
                send.close()
                continue
            try:
                send.send_nowait(change)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._watchers.remove(send)
        waiters = self._waiters.get(change.new.uuid)
        if waiters:
            for predicate, event in list(waiters):
                if predicate(change.new):
                    event.set()

    def close(self) -> None:
        """End every watcher's iterator."""
        for send in self._watchers:
            send.close()
        self._watchers.clear()

    async def wait_for(
        self,
        uuid: str,
        current: Callable[[], Instance],
        timeout: float,
        expected: Mapping[str, Any],
    ) -> Instance:
        """Wait, driven by commits and never by polling, until the named fields match.

        ``expected`` names Instance fields (``vm_state="active"``, ``task_state=None``); enum
        fields compare by value.

        Raises:
            WaitTimeout: the state did not match within ``timeout``; says what it was.
        """
        unknown = set(expected) - _FIELDS
        if unknown:
            raise InvalidRequest(f"unknown instance fields {sorted(unknown)}")

        def matches(inst: Instance) -> bool:
            return all(_same(getattr(inst, k), v) for k, v in expected.items())

        inst = current()
        if matches(inst):
            return inst
        event = anyio.Event()
        entry = (matches, event)
        self._waiters.setdefault(uuid, []).append(entry)
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
        finally:
            waiters = self._waiters[uuid]
            waiters.remove(entry)
            if not waiters:
                del self._waiters[uuid]
        inst = current()
        if not event.is_set():
            seen = {k: _plain(getattr(inst, k)) for k in expected}
            raise WaitTimeout(
                f"instance {uuid} did not reach {expected} within {timeout:g} s; it is {seen}"
            )
        return inst

    @asynccontextmanager
    async def watch(self, size: int) -> AsyncIterator[AsyncIterator[StateChange]]:
        """Every committed change from now on, through a bounded buffer.

        A watcher that falls ``buffer`` changes behind is dropped: its iterator raises
        :class:`WatchOverflow` rather than letting memory grow without bound.
        """
        send, receive = anyio.create_memory_object_stream[StateChange | WatchOverflow](size + 1)
        self._watchers.append(send)

        async def changes() -> AsyncIterator[StateChange]:
            async for item in receive:
                if isinstance(item, WatchOverflow):
                    raise item
                yield item

        try:
            yield changes()
        finally:
            if send in self._watchers:
                self._watchers.remove(send)
            send.close()
            receive.close()


def _plain(value: Any) -> Any:
    if isinstance(value, VmState | TaskState):
        return value.value
    if isinstance(value, PowerState):
        return value.label
    return value


def _same(actual: Any, wanted: Any) -> bool:
    return bool(actual == wanted or _plain(actual) == wanted)
