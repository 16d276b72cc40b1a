"""The audit log: append-only records, chained by SHA-256, verifiable by anyone holding the file.

Every accepted, refused, failed, preempted and completed action and every state change leaves one
record, written in the same transaction as the change it describes, so "state committed" and
"audit record written" cannot disagree.

Format (``ism-audit/1``), chosen so that several engines can later write one log without
serializing on one row:

* Each engine writes its own chain, named by ``writer`` (the engine's ``service_host``). A record
  carries ``wseq`` (1, 2, 3 … within its writer) and ``prev``, the hash of the writer's previous
  record (64 zeros for the first).
* ``seq`` is the global order of the log (the order ``ism audit tail`` shows). It is hashed too,
  so moving a record is detected even across writers. Gaps in ``seq`` are allowed (a database
  sequence may skip a rolled-back value); gaps in ``wseq`` are not.
* ``hash = sha256(prev + "\\n" + canonical(body))`` where ``body`` is every field of the record
  but ``hash`` and ``prev`` and ``canonical`` is JSON with sorted keys, no whitespace and UTF-8
  (:func:`canonical`).
* The log's *head* is ``sha256("ism-audit-head/1" + one "writer wseq hash" line per writer, in
  writer order)``: one string that changes with every record of every writer. ``verify`` computes
  the head after each record, so ``--head H`` can tell that the log still holds the state ``H``
  was taken from (a truncated tail no longer reaches it).
* With a key, each writer's last record is signed in the same transaction (HMAC-SHA256 of
  ``writer wseq hash``), so a tail cut off and a log rewritten by someone without the key are
  both detected without a head taken earlier.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from .errors import InvalidRequest
from .model import Fault, Instance, RequestContext
from .redact import scrub

__all__ = [
    "FORMAT",
    "GENESIS",
    "Actor",
    "AuditChain",
    "AuditEntry",
    "AuditEvent",
    "AuditRecord",
    "SignedHead",
    "StateSnapshot",
    "VerifyReport",
    "canonical",
    "head_of",
    "sign_head",
    "verify_records",
]

FORMAT = "ism-audit/1"
GENESIS = "0" * 64
"""The ``prev`` of a writer's first record."""

AuditEvent = Literal["accepted", "refused", "state", "completed", "failed", "preempted"]
"""What a record says happened: an action accepted (its first state change, if it has one) or
refused (nothing changed); a state change along the way (a step, a power-state update, a lock);
an action's last change on success (``completed``) or on its error path (``failed``); or an
action ended by another (``preempted``, no change of its own)."""


def canonical(value: Any) -> bytes:
    """The one byte encoding that is hashed: JSON, keys sorted, no whitespace, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@attrs.frozen
class Actor:
    """Who asked: user, project and roles (the engine itself is ``ism``/``ism``/``system``)."""

    user_id: str
    project_id: str
    roles: tuple[str, ...]

    @classmethod
    def of(cls, ctx: RequestContext) -> Actor:
        """The actor of a request context."""
        roles = ("system",) if ctx.is_system else tuple(sorted(ctx.roles))
        return cls(ctx.user_id, ctx.project_id, roles)

    def as_dict(self) -> dict[str, Any]:
        """The record's form."""
        return {"user_id": self.user_id, "project_id": self.project_id, "roles": list(self.roles)}


@attrs.frozen
class StateSnapshot:
    """An instance's lifecycle position at one version: enough to replay the state changes."""

    vm_state: str
    task_state: str | None
    power_state: str
    version: int
    host: str | None

    @classmethod
    def of(cls, inst: Instance) -> StateSnapshot:
        """The snapshot of a record."""
        return cls(
            inst.vm_state.value,
            inst.task_state.value if inst.task_state is not None else None,
            inst.power_state.label,
            inst.version,
            inst.host,
        )

    def as_dict(self) -> dict[str, Any]:
        """The record's form."""
        return {
            "vm_state": self.vm_state,
            "task_state": self.task_state,
            "power_state": self.power_state,
            "version": self.version,
            "host": self.host,
        }


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@attrs.frozen(kw_only=True)
class AuditEntry:
    """What the engine records; the store seals it into an :class:`AuditRecord`.

    ``message`` and ``fault`` are scrubbed when built (:meth:`build`): nothing secret enters
    the log, so nothing secret can leave it.
    """

    event: AuditEvent
    time: str
    instance: str | None
    action: str | None
    action_id: str | None
    request_id: str | None
    actor: Actor | None
    outcome: str | None = None
    before: StateSnapshot | None = None
    after: StateSnapshot | None = None
    fault: Mapping[str, str] | None = None
    message: str | None = None

    @classmethod
    def build(
        cls,
        event: AuditEvent,
        *,
        when: dt.datetime,
        instance: str | None,
        action: str | None,
        action_id: str | None,
        ctx: RequestContext | None,
        outcome: str | None = None,
        before: Instance | None = None,
        after: Instance | None = None,
        fault: Fault | None = None,
        message: str | None = None,
    ) -> AuditEntry:
        """An entry from engine objects, with the fault and message scrubbed."""
        return cls(
            event=event,
            time=_time(when),
            instance=instance,
            action=action,
            action_id=action_id,
            request_id=ctx.request_id if ctx is not None else None,
            actor=Actor.of(ctx) if ctx is not None else None,
            outcome=outcome,
            before=StateSnapshot.of(before) if before is not None else None,
            after=StateSnapshot.of(after) if after is not None else None,
            fault=(
                {"exception": fault.exception, "message": scrub(fault.message)}
                if fault is not None
                else None
            ),
            message=scrub(message) if message is not None else None,
        )

    def body(self, *, seq: int, writer: str, wseq: int) -> dict[str, Any]:
        """Every hashed field, in the record's JSON form."""
        return {
            "format": FORMAT,
            "seq": seq,
            "writer": writer,
            "wseq": wseq,
            "event": self.event,
            "time": self.time,
            "instance": self.instance,
            "action": self.action,
            "action_id": self.action_id,
            "request_id": self.request_id,
            "actor": self.actor.as_dict() if self.actor is not None else None,
            "outcome": self.outcome,
            "before": self.before.as_dict() if self.before is not None else None,
            "after": self.after.as_dict() if self.after is not None else None,
            "fault": dict(self.fault) if self.fault is not None else None,
            "message": self.message,
        }


@attrs.frozen
class AuditRecord:
    """A sealed record: its place in the log, its chain link, its hash and its body."""

    seq: int
    writer: str
    wseq: int
    prev: str
    hash: str
    body: Mapping[str, Any]
    raw: bytes | None = attrs.field(default=None, eq=False, repr=False)
    """The stored bytes of the body, when the store keeps them: verification hashes those."""
    index: Mapping[str, Any] | None = attrs.field(default=None, eq=False, repr=False)
    """Columns a store keeps beside the body for queries; they must agree with it."""

    @property
    def event(self) -> str:
        """What happened (``accepted``, ``state`` …)."""
        return str(self.body["event"])

    def get(self, key: str) -> Any:
        """A body field, ``None`` when absent."""
        return self.body.get(key)

    def as_dict(self) -> dict[str, Any]:
        """The exported form: the body plus the link and the hash (``ism audit export``)."""
        return {**self.body, "prev": self.prev, "hash": self.hash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """Read an exported record back (the inverse of :meth:`as_dict`)."""
        body = {k: v for k, v in data.items() if k not in ("prev", "hash")}
        return cls(
            seq=int(data["seq"]),
            writer=str(data["writer"]),
            wseq=int(data["wseq"]),
            prev=str(data["prev"]),
            hash=str(data["hash"]),
            body=body,
        )


def _digest(prev: str, body_bytes: bytes) -> str:
    return hashlib.sha256(prev.encode("ascii") + b"\n" + body_bytes).hexdigest()


@attrs.define
class AuditChain:
    """One writer's chain as it grows: the next ``wseq`` and the hash to link to.

    Stores seal inside the transaction that writes the records, and :meth:`mark` /
    :meth:`reset` let them undo a batch whose transaction failed.
    """

    writer: str
    wseq: int = 0
    prev: str = GENESIS

    def seal(self, entry: AuditEntry, seq: int) -> tuple[AuditRecord, bytes]:
        """Seal ``entry`` as the writer's next record at global ``seq``; return it and the
        exact bytes that were hashed (stores keep those bytes, so verification reads what was
        hashed, not a re-encoding)."""
        wseq = self.wseq + 1
        body = entry.body(seq=seq, writer=self.writer, wseq=wseq)
        data = canonical(body)
        digest = _digest(self.prev, data)
        record = AuditRecord(seq, self.writer, wseq, self.prev, digest, body)
        self.wseq, self.prev = wseq, digest
        return record, data

    def mark(self) -> tuple[int, str]:
        """Where the chain is now, to :meth:`reset` to."""
        return self.wseq, self.prev

    def reset(self, mark: tuple[int, str]) -> None:
        """Forget what was sealed since ``mark`` (its transaction rolled back)."""
        self.wseq, self.prev = mark


def head_of(heads: Mapping[str, tuple[int, str]]) -> str:
    """The log's head: one hash over every writer's last ``(wseq, hash)``."""
    text = FORMAT + "-head\n" + "".join(f"{w} {n} {h}\n" for w, (n, h) in sorted(heads.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sign_head(key: bytes, writer: str, wseq: int, digest: str) -> str:
    """The HMAC-SHA256 that signs one writer's last record."""
    return hmac.new(key, f"{writer} {wseq} {digest}".encode(), hashlib.sha256).hexdigest()


@attrs.frozen
class SignedHead:
    """A writer's last record as the store signed it (``mac`` is None without a key)."""

    writer: str
    wseq: int
    hash: str
    mac: str | None


@attrs.frozen
class VerifyReport:
    """What :func:`verify_records` found. ``error`` is None when the log is intact."""

    count: int
    head: str
    error: str | None = None
    bad_seq: int | None = None
    positions: Mapping[str, tuple[int, str]] = attrs.field(factory=dict)
    """Each writer's last ``(wseq, hash)``: the head in a form that stays checkable however
    several writers' commits interleave (``--head`` takes it as :attr:`positions_text`)."""

    @property
    def positions_text(self) -> str:
        """``writer#wseq:hash`` per writer, comma-separated, in writer order."""
        return ",".join(f"{w}#{n}:{h}" for w, (n, h) in sorted(self.positions.items()))

    @property
    def ok(self) -> bool:
        """Whether the log verified."""
        return self.error is None


def verify_records(
    records: Iterable[AuditRecord],
    *,
    head: str | None = None,
    key: bytes | None = None,
    signed: Iterable[SignedHead] = (),
) -> VerifyReport:
    """Check a log read in ``seq`` order; stop at the first bad record and name it.

    Args:
        records: The records in the order the store lists them (ascending ``seq``). A record
            with ``raw`` bytes is checked against those; otherwise its body is re-encoded
            canonically (the same bytes, for a body that was not edited).
        head: A head taken earlier: the log must still reach it (a truncated tail does not).
            Either the head hash, or the per-writer form ``writer#wseq:hash,…``
            (:attr:`VerifyReport.positions_text`), which stays exact when several writers'
            commits interleave out of ``seq`` order.
        key: The HMAC key: every signed writer head must carry a valid MAC and be its writer's
            last record.
        signed: The signed heads the store holds.

    Returns:
        The count, the head after the last record, and the first error found, if any.
    """
    heads: dict[str, tuple[int, str]] = {}
    count, last_seq = 0, None
    wanted = _positions(head) if head is not None and "#" in head else None
    seen_head = head is None or wanted is not None
    for record in records:
        count += 1
        where = f"record seq={record.seq} ({record.writer} #{record.wseq})"
        bad = _check(record, heads, last_seq)
        if bad is not None:
            return VerifyReport(count - 1, head_of(heads), f"{where}: {bad}", record.seq)
        last_seq = record.seq
        heads[record.writer] = (record.wseq, record.hash)
        named = wanted.get(record.writer) if wanted is not None else None
        if named is not None and named[0] == record.wseq and named[1] != record.hash:
            return VerifyReport(
                count,
                head_of(heads),
                f"record seq={record.seq} ({record.writer} #{record.wseq}): not the record the "
                "given head names (the log was rewritten)",
                record.seq,
                dict(heads),
            )
        if not seen_head and head_of(heads) == head:
            seen_head = True
    current = head_of(heads)
    if wanted is not None:
        for writer, (wseq, _) in sorted(wanted.items()):
            if heads.get(writer, (0, ""))[0] < wseq:
                return VerifyReport(
                    count, current,
                    f"writer {writer} ends at #{heads.get(writer, (0, ''))[0]}, before #{wseq} "
                    "of the given head: the log was truncated", None, dict(heads),
                )  # fmt: skip
    if not seen_head:
        return VerifyReport(
            count,
            current,
            f"head {head} not found: the log was truncated (or the head is from another log)",
            positions=dict(heads),
        )
    if key is not None:
        error = _check_signatures(key, heads, list(signed))
        if error is not None:
            return VerifyReport(count, current, error, positions=dict(heads))
    return VerifyReport(count, current, positions=dict(heads))


def _positions(text: str) -> dict[str, tuple[int, str]]:
    """Parse ``writer#wseq:hash,…`` (:attr:`VerifyReport.positions_text`)."""
    out: dict[str, tuple[int, str]] = {}
    for part in text.split(","):
        writer, _, rest = part.rpartition("#")
        number, _, digest = rest.partition(":")
        if not writer or not number.isdigit() or len(digest) != 64:
            raise InvalidRequest(f"not a head: {part!r} (expected writer#wseq:hash)")
        out[writer] = (int(number), digest)
    return out


def _check(
    record: AuditRecord, heads: Mapping[str, tuple[int, str]], last_seq: int | None
) -> str | None:
    """Why ``record`` is bad given what came before it, or None."""
    body = record.body
    if body.get("format") != FORMAT:
        return f"unknown format {body.get('format')!r}"
    if (body.get("seq"), body.get("writer"), body.get("wseq")) != (
        record.seq,
        record.writer,
        record.wseq,
    ):
        return "its position columns disagree with its hashed body (edited)"
    data = record.raw if record.raw is not None else canonical(body)
    if _digest(record.prev, data) != record.hash:
        return "hash mismatch: the record was edited"
    if record.index is not None:
        for column, value in record.index.items():
            if body.get(column) != value:
                return f"its {column} column disagrees with its hashed body (edited)"
    if last_seq is not None and record.seq <= last_seq:
        return f"seq {record.seq} does not follow {last_seq} (reordered)"
    wseq, prev = heads.get(record.writer, (0, GENESIS))
    if record.wseq != wseq + 1:
        if record.wseq <= wseq:
            return f"writer sequence goes back from #{wseq} (reordered or inserted)"
        return f"writer sequence jumps from #{wseq} (a record before it was deleted)"
    if record.prev != prev:
        return "does not link to its writer's previous record (inserted, or one was replaced)"
    return None


def _check_signatures(
    key: bytes, heads: Mapping[str, tuple[int, str]], signed: list[SignedHead]
) -> str | None:
    by_writer = {s.writer: s for s in signed}
    for writer, (wseq, digest) in sorted(heads.items()):
        head = by_writer.get(writer)
        if head is None or head.mac is None:
            return f"writer {writer}: no signed head (written without the key?)"
        if not hmac.compare_digest(head.mac, sign_head(key, head.writer, head.wseq, head.hash)):
            return f"writer {writer}: the signed head's MAC is invalid (wrong key, or forged)"
        if (head.wseq, head.hash) != (wseq, digest):
            if head.wseq > wseq:
                return (
                    f"writer {writer}: signed head #{head.wseq} is past the last record "
                    f"#{wseq} (the tail was truncated)"
                )
            return f"writer {writer}: records after the signed head #{head.wseq} (unsigned tail)"
    for writer in by_writer:
        if writer not in heads:
            return f"writer {writer}: signed, but none of its records remain (truncated)"
    return None
