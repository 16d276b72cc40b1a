"""reset_state: the operator's way out of any state (Nova's os-resetState, admin only)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from drivers.simulator import FaultRule
from statemachine.config import Config
from statemachine.errors import ActionFailed, ActionPreempted, Forbidden, InvalidRequest
from statemachine.states import TaskState, VmState
from statemachine.store import SqliteStore
from tests.support import ADMIN, OWNER, SMALL, virtual, world


@virtual
async def test_admin_resets_an_error_instance_to_active_with_one_update() -> None:
    """From error to active, task cleared, in one instance.update and no action notification
    (Nova's reset saves the instance once); the instance's actions list it, with its actor."""
    async with world(config=Config(notify_on_state_change="vm_state")) as w:
        w.sim.faults.add(FaultRule(action="rebuild"))
        uuid = await w.create()
        with pytest.raises(ActionFailed):
            await w.engine.act(OWNER, "rebuild", uuid, {"image": "cirros"})
        assert w.engine.get(uuid).vm_state is VmState.ERROR
        w.clear()
        result = await w.engine.act(ADMIN, "reset_state", uuid, {"state": "active"})
        assert result.ok
        inst = w.engine.get(uuid)
        assert (inst.vm_state, inst.task_state, inst.action_id) == (VmState.ACTIVE, None, None)
        assert w.events(uuid, updates=True) == ["update"]
        update = w.capture.notifications[-1].payload["ism_object.data"]["state_update"]
        states = update["ism_object.data"]
        assert (states["old_state"], states["state"]) == ("error", "active")
        record = (await w.engine.actions(uuid))[-1]
        assert (record.action, record.outcome, record.user_id) == ("reset_state", "ok", "ops")


@virtual
async def test_reset_to_error_preempts_the_running_action() -> None:
    """A stop that hangs is preempted: it ends with its .error (ActionPreempted), the instance
    is in error with no task, and the stop, cancelled, writes nothing after."""
    async with world() as w:
        uuid = await w.create()
        w.sim.faults.add(FaultRule(action="stop", mode="hang"))
        w.clear()
        stop = await w.engine.submit(OWNER, "stop", uuid)
        await w.capture.wait_for("instance.power_off.start", count=1, timeout=10)
        assert w.engine.get(uuid).task_state is TaskState.POWERING_OFF
        await w.engine.act(ADMIN, "reset_state", uuid, {"state": "error"})
        stopped = await stop.wait(timeout=10)
        assert isinstance(stopped.error, ActionPreempted)
        assert stopped.error.by == "reset_state"
        await anyio.sleep(600)  # past the stop's deadline: nothing of it comes back
        inst = w.engine.get(uuid)
        assert (inst.vm_state, inst.task_state) == (VmState.ERROR, None)
        assert w.events(uuid) == ["power_off.start", "power_off.error"]
        outcomes = [(r.action, r.outcome) for r in await w.engine.actions(uuid)]
        assert outcomes[-2:] == [("stop", "preempted"), ("reset_state", "ok")]
        # the instance is usable again: an admin rebuild from error
        assert (await w.engine.act(ADMIN, "rebuild", uuid, {"image": "cirros"})).ok


@virtual
async def test_reset_a_build_in_progress_to_error_then_delete() -> None:
    """A build stuck spawning is reset to error; delete then cleans it up."""
    async with world() as w:
        w.sim.faults.add(FaultRule(action="create", step="spawning", mode="hang"))
        params = {"name": "vm", "flavor": SMALL, "image": "cirros"}
        build = await w.engine.submit(OWNER, "create", None, params)
        await w.capture.wait_for("instance.create.start", count=1, timeout=10)
        reset = await w.engine.act(ADMIN, "reset_state", build.uuid, {"state": "error"})
        assert reset.instance.vm_state is VmState.ERROR
        assert isinstance((await build.wait(timeout=10)).error, ActionPreempted)
        deleted = await w.engine.act(OWNER, "delete", build.uuid)
        assert deleted.instance.vm_state is VmState.DELETED


@virtual
async def test_non_admin_is_forbidden_and_nothing_changes() -> None:
    """The owner may not reset: Forbidden, the record untouched, a refused audit record."""
    async with world() as w:
        uuid = await w.create()
        before = w.engine.get(uuid)
        count = len(w.capture.notifications)
        with pytest.raises(Forbidden, match="reset_state"):
            await w.engine.act(OWNER, "reset_state", uuid, {"state": "error"})
        assert w.engine.get(uuid) is before
        assert len(w.capture.notifications) == count
        await w.engine.wait_committed(timeout=10)
        refused = [
            r for r in await w.engine.store.read_audit(instance=uuid) if r.event == "refused"
        ]
        assert len(refused) == 1
        assert refused[0].body["actor"]["user_id"] == OWNER.user_id


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, r"'reset_state' needs parameters \['state'\]"),
        ({"state": "stopped"}, "unknown reset_state state 'stopped'"),
        ({"state": 1}, "state must be a string"),
        ({"state": "active", "type": "HARD"}, r"takes no parameter \['type'\]"),
    ],
)
def test_bad_state_parameter_is_refused(params: dict[str, object], message: str) -> None:
    """Only active and error, as Nova's API schema; anything else is InvalidRequest."""

    @virtual
    async def body() -> None:
        async with world() as w:
            uuid = await w.create()
            before = w.engine.get(uuid)
            with pytest.raises(InvalidRequest, match=message):
                await w.engine.act(ADMIN, "reset_state", uuid, params)
            assert w.engine.get(uuid) is before

    body()


def test_reset_is_one_durable_write(tmp_path: Path) -> None:
    """On SQLite the reset's acceptance is the change: reopened, the store has it, and the
    audit log (accepted carrying the new state, then completed) verifies."""

    @virtual
    async def body() -> None:
        db = tmp_path / "ism.db"
        async with world(store=SqliteStore(db)) as w:
            uuid = await w.create()
            await w.engine.act(ADMIN, "reset_state", uuid, {"state": "error"})
            await w.engine.wait_committed(timeout=10)
        store = SqliteStore(db)
        async with world(store=store) as w:
            assert w.engine.get(uuid).vm_state is VmState.ERROR
            # Reopening may add the power-state sync's own records; the reset's are its two.
            records = await store.read_audit(instance=uuid)
            events = [r.event for r in records if r.get("action") == "reset_state"]
            assert events == ["accepted", "completed"]
            assert (await store.verify()).ok

    body()
