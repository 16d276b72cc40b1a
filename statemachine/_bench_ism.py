"""The benchmark's ism side: the engine on the memory store, on SQLite (a commit per change or
group commit), on PostgreSQL, and one timer service holding a large number of deadlines while a
fleet is driven on the same loop.

Every set-up drives the baselines' cycle through the public API (``Engine.adopt``,
``Engine.act``) on the simulator at zero latency, so what is measured is the engine itself:
guards, compare-and-swap, placement, a task per action and two Nova-shaped notifications.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import gc
import os
import random
import statistics
import time
import uuid as uuidlib
from pathlib import Path

import anyio
import attrs

from drivers.base import PowerState
from drivers.simulator import LatencyModel, SimHost, SimulatorDriver

from ._bench_baselines import CYCLE, Figures, measure_memory, peak_rss_mb, percentile
from ._bench_profile import Breakdown, Measure, profile_changes
from ._timers import TimerService
from .config import Config
from .engine import Engine
from .model import Flavor, Instance, RequestContext
from .notify import Notification
from .sinks import MemoryCapture, Sink
from .states import VmState
from .store import PostgresStore, SqliteStore, Store

__all__ = [
    "TimerFigures",
    "fsync_latency",
    "postgres_settings",
    "profile_ism_memory",
    "run_ism_memory",
    "run_postgres",
    "run_sqlite",
    "run_timers",
]

OWNER = RequestContext(user_id="bench", project_id="bench", roles=frozenset({"member"}))
CAPTURE = 100_000
"""Notifications the capture keeps (the newest): every one is built and handed to the sink, but
holding all of a 100,000-instance run's would measure the garbage collector, not the engine."""


class _Stamped:
    """A sink in front of another that stamps when each action's ``.end`` notification arrives:
    the end of the latency measured from the caller's ``engine.act()``."""

    def __init__(self, inner: MemoryCapture) -> None:
        self.inner = inner
        self.started: dict[str, list[float]] = {}
        """Per instance, the start of each action still to end, oldest first (with an outbox an
        action's ``.end`` may arrive after the caller has started the next one)."""
        self.latencies: list[float] = []
        self.received = 0

    def send(self, notification: Notification) -> None:
        self.inner.send(notification)
        self.received += 1
        if notification.event_type.endswith(".end"):
            pending = self.started.get(notification.instance_uuid)
            if pending:
                self.latencies.append(time.perf_counter() - pending.pop(0))

    def close(self) -> None:
        self.inner.close()


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


def _driver(hosts: list[str]) -> SimulatorDriver:
    return SimulatorDriver(
        hosts=[SimHost(h, vcpus=10**6, memory_mb=10**9, disk_gb=10**9) for h in hosts],
        latency=LatencyModel(scale=0.0),
    )


def _hosts(n: int) -> list[str]:
    return [f"compute{i}" for i in range(max(1, n // 1000))]


async def _adopted_fleet(n: int, sinks: list[Sink]) -> tuple[Engine, list[str], float]:
    """An engine holding ``n`` idle instances (built and ``Engine.adopt``-ed: the seconds that
    took are returned) whose guests run on a zero-latency simulator."""
    hosts = _hosts(n)
    driver = _driver(hosts)
    engine = Engine(driver, sinks=sinks, config=Config())
    t0 = time.perf_counter()
    records = _records(n, hosts)
    engine.adopt(records)
    setup = time.perf_counter() - t0
    for r in records:
        await driver.spawn(r.guest())
    return engine, [r.uuid for r in records], setup


async def _cycle(engine: Engine, stamp: _Stamped, uuids: list[str]) -> tuple[float, int]:
    """Every instance through the cycle at once: the elapsed seconds and the actions done."""
    clock = time.perf_counter
    done = 0

    async def one(uuid: str) -> None:
        nonlocal done
        pending = stamp.started.setdefault(uuid, [])
        for action in CYCLE:
            pending.append(clock())
            await engine.act(OWNER, action, uuid)
            done += 1

    t0 = clock()
    async with anyio.create_task_group() as tg:
        for uuid in uuids:
            tg.start_soon(one, uuid)
    return clock() - t0, done


def _figures(
    setup: str, n: int, setup_s: float, changes: int, run: tuple[float, int], stamp: _Stamped
) -> Figures:
    elapsed, actions = run
    return Figures(
        setup=setup,
        instances=n,
        setup_s=setup_s,
        changes=changes,
        actions=actions,
        elapsed_s=elapsed,
        latency_p50_ms=percentile(stamp.latencies, 50) * 1000,
        latency_p99_ms=percentile(stamp.latencies, 99) * 1000,
        bytes_per_idle_instance=None,
        memory_sample=0,
        peak_rss_mb=peak_rss_mb(),
        notifications=stamp.received,
    )


def _adopted_bytes(n: int) -> float:
    hosts = _hosts(n)
    probe = Engine(_driver(hosts), config=Config())  # built first: not per instance
    _, mem = measure_memory(lambda: probe.adopt(_records(n, hosts)))
    return mem


async def _ism_memory(n: int, memory: bool) -> Figures:
    mem = _adopted_bytes(n) if memory else None
    stamp = _Stamped(MemoryCapture(maxlen=CAPTURE))
    engine, uuids, setup = await _adopted_fleet(n, [stamp])
    async with engine:
        before = engine.statistics().state_changes
        run = await _cycle(engine, stamp, uuids)
        changes = engine.statistics().state_changes - before
    figures = _figures("ism_memory", n, setup, changes, run, stamp)
    if mem is None:
        return figures
    return attrs.evolve(figures, bytes_per_idle_instance=mem / n, memory_sample=n)


def profile_ism_memory(n: int) -> Breakdown:
    """Where the memory-store cycle of ``n`` instances spends its time (``ism bench
    --profile``): the same set-up as :func:`run_ism_memory`, the cycle alone measured."""

    def run(measure: Measure) -> int:
        async def main() -> int:
            stamp = _Stamped(MemoryCapture(maxlen=CAPTURE))
            engine, uuids, _ = await _adopted_fleet(n, [stamp])
            async with engine:
                before = engine.statistics().state_changes
                with measure():
                    await _cycle(engine, stamp, uuids)
                return engine.statistics().state_changes - before

        return asyncio.run(main())

    return profile_changes(run)


def run_ism_memory(n: int, memory: bool = True) -> Figures:
    """The real engine on the memory store, notifications built and captured in memory. Setup
    is building ``n`` idle records and ``Engine.adopt`` (the bulk path); memory is what adopting
    them leaves allocated, records included."""
    return asyncio.run(_ism_memory(n, memory))


# -- durable stores: audited state changes, group commit against a commit per change ---------


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


async def _store_run(n: int, store: Store, group: bool, setup_name: str) -> Figures:
    driver = _driver(["compute1"])
    stamp = _Stamped(MemoryCapture(maxlen=10_000))
    engine = Engine(driver, store=store, config=Config(group_commit=group), sinks=[stamp])
    flavor = {"vcpus": 1, "memory_mb": 256, "root_gb": 1}
    async with engine:
        uuids: list[str] = []

        async def create(i: int) -> None:
            result = await engine.create(OWNER, name=f"vm{i}", flavor=flavor, image="cirros")
            uuids.append(result.instance.uuid)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(create, i)
        setup = time.perf_counter() - t0
        stamp.latencies.clear()
        stamp.received = 0
        before = engine.statistics().state_changes
        run = await _cycle(engine, stamp, uuids)
        changes = engine.statistics().state_changes - before
        await engine.wait_delivered(timeout=60)
    return _figures(setup_name, n, setup, changes, run, stamp)


def run_sqlite(n: int, directory: str, group: bool) -> Figures:
    """The cycle on a fresh SQLite file (WAL, synchronous=FULL): every change audited and its
    notifications in the outbox, committed in groups or one transaction per change. Setup is
    ``n`` creates through the engine (audited too): the store has no bulk path."""
    path = Path(directory) / f"bench-{'group' if group else 'single'}-{os.getpid()}.db"
    name = "sqlite_group_commit" if group else "sqlite_per_change"
    try:
        return asyncio.run(_store_run(n, SqliteStore(path), group, name))
    finally:
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


async def postgres_settings_async(url: str) -> str:
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


def postgres_settings(url: str) -> str:
    """:func:`postgres_settings_async` on a loop of its own."""
    return asyncio.run(postgres_settings_async(url))


async def _postgres_run(n: int, url: str, group: bool) -> Figures:
    """One run in a schema of its own, dropped afterwards (the database is someone's)."""
    import asyncpg

    from .store.postgres import _split_url

    schema = f"ism_bench_{uuidlib.uuid4().hex[:12]}"
    name = "postgres_group_commit" if group else "postgres_per_change"
    try:
        return await _store_run(n, PostgresStore(url, schema=schema), group, name)
    finally:
        conn = await asyncpg.connect(_split_url(url)[0], timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def run_postgres(n: int, url: str, group: bool) -> Figures:
    """The cycle on a fresh schema of the PostgreSQL database at ``url``."""
    return asyncio.run(_postgres_run(n, url, group))


# -- one timer service, many deadlines, a fleet running beside it ---------------------------


@attrs.frozen
class TimerFigures:
    """How late the deadlines of one :class:`~statemachine._timers.TimerService` fired, on the
    real clock, while a fleet was driven on the same loop."""

    timers: int
    fleet: int
    concurrency: int
    """Actions in flight at once (the fleet's size: every instance at once)."""
    spread_s: float
    gc_frozen: bool
    fired: int
    lateness_p50_ms: float
    lateness_p99_ms: float
    lateness_max_ms: float
    service_max_lateness_ms: float
    """The service's own account (lateness as it noticed the batch, before the callbacks)."""
    fleet_changes_per_s: float
    gc_collections: int
    gc_max_pause_ms: float
    peak_rss_mb: float


class _GcPauses:
    """Times each collection through ``gc.callbacks``: the pauses that make timers late."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._t0)


async def _timers(
    count: int, fleet: int, concurrency: int, spread: float, freeze: bool
) -> TimerFigures:
    engine, uuids, _ = await _adopted_fleet(fleet, [MemoryCapture(maxlen=10_000)])
    service = TimerService(lateness_window=count + 1)
    loop = asyncio.get_running_loop()
    lateness: list[float] = []
    all_fired = anyio.Event()

    def fired(when: float) -> None:
        lateness.append(loop.time() - when)
        if len(lateness) == count:
            all_fired.set()

    pauses = _GcPauses()
    changes = 0
    try:
        async with engine:
            # the engine's start-up power sync (every instance asked once) is over before the
            # deadlines are armed: what is measured is the fleet running, not the start
            with anyio.fail_after(600):
                while engine.statistics().power_syncs < 1:  # noqa: ASYNC110 - no event to wait on
                    await anyio.sleep(0.01)
            lead = 1.0  # arming takes a moment; the fleet is up to speed before the first
            start = anyio.current_time() + lead
            offsets = [spread * i / count for i in range(count)]
            random.Random(0).shuffle(offsets)  # armed out of order, as a fleet's deadlines are
            for offset in offsets:
                service.call_at(start + offset, functools.partial(fired, start + offset))
            del offsets
            if freeze:
                gc.collect()
                gc.freeze()
            gc.callbacks.append(pauses)
            before = engine.statistics().state_changes
            t0 = time.perf_counter()
            slots = uuids[: min(concurrency, fleet)]
            rest = iter(uuids[len(slots) :])

            async def worker(uuid: str) -> None:
                # each worker takes its instance round the cycle, then the next idle one: at
                # most `concurrency` actions in flight, every instance of the fleet held
                i = 0
                while not all_fired.is_set():
                    await engine.act(OWNER, CYCLE[i % len(CYCLE)], uuid)
                    i += 1
                    if i % len(CYCLE) == 0:
                        uuid = next(rest, uuid)

            async with anyio.create_task_group() as tg:
                tg.start_soon(service.run)
                async with anyio.create_task_group() as fleet_tg:
                    for uuid in slots:
                        fleet_tg.start_soon(worker, uuid)
                tg.cancel_scope.cancel()
            elapsed = time.perf_counter() - t0
            changes = engine.statistics().state_changes - before
    finally:
        if pauses in gc.callbacks:
            gc.callbacks.remove(pauses)
        if freeze:
            gc.unfreeze()
    stats = service.statistics()
    return TimerFigures(
        timers=count,
        fleet=fleet,
        concurrency=min(concurrency, fleet),
        spread_s=spread,
        gc_frozen=freeze,
        fired=stats.fired,
        lateness_p50_ms=percentile(lateness, 50) * 1000,
        lateness_p99_ms=percentile(lateness, 99) * 1000,
        lateness_max_ms=max(lateness) * 1000,
        service_max_lateness_ms=stats.max_lateness * 1000,
        fleet_changes_per_s=changes / elapsed,
        gc_collections=len(pauses.pauses),
        gc_max_pause_ms=max(pauses.pauses, default=0.0) * 1000,
        peak_rss_mb=peak_rss_mb(),
    )


def run_timers(
    count: int, fleet: int, concurrency: int, spread: float, freeze: bool
) -> TimerFigures:
    """``count`` deadlines armed in one timer service over ``spread`` seconds of the real
    clock, fired while a fleet of ``fleet`` instances goes round the cycle, ``concurrency``
    actions at a time, until the last has fired. Each firing's lateness is the loop time at its
    callback minus its deadline. With ``freeze``, everything built during setup (the fleet, the
    armed deadlines) is moved out of the collector's reach by ``gc.freeze()``.

    Bounded concurrency is what a service does; with every instance in flight at once, each
    loop iteration runs one step of each and any timer waits a whole sweep of the fleet: that
    is the loop's queue, whatever the timer service does, and is reported as its own row.
    """
    return asyncio.run(_timers(count, fleet, concurrency, spread, freeze))
