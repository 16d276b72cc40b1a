"""``ism bench --profile``'s breakdown: parts that add up, named from the engine's own code."""

from __future__ import annotations

import pytest

from statemachine._bench_ism import profile_ism_memory
from statemachine._bench_profile import COMPONENTS
from statemachine.cli import main


def test_parts_are_measured_and_add_up_to_the_profiled_time() -> None:
    """Every named part was entered (the names match real functions, so a rename cannot
    silently zero a row), and with the rest they account for the profiled span, no more."""
    breakdown = profile_ism_memory(20)
    assert breakdown.changes == 20 * 8  # stop, start, pause, unpause: accept and done each
    measured = dict(breakdown.parts)
    assert list(measured)[: len(COMPONENTS)] == [name for name, _ in COMPONENTS]
    for name, _ in COMPONENTS:
        assert measured[name] > 0, name
    assert sum(measured.values()) <= breakdown.profiled_s * 1.0001
    assert 0 <= breakdown.gc_s <= breakdown.wall_s
    assert {name for name, _ in breakdown.own} >= {"logging"}


def test_the_cli_prints_the_breakdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--profile", "10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("where the time goes: 80 state changes")
    assert "us/change" in out
    assert "cyclic GC" in out
