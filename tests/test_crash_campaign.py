"""The crash campaign: a fleet run killed with SIGKILL at seeded random moments, resumed each
time, must lose nothing and leave nothing stuck.

SIGKILL leaves the page cache intact, so this tests the transaction boundaries (what one
commit holds together), not fsync: a power cut is not simulated here (see the README).
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from statemachine.cli import main

INSTANCES = 600
KILLS = 22
SEED = 11


def _unsent(db: Path) -> set[str]:
    if not db.exists():
        return set()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT message_id FROM outbox WHERE sent = 0")}
    except sqlite3.OperationalError:  # killed before the schema was written
        return set()
    finally:
        conn.close()


@pytest.mark.slow
def test_a_fleet_killed_again_and_again_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """22 SIGKILLs at seeded moments, a resume after each, then the checks."""
    db, events = tmp_path / "fleet.db", tmp_path / "events.jsonl"
    command = [
        sys.executable, "-m", "statemachine", "simulate", "--db", str(db),
        "--instances", str(INSTANCES), "--seed", str(SEED), "--quiet",
        "--events-out", str(events), "--keep-duplicates", "--resume",
    ]  # fmt: skip
    rng = random.Random(SEED)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills, in_flight, recoveries, runs = 0, set(), [], 0
    while kills < KILLS:
        runs += 1
        assert runs < 4 * KILLS, "the fleet finished before it could be killed often enough"
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        # the kill lands at a seeded moment after the engine is ready (recovery done, the fleet
        # running), not during the interpreter's imports, however loaded the machine is
        head = _until_ready(proc, deadline=60.0)
        try:
            _, err = proc.communicate(timeout=rng.uniform(0.05, 0.8))
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no drain, no flush, no goodbye
            _, err = proc.communicate()
            recoveries += _recovery_times(head + err.decode())
            kills += 1
            in_flight |= _unsent(db)  # committed, maybe sent, not marked: may come again
            continue
        assert proc.returncode == 0, (head + err.decode())[-2000:]
        recoveries += _recovery_times(head + err.decode())
    final = subprocess.run(command, capture_output=True, timeout=600, env=env, check=False)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    recoveries += _recovery_times(final.stderr.decode())
    assert len(recoveries) >= KILLS  # every killed run had a ready engine first

    # the audit chain verifies
    assert main(["audit", "verify", str(db)]) == 0, capsys.readouterr().err
    conn = sqlite3.connect(db)
    instances = {
        uuid: (name, version, task)
        for uuid, name, version, task in conn.execute(
            "SELECT uuid, name, version, task_state FROM instances"
        )
    }
    # every instance ends stable; none is lost or duplicated
    assert [t for _, _, t in instances.values() if t is not None] == []
    names = sorted(name for name, _, _ in instances.values())
    assert names == sorted(f"vm{i}" for i in range(INSTANCES))
    # every committed state change has its audit record, and every record its change
    audited: dict[str, list[int]] = {}
    for instance, body in conn.execute(
        "SELECT instance, body FROM audit WHERE instance IS NOT NULL ORDER BY seq"
    ):
        after = json.loads(body)["after"]
        if after is not None:
            audited.setdefault(instance, []).append(after["version"])
    for uuid, (_, version, _) in instances.items():
        assert audited.get(uuid) == list(range(version + 1)), uuid
    # every outbox message was delivered at least once; duplicates only for those in flight
    committed = {row[0] for row in conn.execute("SELECT message_id FROM outbox")}
    assert conn.execute("SELECT COUNT(*) FROM outbox WHERE sent = 0").fetchone()[0] == 0
    delivered: dict[str, int] = {}
    torn = 0
    for line in events.read_text(encoding="utf-8").splitlines():
        try:
            message_id = json.loads(line)["message_id"]
        except (ValueError, KeyError):
            torn += 1  # at most one line cut short per kill
            continue
        delivered[message_id] = delivered.get(message_id, 0) + 1
    assert torn <= kills
    assert committed <= set(delivered)
    duplicates = {m for m, n in delivered.items() if n > 1}
    assert duplicates <= in_flight
    conn.close()
    print(
        f"crash campaign: {runs} runs, {kills} SIGKILLs, {len(instances)} instances, "
        f"{len(committed)} notifications ({len(duplicates)} re-sent after a kill), "
        f"longest recovery {max(recoveries, default=0):.3f} s"
    )


def _until_ready(proc: subprocess.Popen[bytes], *, deadline: float) -> str:
    """What the child wrote to stderr up to its "engine ready" line (or its exit); bounded."""
    assert proc.stderr is not None
    end = time.monotonic() + deadline
    text = b""
    while b"engine ready" not in text:
        remaining = end - time.monotonic()
        assert remaining > 0, f"the engine was not ready within {deadline:g} s"
        ready, _, _ = select.select([proc.stderr], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:  # exited before it was ready: the fleet was done
            break
        text += chunk
    return text.decode()


def _recovery_times(out: str) -> list[float]:
    return [float(m) for m in re.findall(r"engine ready in ([0-9.]+) s", out)]


def test_resume_needs_a_store(capsys: pytest.CaptureFixture[str]) -> None:
    """--resume without --db is a one-line error, nothing run."""
    assert main(["simulate", "--resume", "--instances", "2", "--quiet"]) == 1
    assert "resume needs a store" in capsys.readouterr().err


def test_sigterm_drains_and_exits(tmp_path: Path) -> None:
    """SIGTERM stops the fleet: the engine drains, the process exits 143 and says so."""
    db = tmp_path / "fleet.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "statemachine", "simulate", "--db", str(db),
         "--instances", "400", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    _until_ready(proc, deadline=60.0)  # ready means SIGTERM drains from here on
    time.sleep(0.3)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert "stopped by SIGTERM: drained" in out.decode()
    assert main(["audit", "verify", str(db)]) == 0
