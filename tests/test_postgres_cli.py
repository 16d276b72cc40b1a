"""The ``ism`` commands on a PostgreSQL URL: simulate and run write it, the readers read it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from statemachine.cli import main

SCENARIO = Path(__file__).parent / "scenarios" / "tour.json"


def _out(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_simulate_run_status_actions_and_verify_on_a_postgresql_url(
    pg_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A simulated fleet and a scenario written through ``--db URL`` are listed by status and
    actions and verify, with the signed heads, through the same URL."""
    key = tmp_path / "key"
    key.write_bytes(b"cli-key")
    assert main(["simulate", "--instances", "12", "--quiet", "--db", pg_url,
                 "--audit-key-file", str(key)]) == 0  # fmt: skip
    assert f"store: {pg_url}" in _out(capsys)
    assert main(["status", "--db", pg_url, "--json"]) == 0
    rows = json.loads(_out(capsys))
    assert len(rows) == 12
    uuid = rows[0]["uuid"]
    assert main(["actions", uuid, "--db", pg_url]) == 0
    text = _out(capsys)
    assert text.startswith(f"{rows[0]['name']} ({uuid}): ")
    assert "create" in text
    assert main(["audit", "verify", pg_url, "--key-file", str(key)]) == 0
    first = _out(capsys)
    assert "signed head checked" in first
    assert main(["run", str(SCENARIO), "--db", pg_url, "--audit-key-file", str(key)]) == 0
    assert "steps met their expectations" in _out(capsys)
    assert main(["status", "--db", pg_url, "--json"]) == 0
    assert len(json.loads(_out(capsys))) > 12
    head = first.split(", head ", 1)[1].split()[0]
    assert main(["audit", "verify", pg_url, "--head", head, "--key-file", str(key)]) == 0
    later = _out(capsys)
    assert int(later.split("ok: ")[1].split()[0]) > int(first.split("ok: ")[1].split()[0])
    key.write_bytes(b"another key")
    assert main(["audit", "verify", pg_url, "--key-file", str(key)]) == 1
    assert "MAC is invalid" in _out(capsys)


def test_an_unreachable_server_is_one_line_and_a_non_zero_exit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No server at the URL: verify exits 2, status 1, each with one line naming the URL."""
    url = "postgresql://postgres@127.0.0.1:1/test"
    assert main(["audit", "verify", url]) == 2
    text = _out(capsys).strip()
    assert len(text.splitlines()) == 1
    assert "cannot connect to postgresql://postgres@127.0.0.1:1/test" in text
    assert main(["status", "--db", url]) == 1
    assert len(_out(capsys).strip().splitlines()) == 1


README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
README_URL = "postgresql://postgres@127.0.0.1:5432/test?schema=ism_demo"


def _readme_commands() -> list[list[str]]:
    """The ``ism`` lines of the README's PostgreSQL section."""
    section = README.split("### The PostgreSQL store", 1)[1].split("\n### ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("ism ")]


def test_the_readme_postgresql_commands_run_as_written(
    pg_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ``ism`` line of the README's PostgreSQL section exits 0, on a fresh schema."""
    monkeypatch.chdir(Path(__file__).parent.parent)  # the README's paths are the repo's
    commands = _readme_commands()
    assert len(commands) >= 5
    for argv in commands:
        argv = [pg_url if arg == README_URL else arg for arg in argv]
        assert pg_url in argv, argv
        assert main(argv) == 0, (argv, _out(capsys))
    assert "ok:" in _out(capsys)
