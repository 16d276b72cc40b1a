"""The ``ism`` command: simulate, bench, states, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from statemachine.cli import main


def test_simulate_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """A small fleet runs every kind of action and leaves nothing transient."""
    assert main(["simulate", "--instances", "40", "--seed", "5"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    for section in ("actions by outcome:", "notifications by type", "instances by final state:",
                    "action latency (virtual s): p50"):  # fmt: skip
        assert section in out
    assert "instances left in a transient state: 0" in out
    assert "progress: 40/40 instances (100 %)" in captured.err
    rows = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert {"create", "stop", "resize", "live_migrate", "evacuate", "shelve"} <= rows


def test_simulate_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    """The same seed prints the same summary (wall time aside)."""
    outs = []
    for _ in range(2):
        main(["simulate", "--instances", "20", "--seed", "9", "--quiet"])
        outs.append([ln for ln in capsys.readouterr().out.splitlines() if "wall" not in ln])
    assert outs[0] == outs[1]


def test_states_lists_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    """``ism states`` names every public action with its steps."""
    assert main(["states"]) == 0
    out = capsys.readouterr().out
    assert "reboot HARD" in out
    assert "powering-off" in out


def test_bad_arguments_exit_2_with_one_line() -> None:
    """Bad input is a non-zero exit with a short usage error, through the real entry point."""
    proc = subprocess.run(
        [sys.executable, "-m", "statemachine", "simulate", "--instances", "0"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "must be between 1 and 1000000" in proc.stderr
