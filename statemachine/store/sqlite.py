"""The embedded default store: one SQLite file in WAL mode.

Why these choices:

* ``journal_mode=WAL`` so readers (``ism status``, ``ism audit verify``) never block the engine,
  and ``synchronous=FULL`` unless configured, so a commit the engine reported survives a power
  cut, not only a process kill.
* Every statement runs in a worker thread, one at a time, on one connection, through
  :func:`statemachine.to_thread` (which also holds a virtual clock still while SQLite works): the
  event loop never waits on the disk.
* One engine writes a file at a time: opening for writing takes an exclusive ``flock`` on
  ``<path>.lock``, which the kernel releases when the process dies, even by SIGKILL.
* A batch of :class:`~statemachine.store.Write` units is one transaction (group commit, one fsync)
  in which each unit is all-or-nothing: its compare-and-swap is the unit's first statement, so a
  lost swap has written nothing and needs no rollback; a unit with a request id, whose insert can
  fail after the swap, runs inside a savepoint.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

from ..audit import AuditChain, AuditRecord, SignedHead, VerifyReport, sign_head, verify_records
from ..clock import to_thread
from ..errors import Conflict, DuplicateRequest, InstanceNotFound, StoreError
from ..model import Instance
from . import RequestRecord, Write
from ._codec import AUDIT_COLUMNS, audit_record, dumps_instance, loads_instance
from ._sqlite_schema import MIGRATIONS, Migration, migrate, schema_version
from ._working import WorkingSet

if TYPE_CHECKING:
    from ..notify import Notification

__all__ = ["SqliteStore"]

T = TypeVar("T")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


class SqliteStore(WorkingSet):
    """Instances, audit log, outbox and request ids in one SQLite file.

    Args:
        path: The database file; created (with its schema) on first open for writing.
        hmac_key: Signs each writer's last audit record in the same transaction.
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` (the default) fsyncs every commit.
        readonly: Open without the writer lock, refusing writes (for the CLI's readers).
        migrations: The schema steps (tests pass their own to exercise migration).
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        hmac_key: bytes | None = None,
        synchronous: Synchronous = "FULL",
        readonly: bool = False,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self._key = hmac_key
        self._synchronous = synchronous
        self.readonly = readonly
        self._migrations = tuple(migrations)
        self._conn: sqlite3.Connection | None = None
        self._lockfile: IO[bytes] | None = None
        self._mutex = threading.Lock()
        super().__init__()
        self._chain: AuditChain | None = None
        self._next_seq = 1
        self._sequences: dict[str, int] = {}
        self._user_data: dict[str, str] = {}
        self._generation = 0

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    @property
    def generation(self) -> int:
        """How many times the file was opened for writing, this time included."""
        return self._generation

    # -- opening and closing ----------------------------------------------------------------

    async def open(self, *, writer: str) -> None:
        if self._conn is not None:
            return
        await to_thread(self._open, writer)

    def _open(self, writer: str) -> None:
        try:
            if self.readonly:
                if not self.path.is_file():
                    raise StoreError(f"no database at {self.path}")
                conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                    check_same_thread=False,
                )  # fmt: skip
                self._conn = conn
                version = schema_version(conn)
                latest = self._migrations[-1].version
                if version != latest:
                    raise StoreError(
                        f"{self.path} has schema version {version}, this ism reads {latest}"
                        + (" (not an ism database?)" if version == 0 else "")
                    )
            else:
                self._take_lock()
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=10.0
                )
                self._conn = conn
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                migrate(conn, self._migrations)
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute("SELECT value FROM ism_meta WHERE key='generation'").fetchone()
                self._generation = int(row[0]) + 1 if row else 1
                conn.execute(
                    "INSERT OR REPLACE INTO ism_meta VALUES ('generation', ?)",
                    (str(self._generation),),
                )
                conn.execute("COMMIT")
            self._load(conn, writer)
        except sqlite3.Error as exc:
            self._close()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            self._close()
            raise

    def _take_lock(self) -> None:
        lockfile = open(f"{self.path}.lock", "ab")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lockfile.close()
            raise StoreError(
                f"{self.path} is open for writing by another engine (lock {self.path}.lock)"
            ) from None
        self._lockfile = lockfile

    def _load(self, conn: sqlite3.Connection, writer: str) -> None:
        self._records = {
            uuid: loads_instance(data)
            for uuid, data in conn.execute("SELECT uuid, data FROM instances ORDER BY rowid")
        }
        row = conn.execute(
            "SELECT wseq, hash FROM audit WHERE writer = ? ORDER BY wseq DESC LIMIT 1", (writer,)
        ).fetchone()
        self._chain = AuditChain(writer, row[0], row[1]) if row else AuditChain(writer)
        self._next_seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0])
        self._next_seq += 1
        self._sequences = dict(
            conn.execute("SELECT instance, MAX(sequence) FROM outbox GROUP BY instance")
        )
        self._user_data = dict(
            conn.execute("SELECT uuid, user_data FROM instances WHERE user_data IS NOT NULL")
        )

    async def close(self) -> None:
        await to_thread(self._close)

    def _close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None
            if self._lockfile is not None:
                self._lockfile.close()  # releases the flock
                self._lockfile = None

    # -- writing ------------------------------------------------------------------------------

    async def persist(
        self, writes: Sequence[Write], *, sent: Sequence[str] = ()
    ) -> list[Conflict | None]:
        results, reloaded = await to_thread(self._persist, list(writes), list(sent))
        for uuid, record in reloaded.items():
            # a unit lost its swap in storage: the working set goes back to what is stored
            if record is None:
                self._records.pop(uuid, None)
            else:
                self._records[uuid] = record
        return results

    def _persist(
        self, writes: list[Write], sent: list[str]
    ) -> tuple[list[Conflict | None], dict[str, Instance | None]]:
        with self._mutex:
            conn, chain = self._connected(write=True), self._chain
            assert chain is not None
            batch_mark, seq_mark = chain.mark(), self._next_seq
            results: list[Conflict | None] = []
            audit_rows: list[tuple[Any, ...]] = []
            outbox_rows: list[tuple[Any, ...]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for write in writes:
                    try:
                        self._apply(conn, write)
                    except Conflict as exc:
                        results.append(exc)
                        continue
                    results.append(None)
                    for entry in write.audit:
                        record, data = chain.seal(entry, self._next_seq)
                        self._next_seq += 1
                        audit_rows.append(
                            (record.seq, record.writer, record.wseq, entry.event,
                             entry.instance, entry.action_id, entry.request_id,
                             data.decode("utf-8"), record.prev, record.hash)
                        )  # fmt: skip
                    for n in write.notifications:
                        outbox_rows.append(
                            (n.message_id, n.instance_uuid, n.sequence,
                             json.dumps(n.envelope(), separators=(",", ":")))
                        )  # fmt: skip
                conn.executemany(
                    f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    audit_rows,
                )
                conn.executemany(
                    "INSERT INTO outbox (message_id, instance, sequence, envelope) "
                    "VALUES (?,?,?,?)",
                    outbox_rows,
                )
                for start in range(0, len(sent), 500):
                    chunk = sent[start : start + 500]
                    conn.execute(
                        "UPDATE outbox SET sent = 1 WHERE message_id IN "
                        f"({','.join('?' * len(chunk))})",
                        chunk,
                    )
                if audit_rows:
                    mac = (
                        sign_head(self._key, chain.writer, chain.wseq, chain.prev)
                        if self._key is not None
                        else None
                    )
                    conn.execute(
                        "INSERT OR REPLACE INTO audit_heads VALUES (?,?,?,?)",
                        (chain.writer, chain.wseq, chain.prev, mac),
                    )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                chain.reset(batch_mark)
                self._next_seq = seq_mark
                raise StoreError(f"commit to {self.path} failed: {exc}") from exc
            for w, r in zip(writes, results, strict=True):
                if r is not None:
                    continue
                for n in w.notifications:
                    self._sequences[n.instance_uuid] = n.sequence
                if w.instance is not None and w.user_data is not None:
                    self._user_data[w.instance.uuid] = w.user_data
            lost = {
                w.instance.uuid
                for w, r in zip(writes, results, strict=True)
                if r is not None and w.instance is not None
            }
            return results, {uuid: self._read_instance(conn, uuid) for uuid in lost}

    def _apply(self, conn: sqlite3.Connection, write: Write) -> None:
        """The unit's compare-and-swap (first, so losing it has written nothing) and its
        request id (in a savepoint, since a duplicate is found after the swap)."""
        if write.request is not None:
            conn.execute("SAVEPOINT unit")
        try:
            new = write.instance
            if new is not None:
                self._swap(conn, write.expected, new, write.user_data)
            if write.request is not None:
                r = write.request
                try:
                    conn.execute(
                        "INSERT INTO requests VALUES (?,?,?,?)",
                        (r.request_id, r.action_id, r.action, r.instance),
                    )
                except sqlite3.IntegrityError:
                    raise DuplicateRequest(r.request_id) from None
        except Conflict:
            if write.request is not None:
                conn.execute("ROLLBACK TO unit")
                conn.execute("RELEASE unit")
            raise
        if write.request is not None:
            conn.execute("RELEASE unit")

    @staticmethod
    def _swap(
        conn: sqlite3.Connection, expected: Instance | None, new: Instance, user_data: str | None
    ) -> None:
        task = new.task_state.value if new.task_state is not None else None
        values = (new.version, new.vm_state.value, task, int(new.power_state), new.host,
                  new.name, new.project_id, dumps_instance(new))  # fmt: skip
        if expected is None:
            try:
                conn.execute(
                    "INSERT INTO instances (version, vm_state, task_state, power_state, host, "
                    "name, project_id, data, uuid, user_data) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (*values, new.uuid, user_data),
                )
            except sqlite3.IntegrityError:
                raise Conflict(new.uuid, {"exists": False}, {"exists": True}) from None
            return
        expected_task = expected.task_state.value if expected.task_state is not None else None
        cursor = conn.execute(
            "UPDATE instances SET version=?, vm_state=?, task_state=?, power_state=?, host=?, "
            "name=?, project_id=?, data=? WHERE uuid=? AND version=? AND task_state IS ?",
            (*values, new.uuid, expected.version, expected_task),
        )
        if cursor.rowcount != 1:
            raise Conflict(
                new.uuid,
                {"version": expected.version, "task_state": expected_task},
                {"version": "changed in storage"},
            )

    @staticmethod
    def _read_instance(conn: sqlite3.Connection, uuid: str) -> Instance | None:
        row = conn.execute("SELECT data FROM instances WHERE uuid = ?", (uuid,)).fetchone()
        return loads_instance(row[0]) if row else None

    def _connected(self, *, write: bool = False) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path} is not open")
        if write and self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        return self._conn

    # -- reading ------------------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._mutex:
                try:
                    return fn(self._connected())
                except sqlite3.Error as exc:
                    raise StoreError(f"reading {self.path} failed: {exc}") from exc

        return await to_thread(run)

    async def read_audit(
        self,
        *,
        instance: str | None = None,
        action_id: str | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        where, args = ["seq > ?"], [str(after)]
        if instance is not None:
            where.append("instance = ?")
            args.append(instance)
        if action_id is not None:
            where.append("action_id = ?")
            args.append(action_id)
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return await self._read(lambda c: [audit_record(r) for r in c.execute(sql, args)])

    async def verify(self, *, head: str | None = None, key: bytes | None = None) -> VerifyReport:
        def run(conn: sqlite3.Connection) -> VerifyReport:
            signed = [SignedHead(*row) for row in conn.execute("SELECT * FROM audit_heads")]
            rows = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")
            records = (audit_record(r) for r in rows)
            return verify_records(records, head=head, key=key, signed=signed)

        return await self._read(run)

    async def find_request(self, request_id: str) -> RequestRecord | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT request_id, action_id, action, instance FROM requests WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        )
        return RequestRecord(*row) if row else None

    async def unsent(self, limit: int, *, after: int = 0) -> list[tuple[int, Notification]]:
        from ..notify import Notification

        rows = await self._read(
            lambda c: c.execute(
                "SELECT seq, instance, envelope FROM outbox WHERE sent = 0 AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        )
        return [(seq, Notification.from_envelope(json.loads(env), uuid)) for seq, uuid, env in rows]

    def last_sequences(self) -> dict[str, int]:
        return dict(self._sequences)

    def user_data(self, uuid: str) -> str | None:
        return self._user_data.get(uuid)

    async def refresh(self, uuid: str) -> Instance:
        record = await self._read(lambda c: self._read_instance(c, uuid))
        if record is None:
            raise InstanceNotFound(uuid)
        current = self._records.get(uuid)
        if current is None or current.version < record.version:
            self._records[uuid] = record
        return self._records[uuid]

    async def heartbeat(self, host: str, at: dt.datetime) -> None:
        def write() -> None:
            with self._mutex:
                self._connected(write=True).execute(
                    "INSERT OR REPLACE INTO services VALUES (?, ?)", (host, at.isoformat())
                )

        try:
            await to_thread(write)
        except sqlite3.Error as exc:
            raise StoreError(f"heartbeat to {self.path} failed: {exc}") from exc

    async def get_meta(self, key: str) -> str | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT value FROM ism_meta WHERE key = ?", (f"x:{key}",)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        def write() -> None:
            with self._mutex:
                self._connected(write=True).execute(
                    "INSERT OR REPLACE INTO ism_meta VALUES (?, ?)", (f"x:{key}", value)
                )

        try:
            await to_thread(write)
        except sqlite3.Error as exc:
            raise StoreError(f"writing {self.path} failed: {exc}") from exc

    async def services(self) -> dict[str, dt.datetime]:
        rows = await self._read(
            lambda c: c.execute("SELECT host, heartbeat_at FROM services").fetchall()
        )
        return {host: dt.datetime.fromisoformat(at) for host, at in rows}

    async def outbox_counts(self) -> tuple[int, int]:
        """(all messages, unsent messages) in the outbox."""
        row = await self._read(
            lambda c: c.execute(
                "SELECT COUNT(*), COALESCE(SUM(sent = 0), 0) FROM outbox"
            ).fetchone()
        )
        return int(row[0]), int(row[1])
