"""Suite-wide: pytester, to run ism's pytest plugin on test files of its own; a PostgreSQL
schema per test that asks for ``pg_url``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres_support import fresh_schema

pytest_plugins = ["pytester"]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL naming a fresh schema of this test's own (skips without a server)."""
    with fresh_schema() as url:
        yield url
