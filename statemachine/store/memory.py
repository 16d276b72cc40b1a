"""The in-memory store: the reference semantics of :class:`~statemachine.store.Store`.

Nothing survives the process, but everything else holds: compare-and-swap in the working set and
again when persisting, one all-or-nothing unit per :class:`Write`, a hash-chained audit log that
verifies like a durable one, an outbox, the request-id index. Audit records are sealed lazily
(when read): sealing is deterministic given their order, so the hot path only appends.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..audit import (
    AuditChain,
    AuditEntry,
    AuditRecord,
    SignedHead,
    VerifyReport,
    sign_head,
    verify_records,
)
from ..errors import Conflict, DuplicateRequest, InvalidRequest
from ..model import Instance
from . import RequestRecord, Write
from ._working import WorkingSet

if TYPE_CHECKING:
    from ..notify import Notification

__all__ = ["MemoryStore"]


class MemoryStore(WorkingSet):
    """A dict of records, a list of audit entries, an outbox list. Swaps cannot interleave:
    there is no await between a check and its write."""

    durable = False

    def __init__(self, *, hmac_key: bytes | None = None) -> None:
        super().__init__()
        self._entries: list[AuditEntry] = []
        self._sealed: list[AuditRecord] = []
        self._chain: AuditChain | None = None
        self._requests: dict[str, RequestRecord] = {}
        self._outbox: dict[str, tuple[int, Notification]] = {}
        self._outbox_seq = 0
        self._sequences: dict[str, int] = {}
        self._user_data: dict[str, str] = {}
        self._heartbeats: dict[str, dt.datetime] = {}
        self._meta: dict[str, str] = {}
        self._key = hmac_key
        self._generation = 0

    @property
    def generation(self) -> int:
        """How many times the store was opened."""
        return self._generation

    async def open(self, *, writer: str) -> None:
        """Start (or continue) the writer's chain; the records stay as they are."""
        if self._chain is None or self._chain.writer != writer:
            self._seal_pending()
            self._chain = AuditChain(writer)
        self._generation += 1

    async def close(self) -> None:
        """Nothing to release."""

    def __len__(self) -> int:
        return len(self._records)

    def load(self, records: list[Instance]) -> None:
        """Add records known to be new, all or none (``Engine.adopt``)."""
        clash = [r.uuid for r in records if r.uuid in self._records]
        if clash or len({r.uuid for r in records}) != len(records):
            raise Conflict(clash[0] if clash else "batch", {"exists": False}, {"exists": True})
        for record in records:
            self._records[record.uuid] = record

    async def persist(
        self, writes: Sequence[Write], *, sent: Sequence[str] = ()
    ) -> list[Conflict | None]:
        if self._chain is None:
            raise InvalidRequest("the store is not open")
        results: list[Conflict | None] = []
        for write in writes:
            try:
                self._check(write)
            except Conflict as exc:
                results.append(exc)
                self._unstage(write)
                continue
            if write.instance is not None:
                self._records[write.instance.uuid] = write.instance
                if write.user_data is not None:
                    self._user_data[write.instance.uuid] = write.user_data
            if write.request is not None:
                self._requests[write.request.request_id] = write.request
            self._entries.extend(write.audit)
            for n in write.notifications:
                self._outbox_seq += 1
                self._outbox[n.message_id] = (self._outbox_seq, n)
                self._sequences[n.instance_uuid] = n.sequence
            results.append(None)
        for message_id in sent:
            self._outbox.pop(message_id, None)
        return results

    def _check(self, write: Write) -> None:
        """The compare-and-swap a durable store does in storage, against the working set: a
        staged write finds its own record there; an unstaged one must find the expected one."""
        if write.request is not None and write.request.request_id in self._requests:
            raise DuplicateRequest(write.request.request_id)
        new = write.instance
        if new is None:
            return
        current = self._records.get(new.uuid)
        if current is new:
            return
        expected = write.expected
        if expected is None:
            if current is not None:
                raise Conflict(new.uuid, {"exists": False}, {"exists": True})
            return
        if current is None or (current.version, current.task_state) != (
            expected.version,
            expected.task_state,
        ):
            raise Conflict(
                new.uuid,
                {"version": expected.version},
                {"version": current.version if current else None},
            )

    def _unstage(self, write: Write) -> None:
        """A unit failed after its record was staged: the working set goes back to the stored
        record, as a durable store reloads it."""
        new = write.instance
        if new is None or self._records.get(new.uuid) is not new:
            return
        if write.expected is None:
            del self._records[new.uuid]
        else:
            self._records[new.uuid] = write.expected

    def _seal_pending(self) -> None:
        chain = self._chain
        if chain is None:
            return
        for entry in self._entries:
            record, _ = chain.seal(entry, len(self._sealed) + 1)
            self._sealed.append(record)
        self._entries.clear()

    async def read_audit(
        self,
        *,
        instance: str | None = None,
        action_id: str | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        self._seal_pending()
        out: list[AuditRecord] = []
        for record in self._sealed[after:]:
            if instance is not None and record.get("instance") != instance:
                continue
            if action_id is not None and record.get("action_id") != action_id:
                continue
            out.append(record)
            if limit is not None and len(out) >= limit:
                break
        return out

    async def verify(self, *, head: str | None = None, key: bytes | None = None) -> VerifyReport:
        self._seal_pending()
        signed = []
        if self._key is not None:
            last: dict[str, AuditRecord] = {r.writer: r for r in self._sealed}
            signed = [
                SignedHead(r.writer, r.wseq, r.hash, sign_head(self._key, r.writer, r.wseq, r.hash))
                for r in last.values()
            ]
        return verify_records(self._sealed, head=head, key=key, signed=signed)

    async def find_request(self, request_id: str) -> RequestRecord | None:
        return self._requests.get(request_id)

    async def unsent(self, limit: int, *, after: int = 0) -> list[tuple[int, Notification]]:
        return [row for row in self._outbox.values() if row[0] > after][:limit]

    def last_sequences(self) -> dict[str, int]:
        return dict(self._sequences)

    def user_data(self, uuid: str) -> str | None:
        return self._user_data.get(uuid)

    async def refresh(self, uuid: str) -> Instance:
        return self.get(uuid)  # the working set is the storage

    async def heartbeat(self, host: str, at: dt.datetime) -> None:
        self._heartbeats[host] = at

    async def services(self) -> dict[str, dt.datetime]:
        return dict(self._heartbeats)

    async def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value
