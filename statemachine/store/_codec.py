"""Instance records to and from JSON, for every durable store.

One table per kind of field, and a check when the module loads that every ``Instance`` field is
in exactly one of them: a field added to the model without a codec fails the import instead of
being silently dropped on the way to disk.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from drivers.base import PowerState

from ..audit import AuditRecord
from ..model import Fault, Flavor, Instance
from ..states import TaskState, VmState

__all__ = ["decode_instance", "dumps_instance", "encode_instance", "loads_instance"]

_PLAIN = frozenset(
    {
        "uuid",
        "name",
        "user_id",
        "project_id",
        "image",
        "version",
        "host",
        "locked",
        "locked_by",
        "locked_reason",
        "key_name",
        "request_id",
        "action_id",
        "snapshot_image",
        "source_host",
        "dest_host",
    }
)


def _time_out(value: dt.datetime) -> str:
    return value.isoformat()


def _time_in(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def _flavor_out(value: Flavor) -> dict[str, Any]:
    return attrs.asdict(value)


def _flavor_in(value: Mapping[str, Any]) -> Flavor:
    return Flavor(**value)


def _fault_out(value: Fault) -> dict[str, Any]:
    data = attrs.asdict(value)
    data["created_at"] = _time_out(value.created_at)
    return data


def _fault_in(value: Mapping[str, Any]) -> Fault:
    return Fault(**{**value, "created_at": _time_in(value["created_at"])})


Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]
_TYPED: dict[str, Codec] = {
    **dict.fromkeys(
        (
            "created_at",
            "updated_at",
            "launched_at",
            "terminated_at",
            "deleted_at",
            "state_since",
            "task_since",
        ),
        (_time_out, _time_in),
    ),
    **dict.fromkeys(("vm_state", "old_vm_state"), (lambda v: v.value, VmState)),
    "task_state": (lambda v: v.value, TaskState),
    "power_state": (int, PowerState),
    **dict.fromkeys(("flavor", "old_flavor", "new_flavor"), (_flavor_out, _flavor_in)),
    "fault": (_fault_out, _fault_in),
    "metadata": (dict, dict),
}

_FIELDS = tuple(f.name for f in attrs.fields(Instance))
_uncovered = set(_FIELDS) - _PLAIN - set(_TYPED)
if _uncovered or _PLAIN & set(_TYPED):
    raise ImportError(f"Instance fields without exactly one codec: {sorted(_uncovered)}")


def encode_instance(inst: Instance) -> dict[str, Any]:
    """A JSON-ready dict of every field (None stays None)."""
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(inst, name)
        codec = _TYPED.get(name)
        out[name] = value if value is None or codec is None else codec[0](value)
    return out


def decode_instance(data: Mapping[str, Any]) -> Instance:
    """The record :func:`encode_instance` encoded."""
    fields: dict[str, Any] = {}
    for name in _FIELDS:
        if name not in data:
            continue  # a field added later keeps its default on records written before it
        value = data[name]
        codec = _TYPED.get(name)
        fields[name] = value if value is None or codec is None else codec[1](value)
    return Instance(**fields)


def dumps_instance(inst: Instance) -> str:
    """The record as compact JSON text."""
    return json.dumps(encode_instance(inst), separators=(",", ":"), ensure_ascii=False)


def loads_instance(text: str) -> Instance:
    """The record from :func:`dumps_instance`'s text."""
    return decode_instance(json.loads(text))


AUDIT_COLUMNS = "seq, writer, wseq, event, instance, action_id, request_id, body, prev, hash"
"""The audit table's columns, in the order :func:`audit_record` reads them (both SQL stores)."""


def audit_record(row: Iterable[Any]) -> AuditRecord:
    """An audit row as the record it seals, keeping the stored body text: verification hashes
    those bytes, and the indexed columns are checked against the body."""
    seq, writer, wseq, event, instance, action_id, request_id, body, prev, digest = row
    return AuditRecord(
        seq=seq,
        writer=writer,
        wseq=wseq,
        prev=prev,
        hash=digest,
        body=json.loads(body),
        raw=body.encode("utf-8"),
        index={
            "event": event,
            "instance": instance,
            "action_id": action_id,
            "request_id": request_id,
        },
    )
