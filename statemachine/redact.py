"""Masking secrets before anything leaves the engine: free text, metadata, request parameters.

What counts as secret:

- request parameters that are secret by nature: ``admin_pass`` and ``user_data``
  (:data:`SECRET_PARAMS`);
- metadata values whose key matches one of the secret key patterns (:data:`SECRET_KEY_PATTERNS`,
  or ``Config.secret_key_patterns``), case-insensitively, anywhere in the key;
- in free text (fault messages, log lines, tracebacks): ``key=value`` and ``key: value`` pairs
  whose key matches those patterns, ``Authorization`` and ``X-Auth-Token`` header values, and
  PEM private key blocks.

Nova's own ExceptionPayload carries ``str(exc)`` verbatim (a TODO asks for mask_password); ism
scrubs every fault message, log line and notification string through :func:`scrub`. A service
that configures its own patterns builds a :class:`Redactor` from its :class:`~statemachine.Config`
(:meth:`Redactor.from_config`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "MASK",
    "MAX_SECRET_PATTERNS",
    "SECRET_KEY_PATTERNS",
    "SECRET_PARAMS",
    "Redactor",
    "Secret",
    "is_secret_key",
    "redact_metadata",
    "scrub",
]

MASK = "***"

SECRET_KEY_PATTERNS: tuple[str, ...] = (
    r"pass(word|wd|phrase)?",
    r"admin_?pass",
    r"secret",
    r"token",
    r"credential",
    r"private_?key",
    r"api_?key",
    r"auth",
)
"""Metadata keys matching any of these (case-insensitive, anywhere in the key) are secret."""

SECRET_PARAMS = frozenset({"admin_pass", "user_data"})
"""Request parameters whose values are secret whatever they hold."""

MAX_SECRET_PATTERNS = 64
"""Most secret key patterns a configuration may give (each at most 200 characters)."""

_NOT_SECRET = frozenset({"key_name", "keyname"})
"""Keys that look secret to a pattern but name no secret (a key pair's name)."""

_KEY_SEP = re.compile(r"""["']?(?P<bare>[A-Za-z_][\w.-]{0,63})["']?\s*[:=]\s*""")
_VALUE = re.compile(r""""[^"]*"|'[^']*'|[^\s,;}&{\[][^\s,;}&]*""")
"""A quoted string or a bare word; an object or a list is not a value: its keys are judged."""
_BEARER = re.compile(r"(?i)\b(authorization\s*[:=]\s*)(bearer|basic|token)?\s*[^\s,;]+")
_AUTH_HEADER = re.compile(r"(?i)\b(x-auth-token\s*:\s*)[^\s,;]+")
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S
)


class Secret(str):
    """A string whose ``repr`` is masked.

    The engine keeps ``user_data`` as a ``Secret``: it reaches the driver unchanged (it *is* a
    ``str``), but a record that holds it — an action's parameters, a handle — can be logged or
    shown in a failing test without printing it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)


def _as_tuple(patterns: Iterable[str]) -> tuple[str, ...]:
    return tuple(patterns)


def _compile(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


@attrs.frozen
class Redactor:
    """Masks secrets by one set of secret key patterns.

    Args:
        patterns: Regular expressions; a key matching any of them (``re.search``, case
            insensitive) is secret. ``key_name`` never is.
    """

    patterns: tuple[str, ...] = attrs.field(default=SECRET_KEY_PATTERNS, converter=_as_tuple)
    _compiled: tuple[re.Pattern[str], ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_compiled", _compile(self.patterns))

    @classmethod
    def from_config(cls, config: Config) -> Redactor:
        """The redactor of a configuration's ``secret_key_patterns``."""
        return cls(config.secret_key_patterns)

    def is_secret_key(self, key: str) -> bool:
        """Whether a metadata key (or a ``key=value`` key in text) names a secret."""
        lowered = key.lower()
        if lowered in _NOT_SECRET:
            return False
        return any(p.search(lowered) for p in self._compiled)

    def metadata(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """A copy with the values of secret keys masked."""
        return {k: (MASK if self.is_secret_key(k) else v) for k, v in metadata.items()}

    def params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A request's parameters as a record may keep them (the audit log): secret parameters
        masked, metadata redacted, every other string scrubbed."""
        out: dict[str, Any] = {}
        for key, value in params.items():
            if key in SECRET_PARAMS:
                out[key] = MASK
            elif key == "metadata" and isinstance(value, Mapping):
                out[key] = self.metadata(value)
            elif isinstance(value, str):
                out[key] = self.scrub(value)
            else:
                out[key] = value
        return out

    def scrub(self, text: str) -> str:
        """Mask private keys, auth headers and ``key=value`` pairs with a secret key."""
        text = _PRIVATE_KEY.sub(MASK, text)
        text = _AUTH_HEADER.sub(lambda m: m.group(1) + MASK, text)
        text = _BEARER.sub(lambda m: m.group(1) + MASK, text)

        # key=value pairs: each key is judged on its own, so "failed: password=x" masks x
        out: list[str] = []
        pos = 0
        for pair in _KEY_SEP.finditer(text):
            if pair.start() < pos or not self.is_secret_key(pair.group("bare")):
                continue
            value = _VALUE.match(text, pair.end())
            if value is None:
                continue
            out += (text[pos : pair.end()], MASK)
            pos = value.end()
        out.append(text[pos:])
        return "".join(out)


_DEFAULT = Redactor()


def scrub(text: str) -> str:
    """Mask passwords, tokens, secrets and private keys in ``text`` (the default patterns)."""
    return _DEFAULT.scrub(text)


def is_secret_key(key: str, patterns: Iterable[str] = SECRET_KEY_PATTERNS) -> bool:
    """Whether a metadata key names a secret (``key_name`` does not)."""
    redactor = _DEFAULT if patterns is SECRET_KEY_PATTERNS else Redactor(_as_tuple(patterns))
    return redactor.is_secret_key(key)


def redact_metadata(
    metadata: Mapping[str, str], patterns: Iterable[str] = SECRET_KEY_PATTERNS
) -> dict[str, str]:
    """A copy with the values of secret-looking keys masked."""
    redactor = _DEFAULT if patterns is SECRET_KEY_PATTERNS else Redactor(_as_tuple(patterns))
    return redactor.metadata(metadata)
