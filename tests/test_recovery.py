"""Surviving restarts: each recovery rule, durable deadlines, the periodic sync, the drain."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from drivers.base import GuestSpec, PowerState
from drivers.simulator import FaultRule, SimulatorDriver
from statemachine.clock import VirtualClock, run_virtual
from statemachine.config import Config
from statemachine.engine import Engine, StepInfo
from statemachine.errors import ActionFailed
from statemachine.recovery import RECOVERY_RULES, Recovery
from statemachine.sinks import MemoryCapture
from statemachine.store import SqliteStore
from statemachine.testing import assert_audit_verifies, assert_phases_closed
from tests.support import ADMIN, LARGE, OWNER, SMALL

HARD = {"type": "HARD"}
SOFT = {"type": "SOFT"}


def _holder(action: str, at: str, index: int | None) -> Callable[[StepInfo], Awaitable[None]]:
    """A step hook that holds ``action`` at its step ``at`` (and step ``index``) for good."""

    async def hook(info: StepInfo) -> None:
        if (
            info.action == action
            and info.task_state is not None
            and info.task_state.value == at
            and (index is None or info.index == index)
            and not info.error_path
        ):
            await anyio.sleep_forever()

    return hook


@attrs.define
class Restart:
    """Two engines, one after the other, on one SQLite file and one simulated hypervisor."""

    path: Path
    sim: SimulatorDriver = attrs.field(factory=lambda: SimulatorDriver(hosts=["c1", "c2"]))
    capture: MemoryCapture = attrs.field(factory=lambda: MemoryCapture(maxlen=None))
    clock: float = 0.0
    config: Config = attrs.field(factory=lambda: Config(drain_timeout=1))

    def engine(self, *hooks: Callable[[StepInfo], Awaitable[None]]) -> Engine:
        return Engine(
            self.sim,
            store=SqliteStore(self.path),
            config=self.config,
            sinks=[self.capture],
            clock=VirtualClock(),
            hooks=hooks,
            seed=1,
        )

    def run(self, body: Callable[[Engine], Awaitable[Any]], *hooks: Any) -> Any:
        """Run ``body`` on a new engine, the virtual clock continuing where it stopped."""
        out: list[Any] = []

        async def main() -> None:
            async with self.engine(*hooks) as engine:
                out.append(await body(engine))
            self.clock = anyio.current_time()

        run_virtual(main, start=self.clock)
        return out[0]


def _interrupt(
    r: Restart,
    action: str,
    at: str,
    params: dict[str, Any] | None = None,
    *,
    before: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
    index: int | None = None,
    faults: list[FaultRule] = (),  # type: ignore[assignment]
) -> str:
    """An instance whose ``action`` was interrupted at ``at`` by the engine stopping."""

    async def body(engine: Engine) -> str:
        result = await engine.create(OWNER, name="vm1", flavor=SMALL, image="cirros")
        uuid = result.instance.uuid
        for rule in faults:
            r.sim.faults.add(rule)
        for name, p in before:
            ctx = ADMIN if name in ("live_migrate",) else OWNER
            with contextlib.suppress(ActionFailed):  # a prepared failure (an error state)
                await engine.act(ctx, name, uuid, p)
            await engine.wait_idle(timeout=3600)  # what the action chained (an offload) too
        ctx = ADMIN if action == "live_migrate" else OWNER
        await engine.submit(ctx, action, uuid, params or {})
        await engine.wait_for_state(uuid, task_state=at, timeout=600)
        return uuid

    uuid: str = r.run(body, _holder(action, at, index))
    assert str(_state(r, uuid)[1]) == at  # left mid-step: no error path ran
    return uuid


def _state(r: Restart, uuid: str) -> tuple[str, str | None, str, str | None]:
    """What the file holds, read without starting an engine (which would recover)."""

    async def read() -> tuple[str, str | None, str, str | None]:
        store = SqliteStore(r.path, readonly=True)
        await store.open(writer="reader")
        inst = store.get(uuid)
        await store.close()
        return (inst.vm_state.value, inst.task_state.value if inst.task_state else None,
                inst.power_state.label, inst.host)  # fmt: skip

    return run_virtual(read)


def _recover(
    r: Restart, uuid: str, *, advance: float = 0, rules: list[str] | None = None
) -> tuple[str, str | None, str, str | None]:
    """Start an engine (recovery runs), let what it started finish, return the state; the
    Nova rule numbers recovery matched for ``uuid`` go to ``rules``."""

    async def body(engine: Engine) -> tuple[str, str | None, str, str | None]:
        if rules is not None:
            rules.extend(rule.nova if rule else "none" for u, rule in engine.recovered if u == uuid)
        await engine.wait_idle(timeout=3600)
        if advance:
            await anyio.sleep(advance)
            await engine.wait_idle(timeout=3600)
        await assert_audit_verifies(engine)
        inst = engine.get(uuid)
        return (inst.vm_state.value, inst.task_state.value if inst.task_state else None,
                inst.power_state.label, inst.host)  # fmt: skip

    return r.run(body)  # type: ignore[no-any-return]


def _rule_of(r: Restart, uuid: str) -> str:
    async def body(engine: Engine) -> str:
        found = [rule for u, rule in engine.recovered if u == uuid]
        return found[0].nova if found and found[0] is not None else "none"

    return r.run(body)  # type: ignore[no-any-return]


def test_a_build_in_progress_goes_to_error(tmp_path: Path) -> None:
    """#3: creating (spawning) at the restart: error, no host kept."""
    r = Restart(tmp_path / "ism.db")

    async def body(engine: Engine) -> str:
        handle = await engine.create(OWNER, name="vm1", flavor=SMALL, image="cirros", wait=False)
        await engine.wait_for_state(handle.uuid, task_state="spawning", timeout=600)
        return handle.uuid

    uuid = r.run(body, _holder("create", "spawning", None))
    assert _recover(r, uuid) == ("error", None, "pending", None)
    assert r.sim.guest(uuid) is None


@pytest.mark.parametrize(
    ("rule", "action", "at", "params", "before", "power", "after"),
    [
        ("#3", "unshelve", "spawning", {}, [("shelve", {})], None, ("error", None)),
        ("#4", "rebuild", "rebuild_spawning", {}, [], None, ("error", None)),
        ("#5", "snapshot", "image_snapshot", {}, [], None, ("active", None)),
        ("#6", "resize", "resize_prep", {"flavor": LARGE}, [], None, ("active", None)),
        ("#7", "delete", "deleting", {}, [], None, ("deleted", None)),
        ("#8", "reboot", "reboot_pending", SOFT, [], None, ("active", None)),
        ("#8", "reboot", "reboot_started", SOFT, [], PowerState.SHUTDOWN, ("active", None)),
        ("#8", "reboot", "reboot_pending_hard", HARD, [], None, ("active", None)),
        ("#8", "reboot", "rebooting_hard", HARD, [], PowerState.SHUTDOWN, ("active", None)),
        ("#9", "reboot", "reboot_started_hard", HARD, [], None, ("active", None)),
        ("#9", "unpause", "unpausing", {}, [("pause", {})], PowerState.RUNNING, ("active", None)),
        ("#9", "pause", "pausing", {}, [], None, ("active", None)),
        ("#10", "unpause", "unpausing", {}, [("pause", {})], None, ("active", None)),
        ("#11", "stop", "powering-off", {}, [], None, ("stopped", None)),
        ("#12", "start", "powering-on", {}, [("stop", {})], None, ("active", None)),
        ("#14", "resize", "resize_migrating", {"flavor": LARGE}, [], None, ("active", None)),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_each_rule_takes_up_its_interrupted_action(
    tmp_path: Path,
    rule: str,
    action: str,
    at: str,
    params: dict[str, Any],
    before: list[tuple[str, dict[str, Any]]],
    power: PowerState | None,
    after: tuple[str, str | None],
) -> None:
    """The rule that matches is Nova's, and the instance ends where Nova leaves it, in a
    stable state, with its audit log agreeing (each interrupted action has one outcome)."""
    r = Restart(tmp_path / "ism.db")
    uuid = _interrupt(r, action, at, params, before=before)
    if power is not None:
        r.sim.set_power(uuid, power)
    calls = dict(r.sim.statistics().calls)
    matched: list[str] = []
    state = _recover(r, uuid, rules=matched)
    assert matched == [rule]  # this rule, not another that happens to end the same way
    assert state[:2] == after
    assert _rule_of(r, uuid) == "none"  # the next start finds nothing left to recover
    made = {k: v - calls.get(k, 0) for k, v in r.sim.statistics().calls.items()}
    if rule == "#9" and action == "reboot":
        assert made.get("reboot", 0) == 0  # the guest runs: finished, not redone
    if rule in ("#8", "#10", "#11", "#12"):
        call = {"reboot": "reboot", "unpause": "unpause", "stop": "power_off",
                "start": "power_on"}[action]  # fmt: skip
        assert made.get(call, 0) >= 1  # retried
    if rule == "#14":
        assert made.get("finish_revert_migration", 0) == 1
        assert r.sim.guest(uuid) is not None
        assert r.sim.guest(uuid).flavor.vcpus == SMALL["vcpus"]  # type: ignore[union-attr]
    if action == "delete":
        assert r.sim.guest(uuid) is None


def test_the_matching_rule_is_recorded(tmp_path: Path) -> None:
    """engine.recovered names the rule each interrupted instance met."""
    r = Restart(tmp_path / "ism.db")
    uuid = _interrupt(r, "stop", "powering-off")

    async def body(engine: Engine) -> list[str]:
        await engine.wait_idle(timeout=600)
        return [rule.nova for u, rule in engine.recovered if u == uuid and rule]

    assert r.run(body) == ["#11"]


def test_an_interrupted_live_migration_is_rolled_back(tmp_path: Path) -> None:
    """#15: migrating at the restart: rolled back, on the source host, destination freed."""
    r = Restart(tmp_path / "ism.db")
    uuid = _interrupt(r, "live_migrate", "migrating", {"host": "c2"}, index=1)
    source = r.sim.guest(uuid).host  # type: ignore[union-attr]
    vm, task, _, host = _recover(r, uuid)
    assert (vm, task, host) == ("active", None, source)
    assert r.sim.guest(uuid).live_migration_dest is None  # type: ignore[union-attr]


def test_a_delete_of_an_instance_in_error_is_finished(tmp_path: Path) -> None:
    """#1 gives way to #7: an instance in error whose delete was interrupted is deleted."""
    r = Restart(tmp_path / "ism.db")
    uuid = _interrupt(
        r, "delete", "deleting", before=[("rebuild", {})], faults=[FaultRule(action="rebuild")]
    )
    assert _recover(r, uuid)[:2] == ("deleted", None)


@pytest.mark.parametrize(
    ("action", "at", "params", "before", "faults", "after", "deadline"),
    [
        ("restore", "restoring", {}, [("soft_delete", {})], [], "error", 300),
        (
            "reboot",
            "rebooting_hard",
            HARD,
            [("rebuild", {})],
            [FaultRule(action="rebuild")],
            "active",
            60,
        ),
        ("suspend", "suspending", {}, [], [], "active", 300),
    ],
    ids=["#1 soft-deleted", "#1 error", "no rule"],
)
def test_an_action_left_alone_takes_its_error_path_at_its_deadline(
    tmp_path: Path,
    action: str,
    at: str,
    params: dict[str, Any],
    before: list[tuple[str, dict[str, Any]]],
    faults: list[FaultRule],
    after: str,
    deadline: float,
) -> None:
    """Left as it is at the restart; its step's deadline, re-armed from task_since with the
    time remaining, then sends it down its error path."""
    r = Restart(tmp_path / "ism.db")
    uuid = _interrupt(r, action, at, params, before=before, faults=faults)
    stamped = r.clock
    state = _recover(r, uuid)
    assert state[1] == at  # nothing done at once
    r.clock = stamped + deadline - 10  # restart before the deadline: not yet
    assert _recover(r, uuid)[1] == at
    assert _recover(r, uuid, advance=20)[:2] == (after, None)  # the rest of it passes


def test_timed_transitions_fire_on_time_across_a_restart(tmp_path: Path) -> None:
    """A resize confirm window counted from the resize, not from the restart; past it, the
    confirm happens at once."""
    r = Restart(tmp_path / "ism.db", config=Config(resize_confirm_window=1000, drain_timeout=1))

    async def resize(engine: Engine) -> tuple[str, float]:
        result = await engine.create(OWNER, name="vm1", flavor=SMALL, image="cirros")
        await engine.act(OWNER, "resize", result.instance.uuid, {"flavor": LARGE})
        return result.instance.uuid, anyio.current_time()

    uuid, resized_at = r.run(resize)
    r.clock = resized_at + 400  # down for 400 s

    async def watch(engine: Engine) -> float:
        await engine.wait_for_state(uuid, vm_state="active", timeout=5000)
        return anyio.current_time()

    confirmed_at = r.run(watch)
    assert confirmed_at == pytest.approx(resized_at + 1000, abs=2)

    uuid, resized_at = r.run(resize)
    r.clock = resized_at + 5000  # down for longer than the window

    async def at_once(engine: Engine) -> float:
        started = anyio.current_time()
        await engine.wait_for_state(uuid, vm_state="active", timeout=5000)
        return anyio.current_time() - started

    assert r.run(at_once) < 5


def test_the_periodic_sync_corrects_a_lost_event(tmp_path: Path) -> None:
    """A guest that went down without an event is found by the next periodic sync and the
    instance stopped, as Nova's sync table says; with the sync off it is not."""
    for interval, expected in ((600.0, "stopped"), (-1.0, "active")):
        config = Config(sync_power_state_interval=interval)
        r = Restart(tmp_path / f"{interval}.db", config=config)

        async def body(engine: Engine, r: Restart = r) -> str:
            result = await engine.create(OWNER, name="vm1", flavor=SMALL, image="cirros")
            uuid = result.instance.uuid
            r.sim.set_power(uuid, PowerState.SHUTDOWN)
            await anyio.sleep(601)
            await engine.wait_idle(timeout=600)
            return engine.get(uuid).vm_state.value

        assert r.run(body) == expected


def test_a_drain_finishes_what_it_can_and_leaves_the_rest_to_recovery(tmp_path: Path) -> None:
    """Leaving the engine lets running steps finish within drain_timeout; what cannot is left
    mid-step (not sent down its error path), and the next start takes it up."""
    r = Restart(tmp_path / "ism.db", config=Config(drain_timeout=30))

    async def body(engine: Engine) -> tuple[str, str]:
        quick = await engine.create(OWNER, name="quick", flavor=SMALL, image="cirros")
        slow = await engine.create(OWNER, name="slow", flavor=SMALL, image="cirros")
        await engine.submit(OWNER, "pause", quick.instance.uuid)  # 0.5 s: done in the drain
        await engine.submit(OWNER, "stop", slow.instance.uuid)  # held: past the drain
        return quick.instance.uuid, slow.instance.uuid

    quick, slow = r.run(body, _holder("stop", "powering-off", None))
    assert _state(r, quick)[:2] == ("paused", None)
    assert _state(r, slow)[:2] == ("active", "powering-off")
    assert _recover(r, slow)[:2] == ("stopped", None)
    assert_phases_closed(list(r.capture.notifications))


def test_every_rule_is_reachable_by_the_table() -> None:
    """Each rule names states the lifecycle has; a rule no state can meet would be dead."""
    from statemachine.lifecycle import DEFAULT_LIFECYCLE

    states = set(DEFAULT_LIFECYCLE.states())
    for rule in RECOVERY_RULES:
        hits = [
            (vm, task)
            for vm, task in states
            if task is not None and any(rule.applies(vm, task, p) for p in PowerState)
        ]
        assert hits, f"rule {rule.nova} ({rule.doc}) matches no state of the lifecycle"
    assert {rule.response for rule in RECOVERY_RULES} == set(Recovery)


class _SlowPowerQueries(SimulatorDriver):
    """A hypervisor that takes ``delay`` (virtual) seconds to say a guest's power state."""

    delay = 0.0

    async def power_state(self, guest: GuestSpec) -> PowerState:
        await anyio.sleep(self.delay)
        return await super().power_state(guest)


def test_recovery_asks_the_hypervisor_concurrently(tmp_path: Path) -> None:
    """Eight interrupted instances and a hypervisor that takes 50 s to answer each: recovery
    asks ``recovery_concurrency`` (8) at once, so the start waits about 50 s, not 400 s."""
    sim = _SlowPowerQueries(hosts=["c1", "c2"])
    r = Restart(tmp_path / "ism.db", sim=sim)

    async def interrupt(engine: Engine) -> list[str]:
        uuids = [
            (await engine.create(OWNER, name=f"vm{i}", flavor=SMALL, image="cirros")).instance.uuid
            for i in range(8)
        ]
        for uuid in uuids:
            await engine.submit(OWNER, "stop", uuid)
        for uuid in uuids:
            await engine.wait_for_state(uuid, task_state="powering-off", timeout=600)
        return uuids

    uuids: list[str] = r.run(interrupt, _holder("stop", "powering-off", None))
    sim.delay = 50.0

    async def restart(engine: Engine) -> tuple[float, int]:
        return engine.recovery_seconds, len(engine.recovered)

    seconds, recovered = r.run(restart)
    assert recovered == len(uuids)
    assert 49 < seconds < 100  # one round of 50 s answers; one at a time would be 400 s
