"""History drawn from a real SQLite store's audit log: ``ism diagram --db --instance``, ``ism
timeline``.

Every expectation is read from the store with plain SQL (``_audited``), not through the code
under test, and compared with what the diagrams draw.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from drivers.simulator import FaultRule
from statemachine import _cli_history
from statemachine._cli_store import read_store
from statemachine.cli import main
from statemachine.diagrams import (
    MAX_TIMELINE_ROWS,
    AuditPath,
    AuditTimeline,
    path_from_audit,
    timeline_from_audit,
)
from statemachine.errors import ActionFailed, DiagramError, InvalidRequest
from statemachine.simulate import simulate
from statemachine.store import SqliteStore
from tests.mermaid_grammar import parse_state_diagram
from tests.support import OWNER, World, require_binary, run_with_store

SVG = "{http://www.w3.org/2000/svg}"
Position = tuple[str, str | None]


# -- stores, built for real --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written by a 10-instance simulation (creates, actions, faults, deletes)."""
    path = tmp_path_factory.mktemp("fleet") / "ism.db"
    report = simulate(instances=10, seed=1, store=SqliteStore(path), progress=None)
    assert report.stuck == 0
    return path


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written by an engine session: 'web' stopped, started and failing a pause, and
    two live instances both named 'twin'."""
    path = tmp_path_factory.mktemp("session") / "ism.db"

    async def body(w: World) -> None:
        web = await w.create("web")
        await w.engine.act(OWNER, "stop", web)
        await w.engine.act(OWNER, "start", web)
        w.sim.faults.add(FaultRule(action="pause"))
        with pytest.raises(ActionFailed):
            await w.engine.act(OWNER, "pause", web)
        await w.create("twin")
        await w.create("twin")

    run_with_store(SqliteStore(path), body)
    return path


# -- the oracle: the audit log read with SQL ---------------------------------------------------


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _instances(db: Path) -> list[tuple[str, str]]:
    """(uuid, name) of every instance, in creation order."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return list(conn.execute("SELECT uuid, name FROM instances ORDER BY rowid"))


def _audited(db: Path, uuid: str) -> list[tuple[Position, dt.datetime]]:
    """The instance's positions: each record's ``after`` state, repeats collapsed."""
    out: list[tuple[Position, dt.datetime]] = []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT body FROM audit WHERE instance = ? ORDER BY seq", (uuid,))
        for (body,) in rows:
            record = json.loads(body)
            after = record["after"]
            if after is None:
                continue
            position = (after["vm_state"], after["task_state"])
            if not out or out[-1][0] != position:
                out.append((position, _time(record["time"])))
    return out


def _log_end(db: Path) -> dt.datetime:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return max(_time(json.loads(b)["time"]) for (b,) in conn.execute("SELECT body FROM audit"))


def _label(position: Position) -> str:
    """How the Mermaid path diagram labels a position."""
    vm, task = position
    return vm if task is None else f"{task} ({vm})"


def _uuid(db: Path, name: str) -> str:
    return next(u for u, n in _instances(db) if n == name)


# -- one instance's path -----------------------------------------------------------------------


def _drawn_path(source: str) -> tuple[list[str], str]:
    """The labels along the numbered path edges, in order, and the label marked current."""
    parsed = parse_state_diagram(source)
    steps = sorted(  # a step taken twice is one edge labelled "7. +927 s, 23. +2593 s"
        (int(n), a, b)
        for a, b, text in parsed.transitions
        for n in re.findall(r"(?:^|, )(\d+)\. \+", text)
    )
    current = [i for i, mark in parsed.classes.items() if mark == "current"]
    assert len(current) == 1
    assert [n for n, _, _ in steps] == list(range(1, len(steps) + 1))
    ids = [steps[0][1]] if steps else current
    for _, source_id, dest_id in steps:
        assert source_id == ids[-1], "each step starts where the previous one ended"
        ids.append(dest_id)
    return [parsed.states[i] for i in ids], parsed.states[current[0]]


def test_every_instances_path_is_its_audited_states_in_order(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """For each simulated instance, the drawn path is its audit records' states, current last."""
    for uuid, name in _instances(fleet):
        assert main(["diagram", "--db", str(fleet), "--instance", uuid]) == 0
        drawn, current = _drawn_path(capsys.readouterr().out)
        expected = [_label(p) for p, _ in _audited(fleet, uuid)]
        assert drawn == expected, name
        assert current == expected[-1]


def test_a_session_path_shows_what_the_actions_did(
    session: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """By name: stop's powering-off then stopped, start, and the failed pause's states, in order."""
    assert main(["diagram", "--db", str(session), "--instance", "web"]) == 0
    out = capsys.readouterr().out
    drawn, current = _drawn_path(out)
    assert drawn == [_label(p) for p, _ in _audited(session, _uuid(session, "web"))]
    after_build = drawn[drawn.index("active") :]
    assert after_build[:5] == [
        "active",
        "powering-off (active)",
        "stopped",
        "powering-on (stopped)",
        "active",
    ]
    assert "pausing (active)" in after_build[5:]
    assert current == drawn[-1]
    assert f"now: {current}" in out


def test_the_svg_path_highlights_the_steps_and_fills_the_current_state(
    session: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out F.svg`` draws SVG (format from the suffix): numbered path edges between the
    audited states, the current one filled."""
    require_binary("dot", "SVG is drawn by Graphviz")
    out = tmp_path / "web.svg"
    assert main(["diagram", "--db", str(session), "--instance", "web", "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    root = ET.fromstring(out.read_bytes())
    steps: list[tuple[int, str]] = []
    for group in root.iter(f"{SVG}g"):
        texts = [t.text or "" for t in group.iter(f"{SVG}text")]
        if group.get("class") == "edge":
            title = group.findtext(f"{SVG}title") or ""
            for text in texts:
                steps.extend((int(n), title) for n in re.findall(r"(?:^|, )(\d+)\. \+", text))
    audited = _audited(session, _uuid(session, "web"))
    names = [vm if task is None else f"{vm}/{task}" for (vm, task), _ in audited]
    assert [title for _, title in sorted(steps)] == [
        f"{a}->{b}" for a, b in itertools.pairwise(names)
    ]
    fills = {
        group.findtext(f"{SVG}title"): [p.get("fill") for p in group if p.get("fill")]
        for group in root.iter(f"{SVG}g")
        if group.get("class") == "node"
    }
    assert [name for name, fill in fills.items() if "#90caf9" in fill] == [names[-1]]


def test_a_path_keeps_the_most_recent_states_when_bounded(session: Path) -> None:
    """With a limit below the history's length, the path is its last states and says so."""
    uuid = _uuid(session, "web")
    audited = _audited(session, uuid)
    path: AuditPath = read_store(str(session), lambda s: path_from_audit(s, uuid, limit=3))
    assert [((p.vm_state, p.task_state), p.at) for p in path.points] == audited[-3:]
    assert (path.total, path.cut) == (len(audited), True)


def test_a_long_path_is_cut_and_the_command_says_so(
    session: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past the path bound, the diagram shows the last states and stderr says how many."""
    monkeypatch.setattr(_cli_history, "MAX_PATH_POINTS", 4)
    uuid = _uuid(session, "web")
    assert main(["diagram", "--db", str(session), "--instance", "web"]) == 0
    out = capsys.readouterr()
    drawn, _ = _drawn_path(out.out)
    audited = _audited(session, uuid)
    assert drawn == [_label(p) for p, _ in audited[-4:]]
    assert out.err == (
        f"ism diagram: web ({uuid}) went through {len(audited)} states; the path shows the last 4\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--instance", "nobody"], "InvalidRequest: no instance named 'nobody' in the store"),
        (["--instance", "twin"], "InvalidRequest: 2 instances are named 'twin': use a uuid"),
        ([], "DiagramError: --instance NAME and --db DB go together"),
    ],
)
def test_unknown_or_ambiguous_names_are_one_line_errors(
    session: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown name, a name two live instances share, or --db alone: exit 1, one line."""
    assert main(["diagram", "--db", str(session), *argv]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith(f"ism diagram: {message}")
    assert len(out.err.splitlines()) == 1


def test_an_unreadable_store_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file or one that is not a database: exit 1, one line, nothing created."""
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite")
    for db in (tmp_path / "missing.db", junk):
        diagram = ["diagram", "--db", str(db), "--instance", "x"]
        for argv in (diagram, ["timeline", "--db", str(db)]):
            assert main(argv) == 1
            err = capsys.readouterr().err
            assert err.startswith(f"ism {argv[0]}: StoreError: ")
            assert len(err.splitlines()) == 1
    assert not (tmp_path / "missing.db").exists()


# -- a fleet's timeline ------------------------------------------------------------------------


def _bars(svg: str) -> tuple[ET.Element, dict[str, list[tuple[str, float, float, str]]]]:
    """Each row's bars, in drawing order: (state label, +start s, +end s, colour)."""
    root = ET.fromstring(svg.encode("utf-8"))
    rows: dict[str, list[tuple[str, float, float, str]]] = {}
    for rect in root.iter(f"{SVG}rect"):
        kind = rect.get("class")
        if kind not in ("stable", "transient"):
            continue
        tip = rect.findtext(f"{SVG}title") or ""
        match = re.fullmatch(r"(.+): (\S+), \+(\S+) s to \+(\S+) s", tip)
        assert match is not None, tip
        colour = rect.get("fill") if kind == "stable" else rect.get("stroke")
        assert colour is not None
        row = rows.setdefault(match[1], [])
        row.append((match[2], float(match[3]), float(match[4]), colour))
    return root, rows


def _legend(root: ET.Element) -> dict[str, str]:
    """The legend's colour per vm_state (a 14 by 10 swatch, then its name)."""
    children = list(root)
    return {
        text.text or "": rect.get("fill", "")
        for rect, text in itertools.pairwise(children)
        if rect.tag == f"{SVG}rect" and (rect.get("width"), rect.get("height")) == ("14", "10")
    }


def _expected_rows(
    db: Path, uuids: list[tuple[str, str]], since: dt.datetime | None, until: dt.datetime
) -> dict[str, list[tuple[str, dt.datetime, dt.datetime]]]:
    """Per instance: (label, start, end) of each interval, clipped to (since, until)."""
    rows = {}
    for uuid, name in uuids:
        audited = _audited(db, uuid)
        ends = [at for _, at in audited[1:]] + [until]
        kept = []
        for ((vm, task), start), end in zip(audited, ends, strict=True):
            if start > until or (since is not None and end <= since):
                continue
            label = vm if task is None else f"{vm}/{task}"
            kept.append((label, max(start, since) if since else start, min(end, until)))
        if kept:
            rows[name] = kept
    return rows


def _check_timeline(
    svg: str, expected: dict[str, list[tuple[str, dt.datetime, dt.datetime]]]
) -> None:
    root, rows = _bars(svg)
    assert list(rows) == list(expected), "one row per instance, in creation order"
    t0 = min(start for row in expected.values() for _, start, _ in row)
    legend = _legend(root)
    for name, bars in rows.items():
        assert [b[0] for b in bars] == [e[0] for e in expected[name]], name
        for (_, a, b, _), (_, start, end) in zip(bars, expected[name], strict=True):
            assert a == pytest.approx((start - t0).total_seconds(), rel=1e-5, abs=1e-3)
            assert b == pytest.approx((end - t0).total_seconds(), rel=1e-5, abs=1e-3)
        for label, _, _, colour in bars:
            assert colour == legend[label.split("/")[0]], f"{name}: {label}"
    assert len(set(legend.values())) == len(legend), "each vm_state has its own colour"
    width = float(root.get("width", "0"))
    for text in root.iter(f"{SVG}text"):
        if text.text in (*legend, "thin, hatched: a transient step (task_state)"):
            assert float(text.get("x", "0")) + 6 * len(text.text or "") <= width, text.text
    assert legend.get("error", "#d62728") == "#d62728"


def test_the_timeline_has_a_row_per_instance_and_a_bar_per_audited_state(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows in creation order; bars are the audited states with their times, coloured as the
    legend says, the last open until the log's last record."""
    out = tmp_path / "fleet.svg"
    assert main(["timeline", "--db", str(fleet), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    instances = _instances(fleet)
    expected = _expected_rows(fleet, instances, None, _log_end(fleet))
    assert len(expected) == 10
    _check_timeline(out.read_text(encoding="utf-8"), expected)
    intervals = sum(len(row) for row in expected.values())
    assert said.startswith(f"ism timeline: 10 rows, {intervals} intervals up to ")
    assert "showing the first" not in said


def test_the_timeline_clips_to_since_and_until(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--since/--until keep what overlaps the window, cut at its edges; SVG to stdout."""
    instances = _instances(fleet)
    first = min(_audited(fleet, uuid)[0][1] for uuid, _ in instances)
    since, until = first + dt.timedelta(seconds=900), first + dt.timedelta(seconds=2100)
    argv = ["timeline", "--db", str(fleet), "--since", since.isoformat()]
    assert main([*argv, "--until", until.isoformat().replace("+00:00", "Z")]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    expected = _expected_rows(fleet, instances, since, until)
    _check_timeline(out.out, expected)
    _, rows = _bars(out.out)
    assert min(a for bars in rows.values() for _, a, _, _ in bars) == 0
    assert max(b for bars in rows.values() for _, _, b, _ in bars) == pytest.approx(1200)


def test_the_timeline_draws_the_first_n_instances_and_says_so(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--instances 3 of 10: three rows, the first created, and the output says what was left."""
    out = tmp_path / "three.svg"
    assert main(["timeline", "--db", str(fleet), "--instances", "3", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "showing the first 3 of 10 instances by creation" in said
    svg = out.read_text(encoding="utf-8")
    expected = _expected_rows(fleet, _instances(fleet)[:3], None, _log_end(fleet))
    _check_timeline(svg, expected)
    title = ET.fromstring(svg.encode()).findtext(f"{SVG}title") or ""
    assert title.endswith("the first 3 of 10 instances (by creation)")


def test_the_timeline_stops_at_its_bar_limit(fleet: Path) -> None:
    """With fewer bars allowed than the log holds, reading stops there and says where."""
    found: AuditTimeline = read_store(
        str(fleet), lambda s: timeline_from_audit(s, instances=10, max_intervals=25)
    )
    assert len(found.intervals) == 25
    assert found.cut_at is not None
    assert found.until == found.cut_at
    assert all(i.start <= found.cut_at for i in found.intervals)
    assert all(i.end is None or i.end <= found.cut_at for i in found.intervals)


def test_repeated_names_get_their_uuid_in_the_row_label(
    session: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two instances named 'twin' are two rows, told apart by the start of their uuid."""
    assert main(["timeline", "--db", str(session)]) == 0
    _, rows = _bars(capsys.readouterr().out)
    twins = [u for u, n in _instances(session) if n == "twin"]
    assert list(rows) == ["web", *(f"twin ({u[:8]})" for u in twins)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--since", "2026-01-01T02:00:00Z", "--until", "2026-01-01T01:00:00Z"],
            "InvalidRequest: since 2026-01-01T02:00:00+00:00 is not before until",
        ),
        (["--since", "2999-01-01T00:00:00"], "DiagramError: the audit log holds no state of"),
    ],
)
def test_an_empty_or_backwards_window_is_a_one_line_error(
    fleet: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A window that ends before it starts, or one after the log: exit 1, one line."""
    assert main(["timeline", "--db", str(fleet), *argv]) == 1
    out = capsys.readouterr()
    assert (out.out, out.err.startswith(f"ism timeline: {message}")) == ("", True)
    assert len(out.err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [["--instances", "0"], ["--instances", str(MAX_TIMELINE_ROWS + 1)], ["--since", "noon"]],
)
def test_out_of_range_options_are_refused_by_the_parser(fleet: Path, argv: list[str]) -> None:
    """No rows, more rows than a timeline draws, or a time that is not ISO 8601: usage error."""
    with pytest.raises(SystemExit) as exc:
        main(["timeline", "--db", str(fleet), *argv])
    assert exc.value.code == 2


def test_limits_outside_the_renderers_are_refused(fleet: Path) -> None:
    """The readers refuse bounds beyond what the renderers draw."""
    with pytest.raises(InvalidRequest):
        read_store(str(fleet), lambda s: timeline_from_audit(s, instances=MAX_TIMELINE_ROWS + 1))
    with pytest.raises(InvalidRequest):
        read_store(str(fleet), lambda s: path_from_audit(s, "x", limit=0))
    with pytest.raises(DiagramError, match="no state of instance x"):
        read_store(str(fleet), lambda s: path_from_audit(s, "x"))
