"""Where instance records live. The engine's only write is a compare-and-swap.

The SQLite and PostgreSQL stores (later issues) implement the same :class:`Store` protocol; the
in-memory store is the reference semantics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from .errors import Conflict, InstanceNotFound
from .model import Instance

__all__ = ["MemoryStore", "Store"]


class Store(Protocol):
    """Instance records by uuid; writes are inserts and version-checked swaps."""

    def get(self, uuid: str) -> Instance:
        """The current record; :class:`InstanceNotFound` when there is none."""
        ...

    def all(self) -> Iterator[Instance]:
        """Every record, deleted ones included, in insertion order."""
        ...

    async def insert(self, record: Instance) -> None:
        """Add a new record; :class:`Conflict` when the uuid exists."""
        ...

    async def swap(self, expected: Instance, new: Instance) -> None:
        """Replace ``expected`` by ``new`` if the stored version is still ``expected.version``.

        Raises:
            Conflict: another change was committed first; nothing is written.
        """
        ...


class MemoryStore:
    """A dict. Swaps cannot interleave: there is no await between the check and the write."""

    def __init__(self) -> None:
        self._records: dict[str, Instance] = {}

    def get(self, uuid: str) -> Instance:
        try:
            return self._records[uuid]
        except KeyError:
            raise InstanceNotFound(uuid) from None

    def all(self) -> Iterator[Instance]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def load(self, records: list[Instance]) -> None:
        """Add records known to be new, all or none (``Engine.adopt``)."""
        clash = [r.uuid for r in records if r.uuid in self._records]
        if clash or len({r.uuid for r in records}) != len(records):
            raise Conflict(clash[0] if clash else "batch", {"exists": False}, {"exists": True})
        for record in records:
            self._records[record.uuid] = record

    async def insert(self, record: Instance) -> None:
        if record.uuid in self._records:
            raise Conflict(record.uuid, {"exists": False}, {"exists": True})
        self._records[record.uuid] = record

    async def swap(self, expected: Instance, new: Instance) -> None:
        current = self._records.get(expected.uuid)
        if current is None:
            raise InstanceNotFound(expected.uuid)
        if current.version != expected.version:
            raise Conflict(
                expected.uuid, {"version": expected.version}, {"version": current.version}
            )
        self._records[expected.uuid] = new
