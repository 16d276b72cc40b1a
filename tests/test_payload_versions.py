"""Payload versioning, Nova's policy: a payload's fields change only with its version — a minor
bump for added fields, a major bump for removed ones — checked against a committed snapshot.

After a deliberate, versioned change: ``python -m tests.test_payload_versions`` rewrites the
snapshot (and the test then checks the bump followed the policy)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from statemachine.notify import payload_schemas

SNAPSHOT = Path(__file__).with_name("payload_schemas.json")
Schemas = dict[str, dict[str, Any]]


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def policy_problems(old: Schemas, new: Schemas) -> list[str]:
    """What breaks the policy between two snapshots (empty when it holds)."""
    problems = []
    for name in sorted(set(old) - set(new)):
        problems.append(f"{name} was removed: consumers may still read it")
    for name, cur in sorted(new.items()):
        prev = old.get(name)
        if prev is None:
            continue  # a new payload class: its first version
        added = set(cur["fields"]) - set(prev["fields"])
        removed = set(prev["fields"]) - set(cur["fields"])
        (old_major, old_minor), (major, minor) = _version(prev["version"]), _version(cur["version"])
        if (major, minor) < (old_major, old_minor):
            problems.append(f"{name}: version went back from {prev['version']}")
        if not added and not removed:
            continue
        if (major, minor) == (old_major, old_minor):
            problems.append(
                f"{name} {cur['version']}: fields changed (added {sorted(added)}, removed "
                f"{sorted(removed)}) without a version bump"
            )
        elif removed and major == old_major:
            problems.append(f"{name}: fields {sorted(removed)} removed needs a major bump")
        elif added and not removed and (major != old_major or minor != old_minor + 1):
            problems.append(
                f"{name}: fields {sorted(added)} added needs a minor bump to "
                f"{old_major}.{old_minor + 1}, not {cur['version']}"
            )
    return problems


def test_payload_fields_change_only_with_their_version() -> None:
    """Against the committed snapshot: any change followed the policy, and was recorded."""
    old = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    new = payload_schemas()
    assert policy_problems(old, new) == []
    assert new == old, "a versioned payload change: run python -m tests.test_payload_versions"


def test_the_policy_catches_unversioned_and_misversioned_changes() -> None:
    """Added without a bump, removed with a minor bump, a bump skipped: each is named."""
    base = {"P": {"version": "1.4", "fields": ["a", "b"]}}
    assert policy_problems(base, {"P": {"version": "1.4", "fields": ["a", "b", "c"]}})
    assert policy_problems(base, {"P": {"version": "1.5", "fields": ["a", "b", "c"]}}) == []
    assert policy_problems(base, {"P": {"version": "1.6", "fields": ["a", "b", "c"]}})
    assert policy_problems(base, {"P": {"version": "1.5", "fields": ["a"]}})
    assert policy_problems(base, {"P": {"version": "2.0", "fields": ["a"]}}) == []
    assert policy_problems(base, {})
    assert policy_problems(base, {"P": {"version": "1.3", "fields": ["a", "b"]}})


def test_an_added_payload_class_is_part_of_the_schemas() -> None:
    """An extension's payload class shows up with its version and its own field."""
    schemas = payload_schemas(
        {"volume_attach": ("InstanceActionVolumePayload", "1.7", ("fault", "volume_id"))}
    )
    assert schemas["InstanceActionVolumePayload"]["version"] == "1.7"
    assert "volume_id" in schemas["InstanceActionVolumePayload"]["fields"]


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(payload_schemas(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
