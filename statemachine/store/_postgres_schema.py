"""The PostgreSQL schema, as an ordered list of migrations recorded in ``ism_migrations``.

The same rules as SQLite's (:mod:`._sqlite_schema`): releases only append steps; each step runs
in its own transaction together with its row in ``ism_migrations``, so an interrupted upgrade
leaves the previous version intact; a schema newer than this ism is refused, never misread.

What differs, and why:

* Everything lives in one PostgreSQL schema (``ism`` unless configured), reached through the
  session's ``search_path``: ism's tables never mix with an existing database's own, and several
  fleets can share one database in schemas of their own.
* Several engines may open a new database at once: every migration transaction first takes a
  transaction-level advisory lock on the schema, so exactly one of them creates it.
* ``seq``, the audit log's global order, comes from a sequence (``audit_seq``): writers never
  wait for each other to number their records. A rolled-back transaction leaves a gap, which
  the audit format allows.
* The outbox names the writer that queued each message: an engine delivers its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import StoreError
from ._sqlite_schema import Migration

if TYPE_CHECKING:
    import asyncpg

__all__ = ["MIGRATIONS", "advisory_key", "migrate", "schema_version"]

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "instances, the audit log and its sequence, signed heads, the outbox, request ids",
        (
            """CREATE TABLE ism_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
            """CREATE TABLE instances (
                uuid TEXT PRIMARY KEY,
                position BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
                version BIGINT NOT NULL,
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
                seq BIGINT PRIMARY KEY,
                writer TEXT NOT NULL,
                wseq BIGINT NOT NULL,
                event TEXT NOT NULL,
                instance TEXT,
                action_id TEXT,
                request_id TEXT,
                body TEXT NOT NULL,
                prev TEXT NOT NULL,
                hash TEXT NOT NULL,
                UNIQUE (writer, wseq)
            )""",
            "CREATE SEQUENCE audit_seq AS BIGINT OWNED BY audit.seq",
            "CREATE INDEX audit_instance ON audit(instance, seq)",
            "CREATE INDEX audit_action ON audit(action_id)",
            # append-only: the engine never updates, deletes or truncates a record; someone
            # who owns the schema can drop these triggers, which is why the chain exists
            """CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$""",
            """CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
               FOR EACH ROW EXECUTE FUNCTION audit_append_only()""",
            """CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
               FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
            """CREATE TABLE audit_heads (
                writer TEXT PRIMARY KEY,
                wseq BIGINT NOT NULL,
                hash TEXT NOT NULL,
                mac TEXT
            )""",
            """CREATE TABLE outbox (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                message_id TEXT NOT NULL UNIQUE,
                writer TEXT NOT NULL,
                instance TEXT NOT NULL,
                sequence BIGINT NOT NULL,
                envelope TEXT NOT NULL,
                sent BOOLEAN NOT NULL DEFAULT false
            )""",
            "CREATE INDEX outbox_unsent ON outbox(writer, seq) WHERE NOT sent",
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
                heartbeat_at TIMESTAMPTZ NOT NULL
            )""",
        ),
    ),
)

_VERSIONS = """CREATE TABLE IF NOT EXISTS ism_migrations (
    version INTEGER PRIMARY KEY,
    doc TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""


def advisory_key(*parts: str) -> int:
    """A 64-bit advisory-lock key for ``parts`` (a hash: distinct names get distinct locks,
    unlike ``hashtext``'s 32 bits, whose collisions would refuse an unrelated writer)."""
    digest = hashlib.sha256("\0".join(("ism", *parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def schema_version(conn: asyncpg.Connection, schema: str) -> int | None:
    """The schema's version: None when ``schema`` holds no ism tables at all."""
    exists = await conn.fetchval(
        "SELECT to_regclass(quote_ident($1) || '.ism_migrations') IS NOT NULL", schema
    )
    if not exists:
        return None
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM ism_migrations"))


async def migrate(
    conn: asyncpg.Connection, schema: str, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Create ``schema`` if needed and bring it up to the last migration; return the version.

    The connection's ``search_path`` must be ``schema``.

    Raises:
        StoreError: the schema is newer than ``migrations`` know, or a step failed (that step
            is rolled back; earlier ones stay).
    """
    import asyncpg

    latest = migrations[-1].version if migrations else 0
    lock = advisory_key("migrate", schema)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(_VERSIONS)
            current = await schema_version(conn, schema) or 0
    except asyncpg.PostgresError as exc:
        raise StoreError(f"cannot create the schema {schema!r}: {_line(exc)}") from exc
    if current > latest:
        raise StoreError(
            f"the schema {schema!r} has version {current}, newer than this ism supports "
            f"({latest}); upgrade ism"
        )
    for step in migrations:
        if step.version <= current:
            continue
        try:
            async with conn.transaction():
                # another engine may have applied it while this one waited for the lock
                await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
                if (await schema_version(conn, schema) or 0) < step.version:
                    for statement in step.statements:
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO ism_migrations (version, doc) VALUES ($1, $2)",
                        step.version,
                        step.doc,
                    )
        except asyncpg.PostgresError as exc:
            raise StoreError(
                f"schema migration to version {step.version} failed: {_line(exc)}"
            ) from exc
        current = step.version
    return current


def _line(exc: BaseException) -> str:
    """The first line of an error's message (PostgreSQL's can run to several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
