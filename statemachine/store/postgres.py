"""The shared store: PostgreSQL, for several engines (one per compute host) on one fleet.

The semantics are the SQLite store's (:mod:`.sqlite`); the same contract suite runs against
both. What a shared server changes, and why:

* **Compare-and-swap in storage is what makes engines safe together.** Each engine's working
  set is its own cache; two engines may both stage a change from the same version, and the
  second to persist finds ``UPDATE … WHERE uuid AND version AND task_state`` matching no row:
  its unit rolls back alone and its working set is reloaded from storage. A batch first locks
  the rows it will swap, in uuid order, so two engines' batches never deadlock on them.
* **One engine per writer name.** Opening for writing takes a session-level advisory lock on
  (schema, writer): the server releases it when the connection ends, even when the process is
  killed. Other writers are not locked out: each engine seals its own audit chain.
* **The audit chain does not serialize writers.** Records are numbered from a sequence
  (``seq``, the log's global order; gaps allowed), sealed with the number they are stored
  under, and linked per writer (``wseq``, ``prev``); each writer's signed head is one row of
  its own. Verification reads one snapshot, in which every writer's chain is complete.
* **Virtual time.** A round trip to the server is real time the loop cannot see, so every
  operation holds a virtual clock (:func:`statemachine.clock.hold_clock`) and no client-side
  timeout is used inside; the server bounds each statement (``statement_timeout``) instead.
* **One connection, one operation at a time** (a lock), shielded from cancellation so a
  cancelled caller never leaves the connection in the middle of a protocol exchange. A
  failure is a :class:`~statemachine.errors.StoreError` with a one-line message, fatal to the
  engine (fail-stop), except a deadlock or serialization failure, which is retried, bounded.

asyncpg is an optional extra (``pip install 'ism-engine[postgres]'``), imported on open.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread

from ..audit import (
    AuditChain,
    AuditEntry,
    AuditRecord,
    SignedHead,
    VerifyReport,
    sign_head,
    verify_records,
)
from ..clock import real_time, to_thread
from ..errors import Conflict, DuplicateRequest, InstanceNotFound, StoreError
from ..model import Instance
from . import RequestRecord, Write
from ._codec import AUDIT_COLUMNS, audit_record, dumps_instance, loads_instance
from ._postgres_schema import MIGRATIONS, advisory_key, migrate, schema_version
from ._sqlite_schema import Migration
from ._working import WorkingSet

if TYPE_CHECKING:
    import asyncpg

    from ..notify import Notification

__all__ = ["PostgresStore"]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RETRIES = 3
"""Attempts at a batch that PostgreSQL aborted as a deadlock or a serialization failure."""

_LOCK_ROWS = "SELECT 1 FROM instances WHERE uuid = ANY($1::text[]) ORDER BY uuid FOR UPDATE"
_INSERT = (
    "INSERT INTO instances (version, vm_state, task_state, power_state, host, name, "
    "project_id, data, uuid, user_data) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) "
    "ON CONFLICT (uuid) DO NOTHING"
)
_SWAP = (
    "UPDATE instances SET version=$1, vm_state=$2, task_state=$3, power_state=$4, host=$5, "
    "name=$6, project_id=$7, data=$8 "
    "WHERE uuid=$9 AND version=$10 AND task_state IS NOT DISTINCT FROM $11"
)
_INSERT_REQUEST = (
    "INSERT INTO requests (request_id, action_id, action, instance) VALUES ($1,$2,$3,$4) "
    "ON CONFLICT (request_id) DO NOTHING"
)
_APPEND = f"""WITH
records AS (
    INSERT INTO audit ({AUDIT_COLUMNS})
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
), head AS (
    INSERT INTO audit_heads (writer, wseq, hash, mac)
    SELECT $11, $12, $13, $14 WHERE cardinality($1::bigint[]) > 0
    ON CONFLICT (writer) DO UPDATE
    SET wseq = EXCLUDED.wseq, hash = EXCLUDED.hash, mac = EXCLUDED.mac
), queued AS (
    INSERT INTO outbox (message_id, writer, instance, sequence, envelope)
    SELECT m, $11, i, s, e FROM unnest($15::text[], $16::text[], $17::bigint[], $18::text[])
        AS t(m, i, s, e)
), marked AS (
    UPDATE outbox SET sent = true WHERE message_id = ANY($19::text[])
)
SELECT 1"""
"""The rest of a batch in one round trip: the won units' audit records, the writer's signed
head (when it has new records), their outbox rows, and the sent marks of earlier messages."""


def _line(exc: BaseException) -> str:
    """One line for an error: PostgreSQL's messages can run to several."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _failures() -> tuple[type[Exception], ...]:
    """What asyncpg raises when the server or the connection fails (translated to
    StoreError at this edge): server errors, client-side protocol errors (a session the server
    ended can surface as either), and the network's."""
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


def _split_url(url: str) -> tuple[str, str | None, str]:
    """``(dsn for asyncpg, schema from ?schema=, the URL without its password)``.

    Raises:
        StoreError: not a ``postgresql://`` or ``postgres://`` URL.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise StoreError(f"not a PostgreSQL URL (postgresql://…): {url}")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])
    dsn = urllib.parse.urlunsplit(parts._replace(query=rest))
    shown = parts
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        shown = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    return dsn, (schemas[-1] if schemas else None), urllib.parse.urlunsplit(shown)


class PostgresStore(WorkingSet):
    """Instances, audit log, outbox and request ids in one PostgreSQL schema, shared by engines.

    Args:
        url: ``postgresql://user@host:port/database``; ``?schema=NAME`` picks the schema
            (default ``ism``), created with its tables on the first open for writing. Other
            query parameters go to asyncpg (``sslmode``, ``connect_timeout`` …).
        hmac_key: Signs each writer's last audit record in the same transaction.
        readonly: Open without the writer lock, in read-only transactions (the CLI's readers).
        schema: The schema, overriding the URL's.
        statement_timeout: Seconds the server lets one statement run (waiting for a row lock
            included) before it cancels it: the bound on every round trip.
        connect_timeout: Seconds to connect (real seconds, on a virtual-time loop too).
        migrations: The schema steps (tests pass their own to exercise migration).

    Raises:
        StoreError: the URL is not a PostgreSQL URL, or the schema name is not a plain
            lower-case identifier.
    """

    durable = True

    def __init__(
        self,
        url: str,
        *,
        hmac_key: bytes | None = None,
        readonly: bool = False,
        schema: str | None = None,
        statement_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self._dsn, url_schema, self.url = _split_url(url)
        self.schema = schema or url_schema or "ism"
        if not _SCHEMA_NAME.fullmatch(self.schema):
            raise StoreError(
                f"schema name {self.schema!r}: use lower-case letters, digits and _ (at most 63)"
            )
        if statement_timeout <= 0 or connect_timeout <= 0:
            raise StoreError("statement_timeout and connect_timeout must be positive")
        self._key = hmac_key
        self.readonly = readonly
        self._statement_ms = max(1, int(statement_timeout * 1000))
        self._connect_timeout = connect_timeout
        self._migrations = tuple(migrations)
        super().__init__()
        self._conn: asyncpg.Connection | None = None
        self._lock: anyio.Lock | None = None
        self._writer = ""
        self._chain: AuditChain | None = None
        self._sequences: dict[str, int] = {}
        self._user_data: dict[str, str] = {}
        self._generation = 0

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r}, schema={self.schema!r})"

    @property
    def generation(self) -> int:
        """How many times the schema was opened for writing, by any engine, this time
        included."""
        return self._generation

    # -- opening and closing ----------------------------------------------------------------

    async def open(self, *, writer: str) -> None:
        if self._conn is not None:
            return
        try:
            import asyncpg
        except ImportError:
            raise StoreError(
                "the PostgreSQL store needs asyncpg: pip install 'ism-engine[postgres]'"
            ) from None
        self._lock = anyio.Lock()
        self._writer = writer
        settings = {
            "search_path": self.schema,
            "application_name": f"ism {writer}"[:63],
            "statement_timeout": str(self._statement_ms),
        }
        if self.readonly:
            settings["default_transaction_read_only"] = "on"
        with anyio.CancelScope(shield=True), real_time():
            try:
                self._conn = await asyncpg.connect(
                    self._dsn, timeout=self._connect_timeout, server_settings=settings
                )
            except _failures() as exc:
                raise StoreError(f"cannot connect to {self.url}: {_line(exc)}") from exc
            try:
                await self._prepare(self._conn, writer)
            except BaseException as exc:
                await self._disconnect()
                if isinstance(exc, _failures()):
                    raise StoreError(f"cannot open {self}: {_line(exc)}") from exc
                raise

    async def _prepare(self, conn: asyncpg.Connection, writer: str) -> None:
        """Check or migrate the schema, take the writer's lock, count the generation, load."""
        if self.readonly:
            version = await schema_version(conn, self.schema)
            latest = self._migrations[-1].version
            if version is None:
                raise StoreError(f"no ism schema {self.schema!r} at {self.url}")
            if version != latest:
                raise StoreError(
                    f"the schema {self.schema!r} at {self.url} has version {version}, "
                    f"this ism reads {latest}"
                )
            row = await conn.fetchval("SELECT value FROM ism_meta WHERE key = 'generation'")
            self._generation = int(row) if row is not None else 0
        else:
            locked = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", advisory_key("writer", self.schema, writer)
            )
            if not locked:
                raise StoreError(
                    f"writer {writer!r} is open on {self.url} (schema {self.schema!r}) by "
                    "another engine: each engine needs its own service_host"
                )
            await migrate(conn, self.schema, self._migrations)
            self._generation = int(
                await conn.fetchval(
                    "INSERT INTO ism_meta VALUES ('generation', '1') ON CONFLICT (key) DO "
                    "UPDATE SET value = (ism_meta.value::bigint + 1)::text RETURNING value"
                )
            )
        await self._load(conn, writer)

    async def _load(self, conn: asyncpg.Connection, writer: str) -> None:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch("SELECT uuid, data, user_data FROM instances ORDER BY position")
            head = await conn.fetchrow(
                "SELECT wseq, hash FROM audit WHERE writer = $1 ORDER BY wseq DESC LIMIT 1", writer
            )
            sequences = await conn.fetch(
                "SELECT instance, MAX(sequence) FROM outbox GROUP BY instance"
            )
        self._records = {uuid: loads_instance(data) for uuid, data, _ in rows}
        self._user_data = {uuid: ud for uuid, _, ud in rows if ud is not None}
        self._chain = AuditChain(writer, head[0], head[1]) if head else AuditChain(writer)
        self._sequences = {uuid: int(n) for uuid, n in sequences}

    async def close(self) -> None:
        with anyio.CancelScope(shield=True), real_time():
            if self._lock is None:
                await self._disconnect()
                return
            async with self._lock:
                await self._disconnect()

    async def _disconnect(self) -> None:
        """Close the connection (which releases the writer's advisory lock); idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.close(timeout=self._connect_timeout)
        except Exception:  # a broken connection: drop it, the server ends the session
            conn.terminate()

    @contextlib.asynccontextmanager
    async def _use(self, what: str, *, write: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """The connection, for one operation at a time, shielded, the clock held, and its
        errors translated to StoreError."""

        if self._conn is None or self._lock is None:
            raise StoreError(f"{self} is not open")
        if write and self.readonly:
            raise StoreError(f"{self} is open read-only")
        with anyio.CancelScope(shield=True), real_time():
            async with self._lock:
                if self._conn is None:
                    raise StoreError(f"{self} is not open")
                try:
                    yield self._conn
                except _failures() as exc:
                    raise StoreError(f"{what} {self} failed: {_line(exc)}") from exc

    # -- writing ------------------------------------------------------------------------------

    async def persist(
        self, writes: Sequence[Write], *, sent: Sequence[str] = ()
    ) -> list[Conflict | None]:
        import asyncpg

        retryable = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
        async with self._use("commit to", write=True) as conn:
            chain = self._chain
            assert chain is not None
            mark = chain.mark()
            for attempt in range(_RETRIES):
                try:
                    results, stored = await self._transaction(conn, chain, writes, sent)
                    break
                except retryable:
                    chain.reset(mark)
                    if attempt == _RETRIES - 1:
                        raise
                except BaseException:
                    chain.reset(mark)
                    raise
        for w, r in zip(writes, results, strict=True):
            if r is not None:
                continue
            for n in w.notifications:
                self._sequences[n.instance_uuid] = n.sequence
            if w.instance is not None and w.user_data is not None:
                self._user_data[w.instance.uuid] = w.user_data
        for uuid, data in stored.items():
            # a unit lost its swap in storage: the working set goes back to what is stored
            if data is None:
                self._records.pop(uuid, None)
            else:
                self._records[uuid] = loads_instance(data)
        return results

    async def _transaction(
        self,
        conn: asyncpg.Connection,
        chain: AuditChain,
        writes: Sequence[Write],
        sent: Sequence[str],
    ) -> tuple[list[Conflict | None], dict[str, str | None]]:
        """One attempt at the batch: every unit's swap (each all-or-nothing), then the won
        units' audit records, sealed with the ``seq`` numbers they are stored under, their
        outbox rows, the sent marks and the writer's signed head; one commit. Returns the
        results and, for each uuid whose unit lost, the stored record (to reload), read in
        the same transaction so that a failure there writes nothing either."""
        results: list[Conflict | None] = []
        entries: list[AuditEntry] = []
        outbox: list[tuple[str, str, int, str]] = []
        async with conn.transaction():
            swaps = sorted(
                {
                    w.instance.uuid
                    for w in writes
                    if w.instance is not None and w.expected is not None
                }
            )
            if len(swaps) > 1:  # one row alone cannot be taken out of order
                await conn.execute(_LOCK_ROWS, swaps)
            for write in writes:
                try:
                    await self._apply(conn, write)
                except Conflict as exc:
                    results.append(exc)
                    continue
                results.append(None)
                entries.extend(write.audit)
                outbox.extend(
                    (n.message_id, n.instance_uuid, n.sequence,
                     json.dumps(n.envelope(), separators=(",", ":")))
                    for n in write.notifications
                )  # fmt: skip
            if entries or outbox or sent:
                audit = await self._seal(conn, chain, entries)
                mac = (
                    sign_head(self._key, chain.writer, chain.wseq, chain.prev)
                    if self._key is not None and entries
                    else None
                )
                messages = [list(c) for c in zip(*outbox, strict=True)] or [[], [], [], []]
                await conn.execute(
                    _APPEND, *audit, chain.writer, chain.wseq, chain.prev, mac, *messages,
                    list(sent),
                )  # fmt: skip
            lost = sorted(
                {
                    w.instance.uuid
                    for w, r in zip(writes, results, strict=True)
                    if r is not None and w.instance is not None
                }
            )
            stored: dict[str, str | None] = dict.fromkeys(lost)
            if lost:
                for row in await conn.fetch(
                    "SELECT uuid, data FROM instances WHERE uuid = ANY($1::text[])", lost
                ):
                    stored[row[0]] = row[1]
        return results, stored

    @staticmethod
    async def _seal(
        conn: asyncpg.Connection, chain: AuditChain, entries: list[AuditEntry]
    ) -> list[list[Any]]:
        """Number the records from the sequence and seal them in that order; return them as
        the columns of the audit table."""
        if not entries:
            return [[] for _ in range(10)]
        seqs = sorted(
            row[0]
            for row in await conn.fetch(
                "SELECT nextval('audit_seq') FROM generate_series(1, $1)", len(entries)
            )
        )
        rows = []
        for entry, seq in zip(entries, seqs, strict=True):
            record, data = chain.seal(entry, seq)
            rows.append(
                (record.seq, record.writer, record.wseq, entry.event, entry.instance,
                 entry.action_id, entry.request_id, data.decode("utf-8"), record.prev,
                 record.hash)
            )  # fmt: skip
        return [list(column) for column in zip(*rows, strict=True)]

    async def _apply(self, conn: asyncpg.Connection, write: Write) -> None:
        """The unit's compare-and-swap (first, so losing it has written nothing) and its
        request id (in a savepoint, since a duplicate is found after the swap)."""
        if write.request is not None:
            await conn.execute("SAVEPOINT unit")
        try:
            new = write.instance
            if new is not None:
                await self._swap(conn, write.expected, new, write.user_data)
            if write.request is not None:
                r = write.request
                status = await conn.execute(
                    _INSERT_REQUEST, r.request_id, r.action_id, r.action, r.instance
                )
                if status != "INSERT 0 1":
                    raise DuplicateRequest(r.request_id)
        except Conflict:
            if write.request is not None:
                await conn.execute("ROLLBACK TO SAVEPOINT unit")
                await conn.execute("RELEASE SAVEPOINT unit")
            raise
        if write.request is not None:
            await conn.execute("RELEASE SAVEPOINT unit")

    @staticmethod
    async def _swap(
        conn: asyncpg.Connection, expected: Instance | None, new: Instance, user_data: str | None
    ) -> None:
        task = new.task_state.value if new.task_state is not None else None
        values = (new.version, new.vm_state.value, task, int(new.power_state), new.host,
                  new.name, new.project_id, dumps_instance(new))  # fmt: skip
        if expected is None:
            status = await conn.execute(_INSERT, *values, new.uuid, user_data)
            if status != "INSERT 0 1":
                raise Conflict(new.uuid, {"exists": False}, {"exists": True})
            return
        expected_task = expected.task_state.value if expected.task_state is not None else None
        status = await conn.execute(_SWAP, *values, new.uuid, expected.version, expected_task)
        if status != "UPDATE 1":
            raise Conflict(
                new.uuid,
                {"version": expected.version, "task_state": expected_task},
                {"version": "changed in storage"},
            )

    # -- reading ------------------------------------------------------------------------------

    async def read_audit(
        self,
        *,
        instance: str | None = None,
        action_id: str | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        where: list[str] = ["seq > $1"]
        args: list[object] = [after]
        if instance is not None:
            args.append(instance)
            where.append(f"instance = ${len(args)}")
        if action_id is not None:
            args.append(action_id)
            where.append(f"action_id = ${len(args)}")
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        async with self._use("reading") as conn:
            return [audit_record(r) for r in await conn.fetch(sql, *args)]

    async def verify(self, *, head: str | None = None, key: bytes | None = None) -> VerifyReport:
        """Verify the whole log as of one snapshot, streamed: while other engines append,
        a later-committed record never appears half-way (every writer's chain is whole in a
        snapshot, since each writer commits in order)."""
        async with (
            self._use("verifying") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            signed = [
                SignedHead(*row)
                for row in await conn.fetch("SELECT writer, wseq, hash, mac FROM audit_heads")
            ]
            cursor = await conn.cursor(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")

            def records() -> Iterator[AuditRecord]:
                # runs in the worker thread below; each page is fetched on the loop
                while True:
                    page = anyio.from_thread.run(cursor.fetch, 2000)
                    if not page:
                        return
                    yield from (audit_record(row) for row in page)

            return await to_thread(
                lambda: verify_records(records(), head=head, key=key, signed=signed)
            )

    async def find_request(self, request_id: str) -> RequestRecord | None:
        async with self._use("reading") as conn:
            row = await conn.fetchrow(
                "SELECT request_id, action_id, action, instance FROM requests "
                "WHERE request_id = $1",
                request_id,
            )
        return RequestRecord(*row) if row else None

    async def unsent(self, limit: int, *, after: int = 0) -> list[tuple[int, Notification]]:
        """This writer's undelivered messages, oldest first, with their outbox positions
        (each engine delivers its own)."""
        from ..notify import Notification

        async with self._use("reading") as conn:
            rows = await conn.fetch(
                "SELECT seq, instance, envelope FROM outbox WHERE writer = $1 AND NOT sent "
                "AND seq > $2 ORDER BY seq LIMIT $3",
                self._writer,
                after,
                limit,
            )
        return [(seq, Notification.from_envelope(json.loads(env), uuid)) for seq, uuid, env in rows]

    def last_sequences(self) -> dict[str, int]:
        return dict(self._sequences)

    def user_data(self, uuid: str) -> str | None:
        return self._user_data.get(uuid)

    async def refresh(self, uuid: str) -> Instance:
        async with self._use("reading") as conn:
            data = await conn.fetchval("SELECT data FROM instances WHERE uuid = $1", uuid)
        if data is None:
            raise InstanceNotFound(uuid)
        record = loads_instance(data)
        current = self._records.get(uuid)
        if current is None or current.version < record.version:
            self._records[uuid] = record
        return self._records[uuid]

    async def heartbeat(self, host: str, at: dt.datetime) -> None:
        async with self._use("heartbeat to", write=True) as conn:
            await conn.execute(
                "INSERT INTO services (host, heartbeat_at) VALUES ($1, $2) ON CONFLICT (host) "
                "DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
                host,
                at,
            )

    async def services(self) -> dict[str, dt.datetime]:
        async with self._use("reading") as conn:
            rows = await conn.fetch("SELECT host, heartbeat_at FROM services")
        return {row[0]: row[1] for row in rows}

    async def get_meta(self, key: str) -> str | None:
        async with self._use("reading") as conn:
            value = await conn.fetchval("SELECT value FROM ism_meta WHERE key = $1", f"x:{key}")
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        async with self._use("writing to", write=True) as conn:
            await conn.execute(
                "INSERT INTO ism_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) "
                "DO UPDATE SET value = EXCLUDED.value",
                f"x:{key}",
                value,
            )

    async def outbox_counts(self) -> tuple[int, int]:
        """(all messages, unsent messages) in the outbox, every writer's."""
        async with self._use("reading") as conn:
            row = await conn.fetchrow(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE NOT sent) FROM outbox"
            )
        assert row is not None
        return int(row[0]), int(row[1])
