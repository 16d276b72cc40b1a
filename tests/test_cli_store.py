"""The store commands: ism run/simulate --db, status, actions, audit tail and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from statemachine.cli import main

SCENARIO = Path(__file__).parent / "scenarios" / "tour.json"


@pytest.fixture
def db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A store written by ``ism run --db`` from the tour scenario."""
    path = tmp_path / "tour.db"
    assert main(["run", str(SCENARIO), "--db", str(path)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return path


def test_status_lists_every_instance_as_json(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json gives every instance's states; the plain form has a header and a row each."""
    assert main(["status", "--db", str(db), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows
    assert {"name", "uuid", "status", "vm_state", "task_state", "power_state", "host"} <= set(
        rows[0]
    )
    assert all(r["task_state"] is None for r in rows)
    assert main(["status", "--db", str(db)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(rows) + 1


def test_actions_name_an_instance_and_list_its_history(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """By name: the actions, oldest first, starting with its create; unknown names refused."""
    assert main(["status", "--db", str(db), "--json"]) == 0
    name = json.loads(capsys.readouterr().out)[0]["name"]
    assert main(["actions", name, "--db", str(db), "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert history[0]["action"] == "create"
    assert all(a["outcome"] in ("ok", "failed", "preempted") for a in history)
    assert main(["actions", "no-such-vm", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert "no instance named 'no-such-vm'" in err
    assert len(err.strip().splitlines()) == 1


def test_tail_and_export_read_the_whole_log(
    db: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """export writes every record as JSON (body, link, hash); tail shows the last N."""
    out = tmp_path / "audit.jsonl"
    assert main(["audit", "export", str(db), "--format", "jsonl", "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    assert all({"hash", "prev", "writer", "wseq", "event"} <= set(r) for r in records)
    capsys.readouterr()
    assert main(["audit", "tail", str(db), "-n", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[-1].split()[0] == str(records[-1]["seq"])
    assert main(["audit", "tail", str(db), "-n", "0"]) == 1


def test_a_key_file_signs_and_checks_the_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """simulate --audit-key-file signs; verify with that key passes and with another fails."""
    key, db = tmp_path / "key", tmp_path / "signed.db"
    key.write_bytes(b"s3cret-key\n")
    argv = ["simulate", "--instances", "5", "--quiet", "--db", str(db)]
    assert main([*argv, "--audit-key-file", str(key)]) == 0
    assert main(["audit", "verify", str(db), "--key-file", str(key)]) == 0
    other = tmp_path / "other"
    other.write_bytes(b"another")
    assert main(["audit", "verify", str(db), "--key-file", str(other)]) == 1
    assert main(["simulate", "--instances", "2", "--audit-key-file", str(key)]) == 1
    assert "needs --db" in capsys.readouterr().err
