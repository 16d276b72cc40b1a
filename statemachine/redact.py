"""Masking secrets in free text and metadata before anything leaves the engine.

Nova's own ExceptionPayload carries ``str(exc)`` verbatim (a TODO asks for mask_password);
ism scrubs every fault message, log line and notification string through :func:`scrub`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["MASK", "SECRET_KEY_PATTERNS", "is_secret_key", "redact_metadata", "scrub"]

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

_KEY_VALUE = re.compile(
    r"""(?ix)
    (?P<key>["']?[\w-]*(?:pass(?:word|wd|phrase)?|secret|token|credential|api[_-]?key|
        private[_-]?key)[\w-]*["']?)
    (?P<sep>\s*[:=]\s*)
    (?P<value>"[^"]*"|'[^']*'|[^\s,;}&]+)
    """
)
_BEARER = re.compile(r"(?i)\b(authorization\s*[:=]\s*)(bearer|basic|token)?\s*[^\s,;]+")
_AUTH_HEADER = re.compile(r"(?i)\b(x-auth-token\s*:\s*)[^\s,;]+")
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
)


def scrub(text: str) -> str:
    """Mask passwords, tokens, secrets and private keys in ``text``."""
    text = _PRIVATE_KEY.sub(MASK, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return _KEY_VALUE.sub(lambda m: m.group("key") + m.group("sep") + MASK, text)


def is_secret_key(key: str, patterns: Iterable[str] = SECRET_KEY_PATTERNS) -> bool:
    """Whether a metadata key names a secret (``key_name`` does not)."""
    lowered = key.lower()
    if lowered in ("key_name", "keyname"):
        return False
    return any(re.search(p, lowered) for p in patterns)


def redact_metadata(
    metadata: Mapping[str, str], patterns: Iterable[str] = SECRET_KEY_PATTERNS
) -> dict[str, str]:
    """A copy with the values of secret-looking keys masked."""
    pats = tuple(patterns)
    return {k: (MASK if is_secret_key(k, pats) else v) for k, v in metadata.items()}
