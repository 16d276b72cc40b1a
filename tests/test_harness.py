"""The test harness through its own plugin: fixtures, waits, virtual time and faults.

These tests use ism's fixtures as a service's test suite would, under pytest-asyncio's strict
mode (this project's configuration).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from drivers.base import InjectedFault, LifecycleEvent, PowerState
from drivers.simulator import SimulatorDriver
from statemachine import (
    ActionFailed,
    Config,
    Engine,
    InvalidRequest,
    MemoryCapture,
    StepDeadlineExceeded,
    VirtualTimeLoop,
    VmState,
    WaitTimeout,
    run_virtual,
)
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from statemachine.store import MemoryStore
from statemachine.testing import (
    BackgroundEngine,
    EngineNotRunning,
    NotOnVirtualTime,
    SimulatorHarness,
    VirtualTime,
    assert_audit_verifies,
    assert_invariants,
    unclosing_errors,
)
from tests.support import ADMIN, LARGE, OWNER, SMALL, world


async def _create(engine: Engine, name: str = "vm1") -> str:
    result = await engine.create(OWNER, name=name, flavor=SMALL, image="cirros")
    return result.instance.uuid


@pytest.mark.asyncio
async def test_fixtures_run_on_a_virtual_loop(ism_engine: Engine, ism_clock: VirtualTime) -> None:
    """An ism test runs on a VirtualTimeLoop that starts at 0, with a running engine."""
    assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
    assert ism_clock.now() == 0
    uuid = await _create(ism_engine)
    assert ism_engine.get(uuid).vm_state is VmState.ACTIVE
    assert ism_clock.now() > 0  # the simulated spawn took virtual seconds


@pytest.mark.asyncio
@pytest.mark.ism(config={"resize_confirm_window": 3600})
async def test_an_hour_passes_in_milliseconds(
    ism_engine: Engine, ism_clock: VirtualTime, ism_capture: MemoryCapture
) -> None:
    """Advancing 3600 s confirms a resize by itself, at 3600 s and not before, in < 1 s of wall."""
    uuid = await _create(ism_engine)
    await ism_engine.act(OWNER, "resize", uuid, {"flavor": LARGE})
    started = time.perf_counter()
    resized_at = ism_clock.now()
    assert await ism_clock.advance(3599) == pytest.approx(resized_at + 3599)
    assert ism_engine.get(uuid).vm_state is VmState.RESIZED
    await ism_clock.advance(1)
    end = await ism_capture.wait_for("instance.resize_confirm.end", instance=uuid, timeout=60)
    assert time.perf_counter() - started < 1.0
    assert ism_engine.get(uuid).vm_state is VmState.ACTIVE
    assert end.instance_uuid == uuid
    assert ism_clock.wall().isoformat().startswith("2026-01-01T01:")


@pytest.mark.asyncio
@pytest.mark.ism(hosts=["only"], seed=7, config={"notify_on_state_change": "vm_state"})
async def test_marker_sets_hosts_seed_and_config(
    ism_engine: Engine, ism_simulator: SimulatorHarness
) -> None:
    """The ism marker's hosts, seed and config reach the simulator and the engine."""
    assert [h.name for h in await ism_simulator.driver.hosts()] == ["only"]
    assert ism_engine.config.notify_on_state_change == "vm_state"
    uuid = await _create(ism_engine)
    # the engine draws uuids from random.Random(seed): the first is the seed's first draw
    assert uuid == str(uuidlib.UUID(int=random.Random(7).getrandbits(128), version=4))
    assert ism_engine.get(uuid).host == "only"


@pytest.mark.asyncio
async def test_capture_waits_by_instance_and_count(
    ism_engine: Engine, ism_capture: MemoryCapture
) -> None:
    """wait_for counts one instance's events and returns the latest match."""
    first, second = await _create(ism_engine, "a"), await _create(ism_engine, "b")
    await ism_engine.submit(OWNER, "stop", second)
    found = await ism_capture.wait_for("instance.power_off.end", instance=second, timeout=5)
    assert found.instance_uuid == second
    assert ism_capture.count("instance.power_off.end", instance=first) == 0
    await ism_engine.act(OWNER, "start", second)
    await ism_engine.act(OWNER, "stop", second)
    again = await ism_capture.wait_for("instance.power_off.end", count=2, timeout=5)
    assert again.sequence > found.sequence


@pytest.mark.asyncio
async def test_concurrent_capture_waits_all_wake(
    ism_engine: Engine, ism_capture: MemoryCapture
) -> None:
    """Two waits pending at once both end when their events arrive (none is starved)."""
    uuid = await _create(ism_engine)
    results: list[str] = []

    async def wait(event: str) -> None:
        results.append((await ism_capture.wait_for(event, timeout=30)).event_type)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "instance.pause.end")
        tg.start_soon(wait, "instance.pause.start")
        await anyio.lowlevel.checkpoint()
        await ism_engine.act(OWNER, "pause", uuid)
    assert sorted(results) == ["instance.pause.end", "instance.pause.start"]


@pytest.mark.asyncio
async def test_wait_for_sequence_matches_in_order(
    ism_engine: Engine, ism_capture: MemoryCapture
) -> None:
    """A sequence may have other events between its entries, and returns the matches."""
    uuid = await _create(ism_engine)
    await ism_engine.submit(OWNER, "stop", uuid)
    matched = await ism_capture.wait_for_sequence(
        ["instance.create.start", "instance.power_off.start", "instance.power_off.end"],
        instance=uuid,
        timeout=10,
    )
    assert [n.sequence for n in matched] == sorted(n.sequence for n in matched)


@pytest.mark.asyncio
async def test_a_sequence_that_never_completes_says_how_far_it_got(
    ism_engine: Engine, ism_capture: MemoryCapture, ism_clock: VirtualTime
) -> None:
    """Out of order, the sequence times out in virtual seconds, naming what it saw and awaits."""
    uuid = await _create(ism_engine)
    started = ism_clock.now()
    with pytest.raises(AssertionError) as failure:
        await ism_capture.wait_for_sequence(
            ["instance.create.end", "instance.create.start"], instance=uuid, timeout=5
        )
    assert ism_clock.now() - started == pytest.approx(5)
    message = str(failure.value)
    assert "saw ['instance.create.end'], still waiting for ['instance.create.start']" in message
    assert "instance.create.end (vm_state=active task_state=None power_state=running)" in message
    assert f"{uuid}: vm_state=active task_state=None power_state=running" in message


@pytest.mark.asyncio
async def test_a_capture_timeout_lists_what_was_observed(
    ism_engine: Engine, ism_capture: MemoryCapture
) -> None:
    """wait_for's AssertionError lists the last notifications and every instance's state."""
    uuid = await _create(ism_engine)
    with pytest.raises(AssertionError) as failure:
        await ism_capture.wait_for("instance.power_off.end", count=1, timeout=5)
    message = str(failure.value)
    assert message.startswith("1 x instance.power_off.end not received within 5 s (got 0)")
    assert "last 2 of 2 notifications:" in message
    assert f"#2 {uuid[:8]} instance.create.end" in message


@pytest.mark.asyncio
async def test_a_state_wait_timeout_is_an_assertion_naming_the_states_seen(
    ism_engine: Engine,
) -> None:
    """wait_for_state fails as an assertion (and a TimeoutError) listing where the instance went."""
    uuid = await _create(ism_engine)
    await ism_engine.submit(OWNER, "stop", uuid)
    with pytest.raises(WaitTimeout) as failure:
        await ism_engine.wait_for_state(uuid, vm_state="paused", timeout=30)
    assert isinstance(failure.value, AssertionError)
    assert isinstance(failure.value, TimeoutError)
    assert "it is {'vm_state': 'stopped'}" in str(failure.value)
    assert "went: stopped/-/shutdown" in str(failure.value)


@pytest.mark.asyncio
async def test_the_engine_wait_ends_as_soon_as_the_state_matches(ism_engine: Engine) -> None:
    """wait_for_state returns the matching snapshot once the commit lands."""
    uuid = await _create(ism_engine)
    await ism_engine.submit(OWNER, "stop", uuid)
    inst = await ism_engine.wait_for_state(uuid, vm_state="stopped", task_state=None, timeout=60)
    assert inst.power_state is PowerState.SHUTDOWN


# -- fault injection --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fail_the_nth_call_of_a_step(
    ism_engine: Engine, ism_simulator: SimulatorHarness
) -> None:
    """fail(nth=2) lets the first matching call through and fails the second, once."""
    uuid = await _create(ism_engine)
    rule = ism_simulator.fail("reboot", step="reboot_started_hard", nth=2, message="boom")
    await ism_engine.act(OWNER, "reboot", uuid, {"type": "HARD"})
    with pytest.raises(ActionFailed) as failure:
        await ism_engine.act(OWNER, "reboot", uuid, {"type": "HARD"})
    assert isinstance(failure.value.__cause__, InjectedFault)
    assert str(failure.value.__cause__) == "boom"
    await ism_engine.act(OWNER, "reboot", uuid, {"type": "HARD"})
    assert [f.rule for f in ism_simulator.fired] == [rule]


@pytest.mark.asyncio
async def test_a_hung_call_is_ended_by_its_deadline(
    ism_engine: Engine, ism_simulator: SimulatorHarness, ism_clock: VirtualTime
) -> None:
    """hang() makes the step overrun its deadline; the action fails and the instance recovers."""
    uuid = await _create(ism_engine)
    ism_simulator.hang("stop")
    started = ism_clock.now()
    with pytest.raises(ActionFailed) as failure:
        await ism_engine.act(OWNER, "stop", uuid)
    assert isinstance(failure.value.__cause__, StepDeadlineExceeded)
    assert ism_clock.now() - started >= failure.value.__cause__.seconds
    assert ism_engine.get(uuid).task_state is None


@pytest.mark.asyncio
@pytest.mark.parametrize(("probability", "fails"), [(1.0, True), (0.0, False)])
async def test_fail_randomly_uses_the_probability(
    ism_engine: Engine, ism_simulator: SimulatorHarness, probability: float, fails: bool
) -> None:
    """fail_randomly(p=1) breaks every matching call; p=0 none."""
    uuid = await _create(ism_engine)
    ism_simulator.fail_randomly("pause", probability)
    result = await (await ism_engine.submit(OWNER, "pause", uuid)).wait()
    assert result.ok is not fails


@pytest.mark.asyncio
async def test_unknown_actions_and_steps_are_refused() -> None:
    """A rule naming an action or step the table lacks is an InvalidRequest, not a silent no-op."""
    sim = SimulatorHarness(SimulatorDriver())
    with pytest.raises(InvalidRequest, match="unknown action 'reboooot'"):
        sim.fail("reboooot")
    with pytest.raises(InvalidRequest, match="has no step 'spawning'"):
        sim.hang("reboot", step="spawning")
    with pytest.raises(InvalidRequest, match="nth counts calls from 1"):
        sim.fail("reboot", nth=0)
    with pytest.raises(InvalidRequest, match="probability"):
        sim.fail_randomly("reboot", 1.5)
    assert sim.driver.faults.rules == ()


@pytest.mark.asyncio
async def test_a_crashed_guest_is_stopped_by_the_power_sync(
    ism_engine: Engine, ism_simulator: SimulatorHarness
) -> None:
    """crash() reaches the engine as a hypervisor event; Nova's sync table stops the instance."""
    uuid = await _create(ism_engine)
    ism_simulator.crash(uuid)
    inst = await ism_engine.wait_for_state(uuid, vm_state="stopped", task_state=None, timeout=60)
    assert inst.power_state is PowerState.SHUTDOWN


@pytest.mark.asyncio
async def test_a_host_down_lets_an_admin_evacuate(
    ism_engine: Engine, ism_simulator: SimulatorHarness
) -> None:
    """host_down fails calls on that host and allows an evacuation to the other one."""
    uuid = await _create(ism_engine)
    host = ism_engine.get(uuid).host
    assert host is not None
    ism_simulator.host_down(host)
    with pytest.raises(ActionFailed):
        await ism_engine.act(OWNER, "pause", uuid)
    await ism_engine.act(ADMIN, "evacuate", uuid)
    assert ism_engine.get(uuid).host not in (None, host)
    ism_simulator.host_up(host)


@pytest.mark.asyncio
@pytest.mark.ism(config=Config(notify_on_state_change="vm_and_task_state"))
async def test_invariants_hold_after_a_faulty_run(
    ism_engine: Engine, ism_simulator: SimulatorHarness, ism_capture: MemoryCapture
) -> None:
    """After failures, a hang and a crash, assert_invariants passes once the engine is idle."""
    uuid = await _create(ism_engine)
    ism_simulator.fail("resize", step="resize_migrating")
    ism_simulator.hang("suspend")
    for action, params in (("resize", {"flavor": LARGE}), ("suspend", {}), ("stop", {})):
        await (await ism_engine.submit(OWNER, action, uuid, params)).wait()
    ism_simulator.crash(uuid)
    await ism_engine.wait_idle(timeout=3600)
    assert_invariants(ism_engine, ism_capture.notifications)


@pytest.mark.asyncio
async def test_the_clock_refuses_to_run_backwards(ism_clock: VirtualTime) -> None:
    """advance with a negative number, or advance_to the past, is an InvalidRequest."""
    await ism_clock.advance(10)
    with pytest.raises(InvalidRequest):
        await ism_clock.advance(-1)
    with pytest.raises(InvalidRequest):
        await ism_clock.advance_to(5)
    assert await ism_clock.advance_to(20) == 20


def test_virtual_time_outside_a_virtual_loop_says_how_to_get_one() -> None:
    """VirtualTime on an ordinary loop raises NotOnVirtualTime explaining the fix."""

    async def main() -> None:
        with pytest.raises(NotOnVirtualTime, match="virtual_anyio_backend"):
            await VirtualTime().advance(1)

    asyncio.run(main())


def test_the_harness_package_imports_no_pytest() -> None:
    """statemachine.testing works without pytest: only its plugin module imports it."""
    code = "import sys, statemachine.testing; sys.exit('pytest' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_errors_that_end_no_phase_are_where_the_table_puts_them() -> None:
    """Only failures before an action's first .start emit an .error that ends no phase (the
    reference: every accepted action that fails reports it); once every phase has ended, a
    failure sends none (no live_migration_pre.error after live_migration_pre.end)."""
    assert unclosing_errors(DEFAULT_LIFECYCLE) == {
        "create": ["create/scheduling"],
        "lock": ["lock/0"],
        "rebuild": ["evacuate/rebuilding"],
        "reset_state": ["reset_state/0", "reset_state_error/0"],  # opens none, as Nova's
        "unlock": ["unlock/0"],
    }


def test_background_engine_is_used_in_order() -> None:
    """Starting twice or stopping an engine never started is an EngineNotRunning."""

    async def main() -> None:
        host = BackgroundEngine(Engine(SimulatorDriver()))
        with pytest.raises(EngineNotRunning, match="never started"):
            await host.stop()
        engine = await host.start()
        assert host.running
        assert engine is host.engine
        with pytest.raises(EngineNotRunning, match="already started"):
            await host.start()
        await host.stop()
        assert not host.running

    run_virtual(main)


def test_background_engine_outside_asyncio_says_so() -> None:
    """Without a running asyncio loop (trio, or none), start() raises EngineNotRunning."""
    start = BackgroundEngine(Engine(SimulatorDriver())).start()
    with pytest.raises(EngineNotRunning, match="needs a running asyncio loop"):
        start.send(None)


def test_a_crash_inside_the_engine_surfaces_at_stop() -> None:
    """An error in the engine's own tasks (here its event listener) is raised by stop()."""

    class BrokenEvents(SimulatorDriver):
        async def events(self) -> AsyncIterator[LifecycleEvent]:
            raise RuntimeError("event stream broke")
            yield  # an async generator, as the protocol has it

    async def main() -> None:
        host = BackgroundEngine(Engine(BrokenEvents()))
        await host.start()
        await anyio.sleep(1)
        with pytest.raises(BaseExceptionGroup) as failure:
            await host.stop()
        assert failure.group_contains(RuntimeError, match="event stream broke")

    run_virtual(main)


def test_the_audit_check_fails_on_a_missing_record() -> None:
    """assert_audit_verifies passes on a real run and names a change whose record is gone."""

    async def main() -> None:
        store = MemoryStore()
        async with world(store=store) as w:
            uuid = await w.create()
            await w.engine.act(OWNER, "stop", uuid)
            await assert_audit_verifies(w.engine)
            records = await store.read_audit()
            store._sealed = [r for r in records if r is not records[-1]]  # the last change's
            with pytest.raises(AssertionError, match="audited versions"):
                await assert_audit_verifies(w.engine)

    run_virtual(main)
