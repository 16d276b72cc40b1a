"""Diagrams: the export, the views, Mermaid and SVG output, and the committed diagrams/."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import attrs
import pytest

from statemachine import diagrams
from statemachine._diagram_dot import render_svg, source_hash, svg_source_hash, to_dot
from statemachine._diagram_export import EXPORT_FORMAT, LifecycleExport, export_lifecycle
from statemachine._diagram_mermaid import mermaid_ids, to_mermaid
from statemachine._diagram_picture import ANY, START, action_view, overview, reachable_view
from statemachine._schema import state_name
from statemachine.cli import main
from statemachine.errors import DiagramError
from statemachine.lifecycle import DEFAULT_LIFECYCLE as LC
from statemachine.states import TaskState, VmState
from tests.mermaid_grammar import MermaidError, parse_state_diagram
from tests.support import require_binary

ROOT = Path(__file__).parent.parent
X = export_lifecycle(LC)
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def dot() -> str:
    """Graphviz's dot, required in CI."""
    return require_binary("dot", "Graphviz draws the SVG diagrams")


# -- the export ---------------------------------------------------------------------------------


def test_export_round_trips_through_json() -> None:
    """Reading the JSON an export wrote gives the same export back."""
    assert LifecycleExport.from_json(X.to_json()) == X


def test_export_is_deterministic() -> None:
    """Exporting the same table twice gives byte-identical JSON."""
    assert export_lifecycle(LC).to_json() == X.to_json()


def test_export_holds_everything_the_table_derives() -> None:
    """States with their kind, every transition, guards, deadlines, timers and power sync."""
    data = json.loads(X.to_json())
    assert data["format"] == EXPORT_FORMAT
    assert data["version"] == LC.version
    assert {s["name"] for s in data["states"]} == {state_name(s) for s in LC.states()}
    kinds = {s["name"]: s["task_state"] is None for s in data["states"]}
    assert kinds["active"]
    assert not kinds["active/powering-off"]
    exported = {(t["trigger"], t["source"], t["dest"]) for t in data["transitions"]}
    derived = {(t.trigger, state_name(t.source), state_name(t.dest)) for t in LC.transitions()}
    assert exported == derived
    stop = next(a for a in data["actions"] if a["name"] == "stop")
    assert stop["steps"][0]["deadline"] == LC.action("stop").steps[0].deadline
    assert stop["guard"]["vm_states"] == sorted(s.value for s in LC.action("stop").vm_states or ())
    assert [t["option"] for t in data["timed"]] == [t.option for t in LC.timed]
    assert len(data["power_sync"]) == len(LC.power_sync)
    active_stop = [r for r in data["power_sync"] if r["runs"] == "stop"]
    assert ["active", "stopped"] in active_stop[0]["edges"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ('{"format": "other/9"}', "is not"),
        (json.dumps({"format": EXPORT_FORMAT, "version": "1"}), "missing 'initial'"),
    ],
)
def test_a_bad_export_is_a_clear_error(text: str, message: str) -> None:
    """An unreadable export raises DiagramError naming the problem."""
    with pytest.raises(DiagramError, match=message):
        LifecycleExport.from_json(text, origin="f.json")


def test_a_wrongly_typed_field_names_its_path() -> None:
    """A field of the wrong type is named with its place in the file."""
    data = json.loads(X.to_json())
    data["actions"][3]["steps"][0]["deadline"] = "soon"
    with pytest.raises(DiagramError, match=r"actions\[3\]\.steps\[0\]\.deadline"):
        LifecycleExport.from_json(json.dumps(data))


# -- the views ----------------------------------------------------------------------------------


def test_overview_has_every_vm_state_and_the_legend_kinds() -> None:
    """The overview draws each vm_state, failures into error, timers and hypervisor events."""
    picture = overview(X)
    assert {n.id for n in picture.nodes if n.kind == "stable"} == {v.value for v in VmState}
    edges = picture.edges()
    failed = [e for e in edges if e.failure and e.kind == "action" and e.dest == "error"]
    assert failed
    assert all(e.label.startswith("failed: ") for e in failed)
    timed = {e.label for e in edges if e.kind == "timed"}
    assert {f"after {t.option}" for t in LC.timed} == timed
    power = [e for e in edges if e.kind == "power"]
    assert any(e.source == "active" and e.dest == "stopped" for e in power)
    assert all(e.label.startswith("hypervisor: ") for e in power)


def test_actions_allowed_anywhere_start_from_one_node() -> None:
    """Delete is drawn once from 'any existing state', not once per state."""
    edges = overview(X).edges()
    deleting = [e for e in edges if e.dest == "deleted" and not e.failure and e.kind == "action"]
    assert [e.source for e in deleting if "delete [preempts]" in e.texts] == [ANY]


def test_guards_appear_only_where_not_the_default() -> None:
    """Non-default guards are on labels; a plain action has none."""
    texts = {t for e in overview(X).edges() for t in e.texts}
    assert "pause" in texts
    assert any(t.startswith("evacuate [admin, takes over") for t in texts)


def test_action_view_shows_every_step_with_call_and_deadline() -> None:
    """resize's view has each (vm_state, task_state) with its driver call and deadline."""
    picture = action_view(X, "resize")
    resize = LC.action("resize")
    for vm in resize.allowed_vm_states():
        for step in resize.steps:
            assert step.task_state is not None
            node = picture.node(state_name((vm, step.task_state)))
            assert node.kind == "transient"
            assert node.group == vm.value
            assert any(str(step.call or "—") in d for d in node.detail)
    assert picture.node("resized").kind == "stable"
    assert any(e.failure and e.dest == "error" for e in picture.edges())


def test_action_view_of_create_starts_at_the_initial_pseudo_state() -> None:
    """create has no source state: its view starts at [*] and shows the build timeout."""
    picture = action_view(X, "create")
    assert any(e.source == START for e in picture.edges())
    timeout = [e for e in picture.edges() if e.kind == "timed"]
    assert timeout
    assert all(e.failure for e in timeout)


def test_action_view_of_power_sync_action_shows_hypervisor_edges() -> None:
    """force_stop is what the power sync runs: its view has the hypervisor edges."""
    edges = action_view(X, "force_stop").edges()
    assert {e.source for e in edges if e.kind == "power"} == {"stopped", "paused"}


def test_reachable_from_a_transient_step_includes_its_failure_and_preemption() -> None:
    """From resize_migrated: its next step, its failure, and a preempting delete."""
    start = state_name((VmState.ACTIVE, TaskState.RESIZE_MIGRATED))
    picture = reachable_view(X, start, depth=1)
    ids = {n.id for n in picture.nodes}
    assert state_name((VmState.ACTIVE, TaskState.RESIZE_FINISH)) in ids
    assert "error" in ids
    assert state_name((VmState.ACTIVE, TaskState.DELETING)) in ids
    assert "deleted" not in ids  # two edges away
    assert picture.node(start).highlight == "start"


def test_reachable_without_a_bound_reaches_deleted() -> None:
    """Everything but nothing-after-deleted is reachable from resized."""
    ids = {n.id for n in reachable_view(X, "resized").nodes}
    assert {"deleted", "active", "stopped", "error"} <= ids


def test_unknown_names_are_clear_errors() -> None:
    """An unknown action or state raises DiagramError naming it."""
    with pytest.raises(DiagramError, match="no action 'nope'"):
        diagrams.render(LC, action="nope")
    with pytest.raises(DiagramError, match="no state 'limbo'"):
        diagrams.render(LC, start="limbo")
    with pytest.raises(DiagramError, match="not both"):
        diagrams.render(LC, action="stop", start="active")


# -- Mermaid ------------------------------------------------------------------------------------


def _all_pictures() -> list[tuple[str, str]]:
    views = [("overview", to_mermaid(overview(X)))]
    views += [(a.name, to_mermaid(action_view(X, a.name))) for a in X.actions]
    views.append(("reachable", to_mermaid(reachable_view(X, "active/resize_migrated"))))
    return views


@pytest.mark.parametrize(("name", "source"), _all_pictures(), ids=lambda v: str(v)[:30])
def test_mermaid_parses_as_state_diagram(name: str, source: str) -> None:
    """Every view's Mermaid is in the stateDiagram-v2 grammar, ids without '-'."""
    parsed = parse_state_diagram(source)
    assert parsed.states, name
    assert all("-" not in sid for sid in parsed.states)


def test_mermaid_overview_names_every_state_with_its_nova_value() -> None:
    """soft-delete keeps its hyphen in the label while its id has none."""
    parsed = parse_state_diagram(diagrams.mermaid_overview(LC))
    assert {v.value for v in VmState} <= parsed.labels()
    ids = {label: sid for sid, label in parsed.states.items()}
    assert ids["soft-delete"] == "soft_delete"
    assert parsed.classes[ids["error"]] == "error"


def test_mermaid_checker_rejects_what_mermaid_would_misread() -> None:
    """The grammar checker is not a rubber stamp: bad ids, labels and order fail."""
    good = 'stateDiagram-v2\n    state "a" as a\n    a --> a : ok\n'
    parse_state_diagram(good)
    for bad in (
        'stateDiagram-v2\n    state "a" as soft-delete\n',
        'stateDiagram-v2\n    state "a" as a\n    a --> b\n',
        'stateDiagram-v2\n    state "a" as a\n    a --> a : x; y\n',
        'stateDiagram-v2\n    state "a" as end\n',
        "graph TD\n",
    ):
        with pytest.raises(MermaidError):
            parse_state_diagram(bad)


def test_mermaid_ids_do_not_collide() -> None:
    """Two states that sanitize alike get distinct ids."""
    picture = overview(X)
    twins = attrs.evolve(
        picture,
        nodes=(*picture.nodes, attrs.evolve(picture.node("soft-delete"), id="soft_delete")),
    )
    ids = mermaid_ids(twins)
    assert ids["soft-delete"] != ids["soft_delete"]


# -- SVG ----------------------------------------------------------------------------------------


def _svg_texts(svg: str) -> set[str]:
    root = ET.fromstring(svg.encode("utf-8"))
    return {(t.text or "").strip() for t in root.iter(f"{SVG}text")}


def test_overview_svg_is_well_formed_and_names_every_state(dot: str) -> None:
    """The overview SVG parses as XML and has a text for each vm_state."""
    svg = diagrams.render(LC, "svg")
    assert {v.value for v in VmState} <= _svg_texts(svg)
    assert svg_source_hash(svg) == source_hash(to_dot(overview(X)))


def test_action_svg_names_every_state_of_the_action(dot: str) -> None:
    """resize's SVG has a text for every task_state it passes through."""
    texts = _svg_texts(diagrams.render(LC, "svg", action="resize"))
    steps = {s.task_state.value for s in LC.action("resize").steps if s.task_state}
    assert steps <= texts


def test_dot_failure_is_a_clear_error(dot: str) -> None:
    """Graphviz rejecting its input is a DiagramError with its message."""
    with pytest.raises(DiagramError, match="dot failed"):
        render_svg("digraph { this is not dot")


def test_svg_without_dot_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no dot on PATH, drawing SVG says what to install."""
    monkeypatch.setenv("PATH", "")
    with pytest.raises(DiagramError, match="apt-get install graphviz"):
        diagrams.render(LC, "svg")


# -- the committed diagrams ---------------------------------------------------------------------


def test_committed_diagrams_are_current() -> None:
    """diagrams/ is what the table gives now (what CI checks)."""
    assert diagrams.check_diagrams(LC, ROOT) == []


def test_committed_export_is_the_table() -> None:
    """diagrams/lifecycle.json is the export of the default lifecycle."""
    assert diagrams.load_export(ROOT / diagrams.EXPORT_PATH) == X


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the committed diagrams/ to break."""
    shutil.copytree(ROOT / "diagrams", tmp_path / "diagrams")
    return tmp_path


def test_check_names_each_stale_file(copy: Path) -> None:
    """A changed deadline makes exactly that action's files and the export stale."""
    stop = LC.action("stop")
    changed = attrs.evolve(stop, steps=(attrs.evolve(stop.steps[0], deadline=240.0),))
    lc = attrs.evolve(LC, actions=tuple(changed if a is stop else a for a in LC.actions))
    stale = {(str(s.path), s.reason) for s in diagrams.check_diagrams(lc, copy)}
    assert stale == {
        ("diagrams/lifecycle.json", "differs"),
        ("diagrams/actions/stop.mmd", "differs"),
        ("diagrams/actions/stop.svg", "differs"),
    }


def test_check_names_missing_and_left_over_files(copy: Path) -> None:
    """A deleted file is missing; an action's files for an action gone are unexpected."""
    (copy / "diagrams/actions/pause.svg").unlink()
    (copy / "diagrams/actions/halt.mmd").write_text("stateDiagram-v2\n", encoding="utf-8")
    stale = {(str(s.path), s.reason) for s in diagrams.check_diagrams(LC, copy)}
    assert stale == {
        ("diagrams/actions/pause.svg", "missing"),
        ("diagrams/actions/halt.mmd", "unexpected"),
    }


def test_check_command_exits_1_naming_stale_files(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ism diagram --check`` exits 1 and names each stale file on stderr."""
    (copy / "diagrams/lifecycle.mmd").write_text("stateDiagram-v2\n", encoding="utf-8")
    assert main(["diagram", "--check", "--root", str(copy)]) == 1
    assert "stale: diagrams/lifecycle.mmd (differs" in capsys.readouterr().err


def test_write_regenerates_only_stale_files(copy: Path, dot: str) -> None:
    """--write redraws what is stale, removes leftovers, and then check passes."""
    (copy / "diagrams/actions/pause.svg").unlink()
    (copy / "diagrams/actions/halt.svg").write_text("<svg/>", encoding="utf-8")
    written = diagrams.write_diagrams(LC, copy)
    assert sorted(map(str, written)) == [
        "diagrams/actions/halt.svg",
        "diagrams/actions/pause.svg",
    ]
    assert diagrams.check_diagrams(LC, copy) == []


def test_write_without_dot_changes_nothing(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When an SVG must be drawn and dot is missing, no file is written."""
    (copy / "diagrams/actions/pause.svg").unlink()
    (copy / "diagrams/lifecycle.mmd").write_text("old\n", encoding="utf-8")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(DiagramError):
        diagrams.write_diagrams(LC, copy)
    assert (copy / "diagrams/lifecycle.mmd").read_text(encoding="utf-8") == "old\n"


# -- the command --------------------------------------------------------------------------------


def test_diagram_command_prints_an_actions_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    """``ism diagram --action stop`` prints stop's Mermaid."""
    assert main(["diagram", "--action", "stop"]) == 0
    parsed = parse_state_diagram(capsys.readouterr().out)
    assert "powering-off (active)" in {label.split(" · ")[0] for label in parsed.labels()}


def test_diagram_command_writes_dot_to_a_file(tmp_path: Path) -> None:
    """``--format dot --out F`` writes the DOT source."""
    out = tmp_path / "o.dot"
    assert main(["diagram", "--format", "dot", "--from", "resized", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").startswith("digraph lifecycle {")


def test_diagram_command_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown action, or --depth without --from: exit 1 with one line."""
    assert main(["diagram", "--action", "nope"]) == 1
    assert main(["diagram", "--depth", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert all(line.startswith("ism diagram: DiagramError") for line in err)


def test_lifecycle_export_command_prints_the_export(capsys: pytest.CaptureFixture[str]) -> None:
    """``ism lifecycle export --format json`` prints what diagrams/lifecycle.json holds."""
    assert main(["lifecycle", "export", "--format", "json"]) == 0
    assert capsys.readouterr().out == (ROOT / "diagrams/lifecycle.json").read_text("utf-8")


def test_states_markdown_lists_every_state_and_action(capsys: pytest.CaptureFixture[str]) -> None:
    """``ism states --format markdown`` has a row per vm_state and per action."""
    assert main(["states", "--format", "markdown"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert len(rows) == len(VmState) + len(LC.actions)
    stop_row = next(r for r in rows if r.startswith("| `stop`"))
    assert "powering-off (power_off, 3 min)" in stop_row
    assert "power_off.error" in stop_row


def test_a_missing_program_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ISM_REQUIRE_SERVICES=1 a missing program fails the test; without, it skips."""
    monkeypatch.setenv("ISM_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="ism-no-such-program is not installed"):
        require_binary("ism-no-such-program", "a test of the helper")
    monkeypatch.delenv("ISM_REQUIRE_SERVICES")
    with pytest.raises(pytest.skip.Exception):
        require_binary("ism-no-such-program", "a test of the helper")
