"""The engine on a durable store: state, audit and outbox survive, requests run once."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import anyio
import attrs
import pytest

from drivers.base import GuestSpec, PowerState
from drivers.simulator import FaultRule, SimulatorDriver
from statemachine.clock import VirtualClock, run_virtual
from statemachine.config import Config
from statemachine.engine import Engine
from statemachine.errors import (
    ActionFailed,
    Busy,
    Conflict,
    Forbidden,
    InvalidRequest,
    InvalidState,
    StoreError,
)
from statemachine.handles import Outcome
from statemachine.notify import Notification
from statemachine.sinks import JsonlSink
from statemachine.store import SqliteStore, Write
from statemachine.store._sqlite_schema import MIGRATIONS, Migration
from tests.support import ADMIN, OTHER, OWNER, World, run_with_store, world

UPDATES = Config(notify_on_state_change="vm_and_task_state")


def test_state_audit_and_sequences_survive_a_restart(tmp_path: Path) -> None:
    """A second engine on the file finds the instances, continues the audit chain and the
    per-instance notification sequence, and keeps working."""
    db = tmp_path / "ism.db"
    seen: dict[str, object] = {}
    sim = SimulatorDriver(hosts=["compute1"], seed=0)  # the hypervisor outlives the engine

    async def first(w: World) -> None:
        uuid = await w.create()
        await w.engine.act(OWNER, "stop", uuid)
        seen["uuid"] = uuid
        seen["inst"] = w.engine.get(uuid)
        seen["seq"] = w.capture.notifications[-1].sequence

    run_with_store(SqliteStore(db), first, config=UPDATES, sim=sim)

    async def second(w: World) -> None:
        uuid = str(seen["uuid"])
        assert w.engine.get(uuid) == seen["inst"]
        await w.engine.act(OWNER, "start", uuid)
        assert w.capture.notifications[0].sequence == int(str(seen["seq"])) + 1
        assert (await w.engine.store.verify()).ok

    run_with_store(SqliteStore(db), second, config=UPDATES, sim=sim)


def test_every_state_change_has_its_audit_record_and_vice_versa(tmp_path: Path) -> None:
    """Per instance, the audit records' versions run 0..current without gap or repeat."""
    db = tmp_path / "ism.db"

    async def body(w: World) -> None:
        uuids = [await w.create(f"vm{i}") for i in range(3)]
        w.sim.faults.add(FaultRule(action="resize", step="resize_migrating", message="disk"))
        for uuid in uuids:
            await w.engine.act(OWNER, "stop", uuid)
        with pytest.raises(ActionFailed):
            await w.engine.act(OWNER, "resize", uuids[0], {"flavor": {"vcpus": 2,
                               "memory_mb": 1024, "root_gb": 2}})  # fmt: skip
        await w.engine.act(OWNER, "delete", uuids[1])
        with pytest.raises(InvalidState):
            await w.engine.act(OWNER, "unpause", uuids[2])
        for uuid in uuids:
            records = await w.engine.store.read_audit(instance=uuid)
            versions = [r.get("after")["version"] for r in records if r.get("after")]
            assert versions == list(range(w.engine.get(uuid).version + 1))
            for r in records:
                if r.get("before") and r.get("after"):
                    assert r.get("after")["version"] == r.get("before")["version"] + 1

    run_with_store(SqliteStore(db), body)


class _Flaky:
    """A sink that refuses while ``down`` is set: a broker that is away."""

    def __init__(self) -> None:
        self.down = True
        self.got: list[Notification] = []
        self._arrived = anyio.Event()

    def send(self, notification: Notification) -> None:
        if self.down:
            raise ConnectionError("token=abc123 sink unavailable")
        self.got.append(notification)
        self._arrived.set()

    async def wait_for(self, count: int) -> None:
        while len(self.got) < count:
            self._arrived = anyio.Event()
            await self._arrived.wait()

    def close(self) -> None:
        pass


def test_a_failing_sink_never_fails_a_change_and_gets_everything_in_order(tmp_path: Path) -> None:
    """Changes commit while the sink is down; once it is back, the outbox delivers every
    message once, in commit order; past the backlog bound new actions are Busy."""
    sink = _Flaky()

    async def main() -> None:
        store = SqliteStore(tmp_path / "ism.db")
        sim = SimulatorDriver(hosts=["compute1"], seed=0)
        config = Config(outbox_max_backlog=6)
        async with Engine(sim, sinks=[sink], store=store, config=config, clock=VirtualClock()) as e:
            created = await e.create(OWNER, name="vm1", flavor={"vcpus": 1, "memory_mb": 64,
                                     "root_gb": 1}, image="cirros")  # fmt: skip
            uuid = created.instance.uuid
            await e.act(OWNER, "stop", uuid)
            await e.act(OWNER, "start", uuid)
            assert e.get(uuid).vm_state.value == "active"
            assert sink.got == []
            with pytest.raises(Busy, match="outbox"):
                await e.act(OWNER, "stop", uuid)
            sink.down = False
            with anyio.fail_after(120):
                await sink.wait_for(6)
            events = [n.event_type for n in sink.got]
            assert events == [
                "instance.create.start",
                "instance.create.end",
                "instance.power_off.start",
                "instance.power_off.end",
                "instance.power_on.start",
                "instance.power_on.end",
            ]
            assert [n.sequence for n in sink.got] == [1, 2, 3, 4, 5, 6]
            await e.act(OWNER, "stop", uuid)  # accepted again once the backlog is gone
        unsent = SqliteStore(tmp_path / "ism.db", readonly=True)
        await unsent.open(writer="x")
        assert await unsent.unsent(10) == []
        await unsent.close()

    run_virtual(main)


def test_a_crash_between_commit_and_send_resends_and_jsonl_dedupes(tmp_path: Path) -> None:
    """Messages whose "sent" mark was lost are sent again at the next start; a JSONL sink in
    append mode writes each message_id once."""
    db, out = tmp_path / "ism.db", tmp_path / "events.jsonl"

    async def first(w: World) -> None:
        uuid = await w.create()
        await w.engine.act(OWNER, "stop", uuid)

    jsonl = JsonlSink(out, append=True)
    run_with_store(SqliteStore(db), first, sinks=[jsonl])
    jsonl.close()
    written = out.read_text().splitlines()
    conn = sqlite3.connect(db, isolation_level=None)
    total = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert len(written) == total  # every committed message was delivered
    conn.execute("UPDATE outbox SET sent = 0 WHERE seq > ?", (total - 3,))  # marks lost
    conn.close()

    jsonl = JsonlSink(out, append=True)
    run_with_store(SqliteStore(db), _nothing, sinks=[jsonl])
    jsonl.close()
    assert jsonl.duplicates == 3
    ids = [json.loads(line)["message_id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == total


async def _nothing(_: World) -> None:
    return None


def test_a_repeated_request_id_returns_the_first_outcome(tmp_path: Path) -> None:
    """The same request id runs its action once, here and after a restart; reused for another
    action it is refused."""
    db = tmp_path / "ism.db"
    kept: dict[str, str] = {}

    async def first(w: World) -> None:
        uuid = await w.create()
        kept["uuid"] = uuid
        ctx = attrs.evolve(OWNER, request_id="req-stop")
        one = await w.engine.act(ctx, "stop", uuid)
        two = await w.engine.act(ctx, "stop", uuid)  # stopped now: it would be refused
        assert two.outcome == one.outcome == Outcome.OK
        assert w.sim.statistics().calls["power_off"] == 1
        with pytest.raises(InvalidRequest, match="already used"):
            await w.engine.act(ctx, "start", uuid)
        created = await w.engine.create(
            attrs.evolve(OWNER, request_id="req-create"), name="vm2", flavor={"vcpus": 1,
            "memory_mb": 64, "root_gb": 1}, image="cirros",
        )  # fmt: skip
        again = await w.engine.create(
            attrs.evolve(OWNER, request_id="req-create"), name="vm2", flavor={"vcpus": 1,
            "memory_mb": 64, "root_gb": 1}, image="cirros",
        )  # fmt: skip
        assert again.instance.uuid == created.instance.uuid
        assert len(w.engine.instances()) == 2
        w.sim.faults.add(FaultRule(action="start", message="no power"))
        with pytest.raises(ActionFailed):
            await w.engine.act(attrs.evolve(OWNER, request_id="req-start"), "start", uuid)

    run_with_store(SqliteStore(db), first)

    async def second(w: World) -> None:
        uuid = kept["uuid"]
        again = await w.engine.act(attrs.evolve(OWNER, request_id="req-stop"), "stop", uuid)
        assert again.ok
        with pytest.raises(ActionFailed, match="no power"):
            await w.engine.act(attrs.evolve(OWNER, request_id="req-start"), "start", uuid)
        assert w.sim.statistics().calls.get("power_on", 0) == 0
        assert w.engine.get(uuid).vm_state.value == "stopped"

    run_with_store(SqliteStore(db), second)


def test_concurrent_submits_of_one_request_id_run_one_action() -> None:
    """Two submits racing with one request id get the same handle; one action runs."""

    async def main() -> None:
        async with world() as w:
            uuid = await w.create()
            ctx = attrs.evolve(OWNER, request_id="req-x")
            handles = []

            async def submit() -> None:
                handles.append(await w.engine.submit(ctx, "stop", uuid))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                tg.start_soon(submit)
            assert handles[0] is handles[1]
            await handles[0].wait()
            assert w.sim.statistics().calls["power_off"] == 1

    run_virtual(main)


def test_history_lists_actions_with_their_steps_and_outcome(tmp_path: Path) -> None:
    """engine.actions() reads the audit log: who, when, the steps, how each action ended."""

    async def body(w: World) -> None:
        uuid = await w.create()
        await w.engine.act(attrs.evolve(OWNER, request_id="r-stop"), "stop", uuid)
        w.sim.faults.add(FaultRule(action="start", message="boom"))
        with pytest.raises(ActionFailed):
            await w.engine.act(OWNER, "start", uuid)
        with pytest.raises(Forbidden):
            await w.engine.act(OTHER, "start", uuid)
        await w.engine.act(ADMIN, "lock", uuid)
        history = await w.engine.actions(uuid)
        assert [(a.action, a.outcome) for a in history] == [
            ("create", "ok"),
            ("stop", "ok"),
            ("start", "failed"),
            ("lock", "ok"),
        ]
        create, stop, start, lock = history
        assert [e.event for e in create.events] == [
            "scheduling",
            "networking",
            "block_device_mapping",
            "spawning",
        ]
        assert stop.request_id == "r-stop"
        assert stop.user_id == "u1"
        assert [(e.event, e.result) for e in start.events] == [("powering-on", "Error")]
        assert "boom" in (start.message or "")
        assert lock.user_id == "ops"
        assert lock.events == ()

    run_with_store(SqliteStore(tmp_path / "ism.db"), body)


def _flood(tmp_path: Path, group: bool) -> tuple[int, int, int]:
    stats: list[int] = []

    async def body(w: World) -> None:
        uuids = [await w.create(f"vm{i}") for i in range(30)]
        async with anyio.create_task_group() as tg:
            for uuid in uuids:
                tg.start_soon(w.engine.act, OWNER, "stop", uuid)
        s = w.engine._committer.statistics()
        stats.extend([s.transactions, s.units, s.largest_batch])

    config = Config(group_commit=group)
    run_with_store(SqliteStore(tmp_path / f"{group}.db"), body, config=config)
    return stats[0], stats[1], stats[2]


def test_concurrent_changes_share_transactions_unless_told_not_to(tmp_path: Path) -> None:
    """Group commit puts concurrent changes in one transaction; without it, one each."""
    transactions, units, largest = _flood(tmp_path, True)
    assert largest > 1
    assert transactions < units
    transactions, units, largest = _flood(tmp_path, False)
    assert largest == 1
    assert transactions == units


def test_a_caller_is_told_done_only_after_its_commit(tmp_path: Path) -> None:
    """While storage holds a commit back, the action's acceptance does not return."""

    class Slow(SqliteStore):
        gate = anyio.Event()

        async def persist(
            self, writes: Sequence[Write], *, sent: Sequence[str] = ()
        ) -> list[Conflict | None]:
            if any(w.request is not None for w in writes):
                await self.gate.wait()
            return await super().persist(writes, sent=sent)

    async def body(w: World) -> None:
        uuid = await w.create()
        accepted = anyio.Event()

        async def stop() -> None:
            await w.engine.submit(attrs.evolve(OWNER, request_id="r1"), "stop", uuid)
            accepted.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop)
            await anyio.sleep(5)
            assert not accepted.is_set()
            Slow.gate.set()
        assert accepted.is_set()

    run_with_store(Slow(tmp_path / "ism.db"), body)


def test_one_engine_writes_a_file_readers_need_no_lock(tmp_path: Path) -> None:
    """A second writer is refused with a clear error; a read-only store reads alongside."""

    async def main() -> None:
        first = SqliteStore(tmp_path / "ism.db")
        await first.open(writer="a")
        with pytest.raises(StoreError, match="another engine"):
            await SqliteStore(tmp_path / "ism.db").open(writer="b")
        reader = SqliteStore(tmp_path / "ism.db", readonly=True)
        await reader.open(writer="cli")
        assert (await reader.verify()).ok
        with pytest.raises(StoreError, match="read-only"):
            await reader.persist([Write()])
        await reader.close()
        await first.close()
        again = SqliteStore(tmp_path / "ism.db")
        await again.open(writer="b")  # the lock went with the first store
        await again.close()

    run_virtual(main)


def test_sqlite_runs_in_wal_with_full_sync_by_default(tmp_path: Path) -> None:
    """The pragmas the durability argument rests on."""

    async def main() -> None:
        store = SqliteStore(tmp_path / "ism.db")
        await store.open(writer="a")
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        await store.close()

    run_virtual(main)
    with pytest.raises(StoreError, match="synchronous"):
        SqliteStore(tmp_path / "x.db", synchronous="SOMETIMES")  # type: ignore[arg-type]


def test_the_schema_migrates_step_by_step_and_refuses_newer(tmp_path: Path) -> None:
    """A version-1 file gains version 2's change on open; a file newer than ism is refused;
    a failing step is rolled back and leaves the previous version."""
    db = tmp_path / "ism.db"
    latest = MIGRATIONS[-1].version
    extra = Migration(latest + 1, "a test column", ("ALTER TABLE instances ADD COLUMN note TEXT",))
    broken = Migration(latest + 2, "a bad step", ("CREATE TABLE x (a)", "NOT SQL AT ALL"))

    async def main() -> None:
        store = SqliteStore(db)
        await store.open(writer="a")
        await store.close()
        store = SqliteStore(db, migrations=(*MIGRATIONS, extra))
        await store.open(writer="a")
        await store.close()
        with pytest.raises(StoreError, match="newer than this ism"):
            await SqliteStore(db).open(writer="a")
        with pytest.raises(StoreError, match=f"migration to version {latest + 2} failed"):
            await SqliteStore(db, migrations=(*MIGRATIONS, extra, broken)).open(writer="a")

    run_virtual(main)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == MIGRATIONS[-1].version + 1
    columns = [row[1] for row in conn.execute("PRAGMA table_info(instances)")]
    assert "note" in columns
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'x'").fetchone() is None


class _Recording(SimulatorDriver):
    """A simulator that remembers the user_data each spawn was given."""

    spawned: list[str | None]

    async def spawn(self, guest: GuestSpec, *, power_on: bool = True) -> PowerState:
        self.spawned.append(guest.user_data)
        return await super().spawn(guest, power_on=power_on)


def test_a_rebuild_after_a_restart_still_gets_the_user_data(tmp_path: Path) -> None:
    """user_data is stored with the create, so a later engine hands it to the driver."""
    db = tmp_path / "ism.db"
    sim = _Recording(hosts=["compute1"], seed=0)
    sim.spawned = []
    kept: list[str] = []

    async def first(w: World) -> None:
        kept.append(await w.create(user_data="#!/bin/sh\necho hello"))

    async def second(w: World) -> None:
        await w.engine.act(OWNER, "rebuild", kept[0])

    run_with_store(SqliteStore(db), first, sim=sim)
    run_with_store(SqliteStore(db), second, sim=sim)
    assert sim.spawned == ["#!/bin/sh\necho hello"] * 2
