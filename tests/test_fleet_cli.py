"""The README's fleet across machines: three engines (one per host) on one PostgreSQL
database, one publishing to RabbitMQ; a host whose engine stops is evacuated by another."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from statemachine.cli import main
from tests.amqp_support import require_rabbitmq

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
README_URL = "postgresql://postgres@127.0.0.1:5432/test?schema=ism_fleet"


def _commands() -> list[list[str]]:
    section = README.split("## Running a fleet across machines", 1)[1].split("\n### ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("ism ")]


@pytest.fixture
def broker() -> None:
    """RabbitMQ answers (skip, or fail under ISM_REQUIRE_SERVICES=1, without it)."""
    require_rabbitmq()


def test_the_readme_fleet_runs_as_written(
    pg_url: str, broker: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each line exits 0 on a fresh schema; the evacuation moved compute3's instances that
    could move to compute1, and the log of every writer verifies."""
    commands = _commands()
    assert len(commands) == 6
    outputs = []
    for argv in commands:
        argv = [pg_url if arg == README_URL else arg for arg in argv]
        assert main(argv) == 0, (argv, capsys.readouterr().err)
        outputs.append(capsys.readouterr().out)
    assert "evacuated here:" in outputs[3]
    assert main(["status", "--db", pg_url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert {f"compute{h}-vm{i}" for h in (1, 2, 3) for i in range(20)} <= names
    movable = ("active", "stopped", "error")
    left = [r for r in rows if r["host"] == "compute3" and r["vm_state"] in movable]
    assert left == []  # evacuated: none of these stay on the dead host
    assert all(r["task_state"] is None for r in rows)
    assert "writer heads compute1#" in outputs[5]
