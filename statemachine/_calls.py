"""What each step's ``Call`` does: the one place where the lifecycle's data meets code.

Each function drives the hypervisor (or placement) for one step and returns the record fields
the step changes; the engine commits them with the step's state change, atomically, so a
cancelled or failed step leaves no half-written record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from drivers.base import Driver, PowerState, RebootType

from ._schema import Action, Call, Step
from .model import Flavor, Instance, RequestContext
from .policy import locker_kind
from .states import TaskState, VmState

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["CALLS", "StepCall", "StepRun"]

Changes = dict[str, Any]


@attrs.define
class StepRun:
    """Everything one call may read: the engine, the action and its request, the record."""

    engine: Engine
    action: Action
    step: Step
    inst: Instance
    ctx: RequestContext
    params: Mapping[str, Any]
    extra: dict[str, Any]

    @property
    def driver(self) -> Driver:
        """The engine's driver."""
        return self.engine.driver

    def guest(self, **overrides: Any) -> Any:
        """The driver's view of the instance, with overrides (another host, another flavor)."""
        spec = self.inst.guest(user_data=self.engine._user_data(self.inst.uuid))
        return attrs.evolve(spec, **overrides) if overrides else spec

    def now(self) -> Any:
        """Wall-clock time for timestamps."""
        return self.engine.clock.wall()


async def _schedule(run: StepRun) -> Changes:
    if run.inst.host is not None:
        return {}
    host = await run.engine._pick_host(run.inst, run.inst.flavor, force=run.params.get("host"))
    return {"host": host}


async def _spawn(run: StepRun) -> Changes:
    power = await run.driver.spawn(run.guest(), power_on=True)
    return {"power_state": power, "launched_at": run.now()}


async def _destroy(run: StepRun) -> Changes:
    if not await run.engine._host_up(run.inst.host):
        # Nova's "local delete": the compute host is down, the record goes anyway
        return {"power_state": PowerState.NOSTATE}
    return {"power_state": await run.driver.destroy(run.guest())}


async def _release(run: StepRun) -> Changes:
    now = run.now()
    return {"power_state": PowerState.NOSTATE, "terminated_at": now, "deleted_at": now}


async def _power_off(run: StepRun) -> Changes:
    timeout = run.engine.config.shutdown_timeout
    return {"power_state": await run.driver.power_off(run.guest(), timeout=max(0.0, timeout))}


def _plain(name: str) -> Callable[[StepRun], Awaitable[Changes]]:
    async def call(run: StepRun) -> Changes:
        method: Callable[[Any], Awaitable[PowerState]] = getattr(run.driver, name)
        return {"power_state": await method(run.guest())}

    call.__name__ = f"_{name}"
    return call


async def _reboot(run: StepRun) -> Changes:
    kind = RebootType.HARD if run.action.variant == "HARD" else RebootType.SOFT
    return {"power_state": await run.driver.reboot(run.guest(), reboot_type=kind)}


async def _rescue(run: StepRun) -> Changes:
    image = str(run.params.get("rescue_image") or run.inst.image)
    return {"power_state": await run.driver.rescue(run.guest(), rescue_image=image)}


async def _snapshot(run: StepRun) -> Changes:
    default = f"{run.inst.name}-{run.action.name}"  # vm1-snapshot, vm1-shelve
    image_id = await run.driver.snapshot(run.guest(), name=str(run.params.get("name") or default))
    run.extra["snapshot_image_id"] = image_id
    return {"snapshot_image": image_id}


async def _shelve_offload(run: StepRun) -> Changes:
    if await run.engine._host_up(run.inst.host):
        await run.driver.destroy(run.guest())
    return {"host": None, "power_state": PowerState.NOSTATE}


async def _unshelve_spawn(run: StepRun) -> Changes:
    if run.inst.vm_state is VmState.SHELVED and run.inst.power_state is not PowerState.NOSTATE:
        power = await run.driver.power_on(run.guest())
    else:
        power = await run.driver.spawn(run.guest(), power_on=True)
    return {"power_state": power, "launched_at": run.now()}


async def _prep_resize(run: StepRun) -> Changes:
    flavor: Flavor = run.params["flavor"]
    exclude = () if run.engine.config.allow_resize_to_same_host else (run.inst.host or "",)
    dest = await run.engine._pick_host(run.inst, flavor, exclude=exclude, claim=False)
    return {
        "new_flavor": flavor,
        "dest_host": dest,
        "old_vm_state": run.inst.vm_state,
    }


async def _migrate_disk(run: StepRun) -> Changes:
    assert run.inst.dest_host is not None
    assert run.inst.new_flavor is not None
    power = await run.driver.migrate_disk_and_power_off(
        run.guest(), dest_host=run.inst.dest_host, flavor=run.inst.new_flavor.as_guest()
    )
    return {"power_state": power}


async def _finish_migration(run: StepRun) -> Changes:
    inst = run.inst
    assert inst.dest_host is not None
    assert inst.new_flavor is not None
    power = await run.driver.finish_migration(
        run.guest(host=inst.dest_host, flavor=inst.new_flavor.as_guest()),
        flavor=inst.new_flavor.as_guest(),
        power_on=inst.old_vm_state is not VmState.STOPPED,
    )
    return {
        "power_state": power,
        "host": inst.dest_host,
        "flavor": inst.new_flavor,
        "source_host": inst.host,
        "old_flavor": inst.flavor,
        "dest_host": None,
        "new_flavor": None,
    }


async def _confirm_migration(run: StepRun) -> Changes:
    if run.inst.source_host is not None and await run.engine._host_up(run.inst.source_host):
        await run.driver.confirm_migration(run.guest(), source_host=run.inst.source_host)
    return {"old_flavor": None, "source_host": None, "old_vm_state": None}


async def _finish_revert(run: StepRun) -> Changes:
    inst = run.inst
    host = inst.source_host or inst.host
    flavor = inst.old_flavor or inst.flavor
    power = await run.driver.finish_revert_migration(
        run.guest(host=host, flavor=flavor.as_guest()),
        power_on=inst.old_vm_state is not VmState.STOPPED,
    )
    return {
        "power_state": power,
        "host": host,
        "flavor": flavor,
        "old_flavor": None,
        "source_host": None,
        "old_vm_state": None,
    }


async def _rollback_resize(run: StepRun) -> Changes:
    changes: Changes = {"new_flavor": None, "dest_host": None, "old_vm_state": None}
    if run.inst.task_state is TaskState.RESIZE_MIGRATING:
        # the guest may already be off on the source: bring it back as it was
        changes["power_state"] = await run.driver.finish_revert_migration(
            run.guest(), power_on=run.inst.old_vm_state is not VmState.STOPPED
        )
    return changes


async def _rebuild(run: StepRun) -> Changes:
    await run.driver.destroy(run.guest())
    return await _spawn_image(run)


async def _spawn_image(run: StepRun) -> Changes:
    """Spawn the (possibly new) image on ``inst.host``; a stopped instance stays off.

    Evacuate calls only this: its guest sat on the failed host, and its record already names
    the new one.
    """
    inst = run.inst
    image = str(run.params.get("image") or inst.image)
    stays_off = inst.vm_state is VmState.STOPPED
    power = await run.driver.spawn(run.guest(image=image), power_on=not stays_off)
    return {"image": image, "power_state": power, "launched_at": run.now()}


async def _evacuate_schedule(run: StepRun) -> Changes:
    exclude = (run.inst.host,) if run.inst.host else ()
    host = await run.engine._pick_host(
        run.inst, run.inst.flavor, force=run.params.get("host"), exclude=exclude, claim=False
    )
    return {"host": host}


async def _pre_live_migration(run: StepRun) -> Changes:
    exclude = (run.inst.host,) if run.inst.host else ()
    dest = await run.engine._pick_host(
        run.inst, run.inst.flavor, force=run.params.get("host"), exclude=exclude, claim=False
    )
    await run.driver.pre_live_migration(run.guest(), dest_host=dest)
    return {"dest_host": dest}


async def _live_migration(run: StepRun) -> Changes:
    assert run.inst.dest_host is not None
    await run.driver.live_migration(run.guest(), dest_host=run.inst.dest_host)
    return {}


async def _lm_abort(run: StepRun) -> Changes:
    await run.driver.live_migration_abort(run.guest())
    return {}


async def _lm_force_complete(run: StepRun) -> Changes:
    await run.driver.live_migration_force_complete(run.guest())
    return {}


async def _post_live_migration(run: StepRun) -> Changes:
    dest = run.inst.dest_host
    assert dest is not None
    power = await run.driver.post_live_migration_at_destination(run.guest(), dest_host=dest)
    return {"host": dest, "dest_host": None, "power_state": power}


async def _rollback_live_migration(run: StepRun) -> Changes:
    if run.inst.dest_host is not None:
        await run.driver.rollback_live_migration_at_destination(
            run.guest(), dest_host=run.inst.dest_host
        )
    return {"dest_host": None}


async def _trigger_crash_dump(run: StepRun) -> Changes:
    await run.driver.trigger_crash_dump(run.guest())
    return {}


async def _lock(run: StepRun) -> Changes:
    if run.inst.locked:
        return {}  # Nova: locking a locked instance is a no-op
    by = locker_kind(run.ctx, run.inst)  # what the policy's ``locker`` check compares with
    reason = run.params.get("reason")
    return {"locked": True, "locked_by": by, "locked_reason": reason}


async def _unlock(run: StepRun) -> Changes:
    return {"locked": False, "locked_by": None, "locked_reason": None}


StepCall = Callable[[StepRun], Awaitable[Changes]]
"""What a step's call does: given the run, drive the hypervisor and return the record fields the
step changes (committed with the step). An embedding service binds its own by name
(``Engine(calls={"attach_volume": ...})``)."""

CALLS: dict[str, StepCall] = {
    Call.SCHEDULE: _schedule,
    Call.SPAWN: _spawn,
    Call.DESTROY: _destroy,
    Call.RELEASE: _release,
    Call.POWER_OFF: _power_off,
    Call.POWER_ON: _plain("power_on"),
    Call.REBOOT: _reboot,
    Call.PAUSE: _plain("pause"),
    Call.UNPAUSE: _plain("unpause"),
    Call.SUSPEND: _plain("suspend"),
    Call.RESUME: _plain("resume"),
    Call.RESCUE: _rescue,
    Call.UNRESCUE: _plain("unrescue"),
    Call.SNAPSHOT: _snapshot,
    Call.SHELVE_OFFLOAD: _shelve_offload,
    Call.UNSHELVE_SPAWN: _unshelve_spawn,
    Call.PREP_RESIZE: _prep_resize,
    Call.MIGRATE_DISK: _migrate_disk,
    Call.FINISH_MIGRATION: _finish_migration,
    Call.CONFIRM_MIGRATION: _confirm_migration,
    Call.FINISH_REVERT_MIGRATION: _finish_revert,
    Call.ROLLBACK_RESIZE: _rollback_resize,
    Call.REBUILD: _rebuild,
    Call.SPAWN_IMAGE: _spawn_image,
    Call.EVACUATE_SCHEDULE: _evacuate_schedule,
    Call.PRE_LIVE_MIGRATION: _pre_live_migration,
    Call.LIVE_MIGRATION: _live_migration,
    Call.LIVE_MIGRATION_ABORT: _lm_abort,
    Call.LIVE_MIGRATION_FORCE_COMPLETE: _lm_force_complete,
    Call.POST_LIVE_MIGRATION: _post_live_migration,
    Call.ROLLBACK_LIVE_MIGRATION: _rollback_live_migration,
    Call.TRIGGER_CRASH_DUMP: _trigger_crash_dump,
    Call.LOCK: _lock,
    Call.UNLOCK: _unlock,
}
