"""The one rule for tests that need a service of the machine (libvirtd, PostgreSQL, a binary).

On a machine without it the test skips, saying what is missing; with ``ISM_REQUIRE_SERVICES=1``
(which ``.ci/run`` exports after installing and starting them) it FAILS instead: in CI a
missing service is a broken setup, never a quietly skipped suite.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["missing", "services_required"]


def services_required() -> bool:
    """Whether a missing service fails the test (``ISM_REQUIRE_SERVICES=1``)."""
    return os.environ.get("ISM_REQUIRE_SERVICES") == "1"


def missing(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail with it when services are required."""
    if services_required():
        pytest.fail(f"ISM_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)
