"""One engine process of the cross-process compare-and-swap test (``test_postgres_fleet.py``).

``python -m tests.cas_worker URL WRITER UUIDS.json`` opens a real :class:`Engine` named
``WRITER`` on the PostgreSQL store at ``URL``, puts the instances listed in ``UUIDS.json`` on its
simulated hypervisor, prints ``ready`` and waits for a line ``go`` on standard input (the
barrier that starts all engines together). It then submits ``stop`` on every listed instance at
once, each with a request id of its own, and prints one JSON line: which stops it won, which
it lost to a :class:`Conflict`, anything else that happened, and its timings.

The stops go in list order, ``WINDOW`` at a time: two engines given the same order reach each
shared instance at about the same moment (submitting all at once would decide every race by
whose first batch commits first), and each batch still holds several units, won and lost ones
mixed, so a unit that loses in storage rolls back alone inside a batch of winners.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from drivers.simulator import LatencyModel, SimHost, SimulatorDriver
from statemachine.clock import VirtualClock, run_virtual, to_thread
from statemachine.config import Config
from statemachine.engine import Engine
from statemachine.errors import Conflict
from statemachine.model import RequestContext
from statemachine.store import PostgresStore, Write

OWNER = RequestContext(user_id="u1", project_id="p1", roles=frozenset({"member"}))
KEY = b"fleet-test-key"
HOST = "compute1"
WINDOW = 16
"""Stops in flight at once per engine."""


class TallyingStore(PostgresStore):
    """The PostgreSQL store, counting batches in which won and lost units committed together."""

    mixed = 0

    async def persist(
        self, writes: Sequence[Write], *, sent: Sequence[str] = ()
    ) -> list[Conflict | None]:
        results = await super().persist(writes, sent=sent)
        if None in results and any(r is not None for r in results):
            self.mixed += 1
        return results


def hypervisor() -> SimulatorDriver:
    """One roomy simulated host at zero latency (the test is about the store, not the host)."""
    return SimulatorDriver(
        hosts=[SimHost(HOST, vcpus=10**6, memory_mb=10**9, disk_gb=10**9)],
        latency=LatencyModel(scale=0.0),
    )


async def run(url: str, writer: str, uuids: list[str]) -> dict[str, Any]:
    """Open the engine, wait for ``go``, race the stops, report."""
    sim = hypervisor()
    # Every engine reaches every guest here: this test is about the store's compare-and-swap,
    # not about which engine serves which host. The guests are on the hypervisor before the
    # engine starts, so its start-up power sync finds them as recorded and writes nothing.
    reader = PostgresStore(url, readonly=True)
    await reader.open(writer=writer)
    for inst in reader.all():
        await sim.spawn(inst.guest())
    await reader.close()
    store = TallyingStore(url, hmac_key=KEY)
    engine = Engine(
        sim,
        store=store,
        # no periodic power sync: only the stops race
        config=Config(service_host=writer, sync_power_state_interval=-1),
        clock=VirtualClock(),
    )
    won: list[str] = []
    lost: list[str] = []
    other: list[str] = []
    async with engine:
        print("ready", flush=True)
        if (await to_thread(sys.stdin.readline)).strip() != "go":
            raise SystemExit(f"{writer}: expected 'go' on standard input")
        started = time.perf_counter()

        window = anyio.CapacityLimiter(WINDOW)  # FIFO: stops start in list order

        async def stop(uuid: str) -> None:
            async with window:
                await attempt(uuid)

        async def attempt(uuid: str) -> None:
            ctx = attrs.evolve(OWNER, request_id=f"{writer}:{uuid}")
            try:
                result = await engine.act(ctx, "stop", uuid)
            except Conflict:
                lost.append(uuid)
                return
            except Exception as exc:  # reported to the test, which fails on any
                other.append(f"{uuid}: {type(exc).__name__}: {exc}")
                return
            (won if result.ok else other).append(uuid)

        async with anyio.create_task_group() as tg:
            for uuid in uuids:
                tg.start_soon(stop, uuid)
        elapsed = time.perf_counter() - started
        commits = engine._committer.statistics()
    return {
        "writer": writer,
        "won": won,
        "lost": lost,
        "other": other,
        "seconds": elapsed,
        "transactions": commits.transactions,
        "largest_batch": commits.largest_batch,
        "mixed_batches": store.mixed,
    }


def main(argv: list[str]) -> int:
    """Run one engine; print its report as the last line of standard output."""
    url, writer, listing = argv
    uuids = json.loads(Path(listing).read_text(encoding="utf-8"))
    report = run_virtual(run, url, writer, uuids)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
