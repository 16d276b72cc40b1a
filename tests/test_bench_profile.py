"""``ism bench --profile``'s breakdown: parts that add up, named from the engine's own code."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio

from drivers.simulator import LatencyModel, SimHost, SimulatorDriver
from statemachine import Config, Engine
from statemachine._bench_profile import COMPONENTS, Measure, profile_changes
from statemachine.sinks import MemoryCapture
from tests.support import OWNER

FLAVOR = {"vcpus": 1, "memory_mb": 64, "root_gb": 1}


def _fleet(n: int) -> Callable[[Measure], int]:
    def run(measure: Measure) -> int:
        async def main() -> int:
            driver = SimulatorDriver(hosts=[SimHost("h1")], latency=LatencyModel(scale=0.0))
            engine = Engine(driver, sinks=[MemoryCapture()], config=Config())
            async with engine:
                uuids = [
                    (
                        await engine.create(OWNER, name=f"vm{i}", flavor=FLAVOR, image="i")
                    ).instance.uuid
                    for i in range(n)
                ]
                before = engine.statistics().state_changes
                with measure():
                    async with anyio.create_task_group() as tg:
                        for uuid in uuids:
                            tg.start_soon(engine.act, OWNER, "stop", uuid)
                return engine.statistics().state_changes - before

        return asyncio.run(main())

    return run


def test_parts_are_measured_and_add_up_to_the_profiled_time() -> None:
    """Every named part was entered (the names match real functions), and with the rest
    they account for the profiled span, no more."""
    breakdown = profile_changes(_fleet(20))
    assert breakdown.changes == 40  # stop: accepted (powering-off), then stopped
    names = [name for name, _ in breakdown.parts]
    assert names[: len(COMPONENTS)] == [name for name, _ in COMPONENTS]
    measured = dict(breakdown.parts)
    entered = [name for name, _ in COMPONENTS if name not in ("policy",)]
    for name in entered:
        assert measured[name] > 0, name
    assert sum(measured.values()) <= breakdown.profiled_s * 1.0001
    assert breakdown.wall_s > 0
    assert 0 <= breakdown.gc_s <= breakdown.wall_s
    text = breakdown.render()
    assert "us/change" in text
    assert "cyclic GC" in text
