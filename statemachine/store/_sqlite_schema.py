"""The SQLite schema, as an ordered list of migrations (``PRAGMA user_version`` counts them).

Every release only appends migrations; a database is brought up to date one step at a time, each
step in its own transaction together with the version bump, so an interrupted upgrade leaves the
previous version intact. A database newer than this ism is refused, never misread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import attrs

from ..errors import StoreError

__all__ = ["MIGRATIONS", "Migration", "migrate", "schema_version"]


@attrs.frozen
class Migration:
    """One schema step: the version it produces, why, and its statements."""

    version: int
    doc: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "instances, the audit log, its signed heads, the outbox, the request-id index",
        (
            """CREATE TABLE ism_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
            """CREATE TABLE instances (
                uuid TEXT PRIMARY KEY,
                version INTEGER NOT NULL,
                vm_state TEXT NOT NULL,
                task_state TEXT,
                power_state INTEGER NOT NULL,
                host TEXT,
                name TEXT NOT NULL,
                project_id TEXT NOT NULL,
                data TEXT NOT NULL,
                user_data TEXT
            )""",
            "CREATE INDEX instances_host ON instances(host)",
            "CREATE INDEX instances_name ON instances(name)",
            """CREATE TABLE audit (
                seq INTEGER PRIMARY KEY,
                writer TEXT NOT NULL,
                wseq INTEGER NOT NULL,
                event TEXT NOT NULL,
                instance TEXT,
                action_id TEXT,
                request_id TEXT,
                body TEXT NOT NULL,
                prev TEXT NOT NULL,
                hash TEXT NOT NULL,
                UNIQUE (writer, wseq)
            )""",
            "CREATE INDEX audit_instance ON audit(instance, seq)",
            "CREATE INDEX audit_action ON audit(action_id)",
            # append-only: the engine never updates or deletes a record; someone with the file
            # can drop these triggers, which is why the chain exists
            """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
               BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
            """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
               BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
            """CREATE TABLE audit_heads (
                writer TEXT PRIMARY KEY,
                wseq INTEGER NOT NULL,
                hash TEXT NOT NULL,
                mac TEXT
            )""",
            """CREATE TABLE outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                message_id TEXT NOT NULL UNIQUE,
                instance TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                envelope TEXT NOT NULL,
                sent INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX outbox_unsent ON outbox(seq) WHERE sent = 0",
            "CREATE INDEX outbox_instance ON outbox(instance, sequence)",
            """CREATE TABLE requests (
                request_id TEXT PRIMARY KEY,
                action_id TEXT NOT NULL,
                action TEXT NOT NULL,
                instance TEXT
            )""",
        ),
    ),
    Migration(
        2,
        "the engines serving a fleet's hosts and their heartbeats",
        (
            """CREATE TABLE services (
                host TEXT PRIMARY KEY,
                heartbeat_at TEXT NOT NULL
            )""",
        ),
    ),
)


def schema_version(conn: sqlite3.Connection) -> int:
    """The database's schema version (0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database up to the last migration; return the version reached.

    Raises:
        StoreError: the database is newer than ``migrations`` know, or a step failed (that step
            is rolled back; earlier ones stay).
    """
    latest = migrations[-1].version if migrations else 0
    current = schema_version(conn)
    if current > latest:
        raise StoreError(
            f"the database's schema version {current} is newer than this ism supports "
            f"({latest}); upgrade ism"
        )
    for step in migrations:
        if step.version <= current:
            continue
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in step.statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"schema migration to version {step.version} failed: {exc}") from exc
        current = step.version
    return current
