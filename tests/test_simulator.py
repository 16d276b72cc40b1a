"""The simulated hypervisor fleet: power effects, placement, faults, events and determinism."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

import anyio
import pytest

from drivers import (
    CURRENT_CALL,
    CallContext,
    Capabilities,
    Driver,
    FaultPlan,
    FaultRule,
    GuestFlavor,
    GuestNotFound,
    GuestSpec,
    HostInfo,
    HostUnavailable,
    InjectedFault,
    InsufficientResources,
    LatencyModel,
    LifecycleEvent,
    LifecycleTransition,
    PowerState,
    RebootType,
    SimHost,
    SimulatorDriver,
)

SMALL = GuestFlavor(vcpus=2, memory_mb=2048, root_gb=20)
LARGE = GuestFlavor(vcpus=4, memory_mb=4096, root_gb=40)
NO_WAIT = LatencyModel(scale=0)


def sim(
    *hosts: str | SimHost,
    latency: LatencyModel = NO_WAIT,
    seed: int = 0,
    emit_operation_events: bool = False,
    event_buffer: int = 10_000,
) -> SimulatorDriver:
    """A driver on the given hosts (compute1 and compute2 by default) that never sleeps."""
    return SimulatorDriver(
        hosts=hosts or ("compute1", "compute2"),
        seed=seed,
        latency=latency,
        emit_operation_events=emit_operation_events,
        event_buffer=event_buffer,
    )


def spec(name: str = "vm", host: str | None = "compute1", flavor: GuestFlavor = SMALL) -> GuestSpec:
    """A guest spec with a uuid derived from its name, so tests can rebuild the same guest."""
    return GuestSpec(
        uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
        name=name,
        host=host,
        flavor=flavor,
        image="cirros",
    )


def used(driver: SimulatorDriver, host: str) -> GuestFlavor:
    """The resources the simulator counts as held on ``host``."""
    return driver.statistics().used[host]


async def first_event(driver: SimulatorDriver) -> LifecycleEvent:
    """The next event on the driver's stream, failing fast if none is buffered."""
    with anyio.fail_after(1):
        async for event in driver.events():
            return event
    raise AssertionError("the event stream ended")


def test_satisfies_the_driver_protocol() -> None:
    """The simulator must be usable wherever the engine expects a Driver (runtime and mypy)."""
    driver: Driver = SimulatorDriver()
    assert isinstance(driver, Driver)
    assert driver.capabilities == Capabilities()
    assert driver.capabilities.suspended_power_state is PowerState.SUSPENDED


Op = Callable[[SimulatorDriver, GuestSpec], Awaitable[object]]

POWER_EFFECTS: list[tuple[str, Op, PowerState]] = [
    ("power_off", lambda d, g: d.power_off(g, timeout=60), PowerState.SHUTDOWN),
    ("power_on", lambda d, g: d.power_on(g), PowerState.RUNNING),
    ("reboot_soft", lambda d, g: d.reboot(g, reboot_type=RebootType.SOFT), PowerState.RUNNING),
    ("reboot_hard", lambda d, g: d.reboot(g, reboot_type=RebootType.HARD), PowerState.RUNNING),
    ("pause", lambda d, g: d.pause(g), PowerState.PAUSED),
    ("unpause", lambda d, g: d.unpause(g), PowerState.RUNNING),
    ("suspend", lambda d, g: d.suspend(g), PowerState.SUSPENDED),
    ("resume", lambda d, g: d.resume(g), PowerState.RUNNING),
    ("rescue", lambda d, g: d.rescue(g, rescue_image="rescue"), PowerState.RUNNING),
    ("unrescue", lambda d, g: d.unrescue(g), PowerState.RUNNING),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("op", "expected"),
    [(op, want) for _, op, want in POWER_EFFECTS],
    ids=[n for n, *_ in POWER_EFFECTS],
)
async def test_power_effect_of_each_operation(op: Op, expected: PowerState) -> None:
    """Each operation must return, and leave, the power state a hypervisor would report."""
    driver, guest = sim(), spec()
    await driver.spawn(guest)
    if expected is PowerState.RUNNING:
        await driver.pause(guest)  # start from a state the operation changes
    assert await op(driver, guest) is expected
    assert await driver.power_state(guest) is expected


@pytest.mark.asyncio
async def test_lifecycle_of_one_guest() -> None:
    """Spawn, rescue, crash dump, snapshot and destroy must leave the record a hypervisor would."""
    driver, guest = sim(), spec()
    assert await driver.power_state(guest) is PowerState.NOSTATE
    assert await driver.spawn(guest, power_on=False) is PowerState.SHUTDOWN
    assert await driver.spawn(guest) is PowerState.RUNNING
    await driver.rescue(guest, rescue_image="rescue")
    record = driver.guest(guest.uuid)
    assert record is not None
    assert record.rescued
    await driver.unrescue(guest)
    record = driver.guest(guest.uuid)
    assert record is not None
    assert not record.rescued
    await driver.trigger_crash_dump(guest)
    image = await driver.snapshot(guest, name="snap")
    assert uuid.UUID(image).version == 4
    record = driver.guest(guest.uuid)
    assert record is not None
    assert (record.crash_dumps, record.power) == (1, PowerState.RUNNING)
    assert await driver.destroy(guest) is PowerState.NOSTATE
    assert driver.guest(guest.uuid) is None
    assert await driver.power_state(guest) is PowerState.NOSTATE
    assert used(driver, "compute1") == GuestFlavor(0, 0, 0)


@pytest.mark.asyncio
async def test_destroy_of_an_unknown_guest_is_idempotent() -> None:
    """Deleting a guest the hypervisor lost must succeed, as Nova tolerates InstanceNotFound."""
    driver, guest = sim(), spec()
    assert await driver.destroy(guest) is PowerState.NOSTATE
    assert await driver.destroy(spec(host=None)) is PowerState.NOSTATE


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "op",
    [
        lambda d, g: d.power_on(g),
        lambda d, g: d.snapshot(g, name="s"),
        lambda d, g: d.finish_migration(g, flavor=SMALL, power_on=True),
        lambda d, g: d.pre_live_migration(g, dest_host="compute2"),
        lambda d, g: d.trigger_crash_dump(g),
    ],
    ids=["power_on", "snapshot", "finish_migration", "pre_live_migration", "crash_dump"],
)
async def test_operations_on_an_unknown_guest_raise_guest_not_found(op: Op) -> None:
    """An operation on a guest the hypervisor does not hold must say so, not invent one."""
    with pytest.raises(GuestNotFound):
        await op(sim(), spec())


@pytest.mark.asyncio
async def test_spawn_needs_a_host() -> None:
    """A guest that was never scheduled has nowhere to go: HostUnavailable(None)."""
    with pytest.raises(HostUnavailable) as caught:
        await sim().spawn(spec(host=None))
    assert caught.value.host is None
    with pytest.raises(HostUnavailable):
        await sim().spawn(spec(host="nowhere"))


@pytest.mark.asyncio
async def test_hosts_report_capacity_and_state() -> None:
    """hosts() is the inventory the engine places guests by, including which hosts answer."""
    driver = sim("compute1", SimHost("big", vcpus=128, memory_mb=1024, disk_gb=10))
    driver.host_down("big")
    assert await driver.hosts() == [
        HostInfo(name="compute1", up=True, vcpus=64, memory_mb=262144, disk_gb=4096),
        HostInfo(name="big", up=False, vcpus=128, memory_mb=1024, disk_gb=10),
    ]
    with pytest.raises(ValueError, match="unknown host"):
        driver.host_down("nowhere")
    with pytest.raises(ValueError, match="listed twice"):
        sim("a", "a")


@pytest.mark.asyncio
async def test_host_down_fails_operations_before_sleeping() -> None:
    """A down host must fail fast (no latency) for every call that needs it, until it is back."""
    driver = sim(latency=LatencyModel(means={"spawn": 1000.0, "power_off": 1000.0}))
    guest = spec()
    driver.host_down("compute1")
    with anyio.fail_after(1):
        with pytest.raises(HostUnavailable) as caught:
            await driver.spawn(guest)
        assert caught.value.host == "compute1"
        # an unknown guest on a down host: the call cannot reach it to learn it is unknown
        with pytest.raises(HostUnavailable):
            await driver.power_off(guest, timeout=1)
    driver = sim()
    await driver.spawn(guest)
    driver.host_down("compute1")
    for call in (
        driver.power_off(guest, timeout=1),
        driver.power_state(guest),
        driver.destroy(guest),
    ):
        with pytest.raises(HostUnavailable):
            await call
    driver.host_up("compute1")
    assert await driver.power_off(guest, timeout=1) is PowerState.SHUTDOWN


@pytest.mark.asyncio
async def test_host_going_down_during_the_latency_fails_the_call() -> None:
    """A host lost mid-operation must fail the call and leave no half-built guest."""
    driver = sim(latency=LatencyModel(means={"spawn": 1.0}, jitter=0, scale=0.05))
    guest = spec()
    async with anyio.create_task_group() as tg:

        async def lose_host() -> None:
            await anyio.sleep(0.01)
            driver.host_down("compute1")

        tg.start_soon(lose_host)
        with pytest.raises(HostUnavailable):
            await driver.spawn(guest)
    assert driver.guest(guest.uuid) is None


@pytest.mark.asyncio
async def test_cancelled_operation_changes_nothing() -> None:
    """A call cancelled during its latency (a preempting delete) must leave the guest as it was."""
    driver = sim(latency=LatencyModel(means={"spawn": 0.0, "pause": 10.0}))
    guest = spec()
    await driver.spawn(guest)
    with anyio.move_on_after(0.01):
        await driver.pause(guest)
    assert await driver.power_state(guest) is PowerState.RUNNING


@pytest.mark.asyncio
async def test_spawn_respects_host_capacity() -> None:
    """Capacity is a physical limit: a full host refuses the guest that does not fit."""
    driver = sim(SimHost("tiny", vcpus=4, memory_mb=8192, disk_gb=100))
    await driver.spawn(spec("a", "tiny", LARGE))
    with pytest.raises(InsufficientResources) as caught:
        await driver.spawn(spec("b", "tiny", SMALL))
    assert (caught.value.host, caught.value.need) == ("tiny", SMALL)
    # rebuilding the same guest on the same host reuses its own resources
    assert await driver.spawn(spec("a", "tiny", LARGE)) is PowerState.RUNNING
    await driver.destroy(spec("a", "tiny"))
    assert await driver.spawn(spec("b", "tiny", SMALL)) is PowerState.RUNNING


@pytest.mark.asyncio
async def test_evacuate_moves_the_guest_and_its_usage() -> None:
    """Spawning a known uuid elsewhere (evacuate) must move it off a down host, usage included."""
    driver = sim()
    await driver.spawn(spec("vm", "compute1"))
    driver.host_down("compute1")
    await driver.spawn(spec("vm", "compute2"))
    assert driver.statistics().guests_per_host == {"compute1": 0, "compute2": 1}
    assert used(driver, "compute1") == GuestFlavor(0, 0, 0)
    assert used(driver, "compute2") == SMALL


@pytest.mark.asyncio
async def test_resize_holds_both_hosts_until_confirm() -> None:
    """A resize claims the destination at disk copy and frees the source only on confirm."""
    driver = sim()
    source = spec("vm", "compute1", SMALL)
    await driver.spawn(source)
    power = await driver.migrate_disk_and_power_off(source, dest_host="compute2", flavor=LARGE)
    assert power is PowerState.SHUTDOWN
    assert (used(driver, "compute1"), used(driver, "compute2")) == (SMALL, LARGE)
    dest = spec("vm", "compute2", LARGE)
    assert await driver.finish_migration(dest, flavor=LARGE, power_on=True) is PowerState.RUNNING
    record = driver.guest(source.uuid)
    assert record is not None
    assert (record.host, record.flavor) == ("compute2", LARGE)
    assert (used(driver, "compute1"), used(driver, "compute2")) == (SMALL, LARGE)
    await driver.confirm_migration(dest, source_host="compute1")
    assert (used(driver, "compute1"), used(driver, "compute2")) == (GuestFlavor(0, 0, 0), LARGE)


@pytest.mark.asyncio
async def test_resize_revert_returns_to_the_source() -> None:
    """Reverting brings the guest back on its source with its old flavor and frees the dest."""
    driver = sim()
    source = spec("vm", "compute1", SMALL)
    await driver.spawn(source)
    await driver.migrate_disk_and_power_off(source, dest_host="compute2", flavor=LARGE)
    await driver.finish_migration(spec("vm", "compute2", LARGE), flavor=LARGE, power_on=True)
    power = await driver.finish_revert_migration(source, power_on=False)
    assert power is PowerState.SHUTDOWN
    record = driver.guest(source.uuid)
    assert record is not None
    assert (record.host, record.flavor) == ("compute1", SMALL)
    assert (used(driver, "compute1"), used(driver, "compute2")) == (SMALL, GuestFlavor(0, 0, 0))


@pytest.mark.asyncio
async def test_same_host_resize_holds_both_flavors() -> None:
    """Resizing in place counts old and new flavor on the host until confirm, as Nova does."""
    driver = sim()
    guest = spec()
    await driver.spawn(guest)
    await driver.migrate_disk_and_power_off(guest, dest_host="compute1", flavor=LARGE)
    assert used(driver, "compute1") == GuestFlavor(6, 6144, 60)
    await driver.finish_migration(spec(flavor=LARGE), flavor=LARGE, power_on=True)
    await driver.confirm_migration(spec(flavor=LARGE), source_host="compute1")
    assert used(driver, "compute1") == LARGE


@pytest.mark.asyncio
async def test_resize_onto_a_full_host_is_refused() -> None:
    """Both the disk copy and finish_migration must refuse a destination without room."""
    driver = sim("compute1", SimHost("tiny", vcpus=2, memory_mb=2048, disk_gb=20))
    guest = spec("vm", "compute1", SMALL)
    await driver.spawn(guest)
    with pytest.raises(InsufficientResources):
        await driver.migrate_disk_and_power_off(guest, dest_host="tiny", flavor=LARGE)
    assert await driver.power_state(guest) is PowerState.RUNNING  # refused before powering off
    await driver.spawn(spec("filler", "tiny", SMALL))
    with pytest.raises(InsufficientResources):
        await driver.finish_migration(spec("vm", "tiny", SMALL), flavor=SMALL, power_on=True)


@pytest.mark.asyncio
async def test_live_migration_moves_the_guest() -> None:
    """pre claims the destination, abort/force-complete are recorded, post moves the guest."""
    driver = sim()
    guest = spec()
    await driver.spawn(guest)
    await driver.pre_live_migration(guest, dest_host="compute2")
    assert used(driver, "compute2") == SMALL
    await driver.live_migration(guest, dest_host="compute2")
    await driver.live_migration_force_complete(guest)
    await driver.live_migration_abort(guest)
    record = driver.guest(guest.uuid)
    assert record is not None
    assert record.live_migration_forced
    assert record.live_migration_aborted
    power = await driver.post_live_migration_at_destination(guest, dest_host="compute2")
    assert power is PowerState.RUNNING
    record = driver.guest(guest.uuid)
    assert record is not None
    assert record.host == "compute2"
    assert (used(driver, "compute1"), used(driver, "compute2")) == (GuestFlavor(0, 0, 0), SMALL)


@pytest.mark.asyncio
async def test_live_migration_rollback_and_capacity() -> None:
    """Rollback frees the destination's claim; a full or down destination is refused up front."""
    driver = sim("compute1", "compute2", SimHost("tiny", vcpus=1))
    guest = spec()
    await driver.spawn(guest)
    await driver.pre_live_migration(guest, dest_host="compute2")
    await driver.rollback_live_migration_at_destination(guest, dest_host="compute2")
    assert used(driver, "compute2") == GuestFlavor(0, 0, 0)
    record = driver.guest(guest.uuid)
    assert record is not None
    assert record.host == "compute1"
    with pytest.raises(InsufficientResources):
        await driver.pre_live_migration(guest, dest_host="tiny")
    driver.host_down("compute2")
    with pytest.raises(HostUnavailable):
        await driver.pre_live_migration(guest, dest_host="compute2")


@pytest.mark.asyncio
async def test_same_seed_gives_same_latencies_and_image_ids() -> None:
    """A run must be reproducible from its seed: latencies and snapshot ids alike."""

    async def run(seed: int) -> tuple[dict[str, float], list[str]]:
        driver = sim(seed=seed)
        guest = spec()
        await driver.spawn(guest)
        images = [await driver.snapshot(guest, name=f"s{i}") for i in range(3)]
        await driver.reboot(guest, reboot_type=RebootType.SOFT)
        return driver.statistics().latency, images

    first, second, other = await run(7), await run(7), await run(8)
    assert first == second
    assert first != other
    assert set(first[0]) == {"spawn", "snapshot", "reboot"}


@pytest.mark.asyncio
async def test_latency_model_draws_and_sleeps() -> None:
    """Latencies are mean*scale*(1±jitter), really slept for, and skipped when scale is 0."""
    model = LatencyModel(means={"pause": 1.0}, jitter=0.2, scale=0.02)
    assert model.means["spawn"] == 5.0  # defaults survive an override
    driver = sim(latency=model)
    guest = spec()
    await driver.spawn(guest)
    start = anyio.current_time()
    await driver.pause(guest)
    elapsed = anyio.current_time() - start
    drawn = driver.statistics().latency["pause"]
    assert 0.016 <= drawn <= 0.024
    assert elapsed >= drawn * 0.9
    with pytest.raises(ValueError, match="unknown operations"):
        LatencyModel(means={"spwan": 1.0})
    with pytest.raises(ValueError, match="jitter"):
        LatencyModel(jitter=1.5)


@pytest.mark.asyncio
async def test_fault_fires_on_the_nth_call_of_an_action_step() -> None:
    """A rule names the Nth call of an action's step, which the engine sets in CURRENT_CALL."""
    driver = sim()
    guest = spec()
    await driver.spawn(guest)
    rule = driver.faults.add(
        FaultRule(action="reboot", step="reboot_started_hard", after=1, message="boom")
    )
    await driver.reboot(guest, reboot_type=RebootType.HARD)  # no context: never matches
    context = CallContext("reboot", "reboot_started_hard")
    token = CURRENT_CALL.set(context)
    try:
        await driver.reboot(guest, reboot_type=RebootType.HARD)  # the first matching call
        with pytest.raises(InjectedFault, match="boom"):
            await driver.reboot(guest, reboot_type=RebootType.HARD)
        await driver.reboot(guest, reboot_type=RebootType.HARD)  # times=1: only once
    finally:
        CURRENT_CALL.reset(token)
    assert driver.faults.fired == [(rule, "reboot", context)]
    assert driver.statistics().faults_fired == 1


@pytest.mark.asyncio
async def test_fault_times_and_operation() -> None:
    """``times`` bounds how many matching calls fail; None breaks every one of them."""
    driver = sim()
    guest = spec()
    await driver.spawn(guest)
    driver.faults.add(FaultRule(operation="pause", times=2))
    driver.faults.add(FaultRule(operation="suspend", times=None))
    outcomes = []
    for _ in range(3):
        try:
            await driver.pause(guest)
            outcomes.append("ok")
        except InjectedFault:
            outcomes.append("fault")
    assert outcomes == ["fault", "fault", "ok"]
    for _ in range(5):
        with pytest.raises(InjectedFault):
            await driver.suspend(guest)
    assert await driver.power_state(guest) is PowerState.PAUSED  # faults change nothing
    driver.faults.add(FaultRule(times=None))  # breaks every guest operation, never a query
    assert len(await driver.hosts()) == 2
    assert await driver.power_state(guest) is PowerState.PAUSED
    with pytest.raises(InjectedFault):
        await driver.destroy(guest)


@pytest.mark.asyncio
async def test_fault_probability_is_seeded() -> None:
    """Probabilistic faults are drawn from the seeded RNG: the same seed fails the same calls."""

    async def pattern(seed: int, probability: float) -> list[bool]:
        driver = SimulatorDriver(seed=seed, latency=NO_WAIT)
        driver.faults.add(FaultRule(operation="power_on", probability=probability))
        guest = spec()
        await driver.spawn(guest)
        failed = []
        for _ in range(40):
            try:
                await driver.power_on(guest)
                failed.append(False)
            except InjectedFault:
                failed.append(True)
        return failed

    half = await pattern(3, 0.5)
    assert half == await pattern(3, 0.5)
    assert 5 < sum(half) < 35
    assert not any(await pattern(3, 0.0))
    assert all(await pattern(3, 1.0))


@pytest.mark.asyncio
async def test_hang_is_cancellable() -> None:
    """A hung call never answers, but the engine's deadline can cancel it."""
    driver = sim()
    guest = spec()
    await driver.spawn(guest)
    driver.faults.add(FaultRule(operation="power_off", mode="hang"))
    with anyio.move_on_after(0.05) as scope:
        await driver.power_off(guest, timeout=60)
    assert scope.cancelled_caught
    assert await driver.power_state(guest) is PowerState.RUNNING
    assert driver.statistics().faults_fired == 1


def test_fault_rules_and_plans_are_validated_and_bounded() -> None:
    """Typos and unbounded plans are refused when built, not discovered mid-run."""
    with pytest.raises(ValueError, match="not a guest operation"):
        FaultRule(operation="power_state")
    with pytest.raises(ValueError, match="probability"):
        FaultRule(probability=1.5)
    with pytest.raises(ValueError, match="mode"):
        FaultRule(mode="explode")  # type: ignore[arg-type]
    plan = FaultPlan([FaultRule()] * FaultPlan.MAX_RULES)
    with pytest.raises(ValueError, match="at most"):
        plan.add(FaultRule())


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "power"), [("crash", PowerState.CRASHED), ("shutdown", PowerState.SHUTDOWN)]
)
async def test_guest_event_arrives_on_the_stream(
    kind: Literal["crash", "shutdown"], power: PowerState
) -> None:
    """A guest that stops by itself sets its power state and publishes STOPPED."""
    driver = sim()
    guest = spec()
    await driver.spawn(guest)
    driver.guest_event(guest.uuid, kind)
    event = await first_event(driver)
    assert (event.uuid, event.transition) == (guest.uuid, LifecycleTransition.STOPPED)
    assert await driver.power_state(guest) is power
    with pytest.raises(GuestNotFound):
        driver.guest_event("missing", kind)


@pytest.mark.asyncio
async def test_operation_events_only_when_asked() -> None:
    """Operations publish what a hypervisor would only with emit_operation_events."""
    quiet, loud, guest = sim(), sim(emit_operation_events=True), spec()
    for driver in (quiet, loud):
        await driver.spawn(guest)
        await driver.pause(guest)
        await driver.unpause(guest)
        await driver.power_off(guest, timeout=1)
        await driver.aclose()
    assert [e async for e in quiet.events()] == []
    transitions = [e.transition async for e in loud.events()]
    assert transitions == [
        LifecycleTransition.STARTED,
        LifecycleTransition.PAUSED,
        LifecycleTransition.RESUMED,
        LifecycleTransition.STOPPED,
    ]


@pytest.mark.asyncio
async def test_event_buffer_is_bounded() -> None:
    """A full stream drops the newest events and counts them, rather than growing or blocking."""
    driver = sim(event_buffer=2)
    guest = spec()
    await driver.spawn(guest)
    for _ in range(5):
        driver.guest_event(guest.uuid, "shutdown")
    assert driver.statistics().dropped_events == 3
    await driver.aclose()
    assert len([e async for e in driver.events()]) == 2


@pytest.mark.asyncio
async def test_aclose_ends_a_waiting_listener() -> None:
    """Closing the driver (here by leaving ``async with``) must end a blocked listener."""
    received: list[LifecycleEvent] = []

    async def listen(driver: SimulatorDriver) -> None:
        async for event in driver.events():
            received.append(event)

    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg, sim() as driver:
            tg.start_soon(listen, driver)
            await anyio.sleep(0.01)
    assert received == []


@pytest.mark.asyncio
async def test_statistics_count_calls() -> None:
    """statistics() reports calls per operation and guests per host for tests and reports."""
    driver = sim()
    await driver.spawn(spec("a"))
    await driver.spawn(spec("b", "compute2"))
    await driver.power_state(spec("a"))
    with pytest.raises(GuestNotFound):
        await driver.pause(spec("c"))
    stats = driver.statistics()
    assert stats.calls == {"spawn": 2, "power_state": 1, "pause": 1}
    assert stats.guests_per_host == {"compute1": 1, "compute2": 1}
    assert (stats.dropped_events, stats.faults_fired) == (0, 0)
