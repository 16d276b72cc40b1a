"""The boundary's checks: every value a caller hands the engine is checked here, once.

Each check returns the value (or its canonical form) or raises
:class:`~statemachine.errors.InvalidRequest` with a one-line message that names the field and,
for values that are not secret, shows a short, truncated ``repr`` of what was given: a message
never grows with its input and never echoes a password, user data or a metadata value.

Limits follow Nova's API schemas where Nova has one (``nova/api/validation/parameter_types.py``):
display names and metadata of 255 characters, 128 metadata items (Nova's default
``metadata_items`` quota), metadata keys of ``[a-zA-Z0-9-_:. ]``, key pair names of
``[a-zA-Z0-9. _-]`` without leading or trailing blanks, flavor sizes up to the database's
``INT_MAX``, user data up to 65535 characters.
"""

from __future__ import annotations

import math
import re
import unicodedata
import uuid as uuidlib
from collections.abc import Mapping

from .errors import InvalidRequest

__all__ = [
    "INT_MAX",
    "MAX_METADATA_ITEMS",
    "MAX_METADATA_LEN",
    "MAX_TEXT",
    "MAX_USER_DATA",
    "host",
    "integer",
    "key_name",
    "metadata",
    "name",
    "secret",
    "show",
    "text",
    "uuid",
]

MAX_TEXT = 255
"""Longest name, image reference, host, reason or id, in characters."""
MAX_METADATA_ITEMS = 128
MAX_METADATA_LEN = 255
MAX_USER_DATA = 65_535
INT_MAX = 2**31 - 1
"""Nova's bound on flavor sizes (its database columns are 32-bit integers)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,254}")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?")
_KEY_NAME = re.compile(r"[A-Za-z0-9._-](?:[A-Za-z0-9. _-]{0,253}[A-Za-z0-9._-])?")
_METADATA_KEY = re.compile(r"[A-Za-z0-9_:. -]{1,255}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def show(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: what an error message may echo."""
    if isinstance(value, str | int | float | bool) or value is None:
        shown = repr(value)
    else:
        shown = f"a {type(value).__name__}"
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _fail(message: str, action: str | None) -> InvalidRequest:
    return InvalidRequest(message, action=action)


def _printable(value: str) -> bool:
    """Valid Unicode (no lone surrogate) without control characters."""
    try:
        value.encode("utf-8", "strict")
    except UnicodeEncodeError:
        return False
    return not any(unicodedata.category(char) == "Cc" for char in value)


def text(field: str, value: object, *, limit: int = MAX_TEXT, action: str | None = None) -> str:
    """A non-empty, printable string of at most ``limit`` characters.

    Raises:
        InvalidRequest: anything else; the message shows the value, truncated.
    """
    if not isinstance(value, str) or not value:
        raise _fail(f"{field} must be a non-empty string, not {show(value)}", action)
    if len(value) > limit:
        raise _fail(f"{field} is longer than {limit} characters", action)
    if not _printable(value):
        raise _fail(f"{field} holds control characters or invalid Unicode: {show(value)}", action)
    return value


def secret(field: str, value: object, *, limit: int, action: str | None = None) -> str:
    """A string of at most ``limit`` characters that is never echoed (a password, user data).

    Raises:
        InvalidRequest: not a string, too long, or not valid Unicode; the value is not shown.
    """
    if not isinstance(value, str) or len(value) > limit:
        raise _fail(f"{field} must be a string of at most {limit} characters", action)
    try:
        value.encode("utf-8", "strict")
    except UnicodeEncodeError:
        raise _fail(f"{field} is not valid Unicode", action) from None
    return value


def name(value: object, *, action: str | None = None) -> str:
    """A display name: 1-255 characters, letters, digits, ``._ -``, starting with a letter or
    digit (what every driver can carry: libvirt's XML, a hostname-like label)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _fail(f"invalid instance name {show(value)}", action)
    return value


def host(value: object, *, field: str = "host", action: str | None = None) -> str:
    """A host name: letters, digits, ``.``, ``_`` and ``-``, 1-255 characters, starting and
    ending with a letter or digit."""
    if not isinstance(value, str) or not _HOST.fullmatch(value):
        raise _fail(f"invalid {field} {show(value)}: a host name is letters, digits, '.', "
                    "'_' and '-', at most 255 characters", action)  # fmt: skip
    return value


def key_name(value: object, *, action: str | None = None) -> str:
    """A key pair's name (Nova's pattern: no leading or trailing blank)."""
    if not isinstance(value, str) or not _KEY_NAME.fullmatch(value):
        raise _fail(f"invalid key_name {show(value)}", action)
    return value


def uuid(value: object, *, field: str = "instance", action: str | None = None) -> str:
    """An instance uuid in its canonical 36-character form, lower-cased.

    Raises:
        InvalidRequest: not a string of that form (so a malformed id is a bad request, not an
            instance that happens not to exist).
    """
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise _fail(f"{field} must be a uuid, not {show(value)}", action)
    return str(uuidlib.UUID(value))


def integer(field: str, value: object, low: int, high: int, *, action: str | None = None) -> int:
    """An ``int`` (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(f"{field} must be an integer in [{low}, {high}], not {show(value)}", action)
    return value


def metadata(value: object, *, action: str | None = None) -> dict[str, str]:
    """At most 128 items; keys of Nova's metadata charset, values strings of at most 255
    characters. Values are never echoed: they may be secrets."""
    if not isinstance(value, Mapping):
        raise _fail(f"metadata must be an object, not {show(value)}", action)
    if len(value) > MAX_METADATA_ITEMS:
        raise _fail(f"metadata must be an object of at most {MAX_METADATA_ITEMS} items", action)
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _METADATA_KEY.fullmatch(key):
            raise _fail(
                f"invalid metadata key {show(key)}: 1-{MAX_METADATA_LEN} of letters, digits "
                "and '_:. -'",
                action,
            )
        out[key] = secret(f"metadata value of {key!r}", item, limit=MAX_METADATA_LEN, action=action)
    return out


def wait_timeout(value: object) -> float:
    """A wait's bound: a finite number of seconds, zero or more.

    Every wait in ism ends; an infinite or NaN timeout would make one that never does (and
    under virtual time, one that spins through every timer the fleet has), so it is refused.

    Raises:
        InvalidRequest: not a real, finite, non-negative number of seconds.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"timeout must be a number of seconds, not {show(value)}", None)
    if not math.isfinite(value) or value < 0:
        raise _fail(f"timeout must be finite and not negative, not {value!r}", None)
    return float(value)
