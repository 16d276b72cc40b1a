"""``ism bench``: the quick mode runs every set-up and names every figure; the pieces count what
they claim to. No assertion here is about speed: CI machines differ, and the figures are for
people to read; what a test can hold is that each figure is there and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from statemachine._bench_baselines import (
    CHANGES_PER_INSTANCE,
    CYCLE,
    floor_table,
    percentile,
    run_floor,
    run_naive,
)
from statemachine._bench_ism import run_ism_memory, run_postgres, run_sqlite, run_timers
from statemachine.bench import TARGETS
from statemachine.cli import main
from tests.postgres_support import require_postgres

NAMED = (
    "changes_vs_naive_transitions",
    "changes_vs_floor",
    "setup_vs_add_model",
    "memory_vs_naive",
    "group_commit_vs_per_change",
    "timer_p99_lateness_ms",
    "fsync_median_ms",
)
ROW_FIGURES = ("setup_s", "changes_per_s", "actions_per_s", "latency_p50_ms", "latency_p99_ms")


def _check_target(name: str, target: dict[str, Any], value: float) -> None:
    rule, bound = TARGETS[name]
    assert (target["value"], target["target"], target["rule"]) == (value, bound, rule)
    met = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[rule]
    assert target["met"] is met


def test_bench_quick_reports_ratios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The quick mode runs every set-up in one invocation and writes every figure by name, the
    issue's ratios at the top level, and a targets map that agrees with them."""
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--sizes", "200", "--store-instances", "40", "--timers", "2000",
            "--timer-fleet", "100", "--store-dir", str(tmp_path), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    figures = json.loads(out.read_text())
    for key in NAMED:
        assert figures[key] > 0, key
    assert figures["headline_instances"] == 200
    rows = figures["sizes"]["200"]
    assert set(rows) == {"floor", "naive", "ism_memory"}
    store = figures["sizes"]["40"]
    assert set(store) == {"floor", "naive", "sqlite_per_change", "sqlite_group_commit"}
    for row in [*rows.values(), *store.values()]:
        for figure in ROW_FIGURES:
            assert row[figure] > 0, figure
        assert row["changes_per_run"] == CHANGES_PER_INSTANCE * row["instances"]
        assert row["actions_per_run"] == len(CYCLE) * row["instances"]
    for name in ("floor", "naive", "ism_memory"):
        assert rows[name]["bytes_per_idle_instance"] > 0
    ism = rows["ism_memory"]
    assert ism["notifications_per_run"] >= ism["actions_per_run"] * 2  # a .start and an .end
    assert ism["ratios"]["changes_per_s_vs_naive"] == pytest.approx(
        figures["changes_vs_naive_transitions"]
    )
    assert figures["setup_vs_add_model"] == pytest.approx(rows["naive"]["setup_s"] / ism["setup_s"])
    assert set(figures["targets"]) == set(TARGETS)
    for name, target in figures["targets"].items():
        _check_target(name, target, figures[name])
    for timers in figures["timers"].values():
        assert timers["fired"] == 2000
        assert timers["lateness_p99_ms"] >= timers["lateness_p50_ms"] >= 0
    printed = capsys.readouterr().out
    assert "ratios (this row / baseline, same size):" in printed
    assert "group commit x" in printed
    for name in TARGETS:
        assert name in printed


def test_floor_and_naive_make_eight_changes_per_instance() -> None:
    """Both baselines take every instance through the whole cycle, one event per change."""
    for run in (run_floor, run_naive):
        figures = run(25)
        assert figures.changes == CHANGES_PER_INSTANCE * 25 == 8 * 25
        assert figures.actions == len(CYCLE) * 25
        assert figures.bytes_per_idle_instance is not None
        assert figures.bytes_per_idle_instance > 0
        assert figures.memory_sample == 25


def test_ism_memory_counts_its_changes_and_end_notifications() -> None:
    """ism's run counts the engine's own state changes and stamps one latency per action."""
    figures = run_ism_memory(20)
    assert figures.changes == 8 * 20
    assert figures.actions == 4 * 20
    assert figures.notifications >= 2 * figures.actions


@pytest.mark.parametrize("group", [False, True], ids=["per-change", "group-commit"])
def test_durable_rows_audit_every_change(tmp_path: Path, group: bool) -> None:
    """The SQLite rows count the cycle's changes after the audited creates, and every action's
    ``.end`` arrives through the outbox (one latency each); the files are removed after."""
    figures = run_sqlite(10, str(tmp_path), group)
    assert (figures.changes, figures.actions) == (8 * 10, 4 * 10)
    assert figures.latency_p99_ms >= figures.latency_p50_ms > 0
    assert list(tmp_path.iterdir()) == []


def test_postgres_rows_run_in_a_schema_of_their_own() -> None:
    """``--pg-url``'s rows run the same cycle on PostgreSQL (skips without a server, fails
    instead under ISM_REQUIRE_SERVICES=1, as the other PostgreSQL tests)."""
    figures = run_postgres(10, require_postgres(), True)
    assert (figures.changes, figures.actions) == (8 * 10, 4 * 10)


def test_floor_table_is_the_lifecycle() -> None:
    """The floor's table leads the cycle back to active, as the lifecycle does."""
    table = floor_table()
    state = "active"
    for action in CYCLE:
        state = table[(state, action)]
        state = table[(state, f"{action}:done")]
    assert state == "active"
    assert ("stopped", "pause") not in table  # a guard: pause is refused when stopped


def test_percentile_is_nearest_rank() -> None:
    """p50 and p99 are observed values (nearest rank), never interpolated past them."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 99) == 3.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)


def test_timers_fire_every_deadline() -> None:
    """Every armed deadline fires once, lateness is measured for each, under either GC."""
    for freeze in (False, True):
        figures = run_timers(500, 20, 5, 0.2, freeze)
        assert figures.fired == 500
        assert figures.lateness_max_ms >= figures.lateness_p99_ms >= figures.lateness_p50_ms
        assert figures.gc_frozen is freeze


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_store_dir_exits_2_with_one_line(tmp_path: Path, kind: str) -> None:
    """A --store-dir that is missing or not a directory is refused before anything runs."""
    target = tmp_path / "nowhere"
    if kind == "file":
        target.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "statemachine", "bench", "--quick", "--store-dir", str(target)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    expected = "does not exist" if kind == "missing" else "is not a directory"
    assert errors == [f"ism bench: error: argument --store-dir: {target} {expected}"]
    assert proc.stdout == ""
