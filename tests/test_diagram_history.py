"""Drawing history from plain data: one instance's path, a fleet's timeline (synthetic data)."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from statemachine import diagrams
from statemachine._diagram_dot import to_dot
from statemachine._diagram_export import export_lifecycle
from statemachine._diagram_history import path_view
from statemachine._diagram_mermaid import to_mermaid
from statemachine.errors import DiagramError
from statemachine.lifecycle import DEFAULT_LIFECYCLE as LC
from statemachine.states import TaskState as T
from statemachine.states import VmState as V
from tests.mermaid_grammar import parse_state_diagram

X = export_lifecycle(LC)
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
SVG = "{http://www.w3.org/2000/svg}"
NAIVE = dt.datetime(2025, 1, 2)  # deliberately without a time zone


def at(seconds: float) -> dt.datetime:
    """A time ``seconds`` after T0."""
    return T0 + dt.timedelta(seconds=seconds)


def point(vm: V, task: T | None, seconds: float) -> diagrams.PathPoint:
    """A path point from the enums (the audit log will hold their values)."""
    return diagrams.PathPoint(vm.value, None if task is None else task.value, at(seconds))


BUILD_STOP_FAIL = [
    point(V.BUILDING, T.SCHEDULING, 0),
    point(V.BUILDING, T.NETWORKING, 1),
    point(V.BUILDING, T.BLOCK_DEVICE_MAPPING, 2),
    point(V.BUILDING, T.SPAWNING, 3),
    point(V.ACTIVE, None, 20),
    point(V.ACTIVE, None, 25),  # a repeated record counts once
    point(V.ACTIVE, T.POWERING_OFF, 100),
    point(V.STOPPED, None, 130),
    point(V.STOPPED, T.RESIZE_PREP, 200),
    point(V.ERROR, None, 230),
]


def test_path_is_numbered_timed_and_ends_at_the_current_state() -> None:
    """Each step of the path is an edge 'n. +time'; the last state is marked current."""
    picture = path_view(X, BUILD_STOP_FAIL, instance="vm1")
    path = [i for i in picture.items if i.kind == "path"]
    assert [i.text for i in path] == [
        "1. +1 s",
        "2. +2 s",
        "3. +3 s",
        "4. +20 s",
        "5. +100 s",
        "6. +130 s",
        "7. +200 s",
        "8. +230 s",
    ]
    assert picture.node("error").highlight == "current"
    assert picture.node("active/powering-off").highlight == "visited"
    assert picture.node("paused").highlight == ""
    failures = [i for i in path if i.failure]
    assert [(i.source, i.dest) for i in failures] == [("stopped/resize_prep", "error")]


def test_a_step_the_lifecycle_lacks_is_called_out() -> None:
    """A jump the lifecycle has no transition for is labelled as such."""
    points = [point(V.ACTIVE, None, 0), point(V.SHELVED_OFFLOADED, None, 5)]
    (step,) = [i for i in path_view(X, points).items if i.kind == "path"]
    assert step.text == "1. +5 s (not in the lifecycle)"


def test_path_renders_as_mermaid_and_dot() -> None:
    """The path picture is valid Mermaid and DOT with the path highlighted."""
    picture = path_view(X, BUILD_STOP_FAIL)
    parsed = parse_state_diagram(to_mermaid(picture))
    assert parsed.classes["error"] == "current"
    assert "#0d47a1" in to_dot(picture)
    assert diagrams.instance_path_diagram(LC, BUILD_STOP_FAIL, "mermaid") == to_mermaid(picture)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([], "at least one"),
        ([point(V.ACTIVE, None, 5), point(V.STOPPED, None, 1)], "backwards"),
        (
            [point(V.ACTIVE, None, 0), diagrams.PathPoint("stopped", None, NAIVE)],
            "naive",
        ),
    ],
)
def test_bad_paths_are_clear_errors(points: list[diagrams.PathPoint], message: str) -> None:
    """No points, times going backwards, or mixed time zones raise DiagramError."""
    with pytest.raises(DiagramError, match=message):
        path_view(X, points)


def _intervals() -> list[diagrams.StateInterval]:
    return [
        diagrams.StateInterval("vm1", "building", "scheduling", at(0), at(3)),
        diagrams.StateInterval("vm1", "active", None, at(3), at(100)),
        diagrams.StateInterval("vm1", "active", "powering-off", at(100), at(130)),
        diagrams.StateInterval("vm1", "stopped", None, at(130)),
        diagrams.StateInterval("vm<2>", "building", "spawning", at(10), at(60)),
        diagrams.StateInterval("vm<2>", "error", None, at(60), at(200)),
    ]


def test_timeline_is_well_formed_svg_with_a_bar_per_interval() -> None:
    """One row per instance, one bar per interval, transient bars distinguishable."""
    svg = diagrams.timeline_svg(_intervals(), until=at(300))
    root = ET.fromstring(svg.encode("utf-8"))
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class") in ("stable", "transient")]
    assert len(bars) == 6
    transient = [b for b in bars if b.get("class") == "transient"]
    assert len(transient) == 3
    assert all(b.get("fill", "").startswith("url(#hatch-") for b in transient)
    names = {(t.text or "") for t in root.iter(f"{SVG}text")}
    assert {"vm1", "vm<2>"} <= names


def test_timeline_colours_by_vm_state_and_scales_time() -> None:
    """Bars of one vm_state share a colour, error is red, and widths follow durations."""
    root = ET.fromstring(diagrams.timeline_svg(_intervals(), until=at(300)).encode("utf-8"))
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "stable"]
    by_tip = {next(iter(b)).text or "": b for b in bars}
    active = next(b for tip, b in by_tip.items() if "vm1: active," in tip)
    stopped = next(b for tip, b in by_tip.items() if "vm1: stopped," in tip)
    error = next(b for tip, b in by_tip.items() if "error" in tip)
    assert error.get("fill") == "#d62728"
    assert active.get("fill") != stopped.get("fill")
    width = {k: float(b.get("width", "0")) for k, b in (("a", active), ("s", stopped))}
    assert width["a"] / width["s"] == pytest.approx(97 / 170, rel=1e-3)


def test_timeline_refuses_bad_input() -> None:
    """Empty input, an interval ending before it starts, or too many rows: DiagramError."""
    with pytest.raises(DiagramError, match="at least one"):
        diagrams.timeline_svg([])
    backwards = [diagrams.StateInterval("vm1", "active", None, at(10), at(5))]
    with pytest.raises(DiagramError, match="ends before it starts"):
        diagrams.timeline_svg(backwards)
    many = [
        diagrams.StateInterval(f"vm{i}", "active", None, at(0), at(1))
        for i in range(diagrams.MAX_TIMELINE_ROWS + 1)
    ]
    with pytest.raises(DiagramError, match="rows"):
        diagrams.timeline_svg(many)
