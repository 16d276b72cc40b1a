"""Every action's success path and a failure path, checked against the whole notification
sequence and the final state. The expected sequences are written out from
``reference/action-events.md`` (not derived from the table), so the table is tested."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.simulator import FaultRule
from statemachine.config import Config
from statemachine.engine import ActionResult
from statemachine.errors import ActionFailed, ActionPreempted
from tests.support import ADMIN, LARGE, OWNER, SMALL, World, virtual, world

LM = "live_migration"


async def _prepare(w: World, setup: list[str]) -> str:
    uuid = await w.create()
    for action in setup:
        ctx = ADMIN if action == "live_migrate" else OWNER
        params: dict[str, Any] = {"flavor": LARGE} if action == "resize" else {}
        await w.engine.act(ctx, action, uuid, params)
    w.clear()
    return uuid


SUCCESS: list[tuple[str, dict[str, Any], list[str], list[str], tuple[str, str]]] = [
    # action, params, setup, events, (vm_state, power_state)
    ("stop", {}, [], ["power_off.start", "power_off.end"], ("stopped", "shutdown")),
    ("start", {}, ["stop"], ["power_on.start", "power_on.end"], ("active", "running")),
    ("reboot", {"type": "SOFT"}, [], ["reboot.start", "reboot.end"], ("active", "running")),
    ("reboot", {"type": "HARD"}, [], ["reboot.start", "reboot.end"], ("active", "running")),
    ("reboot", {"type": "HARD"}, ["stop"], ["reboot.start", "reboot.end"], ("active", "running")),
    ("pause", {}, [], ["pause.start", "pause.end"], ("paused", "paused")),
    ("unpause", {}, ["pause"], ["unpause.start", "unpause.end"], ("active", "running")),
    ("suspend", {}, [], ["suspend.start", "suspend.end"], ("suspended", "suspended")),
    ("resume", {}, ["suspend"], ["resume.start", "resume.end"], ("active", "running")),
    ("rescue", {}, [], ["rescue.start", "exists", "rescue.end"], ("rescued", "running")),
    ("unrescue", {}, ["rescue"], ["unrescue.start", "unrescue.end"], ("active", "running")),
    (
        "resize", {"flavor": LARGE}, [],
        ["exists", "resize_prep.start", "resize_prep.end", "resize.start", "resize.end",
         "resize_finish.start", "resize_finish.end"],
        ("resized", "running"),
    ),
    (
        "resize", {"flavor": LARGE}, ["stop"],
        ["exists", "resize_prep.start", "resize_prep.end", "resize.start", "resize.end",
         "resize_finish.start", "resize_finish.end"],
        ("resized", "shutdown"),
    ),
    ("confirm_resize", {}, ["resize"], ["resize_confirm.start", "resize_confirm.end"],
     ("active", "running")),
    ("confirm_resize", {}, ["stop", "resize"], ["resize_confirm.start", "resize_confirm.end"],
     ("stopped", "shutdown")),
    ("revert_resize", {}, ["resize"], ["exists", "resize_revert.start", "resize_revert.end"],
     ("active", "running")),
    ("rebuild", {"image": "fedora"}, [], ["exists", "rebuild.start", "rebuild.end"],
     ("active", "running")),
    ("rebuild", {}, ["stop"], ["exists", "rebuild.start", "rebuild.end"], ("stopped", "shutdown")),
    ("snapshot", {"name": "snap"}, [], ["snapshot.start", "snapshot.end"], ("active", "running")),
    ("trigger_crash_dump", {}, [], ["trigger_crash_dump.start", "trigger_crash_dump.end"],
     ("active", "running")),
    ("soft_delete", {}, [], ["soft_delete.start", "soft_delete.end"], ("soft-delete", "shutdown")),
    ("restore", {}, ["soft_delete"], ["restore.start", "restore.end"], ("active", "running")),
    ("delete", {}, [], ["delete.start", "shutdown.start", "shutdown.end", "delete.end"],
     ("deleted", "pending")),
    ("shelve_offload", {}, [], ["shelve_offload.start", "shelve_offload.end"],
     ("shelved_offloaded", "pending")),
    ("unshelve", {}, ["shelve"], ["unshelve.start", "unshelve.end"], ("active", "running")),
    (
        "live_migrate", {"host": "compute2"}, [],
        [f"{LM}_pre.start", f"{LM}_pre.end", f"{LM}_post.start", f"{LM}_post_dest.start",
         f"{LM}_post_dest.end", f"{LM}_post.end"],
        ("active", "running"),
    ),
    ("lock", {"reason": "audit"}, [], ["lock"], ("active", "running")),
    ("unlock", {}, ["lock"], ["unlock"], ("active", "running")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("action", "params", "setup", "events", "final"),
    SUCCESS,
    ids=[f"{a}-{'+'.join(s) or 'fresh'}-{p.get('type', '')}" for a, p, s, _, _ in SUCCESS],
)
@virtual
async def test_success_path(
    action: str,
    params: dict[str, Any],
    setup: list[str],
    events: list[str],
    final: tuple[str, str],
) -> None:
    """The action emits exactly the reference's sequence and ends in its target state."""
    # shelve_offload needs a shelved instance that is not offloaded at once
    config = Config(shelved_offload_time=-1)
    async with world(config=config) as w:
        if action == "shelve_offload":
            setup = ["shelve"]
        uuid = await _prepare(w, setup)
        ctx = ADMIN if action == "live_migrate" else OWNER
        result = await w.engine.act(ctx, action, uuid, params)
        assert w.events(uuid) == events
        inst = result.instance
        assert (inst.vm_state.value, inst.power_state.label) == final
        assert inst.task_state is None


@virtual
async def test_create_path() -> None:
    """create: create.start, create.end; active/running on a host with a launch time."""
    async with world() as w:
        uuid = await w.create(host="compute2")
        assert w.events(uuid) == ["create.start", "create.end"]
        inst = w.engine.get(uuid)
        assert (inst.vm_state.value, inst.task_state, inst.power_state.label) == (
            "active",
            None,
            "running",
        )
        assert inst.host == "compute2"
        assert inst.launched_at is not None


@virtual
async def test_shelve_offloads_at_once_by_default() -> None:
    """shelve with shelved_offload_time 0 goes straight on to the offload."""
    async with world() as w:
        uuid = await _prepare(w, [])
        await w.engine.act(OWNER, "shelve", uuid)
        await w.engine.wait_idle(timeout=60)
        assert w.events(uuid) == [
            "exists", "shelve.start", "shelve.end", "shelve_offload.start", "shelve_offload.end"
        ]  # fmt: skip
        inst = w.engine.get(uuid)
        assert (inst.vm_state.value, inst.power_state.label, inst.host) == (
            "shelved_offloaded",
            "pending",
            None,
        )


@virtual
async def test_shelve_kept_when_offload_disabled() -> None:
    """shelved_offload_time -1 keeps the shelved instance on its host."""
    async with world(config=Config(shelved_offload_time=-1)) as w:
        uuid = await _prepare(w, [])
        await w.engine.act(OWNER, "shelve", uuid)
        await w.engine.wait_idle(timeout=60)
        assert w.events(uuid) == ["exists", "shelve.start", "shelve.end"]
        inst = w.engine.get(uuid)
        assert (inst.vm_state.value, inst.power_state.label) == ("shelved", "shutdown")
        assert inst.host is not None


@virtual
async def test_force_delete_is_a_delete_for_admins() -> None:
    """force_delete emits the delete sequence."""
    async with world() as w:
        uuid = await _prepare(w, [])
        await w.engine.act(ADMIN, "force_delete", uuid)
        assert w.events(uuid) == ["delete.start", "shutdown.start", "shutdown.end", "delete.end"]


@virtual
async def test_delete_of_never_scheduled_instance_is_short() -> None:
    """A build that found no host leaves no host; its delete is delete.start, delete.end."""
    async with world(hosts=("compute1",)) as w:
        w.sim.host_down("compute1")
        handle = await w.engine.create(OWNER, name="vm1", flavor=SMALL, image="cirros", wait=False)
        assert not isinstance(handle, ActionResult)
        result = await handle.wait()
        assert isinstance(result.error, ActionFailed)
        assert result.instance.vm_state.value == "error"
        assert result.instance.host is None
        w.clear()
        await w.engine.act(OWNER, "delete", handle.uuid)
        assert w.events(handle.uuid) == ["delete.start", "delete.end"]


@virtual
async def test_live_migrate_abort_and_force_complete() -> None:
    """Abort rolls back to the source; force-complete finishes on the destination."""
    async with world() as w:
        uuid = await w.create(host="compute1")
        handle = await w.engine.submit(ADMIN, "live_migrate", uuid, {"host": "compute2"})
        await w.capture.wait_for(f"instance.{LM}_pre.end", count=1, timeout=600)
        w.clear()
        await w.engine.act(ADMIN, "live_migrate_abort", uuid)
        result = await handle.wait()
        assert isinstance(result.error, ActionPreempted)
        assert w.events(uuid) == [
            f"{LM}_abort.start", f"{LM}_abort.end", f"{LM}_rollback.start", f"{LM}_rollback.end"
        ]  # fmt: skip
        assert w.engine.get(uuid).host == "compute1"
        handle = await w.engine.submit(ADMIN, "live_migrate", uuid, {"host": "compute2"})
        await w.capture.wait_for(f"instance.{LM}_pre.end", count=1, timeout=600)
        w.clear()
        await w.engine.act(ADMIN, "live_migrate_force_complete", uuid)
        assert w.events(uuid) == [
            f"{LM}_force_complete.start", f"{LM}_force_complete.end", f"{LM}_post.start",
            f"{LM}_post_dest.start", f"{LM}_post_dest.end", f"{LM}_post.end",
        ]  # fmt: skip
        inst = w.engine.get(uuid)
        assert (inst.host, inst.vm_state.value, inst.task_state) == ("compute2", "active", None)


@virtual
async def test_evacuate_rebuilds_on_another_host() -> None:
    """With its host down, evacuate emits evacuate, rebuild.start, rebuild.end; new host."""
    async with world() as w:
        uuid = await w.create(host="compute1")
        w.clear()
        w.sim.host_down("compute1")
        result = await w.engine.act(ADMIN, "evacuate", uuid)
        assert w.events(uuid) == ["evacuate", "rebuild.start", "rebuild.end"]
        assert (result.instance.host, result.instance.vm_state.value) == ("compute2", "active")


FAILURES: list[
    tuple[str, dict[str, Any], list[str] | None, tuple[str, str | None], list[str], str]
] = [
    # action, params, setup, fault (action, step), events, final (vm_state, task_state)
    ("create", {}, None, ("create", "spawning"), ["create.start", "create.error"], "error"),
    ("stop", {}, [], ("stop", "powering-off"), ["power_off.start", "power_off.error"], "active"),
    ("start", {}, ["stop"], ("start", "powering-on"), ["power_on.start", "power_on.error"],
     "stopped"),
    ("reboot", {"type": "SOFT"}, [], ("reboot", "reboot_started"),
     ["reboot.start", "reboot.error"], "active"),
    ("reboot", {"type": "HARD"}, ["stop"], ("reboot", "reboot_started_hard"),
     ["reboot.start", "reboot.error"], "error"),
    ("pause", {}, [], ("pause", "pausing"), ["pause.start", "pause.error"], "active"),
    ("unpause", {}, ["pause"], ("unpause", "unpausing"), ["unpause.start", "unpause.error"],
     "paused"),
    ("suspend", {}, [], ("suspend", "suspending"), ["suspend.start", "suspend.error"], "active"),
    ("resume", {}, ["suspend"], ("resume", "resuming"), ["resume.start", "resume.error"],
     "suspended"),
    ("rescue", {}, [], ("rescue", "rescuing"), ["rescue.start", "exists", "rescue.error"],
     "active"),
    ("unrescue", {}, ["rescue"], ("unrescue", "unrescuing"),
     ["unrescue.start", "unrescue.error"], "rescued"),
    ("resize", {"flavor": LARGE}, [], ("resize", "resize_migrating"),
     ["exists", "resize_prep.start", "resize_prep.end", "resize.start", "resize.error"],
     "active"),
    ("resize", {"flavor": LARGE}, [], ("resize", "resize_finish"),
     ["exists", "resize_prep.start", "resize_prep.end", "resize.start", "resize.end",
      "resize_finish.start", "resize.error"], "error"),
    ("confirm_resize", {}, ["resize"], ("confirm_resize", "resize_confirming"),
     ["resize_confirm.start", "resize_confirm.error"], "resized"),
    ("revert_resize", {}, ["resize"], ("revert_resize", "resize_reverting"),
     ["exists", "resize_revert.start", "resize_revert.error"], "resized"),
    ("rebuild", {}, [], ("rebuild", "rebuild_spawning"),
     ["exists", "rebuild.start", "rebuild.error"], "error"),
    ("snapshot", {}, [], ("snapshot", "image_snapshot"), ["snapshot.start", "snapshot.error"],
     "active"),
    ("trigger_crash_dump", {}, [], ("trigger_crash_dump", None),
     ["trigger_crash_dump.start", "trigger_crash_dump.error"], "active"),
    ("soft_delete", {}, [], ("soft_delete", "soft-deleting"),
     ["soft_delete.start", "soft_delete.error"], "active"),
    ("restore", {}, ["soft_delete"], ("restore", "restoring"),
     ["restore.start", "restore.error"], "error"),
    ("delete", {}, [], ("delete", "deleting"),
     ["delete.start", "shutdown.start", "delete.error"], "error"),
    ("shelve", {}, [], ("shelve", "shelving_image_uploading"),
     ["exists", "shelve.start", "shelve.error"], "active"),
    ("shelve_offload", {}, ["shelve"], ("shelve_offload", "shelving_offloading"),
     ["shelve_offload.start", "shelve_offload.error"], "shelved"),
    ("unshelve", {}, ["shelve"], ("unshelve", "spawning"), ["unshelve.start", "unshelve.error"],
     "error"),
    ("live_migrate", {"host": "compute2"}, [], ("live_migrate", "migrating"),
     [f"{LM}_pre.start", f"{LM}_pre.error", f"{LM}_rollback.start", f"{LM}_rollback.end"],
     "active"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("action", "params", "setup", "fault", "events", "final"),
    FAILURES,
    ids=[f"{a}-{f[1]}" for a, _, _, f, _, _ in FAILURES],
)
@virtual
async def test_failure_path(
    action: str,
    params: dict[str, Any],
    setup: list[str] | None,
    fault: tuple[str, str | None],
    events: list[str],
    final: str,
) -> None:
    """A driver fault emits the action's .error (ERROR, with a fault) and follows its error path."""
    async with world(config=Config(shelved_offload_time=-1)) as w:
        uuid = None if setup is None else await _prepare(w, setup)
        w.sim.faults.add(FaultRule(action=fault[0], step=fault[1], message="boom"))
        ctx = ADMIN if action == "live_migrate" else OWNER
        if uuid is None:
            handle = await w.engine.submit(ctx, action, None, {
                "name": "vm1", "flavor": SMALL, "image": "cirros"
            })  # fmt: skip
        else:
            handle = await w.engine.submit(ctx, action, uuid, params)
        result = await handle.wait()
        assert isinstance(result.error, ActionFailed)
        assert "boom" in str(result.error)
        assert w.events(handle.uuid) == events
        errors = [n for n in w.capture.notifications if n.event_type.endswith(".error")]
        assert [n.priority for n in errors] == ["ERROR"]
        inst = w.engine.get(handle.uuid)
        assert (inst.vm_state.value, inst.task_state) == (final, None)
        assert inst.fault is not None
        assert inst.fault.exception == "InjectedFault"


@virtual
async def test_lock_failure_path_through_a_hook() -> None:
    """lock has no driver call; a failing step hook still takes the error path cleanly."""

    async def hook(info: Any) -> None:
        if info.action == "lock":
            raise RuntimeError("lock store unavailable")

    async with world(hooks=[hook]) as w:
        uuid = await w.create()
        w.clear()
        with pytest.raises(ActionFailed):
            await w.engine.act(OWNER, "lock", uuid)
        assert w.events(uuid) == ["lock.error"]
        assert w.engine.get(uuid).locked is False
