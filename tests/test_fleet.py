"""Many engines, one fleet: each engine serves its hosts, refuses the others' instances, and
evacuates a host whose engine stopped heartbeating."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import anyio
import pytest

from drivers.base import PowerState
from drivers.simulator import SimGuest, SimulatorDriver
from statemachine.clock import VirtualClock, run_virtual
from statemachine.config import Config
from statemachine.engine import Engine
from statemachine.errors import InvalidRequest, InvalidState, WrongHost
from statemachine.model import Flavor, Instance
from statemachine.states import TaskState, VmState
from statemachine.store import MemoryStore, SqliteStore
from statemachine.store._sqlite_schema import MIGRATIONS
from tests.support import ADMIN, OWNER, SMALL

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _theirs(uuid: str = "00000000-0000-4000-8000-0000000000c2") -> Instance:
    """An active instance on compute2, which another engine serves."""
    return Instance(
        uuid=uuid, name="theirs", user_id="u1", project_id="p1",
        flavor=Flavor(vcpus=1, memory_mb=512, root_gb=1), image="cirros",
        vm_state=VmState.ACTIVE, task_state=None, power_state=PowerState.RUNNING,
        created_at=T0, updated_at=T0, host="compute2", launched_at=T0,
    )  # fmt: skip


def _engine(store: MemoryStore, sim: SimulatorDriver) -> Engine:
    config = Config(hosts=("compute1",), service_host="compute1", service_down_time=60)
    return Engine(sim, store=store, config=config, clock=VirtualClock())


def _world() -> tuple[MemoryStore, SimulatorDriver]:
    sim = SimulatorDriver(hosts=["compute1", "compute2"])
    theirs = _theirs()
    sim.place(SimGuest(theirs.uuid, "compute2", theirs.flavor.as_guest(), PowerState.RUNNING))
    store = MemoryStore()
    store.load([theirs])
    return store, sim


def test_an_engine_places_and_acts_on_its_own_hosts_only() -> None:
    """Creates land on the engine's hosts; another host's instance is refused, naming it."""

    async def main() -> None:
        store, sim = _world()
        async with _engine(store, sim) as engine:
            for i in range(4):
                result = await engine.create(OWNER, name=f"vm{i}", flavor=SMALL, image="cirros")
                assert result.instance.host == "compute1"
            with pytest.raises(WrongHost) as refused:
                await engine.act(OWNER, "stop", _theirs().uuid)
            assert refused.value.host == "compute2"
            assert store.get(_theirs().uuid).vm_state is VmState.ACTIVE  # nothing changed
            records = await store.read_audit(instance=_theirs().uuid)
            assert [r.event for r in records] == ["refused"]

    run_virtual(main)


def test_a_host_whose_engine_stopped_heartbeating_is_evacuated() -> None:
    """While compute2's engine heartbeats, evacuate is refused (its host is up); once the
    heartbeat is older than service_down_time, an admin's evacuate moves it here."""

    async def main() -> None:
        store, sim = _world()
        uuid = _theirs().uuid
        async with _engine(store, sim) as engine:
            await store.heartbeat("compute2", engine.clock.wall())
            with pytest.raises(InvalidState, match="host"):
                await engine.act(ADMIN, "evacuate", uuid)
            sim.host_down("compute2")
            await anyio.sleep(61)  # no heartbeat from compute2 since
            result = await engine.act(ADMIN, "evacuate", uuid)
            assert (result.instance.host, result.instance.vm_state) == ("compute1", VmState.ACTIVE)
            await engine.act(OWNER, "stop", uuid)  # ours now
            assert (await store.services())["compute1"] > T0  # and we heartbeat

    run_virtual(main)


def test_recovery_takes_up_only_the_engines_own_instances() -> None:
    """An instance of another host left mid-action is not this engine's to recover."""

    async def main() -> None:
        store, sim = _world()
        uuid = _theirs().uuid
        store._records[uuid] = store.get(uuid).evolve(
            task_state=TaskState.POWERING_OFF, updated_at=T0
        )
        async with _engine(store, sim) as engine:
            await engine.wait_idle(timeout=600)
            assert engine.recovered == []
            assert store.get(uuid).task_state is not None

    run_virtual(main)


def test_heartbeats_are_kept_in_sqlite_after_its_migration(tmp_path: Path) -> None:
    """A version-1 file gains the services table on open; heartbeats land in it."""
    path = tmp_path / "ism.db"

    async def main() -> None:
        old = SqliteStore(path, migrations=MIGRATIONS[:1])
        await old.open(writer="compute1")
        await old.close()
        store = SqliteStore(path)
        await store.open(writer="compute1")
        await store.heartbeat("compute1", T0)
        assert await store.services() == {"compute1": T0}
        await store.close()

    run_virtual(main)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_hosts_must_name_hosts() -> None:
    """Config(hosts=...) takes host names, not a string or an empty list."""
    for bad in ("compute1", (), ("",)):
        with pytest.raises(InvalidRequest):
            Config(hosts=bad)
