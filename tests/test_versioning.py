"""Versioned lifecycles: a store remembers the lifecycle that wrote it; another may read it
only if it knows every stored state, or is told how to map them."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import attrs
import pytest

from drivers.simulator import SimulatorDriver
from statemachine import DEFAULT_LIFECYCLE
from statemachine.clock import VirtualClock, run_virtual
from statemachine.config import Config
from statemachine.engine import Engine, StepInfo
from statemachine.errors import LifecycleError
from statemachine.lifecycle import DEFAULT_LIFECYCLE as DEFAULT
from statemachine.store import SqliteStore
from statemachine.testing import assert_audit_verifies
from tests.support import ADMIN, OWNER, SMALL
from tests.test_extension import LIFECYCLE as WITH_ATTACH
from tests.test_extension import attach

NO_LIVE_MIGRATION = attrs.evolve(
    DEFAULT,
    actions=tuple(a for a in DEFAULT.actions if not a.name.startswith("live_migrate")),
    version="2-no-live-migration",
)


async def _hold_live_migration(info: StepInfo) -> None:
    if info.action == "live_migrate" and info.index == 1 and not info.error_path:
        await anyio.sleep_forever()


def _migrating(path: Path) -> str:
    """A store (default lifecycle) whose instance a stop left mid live migration."""

    async def main() -> str:
        engine = Engine(
            SimulatorDriver(hosts=["c1", "c2"]),
            store=SqliteStore(path),
            config=Config(drain_timeout=1),
            clock=VirtualClock(),
            hooks=[_hold_live_migration],
        )
        async with engine:
            created = await engine.create(OWNER, name="vm1", flavor=SMALL, image="cirros")
            uuid = created.instance.uuid
            await engine.submit(ADMIN, "live_migrate", uuid, {"host": "c2"})
            await engine.wait_for_state(uuid, task_state="migrating", timeout=600)
            return uuid

    return run_virtual(main)


def _records(path: Path) -> tuple[int, str | None]:
    async def main() -> tuple[int, str | None]:
        store = SqliteStore(path, readonly=True)
        await store.open(writer="reader")
        count = (await store.verify()).count
        meta = await store.get_meta("lifecycle")
        await store.close()
        return count, meta

    return run_virtual(main)


def _start(path: Path, lifecycle: object, **options: object) -> list[str]:
    async def main() -> list[str]:
        engine = Engine(
            SimulatorDriver(hosts=["c1", "c2"]),
            store=SqliteStore(path),
            lifecycle=lifecycle,  # type: ignore[arg-type]
            clock=VirtualClock(),
            **options,  # type: ignore[arg-type]
        )
        async with engine:
            return [f"{i.vm_state.value}/{i.task_state}" for i in engine.instances()]

    return run_virtual(main)


def test_a_store_remembers_its_lifecycle_and_the_same_one_reads_it(tmp_path: Path) -> None:
    """The version and a fingerprint are kept; reopening with it writes nothing more."""
    path = tmp_path / "ism.db"
    _start(path, DEFAULT_LIFECYCLE)
    count, meta = _records(path)
    assert meta is not None
    assert json.loads(meta)["version"] == DEFAULT_LIFECYCLE.version
    _start(path, DEFAULT_LIFECYCLE)
    assert _records(path) == (count, meta)


def test_a_lifecycle_that_knows_every_state_takes_over(tmp_path: Path) -> None:
    """An extended lifecycle (one added action) reads the store and records itself."""
    path = tmp_path / "ism.db"
    uuid = _migrating(path)
    _start(path, WITH_ATTACH, calls={"attach_volume": attach})
    _, meta = _records(path)
    assert json.loads(meta or "{}")["version"] == WITH_ATTACH.version
    assert uuid


def test_a_lifecycle_missing_a_stored_state_is_refused_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """Without live migration, an instance mid live migration cannot be read: a typed error
    naming it, and the store unchanged."""
    path = tmp_path / "ism.db"
    uuid = _migrating(path)
    before = _records(path)
    with pytest.raises(LifecycleError, match=f"{uuid} \\(active/migrating\\)"):
        _start(path, NO_LIVE_MIGRATION)
    assert _records(path) == before


def test_a_state_map_migrates_what_the_new_lifecycle_lacks(tmp_path: Path) -> None:
    """Mapped to a state it knows, the instance is moved (audited) and the engine starts."""
    path = tmp_path / "ism.db"
    _migrating(path)
    states = _start(path, NO_LIVE_MIGRATION, state_map={"active/migrating": "active"})
    assert states == ["active/None"]

    async def audited() -> None:
        engine = Engine(SimulatorDriver(hosts=["c1", "c2"]), store=SqliteStore(path),
                        lifecycle=NO_LIVE_MIGRATION, clock=VirtualClock())  # fmt: skip
        async with engine:
            await assert_audit_verifies(engine)  # the interrupted migration got its ending

    run_virtual(audited)
    count, meta = _records(path)
    assert json.loads(meta or "{}")["version"] == "2-no-live-migration"
    assert count > 0


def test_a_state_map_must_name_states() -> None:
    """A target the lifecycle lacks, or a source that is no state, fails at construction."""
    sim = SimulatorDriver()
    with pytest.raises(LifecycleError, match="not a state"):
        Engine(sim, lifecycle=NO_LIVE_MIGRATION, state_map={"active/migrating": "nowhere"})
    with pytest.raises(LifecycleError, match="names no vm_state"):
        Engine(sim, state_map={"floating/away": "active"})
