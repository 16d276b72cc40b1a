"""Version-4 uuid strings without building :class:`uuid.UUID` objects.

Every action and every notification takes a fresh id; at fleet scale the object and its
validation cost more than the randomness. The text is exactly what
``str(uuid.UUID(int=bits, version=4))`` gives for the same bits, so seeded runs keep their ids.
"""

from __future__ import annotations

import os

__all__ = ["random_uuid", "uuid_from_bits"]

_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x4000 << 64) | (0x8000 << 48)


def uuid_from_bits(bits: int) -> str:
    """The canonical text of a version-4 uuid made from 128 random ``bits``."""
    h = "%032x" % ((bits & _CLEAR) | _SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def random_uuid() -> str:
    """A version-4 uuid from the operating system's randomness."""
    return uuid_from_bits(int.from_bytes(os.urandom(16)))
