"""Drawing what instances went through: one instance's path, and a fleet's timeline.

Both take plain data — the ordered states of one instance, or per-instance state intervals —
and never read a store themselves: whatever holds the history (the audit log, a scenario run,
a test) turns its records into :class:`PathPoint` or :class:`StateInterval` values and calls
:func:`path_view` or :func:`timeline_svg`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

import attrs

from ._diagram_export import ExportedState, LifecycleExport
from ._diagram_picture import Highlight, Item, Node, NodeKind, Picture, format_seconds, overview
from .errors import DiagramError
from .states import VmState

__all__ = [
    "MAX_PATH_POINTS",
    "MAX_TIMELINE_INTERVALS",
    "MAX_TIMELINE_ROWS",
    "PathPoint",
    "StateInterval",
    "path_view",
    "timeline_svg",
]

MAX_PATH_POINTS = 10_000
"""The most records one path diagram takes (a longer history is cut by the caller)."""
MAX_TIMELINE_ROWS = 500
"""The most instances one timeline draws (beyond that it is unreadable anyway)."""
MAX_TIMELINE_INTERVALS = 100_000
"""The most bars one timeline draws (about 10 MB of SVG)."""


@attrs.frozen
class PathPoint:
    """One position an instance was in, from ``at`` on (an audit record's new state)."""

    vm_state: str
    task_state: str | None
    at: dt.datetime


@attrs.frozen
class StateInterval:
    """An instance was in (``vm_state``, ``task_state``) from ``start`` to ``end``.

    ``end=None`` means it still is (the timeline ends it at its ``until``).
    """

    instance: str
    vm_state: str
    task_state: str | None
    start: dt.datetime
    end: dt.datetime | None = None


# -- one instance's path ----------------------------------------------------------------------


def path_view(x: LifecycleExport, points: Sequence[PathPoint], *, instance: str = "") -> Picture:
    """The overview with an instance's path drawn over it and its current state marked.

    Each step of the path is an edge numbered in order, labelled with the time since the first
    point; a step the lifecycle has no transition for is labelled so (a sign the history and
    the lifecycle disagree). Transient steps the instance passed through are added as nodes in
    their vm_state's cluster. Repeated points (same state twice) count once.

    Raises:
        DiagramError: no points, more than :data:`MAX_PATH_POINTS`, or times that go backwards
            or mix naive and aware datetimes.
    """
    if not points:
        raise DiagramError("an instance path needs at least one state")
    if len(points) > MAX_PATH_POINTS:
        raise DiagramError(f"{len(points)} states is more than {MAX_PATH_POINTS} for one path")
    _check_order([p.at for p in points])
    base = overview(x)
    by_pair = {(s.vm_state, s.task_state): s for s in x.states}
    vm_nodes = {n.id for n in base.nodes if n.kind == "stable"}
    names: list[str] = []
    times: list[dt.datetime] = []
    extra: dict[str, Node] = {}
    for p in points:
        state = by_pair.get((p.vm_state, p.task_state))
        if state is not None:
            name = state.name
        elif p.task_state is None and p.vm_state in vm_nodes:
            name = p.vm_state  # building: a vm_state without an idle state
        else:
            name = _unknown_name(p)
        if name not in vm_nodes:
            extra.setdefault(name, _path_node(state, p))
        if not names or names[-1] != name:
            names.append(name)
            times.append(p.at)
    # a reset leads from anywhere: it explains a step only when nothing else does, or it
    # would hide every failure into error
    kinds: dict[tuple[str, str], set[str]] = {}
    reset_kinds: dict[tuple[str, str], set[str]] = {}
    resets = {a.name for a in x.actions if a.immediate}
    for t in x.transitions:
        by = reset_kinds if t.action in resets else kinds
        by.setdefault((t.source, t.dest), set()).add(t.kind)
    stable_steps = {(i.source, i.dest) for i in base.items}
    items = list(base.items)
    for i in range(1, len(names)):
        src, dst = names[i - 1], names[i]
        found = kinds.get((src, dst)) or reset_kinds.get((src, dst), set())
        text = f"{i}. +{format_seconds(round((times[i] - times[0]).total_seconds()))}"
        if not found and (src, dst) not in stable_steps:
            text += " (not in the lifecycle)"
        failure = found == {"fail"}
        items.append(Item(src, dst, "path", failure, f"path:{i}", "", text, highlight=True))
    visited = set(names)
    nodes = []
    for node in (*base.nodes, *extra.values()):
        mark: Highlight = (
            "current" if node.id == names[-1] else "visited" if node.id in visited else ""
        )
        nodes.append(attrs.evolve(node, highlight=mark))
    who = f" of {instance}" if instance else ""
    return Picture(
        title=f"Path{who}: {len(names)} states from {times[0].isoformat()} (lifecycle {x.version})",
        nodes=tuple(nodes),
        items=tuple(items),
        notes=(f"now: {names[-1]}",),
        mode="path",
    )


def _unknown_name(p: PathPoint) -> str:
    return p.vm_state if p.task_state is None else f"{p.vm_state}/{p.task_state}"


def _path_node(state: ExportedState | None, p: PathPoint) -> Node:
    if state is not None:
        assert state.task_state is not None
        return Node(state.name, state.task_state, "transient", state.error, state.vm_state)
    label = f"{p.task_state or p.vm_state} (not in the lifecycle)"
    kind: NodeKind = "stable" if p.task_state is None else "transient"
    return Node(_unknown_name(p), label, kind, False, p.vm_state)


def _check_order(times: Sequence[dt.datetime]) -> None:
    try:
        backwards = any(b < a for a, b in itertools.pairwise(times))
    except TypeError:
        raise DiagramError("times mix naive and timezone-aware datetimes") from None
    if backwards:
        raise DiagramError("the states' times go backwards")


# -- a fleet's timeline -------------------------------------------------------------------------

_PALETTE = (
    "#4e79a7", "#59a14f", "#9c755f", "#f28e2b", "#edc948", "#76b7b2",
    "#b07aa1", "#ff9da7", "#bab0ac", "#8cd17d", "#86bcb6", "#d4a6c8",
)  # fmt: skip
_ERROR = "#d62728"
_UNKNOWN = "#7f7f7f"
_ROW = 18
_BAR = 12
_PLOT = 960


def _colour(vm_state: str) -> str:
    """A fixed colour per vm_state (enum order), red for the error state."""
    for i, member in enumerate(VmState):
        if member.value == vm_state:
            return _ERROR if member is VmState.ERROR else _PALETTE[i % len(_PALETTE)]
    return _UNKNOWN


def _ticks(span: float) -> list[float]:
    """Round tick positions (1, 2 or 5 times a power of ten seconds), about eight in all."""
    if span <= 0:
        return [0.0]
    raw = span / 8
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(int(span // step) + 1)]


def timeline_svg(
    intervals: Sequence[StateInterval],
    *,
    until: dt.datetime | None = None,
    title: str = "Instance states over time",
) -> str:
    """An SVG timeline: one row per instance, time across, a bar per state it was in.

    Bars are coloured by vm_state; transient steps (a task_state set) are drawn as thinner,
    hatched bars of their vm_state's colour, so a reviewer sees both how long an instance was
    ``active`` and how long it spent ``resize_migrating`` inside it. Each bar has a tooltip
    with the state and its times. Rows keep the order instances first appear in.

    Raises:
        DiagramError: no intervals, more than :data:`MAX_TIMELINE_ROWS` instances or
            :data:`MAX_TIMELINE_INTERVALS` intervals, an interval that ends before it starts,
            or naive and aware datetimes mixed.
    """
    if not intervals:
        raise DiagramError("a timeline needs at least one state interval")
    if len(intervals) > MAX_TIMELINE_INTERVALS:
        raise DiagramError(f"{len(intervals)} intervals is more than {MAX_TIMELINE_INTERVALS}")
    rows: dict[str, None] = {}
    for interval in intervals:
        rows.setdefault(interval.instance, None)
    if len(rows) > MAX_TIMELINE_ROWS:
        raise DiagramError(f"{len(rows)} instances is more than {MAX_TIMELINE_ROWS} rows")
    try:
        t0 = min(i.start for i in intervals)
        ends = [i.end or until or i.start for i in intervals]
        t1 = max([*ends, *(i.start for i in intervals)])
        spans = [
            ((i.start - t0).total_seconds(), (end - t0).total_seconds())
            for i, end in zip(intervals, ends, strict=True)
        ]
    except TypeError:
        raise DiagramError("times mix naive and timezone-aware datetimes") from None
    for interval, (a, b) in zip(intervals, spans, strict=True):
        if b < a:
            raise DiagramError(f"{interval.instance}: a state ends before it starts")
    total = max((t1 - t0).total_seconds(), 1e-9)
    name_width = min(220, 12 + 7 * max(len(r) for r in rows))
    left, top = name_width, 44
    width = left + _PLOT + 20
    states = sorted({i.vm_state for i in intervals}, key=_state_order)
    legend = _legend_places(states, left, width, top + _ROW * len(rows) + 32)
    height = legend[-1][2] + 28
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" '
        'font-size="11">',
        f"<title>{escape(title)}</title>",
        "<defs>",
    ]
    for state in states:
        out.append(
            f'<pattern id="{_pattern_id(state)}" width="6" height="6" '
            'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
            f'<rect width="6" height="6" fill="{_colour(state)}" fill-opacity="0.35"/>'
            f'<line x1="0" y1="0" x2="0" y2="6" stroke="{_colour(state)}" stroke-width="3"/>'
            "</pattern>"
        )
    out.append("</defs>")
    out.append(f'<text x="{left}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>')
    out.append(
        f'<text x="{left}" y="34" fill="#555">from {escape(t0.isoformat())}, '
        f"{format_seconds(round(total, 3))} across</text>"
    )
    row_of = {name: i for i, name in enumerate(rows)}
    for name, i in row_of.items():
        y = top + i * _ROW
        if i % 2:
            out.append(f'<rect x="0" y="{y}" width="{width}" height="{_ROW}" fill="#f5f5f5"/>')
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{escape(name)}</text>')
    for tick in _ticks(total):
        x = left + _PLOT * tick / total
        bottom = top + _ROW * len(rows)
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>'
            f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" fill="#555">'
            f"+{format_seconds(round(tick, 3))}</text>"
        )
    for interval, (a, b) in zip(intervals, spans, strict=True):
        y = top + row_of[interval.instance] * _ROW
        x = left + _PLOT * a / total
        w = max(_PLOT * (b - a) / total, 0.8)
        state = interval.vm_state
        label = state if interval.task_state is None else f"{state}/{interval.task_state}"
        tip = f"{interval.instance}: {label}, +{a:g} s to +{b:g} s"
        if interval.task_state is None:
            shape = (
                f'<rect x="{x:.2f}" y="{y + (_ROW - _BAR) / 2}" width="{w:.2f}" height="{_BAR}" '
                f'fill="{_colour(state)}" class="stable">'
            )
        else:
            shape = (
                f'<rect x="{x:.2f}" y="{y + (_ROW - _BAR / 2) / 2}" width="{w:.2f}" '
                f'height="{_BAR / 2}" fill="url(#{_pattern_id(state)})" '
                f'stroke="{_colour(state)}" stroke-width="0.6" class="transient">'
            )
        out.append(f"{shape}<title>{escape(tip)}</title></rect>")
    for state, x, y in legend[:-1]:
        out.append(
            f'<rect x="{x}" y="{y}" width="14" height="10" fill="{_colour(state)}"/>'
            f'<text x="{x + 18}" y="{y + 9}">{escape(state)}</text>'
        )
    _, x, y = legend[-1]
    out.append(
        f'<rect x="{x}" y="{y + 2}" width="14" height="6" fill="#ddd" stroke="#999" '
        'stroke-dasharray="2 1"/>'
        f'<text x="{x + 18}" y="{y + 9}">{_TRANSIENT_KEY}</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


_TRANSIENT_KEY = "thin, hatched: a transient step (task_state)"


def _legend_places(
    states: Sequence[str], left: int, width: int, top: int
) -> list[tuple[str, int, int]]:
    """Where each legend entry goes (the transient key last), wrapping to a new line rather
    than running past the picture's right edge."""
    places, x, y = [], left, top
    for text in (*states, _TRANSIENT_KEY):
        step = 26 + 7 * len(text)
        if x > left and x + step > width:
            x, y = left, y + 16
        places.append((text, x, y))
        x += step
    return places


def _state_order(vm_state: str) -> tuple[int, str]:
    order = [m.value for m in VmState]
    return (order.index(vm_state) if vm_state in order else len(order), vm_state)


def _pattern_id(vm_state: str) -> str:
    return "hatch-" + "".join(c if c.isalnum() else "_" for c in vm_state)
