"""Hypothesis, stateful: random actions, faults, guest events, host failures and time jumps,
with the engine's invariants checked after every step.

The engine runs on a virtual-time loop driven by ``asyncio.Runner``: each rule is one
``Runner.run`` call, so the loop (and its clock) stands still between rules and a run repeats
exactly under Hypothesis's replay. The engine lives in a :class:`BackgroundEngine` because it
is entered by one ``Runner.run`` and left by another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

import anyio
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from drivers.simulator import SimulatorDriver
from statemachine import (
    ActionRefused,
    Config,
    Engine,
    MemoryCapture,
    Rule,
    VirtualClock,
)
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from statemachine.testing import (
    BackgroundEngine,
    SimulatorHarness,
    assert_audit_verifies,
    assert_invariants,
    assert_phases_closed,
    assert_state_agrees,
    virtual_loop_factory,
)
from tests.support import ADMIN, OWNER, SMALL, action_params

T = TypeVar("T")
HOSTS = ("compute1", "compute2")
MAX_INSTANCES = 3

_API = DEFAULT_LIFECYCLE.api_actions()
ACTIONS = sorted(
    name for name, entries in _API.items() if not entries[0].internal and not entries[0].creates
)
ADMIN_ONLY = frozenset(name for name, entries in _API.items() if entries[0].rule is Rule.ADMIN)
FAULT_TARGETS = [  # every action, alone or at one of its steps that calls the driver
    (name, step)
    for name in sorted(_API)
    if not _API[name][0].internal
    for step in [
        None,
        *sorted(
            {s.task_state.value for a in _API[name] for s in a.steps if s.call and s.task_state}
        ),
    ]
]
CONFIG = Config(
    resize_confirm_window=120,
    reclaim_instance_interval=600,
    shelved_offload_time=300,
    instance_build_timeout=900,
    notify_on_state_change="vm_and_task_state",
)


class EngineMachine(RuleBasedStateMachine):
    """One engine on a two-host simulator, driven by Hypothesis's rules."""

    instances = Bundle("instances")

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner(loop_factory=virtual_loop_factory())
        self.capture = MemoryCapture(maxlen=None)
        self.sim = SimulatorHarness(SimulatorDriver(hosts=HOSTS, seed=0))
        self.engine = Engine(
            self.sim.driver, config=CONFIG, sinks=[self.capture], clock=VirtualClock(), seed=0
        )
        self.host = BackgroundEngine(self.engine)
        self.run(self.host.start())
        self.created = 0
        self.down: set[str] = set()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            self.run(self.engine.wait_idle(timeout=7 * 86400))
            assert_invariants(self.engine, self.capture.notifications)
            self.run(self.host.stop())
            assert_invariants(self.engine, self.capture.notifications)
            stats = self.engine.statistics()
            for outcome in ("ok", "failed", "preempted"):  # what the runs covered, in statistics
                event(
                    f"some action {outcome}" if stats.outcomes.get(outcome) else f"none {outcome}"
                )
            event(f"faults fired: {min(self.sim.driver.faults.fired_count, 3)}+")
        finally:
            self.runner.close()

    # -- rules ------------------------------------------------------------------------------

    @initialize(target=instances)
    def first(self) -> str:
        return self._create()

    @precondition(lambda self: self.created < MAX_INSTANCES)
    @rule(target=instances)
    def create(self) -> str:
        return self._create()

    def _create(self) -> str:
        self.created += 1

        async def go() -> str:
            handle = await self.engine.submit(
                OWNER, "create", None, {"name": f"vm{self.created}", "flavor": SMALL,
                                        "image": "cirros"}
            )  # fmt: skip
            return handle.uuid

        return self.run(go())

    @rule(uuid=instances, data=st.data(), anything=st.integers(0, 4), flip=st.booleans())
    def act(self, uuid: str, data: st.DataObject, anything: int, flip: bool) -> None:
        # mostly an action the guards admit now (so it runs), sometimes any (a refusal)
        admitted = self._admitted(uuid)
        action = data.draw(st.sampled_from(admitted if admitted and anything else ACTIONS))
        self._submit(uuid, action, flip)

    @rule(uuid=instances, data=st.data(), mode=st.sampled_from(["raise", "hang"]))
    def act_with_fault(self, uuid: str, data: st.DataObject, mode: str) -> None:
        # an admitted action whose driver call (at one of its steps, or any) will break
        admitted = self._admitted(uuid)
        if not admitted:
            return
        action = data.draw(st.sampled_from(admitted))
        step = data.draw(st.sampled_from([s for a, s in FAULT_TARGETS if a == action]))
        self.fault((action, step), mode, 1)
        self._submit(uuid, action, data.draw(st.booleans()))

    def _admitted(self, uuid: str) -> list[str]:
        inst = self.engine.get(uuid)
        return [
            name
            for name in ACTIONS
            if any(
                inst.vm_state in a.allowed_vm_states() and a.allows_task(inst.task_state)
                for a in _API[name]
            )
        ]

    def _submit(self, uuid: str, action: str, flip: bool) -> None:
        ctx = ADMIN if action in ADMIN_ONLY else OWNER

        async def go() -> None:
            with contextlib.suppress(ActionRefused):
                await self.engine.submit(ctx, action, uuid, action_params(action, flip))

        self.run(go())

    @rule(
        where=st.sampled_from(FAULT_TARGETS),
        mode=st.sampled_from(["raise", "hang"]),
        nth=st.integers(1, 3),
    )
    def fault(self, where: tuple[str, str | None], mode: str, nth: int) -> None:
        action, step = where
        if mode == "hang":
            self.sim.hang(action, step=step, nth=nth)
        else:
            self.sim.fail(action, step=step, nth=nth, message="stateful")

    @rule(action=st.sampled_from(ACTIONS), probability=st.sampled_from([0.1, 0.5, 1.0]))
    def random_fault(self, action: str, probability: float) -> None:
        self.sim.fail_randomly(action, probability, message="stateful random")

    @rule(uuid=instances, kind=st.sampled_from(["crash", "shutdown"]))
    def guest_event(self, uuid: str, kind: Literal["crash", "shutdown"]) -> None:
        if self.sim.guest(uuid) is not None:  # a deleted or never-built guest has no events
            self.run(self._in_loop(self.sim.guest_event, uuid, kind))

    @rule(host=st.sampled_from(HOSTS))
    def host_down(self, host: str) -> None:
        self.sim.host_down(host)
        self.down.add(host)

    @precondition(lambda self: bool(self.down))
    @rule(data=st.data())
    def host_up(self, data: st.DataObject) -> None:
        host = data.draw(st.sampled_from(sorted(self.down)))
        self.sim.host_up(host)
        self.down.discard(host)

    @rule(seconds=st.sampled_from([0.5, 2, 10, 60, 130, 700, 3600]))
    def advance(self, seconds: float) -> None:
        self.run(anyio.sleep(seconds))

    @rule()
    def settle(self) -> None:
        self.run(self.engine.wait_idle(timeout=7 * 86400))

    @staticmethod
    async def _in_loop(func: Any, *args: Any) -> None:
        func(*args)  # guest events are stamped with the running loop's clock

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        if self.engine.statistics().running_actions == 0:
            assert_invariants(self.engine, self.capture.notifications)
            self.run(assert_audit_verifies(self.engine))
            return
        # mid-action: phases may be open, yet never ended twice or ended before they start;
        # the state check covers the instances no action owns
        notifications = list(self.capture.notifications)
        assert_phases_closed(notifications, allow_open=True)
        idle = {i.uuid for i in self.engine.instances() if self.engine.running(i.uuid) is None}
        assert_state_agrees(self.engine, [n for n in notifications if n.instance_uuid in idle])


EngineMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineMachine = EngineMachine.TestCase
