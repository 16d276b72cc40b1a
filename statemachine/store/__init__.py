"""Where instances, their audit log and their outgoing notifications live.

A change reaches a store in two moves. :meth:`Store.stage` is the compare-and-swap on the working
set the engine reads from (synchronous: no await between the check and the write, so two
coroutines cannot both win). :meth:`Store.persist` then makes a batch of :class:`Write` units
durable in one transaction, each unit all-or-nothing (a savepoint each): the compare-and-swap
again, in storage, on the expected version and task_state; the change's audit records, sealed
into the hash chain there; its notifications into the outbox; its request id. A unit that fails
rolls back alone and the working set is reloaded for it. Callers learn "done" only once
``persist`` has returned, so group commit (many units, one transaction, one fsync) changes
throughput, never what a caller is told.

Stores: :class:`MemoryStore` (the reference semantics; nothing survives the process),
:class:`SqliteStore` (the embedded default: WAL, ``synchronous=FULL``, a versioned schema with
migrations) and :class:`PostgresStore` (one database shared by several engines, one per compute
host; asyncpg is an optional extra). The same contract suite runs against every store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

from ..audit import AuditEntry, AuditRecord, VerifyReport
from ..errors import Conflict
from ..model import Instance

if TYPE_CHECKING:
    from ..notify import Notification

__all__ = [
    "MemoryStore",
    "PostgresStore",
    "RequestRecord",
    "SqliteStore",
    "Store",
    "Write",
    "open_store",
]


@attrs.frozen
class RequestRecord:
    """An accepted request id and the action it started (the idempotency index)."""

    request_id: str
    action_id: str
    action: str
    instance: str | None


@attrs.frozen(kw_only=True)
class Write:
    """One atomic unit of a batch: an instance change, its audit records, its notifications.

    ``instance`` without ``expected`` inserts a new record; with ``expected`` it replaces the
    stored record if that is still at ``expected.version`` and ``expected.task_state``. Without
    ``instance`` the unit only appends (a refusal's audit record, notifications).
    """

    instance: Instance | None = None
    expected: Instance | None = None
    audit: tuple[AuditEntry, ...] = ()
    notifications: tuple[Notification, ...] = ()
    request: RequestRecord | None = None
    user_data: str | None = attrs.field(default=None, repr=False)
    """A new instance's user_data: kept beside the record for the driver (a rebuild after a
    restart needs it), never in the record, the audit log or a notification."""


class Store(Protocol):
    """What the engine needs of a store; see the module docstring for the semantics."""

    durable: bool
    """Whether :meth:`persist` waits for storage (the engine then groups commits)."""

    @property
    def generation(self) -> int:
        """How many times the store was opened for writing (1 for a new store)."""
        ...

    async def open(self, *, writer: str) -> None:
        """Load the working set and the writer's chain head; migrate the schema if needed.

        Raises:
            StoreError: the store cannot be opened (locked by another engine, a schema newer
                than this ism, an I/O error).
        """
        ...

    async def close(self) -> None:
        """Release storage; idempotent."""
        ...

    def get(self, uuid: str) -> Instance:
        """The working set's record; :class:`InstanceNotFound` when there is none."""
        ...

    def all(self) -> Iterator[Instance]:
        """Every record in the working set, deleted ones included, in insertion order."""
        ...

    def stage(self, expected: Instance | None, new: Instance) -> None:
        """Compare-and-swap the working set: insert ``new`` (``expected`` None) or replace
        ``expected`` by it. Synchronous, so the check and the write cannot interleave.

        Raises:
            Conflict: the uuid exists (insert) or the record moved on (swap); nothing changed.
            InstanceNotFound: a swap of an unknown uuid.
        """
        ...

    async def persist(
        self, writes: Sequence[Write], *, sent: Sequence[str] = ()
    ) -> list[Conflict | None]:
        """Make ``writes`` durable in one transaction, each unit all-or-nothing.

        ``sent`` names outbox messages delivered since the last call, marked in the same
        transaction. Returns, per unit, None or the :class:`Conflict` that rolled it back alone.

        Raises:
            StoreError: the transaction failed as a whole; nothing of it was written.
        """
        ...

    async def read_audit(
        self,
        *,
        instance: str | None = None,
        action_id: str | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        """Audit records in ``seq`` order, filtered; ``after`` is an exclusive ``seq``."""
        ...

    async def verify(self, *, head: str | None = None, key: bytes | None = None) -> VerifyReport:
        """Verify the whole audit log (see :func:`statemachine.audit.verify_records`)."""
        ...

    async def find_request(self, request_id: str) -> RequestRecord | None:
        """The action a request id started, if it was accepted."""
        ...

    async def unsent(self, limit: int, *, after: int = 0) -> list[tuple[int, Notification]]:
        """Outbox messages not yet marked sent, oldest first, each with its outbox position;
        ``after`` is an exclusive position (a cursor for reading on)."""
        ...

    def last_sequences(self) -> dict[str, int]:
        """Each instance's last notification ``sequence`` in the outbox (restored on open)."""
        ...

    def user_data(self, uuid: str) -> str | None:
        """The user_data an instance was created with, if any."""
        ...

    async def refresh(self, uuid: str) -> Instance:
        """The record as storage holds it now, put in the working set (another engine may
        have changed it); :class:`InstanceNotFound` when there is none."""
        ...

    async def heartbeat(self, host: str, at: dt.datetime) -> None:
        """Record that the engine serving ``host`` is alive at ``at``."""
        ...

    async def services(self) -> dict[str, dt.datetime]:
        """Each host's last heartbeat."""
        ...

    async def get_meta(self, key: str) -> str | None:
        """A value the engine keeps about the store (the lifecycle that wrote it)."""
        ...

    async def set_meta(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key``."""
        ...


def open_store(url: str, *, hmac_key: bytes | None = None, readonly: bool = False) -> Store:
    """A store for a location: ``memory:``, a path or ``sqlite:///path`` (SQLite), or
    ``postgresql://…`` / ``postgres://…`` (PostgreSQL; ``?schema=NAME`` picks the schema).

    Raises:
        StoreError: the location names no store ism knows.
    """
    from ..errors import StoreError

    if url == "memory:":
        return MemoryStore(hmac_key=hmac_key)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, hmac_key=hmac_key, readonly=readonly)
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/") or path == "/":
            raise StoreError(f"an SQLite URL needs an absolute path (sqlite:///abs/path): {url}")
        return SqliteStore(path, hmac_key=hmac_key, readonly=readonly)
    if "://" in url:
        raise StoreError(f"no store for {url.split('://', 1)[0]!r} URLs (use a path)")
    return SqliteStore(url, hmac_key=hmac_key, readonly=readonly)


from .memory import MemoryStore  # noqa: E402  (the backends import the types above)
from .postgres import PostgresStore  # noqa: E402
from .sqlite import SqliteStore  # noqa: E402
