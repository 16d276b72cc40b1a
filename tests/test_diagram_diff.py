"""``ism diagram diff``: what changed between two lifecycles, as a list, a summary, a picture."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest

from statemachine import diagrams
from statemachine._diagram_diff import Change, diff_picture
from statemachine._diagram_dot import to_dot
from statemachine._diagram_mermaid import to_mermaid
from statemachine._schema import Lifecycle, Target
from statemachine.cli import main
from statemachine.lifecycle import DEFAULT_LIFECYCLE as LC
from statemachine.states import TaskState, VmState
from tests.mermaid_grammar import parse_state_diagram
from tests.support import require_binary


def _replace(lc: Lifecycle, name: str, **changes: Any) -> Lifecycle:
    """``lc`` with one action evolved (attrs.evolve on the table's own data)."""
    return attrs.evolve(
        lc,
        actions=tuple(attrs.evolve(a, **changes) if a.name == name else a for a in lc.actions),
    )


def modified() -> Lifecycle:
    """One added action, one removed (timed) transition, one changed deadline."""
    freeze = attrs.evolve(LC.action("pause"), name="freeze", doc="A copy of pause.")
    stop = LC.action("stop")
    lc = _replace(LC, "stop", steps=(attrs.evolve(stop.steps[0], deadline=240.0),))
    return attrs.evolve(
        lc,
        actions=(*lc.actions, freeze),
        timed=tuple(t for t in lc.timed if t.name != "auto_offload"),
    )


def test_diff_reports_exactly_the_three_changes() -> None:
    """An added action, a removed transition and a changed deadline, and nothing else."""
    diff = diagrams.diff_lifecycles(LC, modified())
    assert [(c.change, c.subject, c.name) for c in diff.changes] == [
        ("added", "action", "freeze"),
        ("removed", "timed", "auto_offload"),
        ("changed", "action", "stop"),
    ]
    stop = diff.changes[2]
    assert stop.details == ("deadline of step 1 (powering-off): 3 min → 4 min",)
    assert "3 transitions" in diff.changes[0].details
    assert not diff.identical


def test_identical_lifecycles_have_no_change() -> None:
    """A lifecycle against itself: no change, and the summary says so."""
    diff = diagrams.diff_lifecycles(LC, LC)
    assert diff.identical
    assert diff.summary("a", "b") == "Lifecycle a → b: no change.\n"


def test_a_guard_change_lists_the_transition_it_removes() -> None:
    """reboot HARD no longer taking over a pause removes exactly that transition."""
    rh = LC.action("reboot_hard")
    assert rh.task_states is not None
    new = _replace(LC, "reboot_hard", task_states=rh.task_states - {TaskState.PAUSING})
    (change,) = diagrams.diff_lifecycles(LC, new).changes
    assert (change.change, change.subject, change.name) == ("changed", "action", "reboot_hard")
    assert change.details == (
        "guard task states: - pausing",
        "- transition active/pausing → active/rebooting_hard (reboot_hard)",
    )


def test_a_target_change_is_changed_not_added_and_removed() -> None:
    """unpause leading to stopped: one changed action, its done transition moved, drawn orange."""
    new = _replace(LC, "unpause", target=Target(to=VmState.STOPPED))
    diff = diagrams.diff_lifecycles(LC, new)
    (change,) = diff.changes
    assert change.details == (
        "target: active → stopped",
        "+ transition paused/unpausing → stopped (unpause:done)",
        "- transition paused/unpausing → active (unpause:done)",
    )
    edges = diff_picture(diff).edges()
    moved = [e for e in edges if "unpause" in e.texts and e.source == "paused"]
    assert {(e.dest, e.status) for e in moved} == {("stopped", "changed"), ("active", "removed")}


def test_states_made_unreachable_fold_into_their_cause() -> None:
    """pause no longer reaching paused takes paused and its steps away, under pause's change."""
    new = _replace(LC, "pause", target=Target(to=VmState.STOPPED))
    (change,) = diagrams.diff_lifecycles(LC, new).changes
    assert change.name == "pause"
    gone = next(d for d in change.details if d.startswith("- 16 states: "))
    assert "paused, " in gone
    assert "paused/unpausing" in gone


def test_diff_picture_colours_added_removed_and_changed() -> None:
    """The overview diff: freeze green, auto_offload red, stop orange, the rest grey."""
    picture = diff_picture(diagrams.diff_lifecycles(LC, modified()))
    status = {(e.source, e.dest, t): e.status for e in picture.edges() for t in e.texts}
    assert status[("active", "paused", "freeze")] == "added"
    assert status[("shelved", "shelved_offloaded", "after shelved_offload_time")] == "removed"
    assert status[("active", "stopped", "stop [has host]")] == "changed"
    assert status[("active", "paused", "pause")] == "same"
    dot = to_dot(picture)
    assert '"#2e7d32"' in dot
    assert '"#c62828"' in dot
    assert '"#ef6c00"' in dot
    parsed = parse_state_diagram(to_mermaid(picture))
    labels = {label for _, _, label in parsed.transitions}
    assert {"+ freeze", "- after shelved_offload_time", "~ stop [has host]"} <= labels


def test_diff_of_one_action_marks_the_changed_step() -> None:
    """stop's view of the diff marks the powering-off steps changed (the deadline)."""
    picture = diff_picture(diagrams.diff_lifecycles(LC, modified()), action="stop")
    changed = {n.id for n in picture.nodes if n.status == "changed"}
    assert changed == {"active/powering-off", "error/powering-off"}


def test_readme_diff_example_is_real_output() -> None:
    """The README's summary example is what the diff above prints."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    summary = diagrams.diff_lifecycles(LC, modified()).summary("main", "HEAD")
    assert f"```text\n{summary}```" in readme


# -- the command --------------------------------------------------------------------------------


@pytest.fixture
def exports(tmp_path: Path) -> tuple[Path, Path]:
    """The default lifecycle and the modified one, exported to files."""
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(diagrams.export_lifecycle(LC).to_json(), encoding="utf-8")
    new.write_text(diagrams.export_lifecycle(modified()).to_json(), encoding="utf-8")
    return old, new


def test_diff_command_exits_0_when_identical(
    exports: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Two identical exports: exit 0, "no change"."""
    old, _ = exports
    assert main(["diagram", "diff", str(old), str(old)]) == 0
    assert "no change" in capsys.readouterr().out


def test_diff_command_exits_1_with_a_summary_and_a_drawing(
    exports: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Different exports: exit 1, the summary on stdout, the Mermaid drawing in --out."""
    old, new = exports
    out = tmp_path / "diff.mmd"
    assert main(["diagram", "diff", str(old), str(new), "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert "- action `freeze`" in text
    assert "deadline of step 1" in text
    parse_state_diagram(out.read_text(encoding="utf-8"))


def test_diff_command_exits_2_on_an_unreadable_side(
    exports: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that is not an export, or a name that is no revision: exit 2, one line."""
    old, _ = exports
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    assert main(["diagram", "diff", str(old), str(bad)]) == 2
    assert main(["diagram", "diff", str(old), "not a revision", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert all(line.startswith("ism diagram diff: ") for line in err)


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


def test_diff_command_reads_git_revisions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each side a revision: its committed diagrams/lifecycle.json is read, not its code."""
    require_binary("git", "revisions are read with git show")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.invalid")
    _git(tmp_path, "config", "user.name", "t")
    export = tmp_path / "diagrams" / "lifecycle.json"
    export.parent.mkdir()
    export.write_text(diagrams.export_lifecycle(LC).to_json(), encoding="utf-8")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "one")
    first = _git(tmp_path, "rev-parse", "HEAD")
    export.write_text(diagrams.export_lifecycle(modified()).to_json(), encoding="utf-8")
    _git(tmp_path, "commit", "-qam", "two")
    argv = ["diagram", "diff", first, "HEAD", "--root", str(tmp_path)]
    assert main(argv) == 1
    assert "Added:\n- action `freeze`" in capsys.readouterr().out
    assert main(["diagram", "diff", "HEAD", "HEAD", "--root", str(tmp_path)]) == 0
    assert main(["diagram", "diff", "HEAD", "nosuchrev", "--root", str(tmp_path)]) == 2
    assert "nosuchrev:diagrams/lifecycle.json failed" in capsys.readouterr().err


def test_diff_svg_is_drawn(exports: tuple[Path, Path], tmp_path: Path) -> None:
    """--out x.svg draws the diff with Graphviz."""
    require_binary("dot", "Graphviz draws the SVG diagrams")
    old, new = exports
    out = tmp_path / "diff.svg"
    assert main(["diagram", "diff", str(old), str(new), "--out", str(out)]) == 1
    assert "freeze" in out.read_text(encoding="utf-8")


def test_change_lines_read_as_a_list() -> None:
    """A change renders as one Markdown-friendly line."""
    change = Change("changed", "action", "stop", ("a", "b"))
    assert change.line() == "~ action `stop`: a; b"
