"""The working set every store keeps in memory: the records the engine reads without awaiting,
and the synchronous compare-and-swap that changes them (``Store.stage``)."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import Conflict, InstanceNotFound
from ..model import Instance

__all__ = ["WorkingSet"]


class WorkingSet:
    """Records by uuid. A swap cannot interleave with another: no await between check and
    write. Durable stores re-check in storage when they persist."""

    def __init__(self) -> None:
        self._records: dict[str, Instance] = {}

    def get(self, uuid: str) -> Instance:
        try:
            return self._records[uuid]
        except KeyError:
            raise InstanceNotFound(uuid) from None

    def all(self) -> Iterator[Instance]:
        return iter(list(self._records.values()))

    def stage(self, expected: Instance | None, new: Instance) -> None:
        current = self._records.get(new.uuid)
        if expected is None:
            if current is not None:
                raise Conflict(new.uuid, {"exists": False}, {"exists": True})
        elif current is None:
            raise InstanceNotFound(new.uuid)
        elif current.version != expected.version or current.task_state != expected.task_state:
            raise Conflict(
                new.uuid,
                {"version": expected.version, "task_state": expected.task_state},
                {"version": current.version, "task_state": current.task_state},
            )
        self._records[new.uuid] = new
