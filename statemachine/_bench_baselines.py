"""The benchmark's two baselines and the pieces every side shares.

The floor is what the cycle costs with nothing but a dict lookup per transition: it says how far
ism is from the cheapest thing that still checks each transition against a table. The naive
machine is what one would write first with ``transitions``: one ``AsyncMachine``, every instance
registered through ``add_model``. Both drive the same lifecycle table as ism, every instance at
once on one asyncio loop, and append a small event per transition (ism builds a full
notification instead), so the three sides do comparable work per state change.
"""

from __future__ import annotations

import asyncio
import gc
import math
import resource
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ._schema import state_name
from .lifecycle import DEFAULT_LIFECYCLE

__all__ = [
    "CHANGES_PER_INSTANCE",
    "CYCLE",
    "NAIVE_MEMORY_SAMPLE",
    "Figures",
    "floor_table",
    "measure_memory",
    "peak_rss_mb",
    "percentile",
    "run_floor",
    "run_naive",
]

CYCLE = ("stop", "start", "pause", "unpause")
"""Four actions per instance, in an order that returns each instance to active."""
CHANGES_PER_INSTANCE = 2 * len(CYCLE)
"""Each action is two guarded state changes: accepted (into its task state) and done."""
NAIVE_MEMORY_SAMPLE = 2000
"""Models the naive machine's memory is measured on: add_model's cost per model is flat, and
tracemalloc over 100,000 of them would take minutes and twice the ~9 GB they hold."""


@attrs.frozen
class Figures:
    """One set-up's figures at one size, from one run.

    ``latency_*_ms``: from the start of an action (the first trigger, or ``engine.act()``) to
    its completion event being recorded (the ``:done`` event appended; ism's ``.end``
    notification reaching the sink). With every instance driven at once this is mostly the time
    an action waits for its turn on the loop, so it grows with the fleet.
    """

    setup: str
    instances: int
    setup_s: float
    changes: int
    actions: int
    elapsed_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    bytes_per_idle_instance: float | None
    memory_sample: int
    """How many instances the memory figure was measured on (0: not measured)."""
    peak_rss_mb: float
    notifications: int = 0

    @property
    def changes_per_s(self) -> float:
        """State changes per second of the driven cycle."""
        return self.changes / self.elapsed_s

    @property
    def actions_per_s(self) -> float:
        """Completed actions per second of the driven cycle."""
        return self.actions / self.elapsed_s


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method: a value that was observed,
    so p99 of a few samples is their worst rather than an interpolation past it."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within [0, 100]")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def measure_memory(build: Callable[[], Any]) -> tuple[Any, float]:
    """What ``build()`` leaves allocated (bytes, per tracemalloc), with the object it returns.

    Collected before and after, so garbage is not counted; the caller keeps the result alive
    until it has the figure, then drops it.
    """
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return kept, float(after - before)


def peak_rss_mb() -> float:
    """This process's peak resident set in MB (each measurement runs in a fresh process)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _uuids(n: int) -> list[str]:
    return [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)]


# -- the floor: a dict table -----------------------------------------------------------------


def floor_table() -> dict[tuple[str, str], str]:
    """(state, trigger) -> destination for every non-internal transition of the lifecycle; the
    first row wins where two share a key, as in a machine that takes the first match."""
    table: dict[tuple[str, str], str] = {}
    for t in DEFAULT_LIFECYCLE.transitions():
        if t.kind != "internal":
            table.setdefault((state_name(t.source), t.trigger), state_name(t.dest))
    return table


class _Floor:
    """Instances as one dict uuid -> state name, events in one list."""

    def __init__(self, uuids: list[str]) -> None:
        self.table = floor_table()
        self.states = dict.fromkeys(uuids, "active")
        self.events: list[tuple[str, str, str]] = []

    def step(self, uuid: str, trigger: str) -> None:
        dest = self.table.get((self.states[uuid], trigger))
        if dest is None:
            raise RuntimeError(f"{trigger} refused in {self.states[uuid]}")
        self.states[uuid] = dest
        self.events.append((uuid, trigger, dest))


async def _floor_drive(floor: _Floor, latencies: list[float]) -> None:
    clock = time.perf_counter

    async def one(uuid: str) -> None:
        for action in CYCLE:
            t0 = clock()
            floor.step(uuid, action)
            await asyncio.sleep(0)  # the other instances' turn, as an awaited driver call gives
            floor.step(uuid, f"{action}:done")
            latencies.append(clock() - t0)
            await asyncio.sleep(0)

    await asyncio.gather(*(one(u) for u in list(floor.states)))


def run_floor(n: int, memory: bool = True) -> Figures:
    """The plain-Python floor: setup is filling the dict; each transition is a lookup, an
    assignment and an appended tuple, and each instance yields to the loop after each one (the
    least that lets instances interleave at all)."""
    uuids = _uuids(n)
    mem = measure_memory(lambda: dict.fromkeys(_uuids(n), "active"))[1] if memory else None
    t0 = time.perf_counter()
    floor = _Floor(uuids)
    setup = time.perf_counter() - t0
    latencies: list[float] = []
    t0 = time.perf_counter()
    asyncio.run(_floor_drive(floor, latencies))
    elapsed = time.perf_counter() - t0
    return Figures(
        setup="floor",
        instances=n,
        setup_s=setup,
        changes=len(floor.events),
        actions=len(latencies),
        elapsed_s=elapsed,
        latency_p50_ms=percentile(latencies, 50) * 1000,
        latency_p99_ms=percentile(latencies, 99) * 1000,
        bytes_per_idle_instance=None if mem is None else mem / n,
        memory_sample=n if memory else 0,
        peak_rss_mb=peak_rss_mb(),
    )


# -- the naive transitions machine -------------------------------------------------------------


class _NaiveModel:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def record(self, event: Any) -> None:
        self.events.append((event.event.name, event.state.name))


def naive_machine() -> Any:
    """One ``AsyncMachine`` over the whole lifecycle table, no models yet."""
    from transitions.extensions.asyncio import AsyncMachine

    machine = AsyncMachine(
        model=None,
        states=[state_name(s) for s in DEFAULT_LIFECYCLE.states()],
        initial="active",
        auto_transitions=False,
        send_event=True,
        after_state_change="record",
    )
    for t in DEFAULT_LIFECYCLE.transitions():
        if t.kind != "internal":
            machine.add_transition(t.trigger, state_name(t.source), state_name(t.dest))
    return machine


def _naive_models(machine: Any, count: int) -> list[_NaiveModel]:
    models = [_NaiveModel() for _ in range(count)]
    for m in models:
        machine.add_model(m)
    return models


async def _naive_drive(models: list[_NaiveModel], latencies: list[float]) -> None:
    clock = time.perf_counter

    async def one(model: Any) -> None:
        for action in CYCLE:
            t0 = clock()
            await model.trigger(action)
            await model.trigger(f"{action}:done")
            latencies.append(clock() - t0)

    await asyncio.gather(*(one(m) for m in models))


def _naive_sample_bytes(sample: int) -> float:
    probe = naive_machine()  # built first: the table itself is not per-instance memory
    _, mem = measure_memory(lambda: _naive_models(probe, sample))
    return mem


def run_naive(n: int, memory: bool = True) -> Figures:
    """``add_model`` per instance, then every instance through the cycle at once. Memory is
    measured on :data:`NAIVE_MEMORY_SAMPLE` models of a second machine (see there)."""
    sample = min(n, NAIVE_MEMORY_SAMPLE)
    mem = _naive_sample_bytes(sample) if memory else None
    machine = naive_machine()
    t0 = time.perf_counter()
    models = _naive_models(machine, n)
    setup = time.perf_counter() - t0
    latencies: list[float] = []
    t0 = time.perf_counter()
    asyncio.run(_naive_drive(models, latencies))
    elapsed = time.perf_counter() - t0
    return Figures(
        setup="naive",
        instances=n,
        setup_s=setup,
        changes=sum(len(m.events) for m in models),
        actions=len(latencies),
        elapsed_s=elapsed,
        latency_p50_ms=percentile(latencies, 50) * 1000,
        latency_p99_ms=percentile(latencies, 99) * 1000,
        bytes_per_idle_instance=None if mem is None else mem / sample,
        memory_sample=sample if memory else 0,
        peak_rss_mb=peak_rss_mb(),
    )
