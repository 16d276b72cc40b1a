"""Timed transitions, power sync, policy, placement, queries and watching."""

from __future__ import annotations

import json

import anyio
import pytest

from drivers.base import LifecycleEvent, LifecycleTransition
from drivers.simulator import FaultRule, SimHost
from statemachine.config import Config
from statemachine.engine import Engine
from statemachine.errors import (
    ActionFailed,
    Busy,
    EngineClosed,
    Forbidden,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    NoValidHost,
    WaitTimeout,
    WatchOverflow,
)
from statemachine.states import VmState
from tests.support import ADMIN, LARGE, OTHER, OWNER, SMALL, virtual, world

DAY = 86400.0


# -- timed transitions ---------------------------------------------------------------------


@virtual
async def test_resize_is_confirmed_after_the_window() -> None:
    """resize_confirm_window 60: unconfirmed at 59 s, confirmed by the system after 60 s."""
    async with world(config=Config(resize_confirm_window=60)) as w:
        uuid = await w.create()
        await w.engine.act(OWNER, "resize", uuid, {"flavor": LARGE})
        w.clear()
        await anyio.sleep(59)
        assert w.engine.get(uuid).vm_state.value == "resized"
        await anyio.sleep(2)
        await w.engine.wait_idle(timeout=600)
        inst = w.engine.get(uuid)
        assert (inst.vm_state.value, inst.flavor.vcpus, inst.old_flavor) == ("active", 2, None)
        assert w.events(uuid) == ["resize_confirm.start", "resize_confirm.end"]


@virtual
async def test_zero_window_never_confirms() -> None:
    """resize_confirm_window 0 (Nova's default) never auto-confirms, even after ten days."""
    async with world(config=Config(sync_power_state_interval=-1)) as w:  # its timer apart
        uuid = await w.create()
        await w.engine.act(OWNER, "resize", uuid, {"flavor": LARGE})
        await anyio.sleep(10 * DAY)
        assert w.engine.get(uuid).vm_state.value == "resized"
        assert w.engine.statistics().timers_armed == 0


@virtual
async def test_leaving_the_state_disarms_its_timer() -> None:
    """A manual confirm then a new resize: the first window's timer does not confirm early."""
    async with world(config=Config(resize_confirm_window=100)) as w:
        uuid = await w.create()
        await w.engine.act(OWNER, "resize", uuid, {"flavor": LARGE})
        await anyio.sleep(50)
        await w.engine.act(OWNER, "confirm_resize", uuid)
        await w.engine.act(OWNER, "resize", uuid, {"flavor": SMALL})
        resized_at = anyio.current_time()
        await anyio.sleep(60)  # the first window would have ended here
        assert w.engine.get(uuid).vm_state.value == "resized"
        await anyio.sleep(resized_at + 101 - anyio.current_time())
        await w.engine.wait_idle(timeout=600)
        assert w.engine.get(uuid).vm_state.value == "active"


@virtual
async def test_soft_deleted_instance_is_reclaimed() -> None:
    """reclaim_instance_interval 3600 deletes a soft-deleted instance after an hour, not before."""
    async with world(config=Config(reclaim_instance_interval=3600)) as w:
        uuid = await w.create()
        await w.engine.act(OWNER, "soft_delete", uuid)
        w.clear()
        await anyio.sleep(3599)
        assert w.engine.get(uuid).vm_state.value == "soft-delete"
        await anyio.sleep(2)
        await w.engine.wait_idle(timeout=600)
        assert w.engine.get(uuid).vm_state.value == "deleted"
        assert w.events(uuid) == ["delete.start", "shutdown.start", "shutdown.end", "delete.end"]


@virtual
async def test_restore_before_reclaim_keeps_the_instance() -> None:
    """A restore before the reclaim time disarms the reclaim."""
    async with world(config=Config(reclaim_instance_interval=600)) as w:
        uuid = await w.create()
        await w.engine.act(OWNER, "soft_delete", uuid)
        await anyio.sleep(300)
        await w.engine.act(OWNER, "restore", uuid)
        await anyio.sleep(DAY)
        assert w.engine.get(uuid).vm_state.value == "active"


@pytest.mark.parametrize(("offload", "expected"), [(300, "shelved_offloaded"), (-1, "shelved")])
@virtual
async def test_shelved_offload_time(offload: float, expected: str) -> None:
    """shelved_offload_time > 0 offloads after that long; -1 never does."""
    async with world(config=Config(shelved_offload_time=offload)) as w:
        uuid = await w.create()
        await w.engine.act(OWNER, "shelve", uuid)
        await anyio.sleep(299)
        assert w.engine.get(uuid).vm_state.value == "shelved"
        await anyio.sleep(DAY)
        await w.engine.wait_idle(timeout=600)
        assert w.engine.get(uuid).vm_state.value == expected


# -- power sync ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "event", "final", "events"),
    [
        ([], "crash", ("stopped", "shutdown"), ["power_off.start", "power_off.end"]),
        ([], "shutdown", ("stopped", "shutdown"), ["power_off.start", "power_off.end"]),
        (["pause"], "shutdown", ("stopped", "shutdown"), ["power_off.start", "power_off.end"]),
        (["rescue"], "shutdown", ("rescued", "shutdown"), []),
        (["suspend"], "crash", ("suspended", "crashed"), []),
        (["stop"], "crash", ("stopped", "crashed"), []),
    ],
)
@virtual
async def test_guest_events_follow_novas_power_sync(
    setup: list[str], event: str, final: tuple[str, str], events: list[str]
) -> None:
    """A guest that goes down by itself is reconciled by Nova's table, and only where it says."""
    async with world() as w:
        uuid = await w.create()
        for action in setup:
            await w.engine.act(OWNER, action, uuid)
        w.clear()
        w.sim.guest_event(uuid, event)  # type: ignore[arg-type]
        await anyio.sleep(1)
        await w.engine.wait_idle(timeout=600)
        inst = w.engine.get(uuid)
        assert (inst.vm_state.value, inst.power_state.label) == final
        assert w.events(uuid) == events


@virtual
async def test_events_never_touch_a_running_task() -> None:
    """A guest event while a task runs is ignored: Nova never fights an in-flight task."""

    async def slow_reboot(info: object) -> None:
        if getattr(info, "action", None) == "reboot":
            await anyio.sleep(30)

    async with world(hooks=[slow_reboot]) as w:
        uuid = await w.create()
        handle = await w.engine.submit(OWNER, "reboot", uuid, {"type": "SOFT"})
        await anyio.sleep(1)
        w.sim.guest_event(uuid, "shutdown")
        await anyio.sleep(1)
        assert w.engine.running(uuid) is handle
        await handle.wait()
        await w.engine.wait_idle(timeout=600)
        starts = [e for e in w.events(uuid) if e.endswith(".start")]
        assert starts == ["create.start", "reboot.start"]


@virtual
async def test_stale_event_is_ignored() -> None:
    """A STOPPED event for a guest the hypervisor reports running changes nothing."""
    async with world() as w:
        uuid = await w.create()
        before = w.engine.get(uuid)
        await w.engine.handle_lifecycle_event(
            LifecycleEvent(uuid, LifecycleTransition.STOPPED, 0.0)
        )
        await w.engine.wait_idle(timeout=60)
        assert w.engine.get(uuid) is before


@virtual
async def test_lifecycle_events_can_be_turned_off() -> None:
    """handle_virt_lifecycle_events=False leaves guest events alone."""
    async with world(config=Config(handle_virt_lifecycle_events=False)) as w:
        uuid = await w.create()
        w.sim.guest_event(uuid, "crash")
        await anyio.sleep(5)
        inst = w.engine.get(uuid)
        assert (inst.vm_state.value, inst.power_state.label) == ("active", "running")


# -- policy and refusals ---------------------------------------------------------------------


@virtual
async def test_other_projects_are_forbidden_and_nothing_changes() -> None:
    """Another project's member is refused; an admin of another project is not."""
    async with world() as w:
        uuid = await w.create()
        before, count = w.engine.get(uuid), len(w.capture.notifications)
        with pytest.raises(Forbidden, match="owner_or_admin"):
            await w.engine.act(OTHER, "stop", uuid)
        assert w.engine.get(uuid) is before
        assert len(w.capture.notifications) == count
        await w.engine.act(ADMIN, "stop", uuid)


@pytest.mark.parametrize(
    "action",
    ["force_delete", "evacuate", "live_migrate", "live_migrate_abort",
     "live_migrate_force_complete"],
)  # fmt: skip
@virtual
async def test_admin_only_actions(action: str) -> None:
    """The default policy keeps these to admins, even for the owner."""
    async with world() as w:
        uuid = await w.create()
        with pytest.raises(Forbidden, match="admin"):
            await w.engine.submit(OWNER, action, uuid)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"flavor": SMALL, "image": "cirros", "bogus": 1}, "takes no parameter"),
        ({"image": "cirros"}, "needs parameters"),
        ({"flavor": {"vcpus": 0, "memory_mb": 1, "root_gb": 1}, "image": "c"}, "at least 1"),
        ({"flavor": {"vcpus": 1, "memory_mb": -1, "root_gb": 1}, "image": "c"}, "non-negative"),
        ({"flavor": SMALL, "image": "x" * 300}, "longer than 255"),
        ({"flavor": SMALL, "image": "c", "metadata": {str(i): "v" for i in range(129)}},
         "at most 128"),
        ({"flavor": SMALL, "image": "c", "name": "</name><devices>"}, "invalid instance name"),
    ],
)  # fmt: skip
@virtual
async def test_bad_create_input_is_refused_and_creates_nothing(
    params: dict[str, object], message: str
) -> None:
    """Malformed input is an InvalidRequest and no instance appears."""
    async with world() as w:
        params.setdefault("name", "vm1")
        with pytest.raises(InvalidRequest, match=message):
            await w.engine.submit(OWNER, "create", None, params)
        assert w.engine.instances() == []
        assert w.engine.statistics().refused == 1


@virtual
async def test_unknown_things_are_typed_refusals() -> None:
    """Unknown actions and instances, deleted instances, a closed engine: typed refusals."""
    async with world() as w:
        uuid = await w.create()
        with pytest.raises(InvalidRequest, match="unknown action 'fly'"):
            await w.engine.submit(OWNER, "fly", uuid)
        with pytest.raises(InvalidRequest, match="unknown reboot type"):
            await w.engine.submit(OWNER, "reboot", uuid, {"type": "GENTLE"})
        with pytest.raises(InvalidRequest, match="unknown action 'force_stop'"):
            await w.engine.submit(OWNER, "force_stop", uuid)  # internal: the system's only
        with pytest.raises(InvalidRequest, match="uuid"):
            await w.engine.submit(OWNER, "stop", "no-such-uuid")  # not even a uuid
        with pytest.raises(InstanceNotFound):
            await w.engine.submit(OWNER, "stop", "00000000-0000-4000-8000-00000000dead")
        await w.engine.act(OWNER, "delete", uuid)
        with pytest.raises(InstanceNotFound):
            await w.engine.submit(OWNER, "stop", uuid)
    with pytest.raises(EngineClosed):
        await w.engine.submit(OWNER, "stop", uuid)


@virtual
async def test_bounded_actions_in_flight() -> None:
    """Past max_actions, new actions are refused with Busy instead of piling up."""
    async with world(config=Config(max_actions=1)) as w:
        uuid = await w.create()
        w.sim.faults.add(FaultRule(action="stop", mode="hang"))
        await w.engine.submit(OWNER, "stop", uuid)
        with pytest.raises(Busy):
            await w.engine.submit(OWNER, "lock", uuid)


def test_shutdown_timeout_must_fit_the_power_off_deadline() -> None:
    """A shutdown_timeout longer than the power-off step's deadline is refused up front."""
    from drivers.simulator import SimulatorDriver

    with pytest.raises(InvalidRequest, match="shutdown_timeout"):
        Engine(SimulatorDriver(), config=Config(shutdown_timeout=200))


@virtual
async def test_never_launched_instance_refuses_stop_but_deletes() -> None:
    """A build that failed never launched: stop is refused on launched_at, delete works."""
    async with world() as w:
        w.sim.faults.add(FaultRule(action="create", step="spawning"))
        handle = await w.engine.submit(
            OWNER, "create", None, {"name": "vm1", "flavor": SMALL, "image": "cirros"}
        )
        await handle.wait()
        with pytest.raises(InvalidState, match="launched_at"):
            await w.engine.act(OWNER, "stop", handle.uuid)
        await w.engine.act(OWNER, "delete", handle.uuid)


# -- placement -----------------------------------------------------------------------------


@virtual
async def test_capacity_is_accounted() -> None:
    """A 2-vCPU host takes two 1-vCPU instances; the third build finds no host; a delete frees."""
    from drivers.simulator import SimulatorDriver
    from statemachine.clock import VirtualClock

    sim = SimulatorDriver(hosts=[SimHost("h1", vcpus=2)])
    async with Engine(sim, clock=VirtualClock()) as engine:
        uuids = []
        for i in range(2):
            result = await engine.create(OWNER, name=f"vm{i}", flavor=SMALL, image="cirros")
            uuids.append(result.instance.uuid)
        with pytest.raises(ActionFailed) as info:
            await engine.create(OWNER, name="vm2", flavor=SMALL, image="cirros")
        assert isinstance(info.value.__cause__, NoValidHost)
        failed = engine.instances(name="vm2")[0]
        assert (failed.vm_state.value, failed.host) == ("error", None)
        await engine.act(OWNER, "delete", uuids[0])
        again = await engine.create(OWNER, name="vm3", flavor=SMALL, image="cirros")
        assert again.instance.host == "h1"


@virtual
async def test_resize_to_another_host_only_when_asked() -> None:
    """allow_resize_to_same_host False on one host: the resize fails and rolls back."""
    async with world(hosts=("h1",), config=Config(allow_resize_to_same_host=False)) as w:
        uuid = await w.create()
        with pytest.raises(ActionFailed) as info:
            await w.engine.act(OWNER, "resize", uuid, {"flavor": LARGE})
        assert isinstance(info.value.__cause__, NoValidHost)
        inst = w.engine.get(uuid)
        assert (inst.vm_state.value, inst.task_state, inst.flavor.vcpus) == ("active", None, 1)
        assert (inst.new_flavor, inst.dest_host) == (None, None)


@virtual
async def test_forced_host_down_fails_the_build() -> None:
    """params.host names a host that is down: NoValidHost, error, no host."""
    async with world() as w:
        w.sim.host_down("compute2")
        handle = await w.engine.submit(
            OWNER, "create", None,
            {"name": "vm1", "flavor": SMALL, "image": "cirros", "host": "compute2"},
        )  # fmt: skip
        result = await handle.wait()
        assert isinstance(result.error, ActionFailed)
        assert isinstance(result.error.__cause__, NoValidHost)
        assert "down" in str(result.error.__cause__)


# -- queries and watching --------------------------------------------------------------------


@virtual
async def test_queries_and_statuses() -> None:
    """Instances by state, host and project; Nova's statuses; the last fault, scrubbed."""
    async with world() as w:
        a = await w.create("a", host="compute1")
        b = await w.create("b", ctx=OTHER, host="compute2")
        await w.engine.act(OWNER, "stop", a)
        assert [i.uuid for i in w.engine.instances(vm_state=w.engine.get(a).vm_state)] == [a]
        assert [i.uuid for i in w.engine.instances(host="compute2")] == [b]
        assert [i.uuid for i in w.engine.instances(project_id="p2")] == [b]
        assert (w.engine.status(a), w.engine.status(b)) == ("SHUTOFF", "ACTIVE")
        w.sim.faults.add(FaultRule(action="pause", message="failed with password=hunter2"))
        with pytest.raises(ActionFailed):
            await w.engine.act(OTHER, "pause", b)
        fault = w.engine.fault(b)
        assert fault is not None
        assert (fault.exception, fault.message) == ("InjectedFault", "failed with password=***")
        await w.engine.act(OTHER, "resize", b, {"flavor": LARGE})
        assert w.engine.status(b) == "VERIFY_RESIZE"


@virtual
async def test_watch_sees_every_change_in_order() -> None:
    """A watcher receives each committed change of a stop, in order."""
    async with world() as w:
        uuid = await w.create()
        async with w.engine.watch() as changes:
            await w.engine.act(OWNER, "stop", uuid)
            seen = []
            with anyio.fail_after(1):
                async for change in changes:
                    seen.append((change.new.vm_state.value, change.new.task_state, change.action))
                    if len(seen) == 2:
                        break
        assert seen == [
            ("active", w.engine.lifecycle.action("stop").steps[0].task_state, "stop"),
            ("stopped", None, "stop"),
        ]


@virtual
async def test_slow_watcher_is_dropped_not_buffered_forever() -> None:
    """A watcher that does not read falls behind its bound and gets WatchOverflow."""
    async with world() as w:
        uuid = await w.create()
        async with w.engine.watch(buffer=2) as changes:
            for action in ("stop", "start", "stop"):
                await w.engine.act(OWNER, action, uuid)
            with pytest.raises(WatchOverflow):
                async for _ in changes:
                    pass


@virtual
async def test_wait_for_state_returns_or_says_what_it_saw() -> None:
    """wait_for_state wakes on the commit; on timeout it names the state it saw."""
    async with world() as w:
        uuid = await w.create()
        await w.engine.submit(OWNER, "stop", uuid)
        inst = await w.engine.wait_for_state(uuid, vm_state="stopped", timeout=600)
        assert inst.power_state.label == "shutdown"
        with pytest.raises(WaitTimeout, match="'vm_state': 'stopped'"):
            await w.engine.wait_for_state(uuid, vm_state="active", timeout=5)


@virtual
async def test_secrets_never_leave() -> None:
    """admin_pass, user_data, metadata and key_name appear in no notification nor snapshot."""
    canaries = ("canary-ADMINPASS", "canary-USERDATA", "canary-META", "canary-KEY")
    async with world(config=Config(notify_on_state_change="vm_and_task_state")) as w:
        result = await w.engine.create(
            OWNER, name="vm1", flavor=SMALL, image="cirros", admin_pass=canaries[0],
            user_data=canaries[1], metadata={"db_password": canaries[2]}, key_name=canaries[3],
        )  # fmt: skip
        uuid = result.instance.uuid
        results = [result]
        for action, params in (("stop", {}), ("start", {}), ("resize", {"flavor": LARGE}),
                               ("confirm_resize", {}), ("delete", {})):  # fmt: skip
            results.append(await w.engine.act(OWNER, action, uuid, params))
        text = json.dumps([n.envelope() for n in w.capture.notifications])
        text += "".join(repr(r) for r in results)
        for canary in canaries:
            if canary in ("canary-META", "canary-KEY"):
                continue  # kept on the record (the caller's own data), never emitted
            assert canary not in text
        emitted = json.dumps([n.envelope() for n in w.capture.notifications])
        assert not any(c in emitted for c in canaries)


@virtual
async def test_a_timed_transition_refused_as_busy_is_deferred_not_lost() -> None:
    """At the engine's bound, a due auto-offload is refused as Busy: it is tried again after
    a back-off and happens once a slot frees, rather than leaving the instance shelved."""

    async def slow_reboot(info: object) -> None:
        if getattr(info, "action", None) == "reboot":
            await anyio.sleep(100)

    config = Config(max_actions=1, shelved_offload_time=10)
    async with world(hooks=[slow_reboot], config=config) as w:
        shelved = await w.create()
        busy = await w.create()
        await w.engine.act(OWNER, "shelve", shelved)
        reboot = await w.engine.submit(OWNER, "reboot", busy, {"type": "SOFT"})
        await anyio.sleep(50)  # the offload fell due at 10 s and was refused: the slot is taken
        assert w.engine.get(shelved).vm_state is VmState.SHELVED
        await reboot.wait()
        await w.engine.wait_for_state(shelved, vm_state="shelved_offloaded", timeout=120)
