"""One action owns an instance at a time: conflicts, preemption, take-over, deadlines."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from drivers.simulator import FaultRule
from statemachine.config import Config
from statemachine.engine import ActionHandle
from statemachine.errors import (
    ActionFailed,
    ActionPreempted,
    ActionRefused,
    BuildTimeout,
    Conflict,
    InvalidState,
    StepDeadlineExceeded,
)
from tests.support import ADMIN, OWNER, SMALL, virtual, world

CONFLICTING = ["stop", "pause", "suspend", "reboot", "rescue", "snapshot", "shelve", "rebuild"]


@virtual
async def test_hundred_concurrent_conflicting_actions_have_one_winner() -> None:
    """Of 100 concurrent conflicting actions on one instance exactly one is accepted and runs."""
    async with world() as w:
        uuid = await w.create()
        w.clear()
        before = w.engine.get(uuid).version
        accepted: list[ActionHandle] = []
        refused: list[ActionRefused] = []

        async def attempt(i: int) -> None:
            try:
                accepted.append(await w.engine.submit(OWNER, CONFLICTING[i % 8], uuid))
            except ActionRefused as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(attempt, i)
        assert len(accepted) == 1
        assert len(refused) == 99
        assert all(isinstance(e, InvalidState | Conflict) for e in refused)
        result = await accepted[0].wait()
        assert result.ok
        starts = [e for e in w.events(uuid) if e.endswith(".start")]
        assert len(starts) == 1
        assert w.engine.get(uuid).version > before


@virtual
async def test_refusal_changes_nothing() -> None:
    """A refused action leaves the record (version included) and the notifications untouched."""
    async with world() as w:
        uuid = await w.create()
        await w.engine.act(OWNER, "stop", uuid)
        before = w.engine.get(uuid)
        count = len(w.capture.notifications)
        with pytest.raises(InvalidState, match="vm_state stopped"):
            await w.engine.act(OWNER, "pause", uuid)
        assert w.engine.get(uuid) is before
        assert len(w.capture.notifications) == count


@virtual
async def test_delete_preempts_a_slow_action() -> None:
    """delete is accepted mid-stop; the stop ends with its .error and the delete completes."""
    async with world() as w:
        uuid = await w.create()
        w.sim.faults.add(FaultRule(action="stop", mode="hang"))
        w.clear()
        stop = await w.engine.submit(OWNER, "stop", uuid)
        await w.capture.wait_for("instance.power_off.start", count=1, timeout=10)
        await anyio.sleep(5)
        result = await w.engine.act(OWNER, "delete", uuid)
        stopped = await stop.wait()
        assert isinstance(stopped.error, ActionPreempted)
        assert stopped.error.by == "delete"
        assert w.events(uuid) == [
            "power_off.start", "power_off.error", "delete.start", "shutdown.start",
            "shutdown.end", "delete.end",
        ]  # fmt: skip
        error = next(n for n in w.capture.notifications if n.event_type.endswith(".error"))
        assert error.priority == "ERROR"
        assert result.instance.vm_state.value == "deleted"
        assert result.instance.task_state is None


@virtual
async def test_second_delete_while_deleting_is_refused() -> None:
    """A delete does not preempt a delete: the second one is refused, naming the task."""
    async with world() as w:
        uuid = await w.create()
        w.sim.faults.add(FaultRule(action="delete", mode="hang"))
        first = await w.engine.submit(OWNER, "delete", uuid)
        await anyio.sleep(1)
        with pytest.raises(InvalidState, match="task_state deleting"):
            await w.engine.submit(OWNER, "delete", uuid)
        first.scope.cancel()
        await first.wait()


@virtual
async def test_hard_reboot_takes_over_a_pause() -> None:
    """A HARD reboot is accepted while a pause runs (ALLOW_REBOOT) and takes over."""
    async with world() as w:
        uuid = await w.create()
        w.sim.faults.add(FaultRule(action="pause", mode="hang"))
        pause = await w.engine.submit(OWNER, "pause", uuid)
        await anyio.sleep(1)
        with pytest.raises(InvalidState):
            await w.engine.submit(OWNER, "reboot", uuid, {"type": "SOFT"})
        result = await w.engine.act(OWNER, "reboot", uuid, {"type": "HARD"})
        assert isinstance((await pause.wait()).error, ActionPreempted)
        assert (result.instance.vm_state.value, result.instance.power_state.label) == (
            "active",
            "running",
        )


@virtual
async def test_abort_refused_before_the_pre_phase_ends() -> None:
    """live_migrate_abort needs the pre phase to have ended."""

    async def slow_pre(info: Any) -> None:
        if info.action == "live_migrate" and info.index == 0:
            await anyio.sleep(30)

    async with world(hooks=[slow_pre]) as w:
        uuid = await w.create(host="compute1")
        handle = await w.engine.submit(ADMIN, "live_migrate", uuid, {"host": "compute2"})
        await anyio.sleep(1)
        with pytest.raises(InvalidState, match="not yet joinable"):
            await w.engine.submit(ADMIN, "live_migrate_abort", uuid)
        assert (await handle.wait()).ok


@virtual
async def test_step_deadline_leads_to_the_error_path() -> None:
    """A hung driver call is cut at the step's deadline; no transient state is left."""
    async with world() as w:
        uuid = await w.create()
        w.sim.faults.add(FaultRule(action="suspend", mode="hang"))
        t0 = anyio.current_time()
        with pytest.raises(ActionFailed) as info:
            await w.engine.act(OWNER, "suspend", uuid)
        assert isinstance(info.value.__cause__, StepDeadlineExceeded)
        step = w.engine.lifecycle.action("suspend").steps[0]
        assert anyio.current_time() - t0 == pytest.approx(step.deadline, abs=1)
        inst = w.engine.get(uuid)
        assert (inst.vm_state.value, inst.task_state) == ("active", None)
        assert inst.fault is not None
        assert inst.fault.exception == "StepDeadlineExceeded"


@virtual
async def test_build_timeout_errors_the_build() -> None:
    """instance_build_timeout fails a build that hangs."""
    async with world(config=Config(instance_build_timeout=120)) as w:
        w.sim.faults.add(FaultRule(action="create", mode="hang"))
        handle = await w.engine.submit(
            OWNER, "create", None, {"name": "vm1", "flavor": SMALL, "image": "cirros"}
        )
        result = await handle.wait()
        assert isinstance(result.error, ActionFailed)
        assert isinstance(result.error.__cause__, BuildTimeout)
        assert result.duration == pytest.approx(120, abs=1)
        assert w.events(handle.uuid)[-1] == "create.error"
        assert result.instance.vm_state.value == "error"


@virtual
async def test_lock_allows_admins_only() -> None:
    """A locked instance refuses its owner but not an admin; an admin's lock needs an admin."""
    from statemachine.errors import Forbidden, Locked

    async with world() as w:
        uuid = await w.create()
        await w.engine.act(OWNER, "lock", uuid, {"reason": "maintenance"})
        inst = w.engine.get(uuid)
        assert (inst.locked, inst.locked_by, inst.locked_reason) == (True, "owner", "maintenance")
        with pytest.raises(Locked):
            await w.engine.act(OWNER, "stop", uuid)
        await w.engine.act(ADMIN, "stop", uuid)
        await w.engine.act(OWNER, "unlock", uuid)
        await w.engine.act(ADMIN, "lock", uuid)
        with pytest.raises(Forbidden, match="unlock_override"):
            await w.engine.act(OWNER, "unlock", uuid)
        await w.engine.act(ADMIN, "unlock", uuid)
        assert not w.engine.get(uuid).locked


@virtual
async def test_lock_runs_beside_a_running_action() -> None:
    """lock sets no task_state: it neither conflicts with nor breaks a running action."""
    async with world() as w:
        uuid = await w.create()
        stop = await w.engine.submit(OWNER, "stop", uuid)
        await w.engine.act(OWNER, "lock", uuid)
        assert (await stop.wait()).ok
        inst = w.engine.get(uuid)
        assert (inst.locked, inst.vm_state.value) == (True, "stopped")


@virtual
async def test_leaving_the_engine_ends_every_action() -> None:
    """Leaving waits drain_timeout, then cuts hung actions down their error path; none hangs."""
    async with world(config=Config(drain_timeout=10)) as w:
        uuid = await w.create()
        w.sim.faults.add(FaultRule(action="suspend", mode="hang"))
        handle = await w.engine.submit(OWNER, "suspend", uuid)
        t0 = anyio.current_time()
    assert anyio.current_time() - t0 == pytest.approx(10, abs=1)
    result = await handle.wait(timeout=1)
    assert isinstance(result.error, ActionFailed)
    inst = w.engine.get(uuid)
    assert (inst.vm_state.value, inst.task_state) == ("active", None)
    with pytest.raises(ActionRefused, match="not running"):
        await w.engine.submit(OWNER, "stop", uuid)


@virtual
async def test_delete_right_after_accept_silences_the_preempted_action() -> None:
    """An action preempted before its first step ran emits nothing at all."""
    async with world() as w:
        uuid = await w.create()
        w.clear()
        first = await w.engine.submit(ADMIN, "live_migrate", uuid)
        await w.engine.act(OWNER, "delete", uuid)
        assert isinstance((await first.wait()).error, ActionPreempted)
        assert w.events(uuid) == ["delete.start", "shutdown.start", "shutdown.end", "delete.end"]
