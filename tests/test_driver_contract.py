"""One contract, every driver: the simulator, libvirt's test hypervisor and real QEMU.

Each test runs once per driver through the parametrized ``harness`` fixture (anyio's
``anyio_backend`` pattern). Where drivers legitimately differ, the test reads the driver's
:class:`~drivers.base.Capabilities` instead of naming the driver: the power state after
``suspend`` (libvirt's managed save leaves the domain shut off), and which operations a
hypervisor cannot do. The libvirt cases need libvirt-python, the QEMU case a running libvirtd
(``qemu:///system``): without them they skip saying so, and fail under
``ISM_REQUIRE_SERVICES=1``. Each test runs on its own pytest-asyncio loop, so the libvirt cases
also show that events reach every new loop, not only the first.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import pytest_asyncio

from drivers import (
    Driver,
    GuestFlavor,
    GuestSpec,
    HostUnavailable,
    LatencyModel,
    LifecycleEvent,
    LifecycleTransition,
    PowerState,
    RebootType,
    SimulatorDriver,
    UnsupportedOperation,
)
from drivers.libvirt import LibvirtDriver
from tests.libvirt_support import (
    FAST,
    QEMU_URI,
    empty_node_uri,
    leftover_domains,
    libvirt_module,
    purge,
    require_qemu,
)

TINY = GuestFlavor(vcpus=1, memory_mb=32, root_gb=1)
EVENT_WAIT = 30.0


class Harness:
    """A driver under test, the guests a test made (cleaned up after it), and its events."""

    def __init__(self, driver: Driver, host: str) -> None:
        self.driver = driver
        self.host = host
        self.uuids: set[str] = set()
        self._events: AsyncIterator[LifecycleEvent] | None = None

    def guest(self, *, name: str = "contract") -> GuestSpec:
        """A new tiny guest on the driver's host, remembered for cleanup."""
        uuid = str(uuidlib.uuid4())
        self.uuids.add(uuid)
        return GuestSpec(uuid=uuid, name=name, host=self.host, flavor=TINY, image="none")

    async def event(self, uuid: str, transition: LifecycleTransition) -> LifecycleEvent:
        """The next event ``transition`` for ``uuid`` (others are passed over), bounded."""
        if self._events is None:
            self._events = aiter(self.driver.events())
        with anyio.fail_after(EVENT_WAIT):
            while True:
                event = await anext(self._events)
                if event.uuid == uuid and event.transition is transition:
                    return event

    async def cleanup(self) -> None:
        """Destroy every guest the test made, then close the event iterator."""
        for uuid in self.uuids:
            await self.driver.destroy(GuestSpec(uuid, "cleanup", self.host, TINY, "none"))
        if self._events is not None:
            await self._events.aclose()  # type: ignore[attr-defined]


@pytest_asyncio.fixture(
    params=[
        "simulator",
        pytest.param("libvirt-test", marks=pytest.mark.libvirt),
        pytest.param("qemu", marks=[pytest.mark.libvirt, pytest.mark.qemu]),
    ]
)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    """The driver under test, opened on this test's loop, cleaned up afterwards."""
    if request.param == "simulator":
        sim = SimulatorDriver(
            hosts=["compute1", "compute2"],
            latency=LatencyModel(scale=0),
            emit_operation_events=True,
        )
        harness = Harness(sim, "compute1")
        yield harness
        await harness.cleanup()
        await sim.aclose()
        return
    if request.param == "libvirt-test":
        lv, uri = libvirt_module(), empty_node_uri(tmp_path)
    else:
        lv, uri = require_qemu(), QEMU_URI
    made: set[str] = set()
    try:
        async with LibvirtDriver(uri, options=FAST) as driver:
            (host,) = await driver.hosts()
            harness = Harness(driver, host.name)
            made = harness.uuids
            try:
                yield harness
            finally:
                await harness.cleanup()
        assert leftover_domains(lv, uri, made) == []
    finally:
        purge(lv, uri, made)  # only if the driver's own cleanup failed: reruns start clean


pytestmark = pytest.mark.asyncio


async def test_hosts_report_a_live_node_with_capacity(harness: Harness) -> None:
    """The driver reports at least one host that is up and has room for a tiny guest."""
    hosts = await harness.driver.hosts()
    assert harness.host in [h.name for h in hosts]
    host = next(h for h in hosts if h.name == harness.host)
    assert host.up
    assert host.vcpus >= 1
    assert host.memory_mb >= TINY.memory_mb


async def test_spawn_runs_the_guest(harness: Harness) -> None:
    """A spawned guest runs, and the driver says so both in the result and when asked."""
    guest = harness.guest()
    assert await harness.driver.spawn(guest) is PowerState.RUNNING
    assert await harness.driver.power_state(guest) is PowerState.RUNNING


async def test_spawn_powered_off_leaves_it_shut_down(harness: Harness) -> None:
    """``spawn(power_on=False)`` builds the guest without starting it."""
    guest = harness.guest()
    assert await harness.driver.spawn(guest, power_on=False) is PowerState.SHUTDOWN
    assert await harness.driver.power_state(guest) is PowerState.SHUTDOWN


async def test_spawn_again_replaces_the_guest(harness: Harness) -> None:
    """Spawning a uuid the hypervisor holds (a rebuild) leaves one running guest."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    assert await harness.driver.spawn(guest) is PowerState.RUNNING
    assert await harness.driver.power_state(guest) is PowerState.RUNNING


async def test_spawn_on_an_unknown_host_is_refused(harness: Harness) -> None:
    """A guest placed on a host the driver does not have raises HostUnavailable."""
    guest = GuestSpec(str(uuidlib.uuid4()), "elsewhere", "no-such-host", TINY, "none")
    with pytest.raises(HostUnavailable):
        await harness.driver.spawn(guest)


async def test_power_off_then_on(harness: Harness) -> None:
    """``power_off`` ends SHUTDOWN within its timeout (graceful or forced); ``power_on`` runs."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    assert await harness.driver.power_off(guest, timeout=1.0) is PowerState.SHUTDOWN
    assert await harness.driver.power_state(guest) is PowerState.SHUTDOWN
    assert await harness.driver.power_on(guest) is PowerState.RUNNING


async def test_power_off_of_an_off_guest_is_shutdown(harness: Harness) -> None:
    """Powering off a guest that is already off is not an error."""
    guest = harness.guest()
    await harness.driver.spawn(guest, power_on=False)
    assert await harness.driver.power_off(guest, timeout=1.0) is PowerState.SHUTDOWN


async def test_pause_and_unpause(harness: Harness) -> None:
    """Pause freezes the guest (PAUSED); unpause lets it run again."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    assert await harness.driver.pause(guest) is PowerState.PAUSED
    assert await harness.driver.power_state(guest) is PowerState.PAUSED
    assert await harness.driver.unpause(guest) is PowerState.RUNNING


async def test_suspend_reports_the_declared_state_and_resume_runs(harness: Harness) -> None:
    """After suspend the guest is in the state the driver's capabilities declare."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    declared = harness.driver.capabilities.suspended_power_state
    assert await harness.driver.suspend(guest) is declared
    assert await harness.driver.power_state(guest) is declared
    assert await harness.driver.resume(guest) is PowerState.RUNNING


@pytest.mark.parametrize("kind", list(RebootType))
async def test_reboot_ends_running(harness: Harness, kind: RebootType) -> None:
    """Soft and hard reboots both leave the guest running."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    assert await harness.driver.reboot(guest, reboot_type=kind) is PowerState.RUNNING
    assert await harness.driver.power_state(guest) is PowerState.RUNNING


async def test_destroy_removes_the_guest_and_is_idempotent(harness: Harness) -> None:
    """After destroy the hypervisor holds nothing (NOSTATE); destroying again is fine."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    assert await harness.driver.destroy(guest) is PowerState.NOSTATE
    assert await harness.driver.power_state(guest) is PowerState.NOSTATE
    assert await harness.driver.destroy(guest) is PowerState.NOSTATE


async def test_power_state_of_an_unknown_guest_is_nostate(harness: Harness) -> None:
    """Asking about a guest the hypervisor never held is NOSTATE, not an error."""
    assert await harness.driver.power_state(harness.guest()) is PowerState.NOSTATE


@pytest.mark.parametrize("operation", ["power_on", "pause", "unpause", "suspend", "resume"])
async def test_operations_on_an_unknown_guest_raise_guest_not_found(
    harness: Harness, operation: str
) -> None:
    """Acting on a guest the hypervisor does not hold raises GuestNotFound."""
    from drivers import GuestNotFound

    with pytest.raises(GuestNotFound):
        await getattr(harness.driver, operation)(harness.guest())


async def test_resize_on_the_same_host_then_confirm(harness: Harness) -> None:
    """A same-host resize powers off, comes back running with the new flavor, and confirms."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    bigger = GuestFlavor(vcpus=2, memory_mb=48, root_gb=1)
    driver = harness.driver
    off = await driver.migrate_disk_and_power_off(guest, dest_host=harness.host, flavor=bigger)
    assert off is PowerState.SHUTDOWN
    assert await driver.finish_migration(guest, flavor=bigger, power_on=True) is PowerState.RUNNING
    await driver.confirm_migration(guest, source_host=harness.host)
    assert await driver.power_state(guest) is PowerState.RUNNING


async def test_resize_reverted_comes_back_as_it_was(harness: Harness) -> None:
    """Reverting a resize brings the guest back with its old flavor, off when asked."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    bigger = GuestFlavor(vcpus=2, memory_mb=48, root_gb=1)
    driver = harness.driver
    await driver.migrate_disk_and_power_off(guest, dest_host=harness.host, flavor=bigger)
    await driver.finish_migration(guest, flavor=bigger, power_on=True)
    assert await driver.finish_revert_migration(guest, power_on=False) is PowerState.SHUTDOWN
    assert await driver.power_state(guest) is PowerState.SHUTDOWN


async def test_snapshot_follows_the_declared_capability(harness: Harness) -> None:
    """A snapshot returns an image id where declared possible, else UnsupportedOperation."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    if harness.driver.capabilities.snapshot:
        image = await harness.driver.snapshot(guest, name="backup")
        assert isinstance(image, str)
        assert image
    else:
        with pytest.raises(UnsupportedOperation):
            await harness.driver.snapshot(guest, name="backup")
    assert await harness.driver.power_state(guest) is PowerState.RUNNING


async def test_rescue_follows_the_declared_capability(harness: Harness) -> None:
    """Rescue works where declared possible, else raises UnsupportedOperation, never crashes."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    if harness.driver.capabilities.rescue:
        assert await harness.driver.rescue(guest, rescue_image="rescue") is PowerState.RUNNING
        assert await harness.driver.unrescue(guest) is PowerState.RUNNING
    else:
        with pytest.raises(UnsupportedOperation):
            await harness.driver.rescue(guest, rescue_image="rescue")
        assert await harness.driver.power_state(guest) is PowerState.RUNNING


async def test_crash_dump_follows_the_declared_capability(harness: Harness) -> None:
    """An NMI is injected where declared possible, else UnsupportedOperation."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    if harness.driver.capabilities.crash_dump:
        await harness.driver.trigger_crash_dump(guest)
    else:
        with pytest.raises(UnsupportedOperation):
            await harness.driver.trigger_crash_dump(guest)
    assert await harness.driver.power_state(guest) is PowerState.RUNNING


async def test_live_migration_follows_the_declared_capability(harness: Harness) -> None:
    """Live migration moves the guest where declared possible; else preparing one raises
    UnsupportedOperation and the engine's rollback call is harmless."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    driver = harness.driver
    if driver.capabilities.live_migration:
        other = next(h.name for h in await driver.hosts() if h.name != harness.host)
        await driver.pre_live_migration(guest, dest_host=other)
        await driver.live_migration(guest, dest_host=other)
        moved = await driver.post_live_migration_at_destination(guest, dest_host=other)
        assert moved is PowerState.RUNNING
        return
    with pytest.raises(UnsupportedOperation):
        await driver.pre_live_migration(guest, dest_host="elsewhere")
    await driver.rollback_live_migration_at_destination(guest, dest_host="elsewhere")
    assert await driver.power_state(guest) is PowerState.RUNNING


async def test_events_report_start_pause_and_resume(harness: Harness) -> None:
    """The event stream carries STARTED, PAUSED and RESUMED for the guest, in that order."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    started = await harness.event(guest.uuid, LifecycleTransition.STARTED)
    await harness.driver.pause(guest)
    paused = await harness.event(guest.uuid, LifecycleTransition.PAUSED)
    await harness.driver.unpause(guest)
    resumed = await harness.event(guest.uuid, LifecycleTransition.RESUMED)
    assert started.timestamp <= paused.timestamp <= resumed.timestamp


async def test_stopped_event_follows_a_power_off(harness: Harness) -> None:
    """A guest powered off is reported STOPPED on the stream (after any configured delay)."""
    guest = harness.guest()
    await harness.driver.spawn(guest)
    await harness.driver.power_off(guest, timeout=1.0)
    event = await harness.event(guest.uuid, LifecycleTransition.STOPPED)
    assert event.transition.expected_power_state is await harness.driver.power_state(guest)


async def test_a_cancelled_spawn_is_cleaned_by_destroy(harness: Harness) -> None:
    """Cancelling a spawn in flight, then destroying, leaves nothing on the hypervisor."""
    guest = harness.guest()
    async with anyio.create_task_group() as tg:
        tg.start_soon(harness.driver.spawn, guest)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert await harness.driver.destroy(guest) is PowerState.NOSTATE
    assert await harness.driver.power_state(guest) is PowerState.NOSTATE
