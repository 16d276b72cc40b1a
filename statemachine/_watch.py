"""Watching committed changes: bounded watcher streams and event-driven state waits.

Neither polls: a commit publishes its change to every watcher's bounded buffer and wakes the
waiters of that instance whose condition it meets. A waiter also keeps the last states it saw go
by, so a wait that times out can say where the instance went instead of where it was expected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from drivers.base import PowerState

from ._validate import wait_timeout
from .errors import InvalidRequest, WaitTimeout, WatchOverflow
from .handles import StateChange
from .model import Instance
from .states import TaskState, VmState

__all__ = ["ChangeFeed"]

_FIELDS = frozenset(f.name for f in attrs.fields(Instance))
_SEEN = 20
"""How many of the states an instance passed through a timed-out wait reports (the latest)."""


class _Waiter:
    """One pending :meth:`ChangeFeed.wait_for`: its condition, its wake-up, what it saw."""

    __slots__ = ("event", "predicate", "seen")

    def __init__(self, predicate: Callable[[Instance], bool]) -> None:
        self.predicate = predicate
        self.event = anyio.Event()
        self.seen: deque[str] = deque(maxlen=_SEEN)

    def offer(self, inst: Instance) -> None:
        self.seen.append(_describe(inst))
        if self.predicate(inst):
            self.event.set()


class ChangeFeed:
    """The engine's commits, fanned out to watchers and waiters."""

    def __init__(self) -> None:
        self._watchers: list[MemoryObjectSendStream[StateChange | WatchOverflow]] = []
        self._waiters: dict[str, list[_Waiter]] = {}

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
            for waiter in list(waiters):
                waiter.offer(change.new)

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
            WaitTimeout: the state did not match within ``timeout``; says what it is and the
                states the instance passed through while the wait lasted.
        """
        __tracebackhide__ = True  # pytest shows the caller's line and this message, not this
        timeout = wait_timeout(timeout)
        unknown = set(expected) - _FIELDS
        if unknown:
            raise InvalidRequest(f"unknown instance fields {sorted(unknown)}")

        def matches(inst: Instance) -> bool:
            return all(_same(getattr(inst, k), v) for k, v in expected.items())

        inst = current()
        if matches(inst):
            return inst
        waiter = _Waiter(matches)
        self._waiters.setdefault(uuid, []).append(waiter)
        try:
            with anyio.move_on_after(timeout):
                await waiter.event.wait()
        finally:
            waiters = self._waiters[uuid]
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[uuid]
        inst = current()
        if not waiter.event.is_set():
            now = {k: _plain(getattr(inst, k)) for k in expected}
            path = " -> ".join(waiter.seen) if waiter.seen else "no change at all"
            raise WaitTimeout(
                f"instance {uuid} did not reach {_plain_map(expected)} within {timeout:g} s; "
                f"it is {now} ({_describe(inst)}); while waiting it went: {path}"
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


def _describe(inst: Instance) -> str:
    """``vm_state/task_state/power_state``, the three axes in one short token."""
    task = inst.task_state.value if inst.task_state is not None else "-"
    return f"{inst.vm_state.value}/{task}/{inst.power_state.label}"


def _plain_map(expected: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in expected.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, VmState | TaskState):
        return value.value
    if isinstance(value, PowerState):
        return value.label
    return value


def _same(actual: Any, wanted: Any) -> bool:
    return bool(actual == wanted or _plain(actual) == wanted)
