"""Reading the audit log in bounded pages, and the state histories the history diagrams draw.

The audit log is the one record of what instances went through (see :mod:`statemachine.audit`),
so an instance's path and a fleet's timeline are views of it, never a second table. Both read
the log in pages of :data:`AUDIT_PAGE` records and keep only what they will draw, so memory
stays bounded however long the log: a path keeps at most :data:`MAX_PATH_POINTS` states (the
most recent), a timeline at most ``instances`` rows and :data:`MAX_TIMELINE_INTERVALS` bars.

Only a record's ``after`` snapshot moves an instance (refusals and preemptions carry none), and a
record that leaves (vm_state, task_state) as it was (a power-state update, a lock) is not a new
position: the diagrams draw lifecycle positions, not every record.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs

from ._diagram_history import (
    MAX_PATH_POINTS,
    MAX_TIMELINE_INTERVALS,
    MAX_TIMELINE_ROWS,
    PathPoint,
    StateInterval,
)
from .audit import AuditRecord
from .errors import DiagramError, InvalidRequest
from .model import Instance
from .store import Store

__all__ = [
    "AUDIT_PAGE",
    "AuditPath",
    "AuditTimeline",
    "audit_pages",
    "path_from_audit",
    "timeline_from_audit",
]

AUDIT_PAGE = 5000
"""Records read per query: a page's memory (a few MB) is what a reader holds at once."""

Position = tuple[str, str | None]
"""(vm_state, task_state): what the diagrams draw an instance at."""


async def audit_pages(
    store: Store, *, instance: str | None = None, page: int = AUDIT_PAGE
) -> AsyncIterator[list[AuditRecord]]:
    """The audit log (or one instance's records), in ``seq`` order, ``page`` records at a time.

    Each page is a query of its own that starts after the last ``seq`` seen, so a reader holds
    one page at a time and an engine appending meanwhile is read up to where it got.

    Raises:
        InvalidRequest: ``page`` is less than 1.
        StoreError: a query failed.
    """
    if page < 1:
        raise InvalidRequest("an audit page holds at least one record")
    after = 0
    while True:
        records = await store.read_audit(instance=instance, after=after, limit=page)
        if not records:
            return
        yield records
        after = records[-1].seq


def _position(record: AuditRecord) -> Position | None:
    """Where the record left its instance, or None when it changed nothing."""
    after: Mapping[str, Any] | None = record.get("after")
    if not after:
        return None
    return str(after["vm_state"]), after.get("task_state")


def _when(record: AuditRecord) -> dt.datetime:
    text = record.get("time")
    try:
        when = dt.datetime.fromisoformat(str(text))
    except ValueError:
        raise DiagramError(f"audit record seq={record.seq} has no valid time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


# -- one instance's path ----------------------------------------------------------------------


@attrs.frozen
class AuditPath:
    """The states one instance went through, oldest first, as its audit records tell.

    ``total`` counts every position in its history; when it is more than ``points`` holds, the
    oldest were left out (``cut``) and the path starts at the first one kept.
    """

    points: tuple[PathPoint, ...]
    total: int

    @property
    def cut(self) -> bool:
        """Whether older states were left out to keep the path bounded."""
        return self.total > len(self.points)


async def path_from_audit(store: Store, uuid: str, *, limit: int = MAX_PATH_POINTS) -> AuditPath:
    """Read instance ``uuid``'s path from the audit log: each record's ``after`` state, in order,
    repeats collapsed, at most the last ``limit`` of them.

    Raises:
        DiagramError: the log holds no state of the instance, or a record has no valid time.
        InvalidRequest: ``limit`` is not between 1 and :data:`MAX_PATH_POINTS`.
        StoreError: the log cannot be read.
    """
    if not 1 <= limit <= MAX_PATH_POINTS:
        raise InvalidRequest(f"a path keeps between 1 and {MAX_PATH_POINTS} states")
    kept: collections.deque[PathPoint] = collections.deque(maxlen=limit)
    total, last = 0, None
    async for page in audit_pages(store, instance=uuid):
        for record in page:
            position = _position(record)
            if position is None or position == last:
                continue
            kept.append(PathPoint(position[0], position[1], _when(record)))
            total, last = total + 1, position
    if not kept:
        raise DiagramError(f"the audit log holds no state of instance {uuid}")
    return AuditPath(tuple(kept), total)


# -- a fleet's timeline -----------------------------------------------------------------------


@attrs.frozen
class AuditTimeline:
    """The intervals a timeline draws, and what was left out to keep it bounded.

    ``intervals`` are in row order (instances by creation), each row's oldest first; the last
    interval of a row is open (``end`` None) and ends at ``until``: the log's last record time,
    ``--until`` if earlier, or ``cut_at``.
    """

    intervals: tuple[StateInterval, ...]
    until: dt.datetime
    shown: int
    """Instances selected (the first ``instances`` by creation)."""
    total: int
    """Instances in the store."""
    cut_at: dt.datetime | None = None
    """Where reading stopped because the bars reached :data:`MAX_TIMELINE_INTERVALS`."""

    @property
    def rows(self) -> int:
        """Instances with at least one bar (the timeline's rows)."""
        return len({i.instance for i in self.intervals})


@attrs.define
class _Row:
    """One selected instance while the log streams by: its label and its open interval."""

    index: int
    label: str
    position: Position | None = None
    start: dt.datetime | None = None


def _labels(store: Store, instances: int) -> tuple[dict[str, _Row], int]:
    """The first ``instances`` instances by creation (the store's insertion order), labelled by
    name, with the uuid's start added where names repeat (two runs on one store)."""
    chosen: list[Instance] = []
    total = 0
    for inst in store.all():
        total += 1
        if len(chosen) < instances:
            chosen.append(inst)
    counts = collections.Counter(i.name for i in chosen)
    rows = {
        inst.uuid: _Row(n, inst.name if counts[inst.name] < 2 else f"{inst.name} ({inst.uuid[:8]})")
        for n, inst in enumerate(chosen)
    }
    return rows, total


async def timeline_from_audit(
    store: Store,
    *,
    instances: int = 50,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    max_intervals: int = MAX_TIMELINE_INTERVALS,
) -> AuditTimeline:
    """Read a timeline from the whole audit log, one pass in pages.

    Each record's ``after`` state starts an interval that ends at the instance's next record
    that moves it; the last stays open until the log's last record time. Only the first
    ``instances`` instances by creation get rows. ``since``/``until`` clip the intervals to a
    window (the state an instance was in at ``since`` starts its row there). When the bars
    would exceed ``max_intervals``, reading stops at that record's time (``cut_at``).

    Raises:
        InvalidRequest: ``instances`` not between 1 and :data:`MAX_TIMELINE_ROWS`,
            ``max_intervals`` not between 1 and :data:`MAX_TIMELINE_INTERVALS`, or ``since``
            not before ``until``.
        DiagramError: nothing to draw in the window, an instance's record times go backwards,
            or a record has no valid time.
        StoreError: the log cannot be read.
    """
    if not 1 <= instances <= MAX_TIMELINE_ROWS:
        raise InvalidRequest(f"a timeline draws between 1 and {MAX_TIMELINE_ROWS} instances")
    if not 1 <= max_intervals <= MAX_TIMELINE_INTERVALS:
        raise InvalidRequest(f"a timeline draws between 1 and {MAX_TIMELINE_INTERVALS} bars")
    since, until = _aware(since), _aware(until)
    if since is not None and until is not None and since >= until:
        raise InvalidRequest(f"since {since.isoformat()} is not before until {until.isoformat()}")
    rows, total = _labels(store, instances)
    bars: list[tuple[int, StateInterval]] = []
    opened = 0  # rows with a position: each will add one bar when it ends
    last: dt.datetime | None = None
    cut_at: dt.datetime | None = None
    beyond = False  # the log goes on past ``until``: open intervals last until then

    def close(row: _Row, end: dt.datetime, *, still: bool = False) -> None:
        """End the row's interval at ``end`` (``still``: it is open, drawn to the end)."""
        assert row.position is not None
        assert row.start is not None
        start = row.start if since is None else max(row.start, since)
        if since is not None and end <= since:
            return  # wholly before the window
        bars.append(
            (row.index, StateInterval(row.label, *row.position, start, None if still else end))
        )

    async for page in audit_pages(store):
        for record in page:
            when = _when(record)
            if until is not None and when > until:
                beyond = True  # after the window: open intervals end at ``until``
                continue
            row = rows.get(str(record.get("instance")))
            position = _position(record)
            if row is not None and position is not None and position != row.position:
                if row.start is not None and when < row.start:
                    raise DiagramError(
                        f"audit record seq={record.seq}: {row.label}'s time goes back "
                        f"from {row.start.isoformat()} to {when.isoformat()}"
                    )
                if len(bars) + opened + 1 > max_intervals:
                    cut_at = when
                    break
                if row.position is None:
                    opened += 1
                else:
                    close(row, when)
                row.position, row.start = position, when
            last = when if last is None else max(last, when)
        if cut_at is not None:
            break
    end = cut_at or (until if beyond else last)
    if end is None:
        raise DiagramError("the audit log holds no record to draw")
    for row in rows.values():
        if row.position is not None:
            close(row, end, still=True)
    if not bars:
        window = f" after {since.isoformat()}" if since is not None else ""
        raise DiagramError(f"the audit log holds no state of the selected instances{window}")
    bars.sort(key=lambda pair: (pair[0], pair[1].start))
    return AuditTimeline(
        tuple(bar for _, bar in bars), until=end, shown=len(rows), total=total, cut_at=cut_at
    )


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """Times without a zone are UTC, as the audit log's are."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)
