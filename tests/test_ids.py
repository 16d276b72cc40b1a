"""The engine's uuid text is the standard library's, bit for bit, only cheaper."""

from __future__ import annotations

import random
import uuid

from statemachine._ids import random_uuid, uuid_from_bits


def test_same_text_as_uuid_module_for_the_same_bits() -> None:
    """Seeded runs keep their ids: the text equals ``str(UUID(int=bits, version=4))``."""
    rng = random.Random(7)
    for bits in [0, 2**128 - 1, *(rng.getrandbits(128) for _ in range(5000))]:
        assert uuid_from_bits(bits) == str(uuid.UUID(int=bits, version=4))


def test_random_uuids_are_canonical_version_4_and_distinct() -> None:
    ids = {random_uuid() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
