"""The ``ism`` commands that draw history from a store's audit log.

``ism diagram --db DB --instance NAME`` draws the lifecycle with one instance's path over it and
its current state marked; ``ism timeline --db DB`` draws a fleet's states over time as SVG. Both
open the store read-only (beside a running engine, like ``ism status``), read the audit log in
pages (:mod:`statemachine._audit_read`) and fail with one line and exit 1 on an unknown
instance, an unreadable store or nothing to draw, like the other reading commands.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ._audit_read import AuditPath, AuditTimeline, path_from_audit, timeline_from_audit
from ._cli_store import find_instance, read_store
from ._diagram_history import MAX_PATH_POINTS, MAX_TIMELINE_ROWS
from .errors import DiagramError

if TYPE_CHECKING:
    from .diagrams import DiagramFormat
    from .model import Instance
    from .store import Store

__all__ = ["DEFAULT_TIMELINE_ROWS", "add_parsers", "instance_diagram", "timeline"]

DEFAULT_TIMELINE_ROWS = 50
"""Instances a timeline draws unless told (``--instances``): readable on one screen."""


def _rows(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= MAX_TIMELINE_ROWS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_TIMELINE_ROWS}")
    return value


def _instant(text: str) -> dt.datetime:
    """An ISO 8601 time (``2026-01-01T00:10:00Z``); without a zone it is UTC, as the log's."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-01-01T00:10:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``timeline`` (``diagram --db --instance`` is an option of ``diagram``)."""
    tl = sub.add_parser(
        "timeline", help="an SVG timeline of a store's instances (rows) over time, by state"
    )
    tl.add_argument("--db", required=True, metavar="DB", help="the store whose audit log to draw")
    tl.add_argument("--out", type=Path, metavar="F.svg", help="write here, not to stdout")
    tl.add_argument(
        "--instances",
        type=_rows,
        default=DEFAULT_TIMELINE_ROWS,
        metavar="N",
        help=f"the first N instances by creation (default {DEFAULT_TIMELINE_ROWS}, "
        f"at most {MAX_TIMELINE_ROWS})",
    )
    tl.add_argument("--since", type=_instant, metavar="ISO", help="draw from this time on")
    tl.add_argument("--until", type=_instant, metavar="ISO", help="draw up to this time")


def _write(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DiagramError(f"cannot write {out}: {exc.strerror or exc}") from None


def instance_diagram(args: argparse.Namespace, fmt: DiagramFormat) -> int:
    """``ism diagram --db DB --instance NAME``: the overview with the instance's audited path.

    Raises:
        DiagramError: ``--db`` without ``--instance`` (or the reverse), no state of the instance
            in the log, or Graphviz failing (SVG).
        InvalidRequest: no instance of that name or uuid, or several live ones share the name.
        StoreError: the store cannot be read.
    """
    from .diagrams import instance_path_diagram
    from .lifecycle import DEFAULT_LIFECYCLE

    if args.db is None or args.instance is None:
        raise DiagramError("--instance NAME and --db DB go together")

    async def read(store: Store) -> tuple[Instance, AuditPath]:
        inst = find_instance(store, args.instance)
        return inst, await path_from_audit(store, inst.uuid, limit=MAX_PATH_POINTS)

    inst, path = read_store(args.db, read)
    who = f"{inst.name} ({inst.uuid})"
    _write(instance_path_diagram(DEFAULT_LIFECYCLE, path.points, fmt, instance=who), args.out)
    if path.cut:
        print(
            f"ism diagram: {who} went through {path.total} states; the path shows the last "
            f"{MAX_PATH_POINTS}",
            file=sys.stderr,
        )
    return 0


def timeline(args: argparse.Namespace) -> int:
    """``ism timeline --db DB``: the first N instances' states over time, as SVG.

    Raises:
        InvalidRequest: ``--since`` not before ``--until``.
        DiagramError: nothing to draw in the window, or times going backwards in the log.
        StoreError: the store cannot be read.
    """
    from .diagrams import timeline_svg

    found: AuditTimeline = read_store(
        args.db,
        lambda store: timeline_from_audit(
            store, instances=args.instances, since=args.since, until=args.until
        ),
    )
    title = f"Instance states in {args.db}: " + (
        f"the first {found.shown} of {found.total} instances (by creation)"
        if found.shown < found.total
        else f"{found.shown} instances"
    )
    if found.cut_at is not None:
        title += f", cut at {found.cut_at.isoformat()}"
    _write(timeline_svg(found.intervals, until=found.until, title=title), args.out)
    notes = _notes(found)
    if args.out is not None:
        print(
            f"ism timeline: {found.rows} rows, {len(found.intervals)} intervals up to "
            f"{found.until.isoformat()}; wrote {args.out}"
        )
    for note in notes:
        print(f"ism timeline: {note}", file=sys.stdout if args.out is not None else sys.stderr)
    return 0


def _notes(found: AuditTimeline) -> list[str]:
    """What was left out, said where a reader sees it."""
    notes = []
    if found.shown < found.total:
        notes.append(
            f"showing the first {found.shown} of {found.total} instances by creation "
            f"(--instances N, at most {MAX_TIMELINE_ROWS})"
        )
    if found.cut_at is not None:
        notes.append(
            f"stopped at {found.cut_at.isoformat()}: {len(found.intervals)} intervals is the "
            "most one timeline draws (narrow it with --since/--until or --instances)"
        )
    return notes
