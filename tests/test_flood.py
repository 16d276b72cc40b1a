"""Floods: 10,000 requests at one instance and at random instances, on virtual time.

Every request gets an answer (accepted and then ended, or a typed refusal) and memory stays
bounded: the peak traced by ``tracemalloc`` during a flood of 10,000 requests is compared with
the peak of a flood of 2,000 made the same way. State kept per request (a log of refusals, a
handle never released, a counter per request) would grow five-fold; in-flight work, which
``max_actions`` bounds, does not grow with the number of requests.

The engine runs on a durable store (SQLite), as a service would: every refusal and change is
audited there, not in memory. (The memory store keeps its audit log in memory: it *is* the
storage, so it grows with the requests by design.)
"""

from __future__ import annotations

import collections
import gc
import random
import tempfile
import tracemalloc
from pathlib import Path

import anyio
import attrs

from drivers.simulator import FaultRule, SimHost, SimulatorDriver
from statemachine.clock import VirtualClock, run_virtual
from statemachine.config import Config
from statemachine.engine import ActionHandle, Engine, StepInfo
from statemachine.errors import ActionRefused, IsmError
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from statemachine.notify import Notification
from statemachine.store import SqliteStore
from tests.support import ADMIN, LARGE, OTHER, OWNER, SMALL

ACTIONS = sorted(
    {a.public_name for a in DEFAULT_LIFECYCLE.actions if not a.internal and not a.creates}
    - {"delete", "force_delete"}  # the flood keeps its instances: a deleted one refuses all
)
KIB = 1024


class CountingSink:
    """Counts notifications and keeps none: the flood measures the engine, not a capture."""

    def __init__(self) -> None:
        self.count = 0

    def send(self, notification: Notification) -> None:
        self.count += 1

    def close(self) -> None:
        pass


@attrs.frozen
class Flood:
    """What one flood did: its answers by kind, and the memory it took above the setup's."""

    requests: int
    answers: collections.Counter[str]
    peak: int
    retained: int
    max_in_flight: int
    notifications: int

    @property
    def accepted(self) -> int:
        """Requests the engine accepted."""
        return self.answers["accepted"]

    @property
    def refused(self) -> int:
        """Requests refused with a typed ActionRefused."""
        return sum(v for k, v in self.answers.items() if k.startswith("refused:"))

    @property
    def ended(self) -> int:
        """Accepted actions that ended (ok, failed or preempted)."""
        return sum(v for k, v in self.answers.items() if k.startswith("ended:"))


async def _flood(
    requests: int,
    instances: int,
    *,
    burst: int,
    max_actions: int,
    store: Path,
    hold: bool = False,
    seed: int = 0,
) -> Flood:
    """Fire ``requests`` random actions, in bursts of up to ``burst`` with no time between
    them and a few virtual seconds between bursts, from owners, admins and other projects."""
    rng = random.Random(seed)
    hosts = [SimHost(f"compute{i}", vcpus=1000, memory_mb=10**6, disk_gb=10**5) for i in range(4)]
    sim = SimulatorDriver(hosts=hosts, seed=seed)
    sink = CountingSink()
    config = Config(max_actions=max_actions)
    gate = anyio.Event()
    holding = False

    async def held(_: StepInfo) -> None:  # with ``hold``: every action waits for the burst
        if holding:
            await gate.wait()

    engine = Engine(
        sim, config=config, sinks=[sink], clock=VirtualClock(), seed=seed,
        store=SqliteStore(store), hooks=[held],
    )  # fmt: skip
    answers: collections.Counter[str] = collections.Counter()
    in_flight = 0

    async def ended(handle: ActionHandle) -> None:
        result = await handle.wait()
        assert result.error is None or isinstance(result.error, IsmError), result.error
        answers[f"ended:{result.outcome}"] += 1

    async with engine:
        uuids = []
        for i in range(instances):
            created = await engine.create(OWNER, name=f"vm{i}", flavor=SMALL, image="cirros")
            uuids.append(created.instance.uuid)
        sim.faults.add(FaultRule(probability=0.02, times=None, message="flood fault"))
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        holding = hold  # the instances are there: from now on actions wait for the burst
        async with anyio.create_task_group() as tg:
            sent = 0
            while sent < requests:
                for _ in range(min(rng.randint(1, burst), requests - sent)):
                    sent += 1
                    action = rng.choice(ACTIONS)
                    params: dict[str, object] = {}
                    if action == "resize":
                        params["flavor"] = LARGE if rng.random() < 0.5 else SMALL
                    elif action == "reboot":
                        params["type"] = rng.choice(["SOFT", "HARD"])
                    ctx = rng.choice([OWNER, OWNER, ADMIN, OTHER])
                    try:
                        handle = await engine.submit(ctx, action, rng.choice(uuids), params)
                    except ActionRefused as exc:
                        answers[f"refused:{type(exc).__name__}"] += 1
                    else:
                        answers["accepted"] += 1
                        tg.start_soon(ended, handle)
                in_flight = max(in_flight, engine.statistics().running_actions)
                gate.set()
                await anyio.sleep(rng.expovariate(1 / 5))
        await engine.wait_idle(timeout=86400)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    return Flood(requests, answers, peak - base, current - base, in_flight, sink.count)


def flood(
    requests: int,
    instances: int,
    *,
    burst: int = 50,
    max_actions: int = 256,
    hold: bool = False,
) -> Flood:
    """One flood on a fresh virtual-time loop and a fresh store, with tracemalloc tracing it."""
    with tempfile.TemporaryDirectory() as tmp:
        tracemalloc.start()
        try:
            return run_virtual(
                lambda: _flood(
                    requests, instances, burst=burst, max_actions=max_actions,
                    store=Path(tmp) / "flood.db", hold=hold,
                )
            )  # fmt: skip
        finally:
            tracemalloc.stop()


def _check_answers(report: Flood) -> None:
    """Every request answered: accepted ones all ended, the rest refused with a type."""
    assert report.accepted + report.refused == report.requests, report.answers
    assert report.ended == report.accepted, report.answers
    assert report.accepted > 0
    assert report.notifications > 0


def _floods(instances: int) -> tuple[Flood, Flood]:
    flood(500, instances)  # warm up: caches filled once (regexes, payload templates) are not growth
    return flood(2_000, instances), flood(10_000, instances)


def test_flood_at_one_instance_is_answered_in_bounded_memory() -> None:
    """10,000 actions at one instance: every one answered; the traced peak does not grow with
    the number of requests (at most 1.5 x the 2,000-request peak, plus 256 KiB)."""
    small, large = _floods(instances=1)
    for report in (small, large):
        _check_answers(report)
    assert large.answers["refused:InvalidState"] > 0  # one instance: most find it busy
    assert large.peak <= 1.5 * small.peak + 256 * KIB, (small.peak, large.peak)
    assert large.retained <= small.retained + 256 * KIB, (small.retained, large.retained)


def test_flood_at_random_instances_is_answered_in_bounded_memory() -> None:
    """10,000 actions at 100 random instances: the same two properties."""
    small, large = _floods(instances=100)
    for report in (small, large):
        _check_answers(report)
    assert large.peak <= 1.5 * small.peak + 256 * KIB, (small.peak, large.peak)
    assert large.retained <= small.retained + 256 * KIB, (small.retained, large.retained)


def test_a_burst_is_held_to_max_actions_by_busy_refusals() -> None:
    """10,000 requests at once at one instance: actions that set no task_state (lock, unlock,
    crash dump) would all run together; max_actions refuses the rest with Busy, so the peak is
    bounded by the in-flight limit (here 128 actions, under 24 KiB each), not by the burst."""
    flood(500, 1, burst=500, max_actions=128, hold=True)  # warm up
    report = flood(10_000, 1, burst=10_000, max_actions=128, hold=True)
    _check_answers(report)
    assert report.answers["refused:Busy"] > 0
    assert report.max_in_flight <= 128
    assert report.peak <= 128 * 24 * KIB + 512 * KIB, report.peak
