"""``ism bench``: ism's engine beside a naive ``transitions`` AsyncMachine, in one run.

Both drive the same lifecycle table. The naive baseline is what one would write first: an
``AsyncMachine`` holding every instance through ``add_model``, each transition appending an
event. ism runs its real engine (guards, compare-and-swap, Nova-shaped notifications captured in
memory) on the simulator at zero latency. Figures are per machine; the ratios are what matter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import os
import statistics
import tempfile
import time
import tracemalloc
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import attrs

from drivers.base import PowerState
from drivers.simulator import LatencyModel, SimHost, SimulatorDriver

from ._schema import state_name
from .config import Config
from .engine import Engine
from .lifecycle import DEFAULT_LIFECYCLE
from .model import Flavor, Instance, RequestContext
from .sinks import MemoryCapture
from .states import VmState
from .store import PostgresStore, SqliteStore, Store

__all__ = ["BenchResult", "run_bench"]

CYCLE = ("stop", "start", "pause", "unpause")
"""Four actions, eight guarded state changes per instance (accept and done of each)."""
OWNER = RequestContext(user_id="bench", project_id="bench", roles=frozenset({"member"}))


@attrs.frozen
class BenchResult:
    """One side's figures."""

    name: str
    instances: int
    setup_s: float
    changes: int
    changes_per_s: float
    bytes_per_idle_instance: float


def _measure_memory(build: Callable[[], Any]) -> tuple[Any, float]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return kept, float(after - before)


# -- the naive baseline --------------------------------------------------------------------


class _NaiveModel:
    def __init__(self) -> None:
        self.events: list[dict[str, str]] = []

    def record(self, event: Any) -> None:
        self.events.append({"event": event.event.name, "state": event.state.name})


def _naive_machine() -> Any:
    from transitions.extensions.asyncio import AsyncMachine

    states = [state_name(s) for s in DEFAULT_LIFECYCLE.states()]
    machine = AsyncMachine(
        model=None,
        states=states,
        initial="active",
        auto_transitions=False,
        send_event=True,
        after_state_change="record",
    )
    for t in DEFAULT_LIFECYCLE.transitions():
        if t.kind != "internal":
            machine.add_transition(t.trigger, state_name(t.source), state_name(t.dest))
    return machine


async def _naive_drive(machine: Any, models: list[_NaiveModel]) -> int:
    async def one(model: _NaiveModel) -> None:
        for action in CYCLE:
            await model.trigger(action)  # type: ignore[attr-defined]
            await model.trigger(f"{action}:done")  # type: ignore[attr-defined]

    await asyncio.gather(*(one(m) for m in models))
    return sum(len(m.events) for m in models)


def bench_naive(n: int) -> BenchResult:
    """add_model per instance, then every instance through the cycle concurrently.

    Setup is timed without tracemalloc (which slows allocation); memory is measured on a
    second machine of ``min(n, 2000)`` models, since add_model's cost per model is flat.
    """

    def build(machine: Any, count: int) -> list[_NaiveModel]:
        models = [_NaiveModel() for _ in range(count)]
        for m in models:
            machine.add_model(m)
        return models

    sample = min(n, 2000)
    _, mem = _measure_memory(lambda: build(_naive_machine(), sample))
    machine = _naive_machine()
    t0 = time.perf_counter()
    models = build(machine, n)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    changes = asyncio.run(_naive_drive(machine, models))
    elapsed = time.perf_counter() - t0
    return BenchResult(
        "naive transitions AsyncMachine", n, setup, changes, changes / elapsed, mem / sample
    )


# -- ism -------------------------------------------------------------------------------------


def _records(n: int, hosts: list[str]) -> list[Instance]:
    flavor = Flavor(vcpus=1, memory_mb=256, root_gb=1)
    stamp = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return [
        Instance(
            uuid=f"00000000-0000-4000-8000-{i:012d}",
            name=f"vm{i}",
            user_id="bench",
            project_id="bench",
            flavor=flavor,
            image="cirros",
            vm_state=VmState.ACTIVE,
            task_state=None,
            power_state=PowerState.RUNNING,
            created_at=stamp,
            updated_at=stamp,
            host=hosts[i % len(hosts)],
            launched_at=stamp,
        )
        for i in range(n)
    ]


async def _ism_run(n: int) -> tuple[BenchResult, int]:
    hosts = [f"compute{i}" for i in range(max(1, n // 1000))]
    driver = SimulatorDriver(
        hosts=[SimHost(h, vcpus=10**6, memory_mb=10**9, disk_gb=10**9) for h in hosts],
        latency=LatencyModel(scale=0.0),
    )
    capture = MemoryCapture(maxlen=None)
    engine = Engine(driver, sinks=[capture], config=Config())

    def adopt_all() -> Engine:
        probe = Engine(driver, config=Config())
        probe.adopt(_records(n, hosts))
        return probe

    _, mem = _measure_memory(adopt_all)
    t0 = time.perf_counter()
    records = _records(n, hosts)
    engine.adopt(records)
    setup = time.perf_counter() - t0
    for r in records:
        await driver.spawn(r.guest())
    async with engine:
        before = engine.statistics().state_changes
        t0 = time.perf_counter()

        async def one(uuid: str) -> None:
            for action in CYCLE:
                await engine.act(OWNER, action, uuid)

        async with anyio.create_task_group() as tg:
            for r in records:
                tg.start_soon(one, r.uuid)
        elapsed = time.perf_counter() - t0
        changes = engine.statistics().state_changes - before
    result = BenchResult(
        "ism engine (memory store, notifications captured)",
        n,
        setup,
        changes,
        changes / elapsed,
        mem / n,
    )
    return result, len(capture.notifications)


def bench_ism(n: int) -> tuple[BenchResult, int]:
    """The real engine, the same cycle, notifications built and captured."""
    return asyncio.run(_ism_run(n))


# -- ism on SQLite: audited state changes, group commit vs one commit per change ------------


def fsync_latency(directory: Path, samples: int = 200) -> float:
    """The median seconds of one small write + fsync in ``directory`` (the disk under the
    store): what a commit per change pays at least once per change."""
    path = directory / ".ism-fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(samples):
            os.write(fd, b"x" * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return float(statistics.median(times))


async def _store_run(n: int, store: Store, group: bool, name: str) -> BenchResult:
    driver = SimulatorDriver(
        hosts=[SimHost("compute1", vcpus=10**6, memory_mb=10**9, disk_gb=10**9)],
        latency=LatencyModel(scale=0.0),
    )
    engine = Engine(
        driver,
        store=store,
        config=Config(group_commit=group),
        sinks=[MemoryCapture(maxlen=10_000)],
    )
    flavor = {"vcpus": 1, "memory_mb": 256, "root_gb": 1}
    async with engine:
        uuids: list[str] = []
        t0 = time.perf_counter()

        async def create(i: int) -> None:
            result = await engine.create(OWNER, name=f"vm{i}", flavor=flavor, image="cirros")
            uuids.append(result.instance.uuid)

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(create, i)
        setup = time.perf_counter() - t0
        before = engine.statistics().state_changes
        t0 = time.perf_counter()

        async def one(uuid: str) -> None:
            for action in CYCLE:
                await engine.act(OWNER, action, uuid)

        async with anyio.create_task_group() as tg:
            for uuid in uuids:
                tg.start_soon(one, uuid)
        elapsed = time.perf_counter() - t0
        changes = engine.statistics().state_changes - before
    return BenchResult(name, n, setup, changes, changes / elapsed, 0.0)


def bench_sqlite(n: int, directory: Path, *, group: bool) -> BenchResult:
    """The same cycle on a fresh SQLite file (WAL, synchronous=FULL): every change audited,
    its notifications in the outbox, committed in groups or one per transaction."""
    path = directory / f"bench-{'group' if group else 'single'}.db"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    name = "ism, SQLite, group commit" if group else "ism, SQLite, a commit per change"
    return asyncio.run(_store_run(n, SqliteStore(path), group, name))


# -- ism on PostgreSQL (issue 9): the same cycle, beside SQLite's rows ------------------------


async def _postgres_settings(url: str) -> str:
    """The server settings a commit's cost rests on, as one line."""
    import asyncpg

    from .store.postgres import _split_url

    conn = await asyncpg.connect(_split_url(url)[0], timeout=10)
    try:
        rows = [
            f"{name}={await conn.fetchval(f'SHOW {name}')}"
            for name in ("server_version", "fsync", "synchronous_commit")
        ]
    finally:
        await conn.close()
    return ", ".join(rows)


async def _postgres_run(n: int, url: str, group: bool) -> BenchResult:
    """One run in a schema of its own, dropped afterwards (the database is someone's)."""
    import asyncpg

    from .store.postgres import _split_url

    schema = f"ism_bench_{uuidlib.uuid4().hex[:12]}"
    name = "ism, PostgreSQL, group commit" if group else "ism, PostgreSQL, a commit per change"
    try:
        return await _store_run(n, PostgresStore(url, schema=schema), group, name)
    finally:
        conn = await asyncpg.connect(_split_url(url)[0], timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def bench_postgres(n: int, url: str, *, group: bool) -> BenchResult:
    """The same cycle on a fresh schema of the PostgreSQL database at ``url``: every change
    audited, its notifications in the outbox, committed in groups or one per transaction."""
    return asyncio.run(_postgres_run(n, url, group))


def run_bench(
    *,
    instances: int = 10_000,
    repeat: int = 3,
    json_out: Path | None = None,
    store_instances: int = 1000,
    store_dir: Path | None = None,
    pg_url: str | None = None,
) -> str:
    """Run every side ``repeat`` times and report medians and ratios; with ``pg_url``, the
    store runs on PostgreSQL too."""
    naive = [bench_naive(instances) for _ in range(repeat)]
    ism_runs = [bench_ism(instances) for _ in range(repeat)]
    ism = [r for r, _ in ism_runs]
    with tempfile.TemporaryDirectory(dir=store_dir) as tmp:
        directory = Path(tmp)
        fsync = fsync_latency(directory)
        single = [bench_sqlite(store_instances, directory, group=False) for _ in range(repeat)]
        grouped = [bench_sqlite(store_instances, directory, group=True) for _ in range(repeat)]

    def med(rows: list[BenchResult], field: str) -> float:
        return float(statistics.median(float(getattr(r, field)) for r in rows))

    figures = {
        "instances": instances,
        "repeat": repeat,
        "naive_setup_s": med(naive, "setup_s"),
        "naive_changes_per_s": med(naive, "changes_per_s"),
        "naive_bytes_per_idle_instance": med(naive, "bytes_per_idle_instance"),
        "ism_setup_s": med(ism, "setup_s"),
        "ism_changes_per_s": med(ism, "changes_per_s"),
        "ism_bytes_per_idle_instance": med(ism, "bytes_per_idle_instance"),
        "ism_notifications_per_run": ism_runs[0][1],
        "store_instances": store_instances,
        "fsync_median_ms": fsync * 1000,
        "sqlite_per_change_changes_per_s": med(single, "changes_per_s"),
        "sqlite_group_commit_changes_per_s": med(grouped, "changes_per_s"),
    }
    pg_lines = []
    if pg_url is not None:
        pg_single = [bench_postgres(store_instances, pg_url, group=False) for _ in range(repeat)]
        pg_grouped = [bench_postgres(store_instances, pg_url, group=True) for _ in range(repeat)]
        figures["postgres_per_change_changes_per_s"] = med(pg_single, "changes_per_s")
        figures["postgres_group_commit_changes_per_s"] = med(pg_grouped, "changes_per_s")
        figures["postgres_vs_sqlite_group_commit"] = (
            figures["postgres_group_commit_changes_per_s"]
            / figures["sqlite_group_commit_changes_per_s"]
        )
        pg_lines = [
            "",
            f"the same on PostgreSQL ({asyncio.run(_postgres_settings(pg_url))}):",
            f"{'  a commit per change':<34}{'':>10}"
            f"{figures['postgres_per_change_changes_per_s']:>12,.0f}",
            f"{'  group commit':<34}{'':>10}"
            f"{figures['postgres_group_commit_changes_per_s']:>12,.0f}",
            f"ratio: PostgreSQL x{figures['postgres_vs_sqlite_group_commit']:.2f} of SQLite, "
            "group commit",
        ]
    figures["group_commit_vs_per_change"] = (
        figures["sqlite_group_commit_changes_per_s"] / figures["sqlite_per_change_changes_per_s"]
    )
    figures["changes_vs_naive_transitions"] = (
        figures["ism_changes_per_s"] / figures["naive_changes_per_s"]
    )
    figures["setup_vs_add_model"] = figures["naive_setup_s"] / max(figures["ism_setup_s"], 1e-9)
    figures["memory_vs_naive"] = (
        figures["ism_bytes_per_idle_instance"] / figures["naive_bytes_per_idle_instance"]
    )
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return "\n".join(
        [
            f"ism bench: {instances} instances, {len(CYCLE) * 2} state changes each, "
            f"median of {repeat}",
            f"{'':<34}{'setup s':>10}{'changes/s':>12}{'B/idle inst':>13}",
            f"{'naive transitions AsyncMachine':<34}{figures['naive_setup_s']:>10.3f}"
            f"{figures['naive_changes_per_s']:>12,.0f}"
            f"{figures['naive_bytes_per_idle_instance']:>13,.0f}",
            f"{'ism engine':<34}{figures['ism_setup_s']:>10.3f}"
            f"{figures['ism_changes_per_s']:>12,.0f}{figures['ism_bytes_per_idle_instance']:>13,.0f}",
            f"ratios: changes x{figures['changes_vs_naive_transitions']:.2f} of naive; setup "
            f"x{figures['setup_vs_add_model']:.1f} faster than add_model; memory "
            f"{figures['memory_vs_naive']:.2f} of naive",
            f"(ism builds and captures {figures['ism_notifications_per_run']:,} Nova-shaped "
            "notifications per run; the naive machine appends a small dict per change)",
            "",
            f"audited state changes on SQLite (WAL, synchronous=FULL; {store_instances} "
            f"instances, the same cycle; disk fsync median {figures['fsync_median_ms']:.3f} ms):",
            f"{'  a commit per change':<34}{'':>10}"
            f"{figures['sqlite_per_change_changes_per_s']:>12,.0f}",
            f"{'  group commit':<34}{'':>10}{figures['sqlite_group_commit_changes_per_s']:>12,.0f}",
            f"ratio: group commit x{figures['group_commit_vs_per_change']:.1f} of a commit per "
            "change",
            *pg_lines,
        ]
    )
