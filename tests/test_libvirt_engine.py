"""The engine driving libvirt: the test hypervisor (on virtual time and on a real loop) and
real QEMU domains through create, stop, start and delete; a preempting delete destroying the
domain; an unsupported operation taking the engine's error path; the power sync reacting to a
domain destroyed behind the engine's back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from drivers import InvalidGuest, LifecycleTransition, PowerState, UnsupportedOperation
from drivers.libvirt import LibvirtDriver
from statemachine.clock import VirtualClock, run_virtual
from statemachine.config import Config
from statemachine.engine import Engine, Outcome
from statemachine.errors import ActionFailed, InvalidRequest
from statemachine.handles import StepInfo
from statemachine.sinks import MemoryCapture
from statemachine.states import TaskState, VmState
from tests.libvirt_support import (
    FAST,
    QEMU_URI,
    empty_node_uri,
    leftover_domains,
    libvirt_module,
    purge,
    require_qemu,
)
from tests.support import OWNER

TINY = {"vcpus": 1, "memory_mb": 32, "root_gb": 1}


def _domain_state(driver: LibvirtDriver, uuid: str) -> list[int] | None:
    """libvirt's own [state, reason] for the domain, read on the driver's connection."""
    assert driver._connection is not None
    conn = driver._connection.conn
    lv = libvirt_module()
    try:
        return list(conn.lookupByUUIDString(uuid).state())
    except lv.libvirtError:
        return None


def _state_code(driver: LibvirtDriver, uuid: str) -> int | None:
    """libvirt's state number for the domain, or None when it does not exist."""
    state = _domain_state(driver, uuid)
    return None if state is None else state[0]


async def _create_stop_start_delete(
    driver: LibvirtDriver, config: Config, made: set[str]
) -> list[str]:
    """The cycle through the engine; returns the notifications of the instance, checking the
    hypervisor's own view at every stage. Records the instance's uuid in ``made``."""
    lv = libvirt_module()
    capture = MemoryCapture(maxlen=None)
    async with Engine(driver, config=config, sinks=[capture]) as engine:
        created = await engine.create(OWNER, name="web1", flavor=TINY, image="none")
        uuid = created.instance.uuid
        made.add(uuid)
        assert created.instance.vm_state is VmState.ACTIVE
        assert created.instance.power_state is PowerState.RUNNING
        assert _domain_state(driver, uuid) == [lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_RUNNING_BOOTED]
        stopped = await engine.act(OWNER, "stop", uuid)
        assert (stopped.instance.vm_state, stopped.instance.power_state) == (
            VmState.STOPPED,
            PowerState.SHUTDOWN,
        )
        assert _state_code(driver, uuid) == lv.VIR_DOMAIN_SHUTOFF
        started = await engine.act(OWNER, "start", uuid)
        assert started.instance.vm_state is VmState.ACTIVE
        assert _state_code(driver, uuid) == lv.VIR_DOMAIN_RUNNING
        deleted = await engine.act(OWNER, "delete", uuid)
        assert deleted.instance.vm_state is VmState.DELETED
        assert _domain_state(driver, uuid) is None
        return [
            n.event_type.removeprefix("instance.")
            for n in capture.notifications
            if n.event_type != "instance.update"
        ]


CYCLE_EVENTS = [
    "create.start",
    "create.end",
    "power_off.start",
    "power_off.end",
    "power_on.start",
    "power_on.end",
    "delete.start",
    "shutdown.start",
    "shutdown.end",
    "delete.end",
]


@pytest.mark.libvirt
def test_engine_cycles_a_test_hypervisor_domain_on_virtual_time(tmp_path: Path) -> None:
    """On virtual time, the engine creates, stops, starts and deletes a libvirt domain with
    Nova's notifications; the test hypervisor's guest answers the graceful shutdown."""
    libvirt_module()
    uri = empty_node_uri(tmp_path)

    async def main() -> tuple[list[str], float]:
        async with LibvirtDriver(uri, options=FAST) as driver:
            events = await _create_stop_start_delete(
                driver, Config(shutdown_timeout=5, drain_timeout=5), set()
            )
            return events, anyio.current_time()

    events, virtual_seconds = run_virtual(main)
    assert events == CYCLE_EVENTS
    assert virtual_seconds < 5.0  # stop never waited its shutdown_timeout: the guest answered


@pytest.mark.libvirt
@pytest.mark.qemu
@pytest.mark.asyncio
async def test_engine_cycles_a_qemu_domain() -> None:
    """On real QEMU the same cycle works; the guest ignores ACPI, so stop waits
    ``shutdown_timeout`` (1 s) and then powers it off."""
    lv = require_qemu()
    made: set[str] = set()
    async with LibvirtDriver(QEMU_URI, options=FAST) as driver:
        started = time.monotonic()
        try:
            events = await _create_stop_start_delete(
                driver, Config(shutdown_timeout=1, drain_timeout=30), made
            )
        finally:
            purge(lv, QEMU_URI, made)
        elapsed = time.monotonic() - started
    assert events == CYCLE_EVENTS
    assert 1.0 <= elapsed < 60.0


@pytest.mark.libvirt
@pytest.mark.qemu
@pytest.mark.asyncio
async def test_preempting_delete_destroys_a_qemu_domain_mid_stop() -> None:
    """A delete during a stop that waits for a guest that will never answer preempts it at
    once, and its destroy still removes the QEMU domain."""
    lv = require_qemu()
    config = Config(shutdown_timeout=60, drain_timeout=30)
    powering_off = anyio.Event()

    async def hook(step: StepInfo) -> None:
        if step.task_state is TaskState.POWERING_OFF and not step.error_path:
            powering_off.set()  # the driver's power_off is called right after this returns

    async with (
        LibvirtDriver(QEMU_URI, options=FAST) as driver,
        Engine(driver, config=config, hooks=[hook]) as engine,
    ):
        created = await engine.create(OWNER, name="doomed", flavor=TINY, image="none")
        uuid = created.instance.uuid
        try:
            stop = await engine.submit(OWNER, "stop", uuid)
            with anyio.fail_after(10):
                await powering_off.wait()
            await anyio.wait_all_tasks_blocked()  # power_off is waiting for the guest
            assert engine.get(uuid).task_state is TaskState.POWERING_OFF
            started = time.monotonic()
            deleted = await engine.act(OWNER, "delete", uuid)
            elapsed = time.monotonic() - started
            stopped = await stop.wait(30)
            assert stopped.outcome is Outcome.PREEMPTED
            assert deleted.instance.vm_state is VmState.DELETED
            assert _domain_state(driver, uuid) is None
            assert elapsed < 30  # not the 60 s shutdown_timeout
        finally:
            purge(lv, QEMU_URI, {uuid})
    assert leftover_domains(lv, QEMU_URI, {uuid}) == []


@pytest.mark.libvirt
@pytest.mark.asyncio
async def test_preempting_delete_waits_for_the_spawn_in_its_thread(tmp_path: Path) -> None:
    """A delete preempting a create whose domain is being defined in a libvirt thread runs its
    destroy after that call, so the domain the spawn made is destroyed, not orphaned."""
    import threading

    lv = libvirt_module()
    uri = empty_node_uri(tmp_path)
    gate, entered = threading.Event(), threading.Event()
    async with LibvirtDriver(uri, options=FAST) as driver:
        assert driver._connection is not None
        conn = driver._connection.conn
        real_define = conn.defineXML

        def held_define(xml: str) -> Any:
            entered.set()
            gate.wait(10)
            return real_define(xml)

        conn.defineXML = held_define
        async with Engine(driver, config=Config(drain_timeout=30)) as engine:
            create = await engine.create(OWNER, name="racer", flavor=TINY, image="none", wait=False)
            await anyio.to_thread.run_sync(entered.wait, 10)
            delete = await engine.submit(OWNER, "delete", create.uuid)
            await anyio.wait_all_tasks_blocked()
            assert not delete.done.is_set()  # its destroy waits for the spawn's thread
            gate.set()
            deleted = await delete.wait(30)
            created = await create.wait(30)
        assert created.outcome is Outcome.PREEMPTED
        assert deleted.outcome is Outcome.OK
        assert deleted.instance.vm_state is VmState.DELETED
        assert conn.listAllDomains(0) == []
    assert leftover_domains(lv, uri, {create.uuid}) == []


@pytest.mark.libvirt
@pytest.mark.qemu
@pytest.mark.asyncio
async def test_unsupported_snapshot_takes_the_error_path_on_qemu() -> None:
    """A snapshot QEMU cannot take fails the action with UnsupportedOperation as its cause
    and reverts the task; the instance stays active and running."""
    lv = require_qemu()
    async with (
        LibvirtDriver(QEMU_URI, options=FAST) as driver,
        Engine(driver, config=Config(drain_timeout=30)) as engine,
    ):
        created = await engine.create(OWNER, name="snap", flavor=TINY, image="none")
        uuid = created.instance.uuid
        try:
            with pytest.raises(ActionFailed) as failed:
                await engine.act(OWNER, "snapshot", uuid)
            assert isinstance(failed.value.__cause__, UnsupportedOperation)
            inst = engine.get(uuid)
            assert (inst.vm_state, inst.task_state) == (VmState.ACTIVE, None)
            assert inst.fault is not None
            assert inst.fault.exception == "UnsupportedOperation"
            await engine.act(OWNER, "delete", uuid)
        finally:
            purge(lv, QEMU_URI, {uuid})


@pytest.mark.libvirt
@pytest.mark.qemu
@pytest.mark.asyncio
async def test_a_domain_destroyed_behind_the_engines_back_is_recorded_stopped() -> None:
    """When someone else destroys the QEMU domain, its (delayed) STOPPED event makes the
    engine's power sync stop the instance, as Nova's does."""
    lv = require_qemu()
    config = Config(shutdown_timeout=1, drain_timeout=30)
    async with (
        LibvirtDriver(QEMU_URI, options=FAST) as driver,
        Engine(driver, config=config) as engine,
    ):
        created = await engine.create(OWNER, name="victim", flavor=TINY, image="none")
        uuid = created.instance.uuid
        try:
            other = lv.open(QEMU_URI)  # an operator's virsh, in effect
            try:
                other.lookupByUUIDString(uuid).destroy()
            finally:
                other.close()
            inst = await engine.wait_for_state(uuid, vm_state="stopped", timeout=30)
            assert inst.power_state is PowerState.SHUTDOWN
            assert LifecycleTransition.STOPPED.expected_power_state is inst.power_state
            await engine.act(OWNER, "delete", uuid)
        finally:
            purge(lv, QEMU_URI, {uuid})


@pytest.mark.libvirt
def test_a_hostile_image_fails_the_create_with_nothing_defined(tmp_path: Path) -> None:
    """The engine refuses control characters at its boundary; an image reference it accepts
    but libvirt cannot carry (a Unicode non-character) fails the build with InvalidGuest as the
    cause, the instance goes to error without a host, and the hypervisor stays empty."""
    libvirt_module()
    uri = empty_node_uri(tmp_path)

    async def main() -> None:
        async with (
            LibvirtDriver(uri, options=FAST) as driver,
            Engine(driver, config=Config(drain_timeout=5), clock=VirtualClock()) as engine,
        ):
            with pytest.raises(InvalidRequest, match="control characters"):
                await engine.create(
                    OWNER, name="web1", flavor=TINY, image="cirros\x00</image><devices/>"
                )
            assert engine.instances() == []
            with pytest.raises(ActionFailed) as failed:
                await engine.create(OWNER, name="web1", flavor=TINY, image="cirros\ufffe")
            assert isinstance(failed.value.__cause__, InvalidGuest)
            (inst,) = engine.instances()
            assert (inst.vm_state, inst.host) == (VmState.ERROR, None)
            assert driver._connection is not None
            assert driver._connection.conn.listAllDomains(0) == []
            await engine.act(OWNER, "delete", inst.uuid)

    run_virtual(main)
