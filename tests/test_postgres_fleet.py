"""Several engine processes on one PostgreSQL store: the compare-and-swap decides every race.

Three engine processes (``tests/cas_worker.py``), each a real :class:`Engine` with its own
writer name, share one schema. Each of 1,000 instances is stopped by two of them at once. Each
engine's working set is its own cache and never sees the other's change, so both stops pass
the guards and reach the compare-and-swap in storage; there, exactly one must win.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

from drivers.base import PowerState
from statemachine.clock import VirtualClock, run_virtual
from statemachine.config import Config
from statemachine.engine import Engine
from statemachine.states import VmState
from statemachine.store import PostgresStore
from tests.cas_worker import KEY, OWNER, hypervisor

ROOT = Path(__file__).resolve().parent.parent
PAIRS = 1000
ENGINES = ("engine0", "engine1", "engine2")
DEADLINE = 240.0
"""Seconds the whole race may take before the test gives up (it takes far less)."""


def _create(url: str, n: int) -> list[str]:
    """``n`` active instances, created through an engine (writer ``setup``), in name order."""

    async def main() -> list[str]:
        engine = Engine(
            hypervisor(),
            store=PostgresStore(url, hmac_key=KEY),
            config=Config(service_host="setup", sync_power_state_interval=-1),
            clock=VirtualClock(),
        )
        made: dict[int, str] = {}
        async with engine:

            async def one(i: int) -> None:
                result = await engine.create(
                    OWNER, name=f"vm{i}", flavor={"vcpus": 1, "memory_mb": 64, "root_gb": 1},
                    image="cirros",
                )  # fmt: skip
                made[i] = result.instance.uuid

            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
        return [made[i] for i in range(n)]

    return run_virtual(main)


def _line(stream: IO[str], deadline: float) -> str:
    """One line from a worker's output, waiting at most until ``deadline`` (monotonic)."""
    remaining = deadline - time.monotonic()
    ready, _, _ = select.select([stream], [], [], max(0.0, remaining))
    if not ready:
        raise AssertionError("a worker did not answer in time")
    return stream.readline()


def _kill(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _race(url: str, uuids: list[str], tmp_path: Path) -> tuple[list[dict[str, Any]], float]:
    """Start the engines, release them together, collect their reports."""
    deadline = time.monotonic() + DEADLINE
    with contextlib.ExitStack() as stack:
        procs: list[subprocess.Popen[str]] = []
        for k, name in enumerate(ENGINES):
            # pair i is raced by engines i % 3 and (i + 1) % 3, both in ascending pair order
            mine = [u for i, u in enumerate(uuids) if k in (i % 3, (i + 1) % 3)]
            listing = tmp_path / f"{name}.json"
            listing.write_text(json.dumps(mine), encoding="utf-8")
            command = [sys.executable, "-m", "tests.cas_worker", url, name, str(listing)]
            procs.append(
                stack.enter_context(
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )
            )
        stack.callback(_kill, procs)  # first on the way out: no worker outlives the test
        for proc in procs:
            assert proc.stdout is not None
            line = _line(proc.stdout, deadline)
            if line.strip() != "ready":
                proc.kill()
                _, err = proc.communicate(timeout=30)
                raise AssertionError(f"a worker did not start: {line}{err}")
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports, time.perf_counter() - started


def _check_store(url: str, uuids: list[str], winner: dict[str, str]) -> dict[str, int]:
    """Final records, audit trails, request ids and the whole chain, read back."""

    async def main() -> dict[str, int]:
        store = PostgresStore(url, readonly=True)
        await store.open(writer="checker")
        try:
            for uuid in uuids:
                inst = store.get(uuid)
                assert (inst.vm_state, inst.task_state, inst.power_state) == (
                    VmState.STOPPED,
                    None,
                    PowerState.SHUTDOWN,
                ), uuid
                trail = await store.read_audit(instance=uuid)
                versions = [r.get("after")["version"] for r in trail if r.get("after")]
                # every change of the instance once, in order: no lost or doubled update
                assert versions == list(range(inst.version + 1)), (uuid, versions)
                stops = [r for r in trail if r.get("action") == "stop"]
                assert {r.writer for r in stops if r.event != "refused"} == {winner[uuid]}
                refused = [r for r in stops if r.event == "refused"]
                assert len(refused) == 1, uuid
                assert refused[0].writer != winner[uuid]
                # lost in storage, not in the loser's own (stale) working set
                assert "changed in storage" in refused[0].get("message"), uuid
                assert (await store.find_request(f"{winner[uuid]}:{uuid}")) is not None
                assert (await store.find_request(f"{refused[0].writer}:{uuid}")) is None
            report = await store.verify(key=KEY)
            assert report.ok, report.error
            records = await store.read_audit()
            assert {r.writer for r in records} == {"setup", *ENGINES}
            return {"records": report.count, "writers": len({r.writer for r in records})}
        finally:
            await store.close()

    return run_virtual(main)


@pytest.mark.slow
def test_three_engine_processes_race_a_thousand_pairs_and_each_pair_has_one_winner(
    pg_url: str, tmp_path: Path
) -> None:
    """Of two engine processes stopping the same instance at once, exactly one wins in
    storage, the other gets Conflict; nothing is lost and the fleet's audit chain verifies."""
    t0 = time.perf_counter()
    uuids = _create(pg_url, PAIRS)
    setup = time.perf_counter() - t0
    reports, race = _race(pg_url, uuids, tmp_path)
    for report in reports:
        assert report["other"] == [], report["other"][:5]
    wins = Counter(u for r in reports for u in r["won"])
    losses = Counter(u for r in reports for u in r["lost"])
    assert sorted(wins) == sorted(uuids)
    assert set(wins.values()) == {1}  # exactly one winner per pair
    assert sorted(losses) == sorted(uuids)
    assert set(losses.values()) == {1}  # and exactly one loser
    winner = {u: r["writer"] for r in reports for u in r["won"]}
    checked = _check_store(pg_url, uuids, winner)
    by_engine = {r["writer"]: (len(r["won"]), len(r["lost"])) for r in reports}
    # some batches committed winners while a unit in them lost and rolled back alone
    mixed = sum(r["mixed_batches"] for r in reports)
    assert mixed > 0
    print(
        f"\ncross-process CAS: {PAIRS} pairs, {sum(wins.values())} wins, "
        f"{sum(losses.values())} losses, (won, lost) per engine {by_engine}; "
        f"race {race:.2f} s wall (setup {setup:.2f} s); {mixed} batches mixed wins and losses, "
        f"{sum(r['transactions'] for r in reports)} transactions; "
        f"{checked['records']} audit records of {checked['writers']} writers verify"
    )
