"""``ism bench``: ism beside a plain-Python floor and a naive ``transitions`` machine, in one run.

Every side drives the same lifecycle table through the same cycle (stop, start, pause, unpause:
eight guarded state changes per instance), every instance at once on one asyncio loop:

* ``floor``: a dict (state, trigger) -> destination, a tuple appended per change
  (:mod:`statemachine._bench_baselines`);
* ``naive``: one ``transitions`` ``AsyncMachine``, ``add_model`` per instance, an event
  appended per change (same module);
* ``ism_memory``: the engine on the memory store, Nova-shaped notifications built and captured;
  ``sqlite_per_change`` / ``sqlite_group_commit``: on SQLite, every change audited and its
  notifications in the outbox (:mod:`statemachine._bench_ism`); PostgreSQL with ``--pg-url``.

Each measurement runs in a fresh process, so no side inherits another's heap (the naive
machine's 100,000 instances hold ~9 GB) or its garbage collector's state; figures are medians
of the repetitions, and every ratio is taken between figures of the same run. A separate
measurement arms many deadlines in one timer service and fires them on the real clock while a
fleet is driven on the same loop. Figures are per machine and per version; the ratios are what
matter.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TextIO, TypeVar

import attrs

from . import _bench_baselines as baselines
from . import _bench_ism as ism
from ._bench_baselines import CHANGES_PER_INSTANCE, CYCLE, NAIVE_MEMORY_SAMPLE, Figures

__all__ = ["TARGETS", "BenchPlan", "run_bench"]

T = TypeVar("T")

BASELINES = ("floor", "naive")
LABELS = {
    "floor": "floor: dict table",
    "naive": "naive transitions (add_model)",
    "ism_memory": "ism, memory store",
    "sqlite_per_change": "ism, SQLite, commit per change",
    "sqlite_group_commit": "ism, SQLite, group commit",
    "postgres_per_change": "ism, PostgreSQL, commit per chg",
    "postgres_group_commit": "ism, PostgreSQL, group commit",
}
FIGURES = (
    "setup_s",
    "changes_per_s",
    "actions_per_s",
    "bytes_per_idle_instance",
    "latency_p50_ms",
    "latency_p99_ms",
)
TARGETS: dict[str, tuple[str, float]] = {
    "changes_vs_naive_transitions": (">=", 6.0),
    "changes_vs_floor": (">=", 1 / 8),
    "setup_vs_add_model": (">=", 30.0),
    "memory_vs_naive": ("<=", 1 / 5),
    "group_commit_vs_per_change": (">=", 20.0),
    "timer_p99_lateness_ms": ("<", 10.0),
}
"""The issue's targets: name -> (comparison, bound), each checked on this run's figures."""


@attrs.frozen(kw_only=True)
class BenchPlan:
    """What one ``ism bench`` invocation measures (the CLI's flags)."""

    sizes: tuple[int, ...] = (1000, 10_000, 100_000)
    repeat: int = 3
    large: int = 50_000
    """Sizes from this up run ``repeat_large`` times: one naive run of 100,000 takes minutes."""
    repeat_large: int = 1
    store_instances: int = 1000
    store_dir: Path | None = None
    pg_url: str | None = None
    timers: int = 100_000
    timer_fleet: int = 10_000
    timer_concurrency: tuple[int, ...] = (10, 100)
    """Actions in flight while the timers fire, one pair of runs each; the first is the
    headline's: lateness is the loop's queue, so it grows with the work in flight."""
    timer_spread_s: float = 3.0
    isolate: bool = True
    """Each measurement in a fresh process (off only for tests of the report itself)."""

    def runs(self, size: int) -> int:
        """Repetitions at ``size``."""
        return self.repeat_large if size >= self.large else self.repeat


def _fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a process of its own (spawned: nothing inherited but the arguments)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


class _Runner:
    """Runs measurements, in fresh processes or not, saying on ``progress`` what it is at."""

    def __init__(self, plan: BenchPlan, progress: TextIO | None) -> None:
        self.plan = plan
        self.progress = progress
        self.started = time.perf_counter()

    def __call__(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        if self.progress is not None:
            elapsed = time.perf_counter() - self.started
            print(f"ism bench: [{elapsed:7.1f} s] {what}", file=self.progress, flush=True)
        return _fresh_process(fn, *args) if self.plan.isolate else fn(*args)


def _median_row(runs: list[Figures]) -> dict[str, Any]:
    """Each figure's median over the runs (figures are taken apart: the median setup and the
    median throughput may come from different runs)."""

    def med(get: Callable[[Figures], float | None]) -> float | None:
        values = [v for v in map(get, runs) if v is not None]
        return float(statistics.median(values)) if values else None

    first = runs[0]
    return {
        "instances": first.instances,
        "runs": len(runs),
        "changes_per_run": first.changes,
        "actions_per_run": first.actions,
        "notifications_per_run": first.notifications,
        "memory_sample": first.memory_sample,
        "setup_s": med(lambda r: r.setup_s),
        "changes_per_s": med(lambda r: r.changes_per_s),
        "actions_per_s": med(lambda r: r.actions_per_s),
        "bytes_per_idle_instance": med(lambda r: r.bytes_per_idle_instance),
        "latency_p50_ms": med(lambda r: r.latency_p50_ms),
        "latency_p99_ms": med(lambda r: r.latency_p99_ms),
        "peak_rss_mb": med(lambda r: r.peak_rss_mb),
    }


def _ratios(row: dict[str, Any], size_rows: dict[str, dict[str, Any]], name: str) -> None:
    """``<figure>_vs_<baseline>``: this row's figure over the baseline's at the same size."""
    ratios: dict[str, float] = {}
    for base in BASELINES:
        if base == name or base not in size_rows or (name == "floor" and base == "naive"):
            continue
        for figure in FIGURES:
            mine, theirs = row.get(figure), size_rows[base].get(figure)
            if mine is not None and theirs:
                ratios[f"{figure}_vs_{base}"] = mine / theirs
    if ratios:
        row["ratios"] = ratios


def _measure(plan: BenchPlan, run: _Runner) -> dict[str, Any]:
    sizes: dict[str, dict[str, Any]] = {}
    baseline_sizes = sorted({*plan.sizes, plan.store_instances})
    jobs: list[tuple[int, str, Callable[[int, bool], Figures]]] = []
    for n in baseline_sizes:
        jobs.append((n, "floor", baselines.run_floor))
        jobs.append((n, "naive", baselines.run_naive))
        if n in plan.sizes:
            jobs.append((n, "ism_memory", ism.run_ism_memory))
    for n, name, fn in jobs:
        # memory is measured in the first run only: it does not vary between runs, and
        # tracemalloc makes the naive machine's sample cost as much as its setup
        runs = [
            run(f"{name}, {n:,} instances, run {i + 1} of {plan.runs(n)}", fn, n, i == 0)
            for i in range(plan.runs(n))
        ]
        sizes.setdefault(str(n), {})[name] = _median_row(runs)
    figures: dict[str, Any] = {"sizes": sizes}
    n = plan.store_instances
    with tempfile.TemporaryDirectory(dir=plan.store_dir, prefix="ism-bench-") as tmp:
        figures["fsync_median_ms"] = ism.fsync_latency(Path(tmp)) * 1000
        for group in (False, True):
            name = "sqlite_group_commit" if group else "sqlite_per_change"
            runs = [
                run(
                    f"{name}, {n:,} instances, run {i + 1} of {plan.runs(n)}",
                    ism.run_sqlite,
                    n,
                    tmp,
                    group,
                )
                for i in range(plan.runs(n))
            ]
            sizes[str(n)][name] = _median_row(runs)
    if plan.pg_url is not None:
        figures["postgres_settings"] = ism.postgres_settings(plan.pg_url)
        for group in (False, True):
            name = "postgres_group_commit" if group else "postgres_per_change"
            runs = [
                run(
                    f"{name}, {n:,} instances, run {i + 1} of {plan.runs(n)}",
                    ism.run_postgres,
                    n,
                    plan.pg_url,
                    group,
                )
                for i in range(plan.runs(n))
            ]
            sizes[str(n)][name] = _median_row(runs)
    for size_rows in sizes.values():
        for name, row in size_rows.items():
            _ratios(row, size_rows, name)
    timers = {}
    for concurrency in plan.timer_concurrency:
        for gc_key, freeze in (("default_gc", False), ("gc_frozen", True)):
            what = (
                f"{plan.timers:,} timers, fleet of {plan.timer_fleet:,}, {concurrency} in "
                f"flight, {'gc.freeze()' if freeze else 'default GC'}"
            )
            result = run(
                what,
                ism.run_timers,
                plan.timers,
                plan.timer_fleet,
                concurrency,
                plan.timer_spread_s,
                freeze,
            )
            timers[f"{concurrency}_in_flight_{gc_key}"] = attrs.asdict(result)
    figures["timers"] = timers
    return figures


def _headline(figures: dict[str, Any], plan: BenchPlan) -> None:
    """The issue's named ratios, at the largest size run, and each target checked."""
    largest = str(max(plan.sizes))
    rows = figures["sizes"][largest]
    ism_row, naive, floor = rows["ism_memory"], rows["naive"], rows["floor"]
    store = figures["sizes"][str(plan.store_instances)]
    figures["headline_instances"] = int(largest)
    figures["changes_vs_naive_transitions"] = ism_row["changes_per_s"] / naive["changes_per_s"]
    figures["changes_vs_floor"] = ism_row["changes_per_s"] / floor["changes_per_s"]
    figures["setup_vs_add_model"] = naive["setup_s"] / ism_row["setup_s"]
    figures["memory_vs_naive"] = (
        ism_row["bytes_per_idle_instance"] / naive["bytes_per_idle_instance"]
    )
    figures["group_commit_vs_per_change"] = (
        store["sqlite_group_commit"]["changes_per_s"] / store["sqlite_per_change"]["changes_per_s"]
    )
    first = plan.timer_concurrency[0]
    figures["timer_p99_lateness_ms"] = figures["timers"][f"{first}_in_flight_default_gc"][
        "lateness_p99_ms"
    ]
    if "postgres_group_commit" in store:
        figures["postgres_vs_sqlite_group_commit"] = (
            store["postgres_group_commit"]["changes_per_s"]
            / store["sqlite_group_commit"]["changes_per_s"]
        )
    targets = {}
    for name, (rule, bound) in TARGETS.items():
        value = figures[name]
        met = value >= bound if rule == ">=" else value <= bound if rule == "<=" else value < bound
        targets[name] = {"value": value, "target": bound, "rule": rule, "met": bool(met)}
    figures["targets"] = targets


def _num(value: float | None, width: int, digits: int = 0) -> str:
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width},.{digits}f}"


def _sig(value: float | None, width: int) -> str:
    """Three significant figures, for ratios and small times that span decades."""
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width}.3g}"


def _render(figures: dict[str, Any], plan: BenchPlan) -> str:
    lines = [
        f"ism bench: {CHANGES_PER_INSTANCE} state changes per instance ({', '.join(CYCLE)}), "
        "every instance at once on one asyncio loop; each measurement in a fresh process; "
        f"median of {plan.repeat} runs ({plan.repeat_large} from {plan.large:,} instances up)",
        f"python {platform.python_version()}, {os.cpu_count()} cpus; figures are per machine "
        "and version, the ratios are what matter",
    ]
    head = (
        f"{'':<33}{'runs':>5}{'setup s':>10}{'changes/s':>11}{'actions/s':>11}"
        f"{'B/idle inst':>12}{'p50 ms':>9}{'p99 ms':>9}"
    )
    for size, rows in sorted(figures["sizes"].items(), key=lambda kv: int(kv[0])):
        lines += ["", f"{int(size):,} instances", head]
        for name, row in rows.items():
            lines.append(
                f"{LABELS[name]:<33}{row['runs']:>5}{_sig(row['setup_s'], 10)}"
                f"{_num(row['changes_per_s'], 11)}{_num(row['actions_per_s'], 11)}"
                f"{_num(row['bytes_per_idle_instance'], 12)}{_num(row['latency_p50_ms'], 9, 1)}"
                f"{_num(row['latency_p99_ms'], 9, 1)}"
            )
        lines.append("ratios (this row / baseline, same size):")
        lines.append(
            f"{'':<33}{'vs':>7}{'setup':>10}{'changes/s':>11}{'actions/s':>11}"
            f"{'memory':>12}{'p50':>9}{'p99':>9}"
        )
        for name, row in rows.items():
            ratios = row.get("ratios", {})
            for base in BASELINES:
                if f"changes_per_s_vs_{base}" not in ratios:
                    continue
                cells = [
                    _sig(ratios.get(f"{f}_vs_{base}"), w)
                    for f, w in zip(FIGURES, (10, 11, 11, 12, 9, 9), strict=True)
                ]
                lines.append(f"{'  ' + LABELS[name]:<33}{base:>7}{''.join(cells)}")
    naive_sampled = any(
        rows["naive"]["memory_sample"] < rows["naive"]["instances"]
        for rows in figures["sizes"].values()
    )
    lines += [
        "",
        "setup: floor fills a dict; naive calls add_model per instance; ism builds the records "
        "and Engine.adopt()s them; on SQLite, every instance is an audited create.",
        "B/idle inst: tracemalloc, what the idle instances leave allocated"
        + (
            f" (naive: measured on {NAIVE_MEMORY_SAMPLE:,} models, its cost per model is flat)"
            if naive_sampled
            else ""
        )
        + ".",
        "p50/p99 ms: from an action's start (first trigger; engine.act() called) to its "
        "completion being recorded (the :done event appended; the .end notification at the "
        "sink).",
        "",
        f"audited state changes on SQLite (WAL, synchronous=FULL; {plan.store_instances:,} "
        f"instances): disk fsync median {figures['fsync_median_ms']:.3f} ms",
        f"ratio: group commit x{figures['group_commit_vs_per_change']:.1f} of a commit per change",
    ]
    if "postgres_settings" in figures:
        lines.append(
            f"PostgreSQL ({figures['postgres_settings']}): group commit "
            f"x{figures['postgres_vs_sqlite_group_commit']:.2f} of SQLite's"
        )
    lines += ["", "timers: one TimerService, deadlines on the real clock, fleet on the same loop"]
    for t in figures["timers"].values():
        lines.append(
            f"  {t['timers']:,} deadlines over {t['spread_s']:g} s, fleet of {t['fleet']:,} "
            f"({t['concurrency']:,} actions in flight), "
            f"{'gc frozen' if t['gc_frozen'] else 'default gc'}: lateness p50 "
            f"{t['lateness_p50_ms']:.1f} ms, p99 {t['lateness_p99_ms']:.1f} ms, max "
            f"{t['lateness_max_ms']:.1f} ms; {t['gc_collections']} collections, longest "
            f"{t['gc_max_pause_ms']:.1f} ms; fleet {t['fleet_changes_per_s']:,.0f} changes/s"
        )
    lines += ["", f"targets (ratios at {figures['headline_instances']:,} instances):"]
    for name, t in figures["targets"].items():
        lines.append(
            f"  {name:<30}{t['value']:>10.3g}  {t['rule']} {t['target']:.3g}  "
            f"{'met' if t['met'] else 'NOT met'}"
        )
    lines.append(f"wall time {figures['wall_s']:.0f} s")
    return "\n".join(lines)


def run_bench(
    plan: BenchPlan, *, json_out: Path | None = None, progress: TextIO | None = sys.stderr
) -> str:
    """Measure everything ``plan`` names; write the JSON; return the report."""
    runner = _Runner(plan, progress)
    figures: dict[str, Any] = {
        "settings": {
            **{k: v for k, v in attrs.asdict(plan).items() if k not in ("store_dir", "pg_url")},
            "sizes": list(plan.sizes),
            "postgres": plan.pg_url is not None,
            "cycle": list(CYCLE),
            "changes_per_instance": CHANGES_PER_INSTANCE,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
    }
    figures.update(_measure(plan, runner))
    _headline(figures, plan)
    figures["wall_s"] = time.perf_counter() - runner.started
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return _render(figures, plan)
