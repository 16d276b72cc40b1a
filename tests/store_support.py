"""Stores for the contract suite: one factory per backend, each able to reopen what it made."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs

from drivers.base import PowerState
from statemachine.audit import AuditEntry
from statemachine.model import Flavor, Instance, RequestContext
from statemachine.notify import Notification, Notifier, NotifySettings
from statemachine.states import TaskState, VmState
from statemachine.store import MemoryStore, PostgresStore, SqliteStore, Store

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CTX = RequestContext(user_id="u1", project_id="p1", roles=frozenset({"member"}), request_id="r1")
KEY = b"contract-key"


@attrs.define
class StoreKit:
    """Makes a store of one kind, and a new store object over the same storage."""

    name: str
    make: Callable[[], Store]
    reopen: Callable[[Store], Awaitable[Store]]


def memory_kit(key: bytes | None = KEY) -> StoreKit:
    """The memory store: "reopening" keeps the same object (nothing else survives)."""

    async def reopen(store: Store) -> Store:
        await store.close()
        return store

    return StoreKit("memory", lambda: MemoryStore(hmac_key=key), reopen)


def sqlite_kit(tmp: Path, key: bytes | None = KEY) -> StoreKit:
    """A SQLite file under ``tmp``; reopening closes it and opens a new store on the file."""
    path = tmp / "ism.db"

    async def reopen(store: Store) -> Store:
        await store.close()
        return SqliteStore(path, hmac_key=key)

    return StoreKit("sqlite", lambda: SqliteStore(path, hmac_key=key), reopen)


def postgres_kit(url: str, key: bytes | None = KEY) -> StoreKit:
    """A PostgreSQL schema (``url`` names a fresh one); reopening closes the store and opens
    a new one on the same schema."""

    async def reopen(store: Store) -> Store:
        await store.close()
        return PostgresStore(url, hmac_key=key)

    return StoreKit("postgres", lambda: PostgresStore(url, hmac_key=key), reopen)


def instance(uuid: str = "00000000-0000-4000-8000-000000000001", **changes: Any) -> Instance:
    """An idle active instance, version 0."""
    base = Instance(
        uuid=uuid,
        name="vm1",
        user_id="u1",
        project_id="p1",
        flavor=Flavor(vcpus=1, memory_mb=512, root_gb=1),
        image="cirros",
        vm_state=VmState.ACTIVE,
        task_state=None,
        power_state=PowerState.RUNNING,
        created_at=T0,
        updated_at=T0,
        host="compute1",
        metadata={"role": "web"},
    )
    return attrs.evolve(base, **changes)


def entry(event: str = "state", before: Instance | None = None, after: Instance | None = None,
          action_id: str | None = "a1") -> AuditEntry:  # fmt: skip
    """An audit entry about ``after`` (or ``before``)."""
    inst = after or before
    return AuditEntry.build(
        event,  # type: ignore[arg-type]
        when=T0,
        instance=inst.uuid if inst is not None else None,
        action="stop",
        action_id=action_id,
        ctx=CTX,
        before=before,
        after=after,
    )


_NOTIFIER = Notifier(
    settings=NotifySettings(),
    sinks=[],
    wall=lambda: T0,
    new_id=iter(f"m{i:06d}" for i in range(1_000_000)).__next__,
)


def note(inst: Instance, event: str = "power_off.start") -> Notification:
    """A real notification about ``inst``, with the next sequence number and message id."""
    return _NOTIFIER.build(event, inst, ctx=CTX)


STOPPING = {"task_state": TaskState.POWERING_OFF}
