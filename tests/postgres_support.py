"""What the PostgreSQL tests need: a reachable server, and a fresh schema for each test.

The server is ``$ISM_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``,
what ``.ci/postgres-service`` starts). Without asyncpg or a server a test skips, saying which,
and fails instead under ``ISM_REQUIRE_SERVICES=1`` (:func:`tests.support.missing`). Each test
gets a schema of its own (``?schema=ism_t_…``), dropped afterwards, so tests never see each
other's rows and a rerun starts clean.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support import missing

__all__ = ["SERVER", "drop_schema", "fresh_schema", "require_postgres", "schema_url"]

SERVER = os.environ.get("ISM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


async def _probe() -> str | None:
    import asyncpg

    try:
        conn = await asyncpg.connect(SERVER, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        return f"PostgreSQL does not answer at {SERVER} ({type(exc).__name__}: {exc})"
    await conn.close()
    return None


@functools.cache
def _problem() -> str | None:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install 'ism-engine[postgres]')"
    problem = asyncio.run(_probe())
    if problem is not None:
        return problem + "; see .ci/postgres-service"
    return None


def require_postgres() -> str:
    """The server's URL, once it answers; skip/fail otherwise."""
    problem = _problem()
    if problem is not None:
        missing(problem)
    return SERVER


def schema_url(schema: str) -> str:
    """The server's URL naming ``schema``."""
    parts = urllib.parse.urlsplit(SERVER)
    query = [*urllib.parse.parse_qsl(parts.query), ("schema", schema)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def drop_schema(schema: str) -> None:
    """Drop ``schema`` and everything in it (on a loop of its own)."""

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(SERVER, timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A URL naming a new, empty schema (created by the store on open), dropped on exit."""
    require_postgres()
    schema = f"ism_t_{secrets.token_hex(6)}"
    try:
        yield schema_url(schema)
    finally:
        drop_schema(schema)
