"""Property-based: random action sequences, faults and time jumps keep the engine's invariants."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.simulator import FaultRule
from statemachine.clock import run_virtual
from statemachine.config import Config
from statemachine.errors import ActionRefused
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from statemachine.testing import assert_invariants
from tests.support import ADMIN, OWNER, action_params, world

ACTIONS = sorted(
    a.public_name for a in DEFAULT_LIFECYCLE.actions if not a.internal and not a.creates
)
STEP = st.one_of(
    st.tuples(st.just("do"), st.sampled_from(ACTIONS), st.booleans()),
    st.tuples(st.just("fault"), st.sampled_from(ACTIONS), st.sampled_from(["raise", "hang"])),
    st.tuples(st.just("advance"), st.sampled_from([1, 60, 3600]), st.just(None)),
    st.tuples(st.just("guest"), st.sampled_from(["crash", "shutdown"]), st.just(None)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=14))
def test_random_runs_keep_the_invariants(steps: list[tuple[str, Any, Any]]) -> None:
    """No transient state once idle; notifications close every phase; the stored state and
    the last instance.update agree (the harness's assert_invariants)."""

    async def main() -> None:
        config = Config(
            resize_confirm_window=120, reclaim_instance_interval=600, shelved_offload_time=-1,
            notify_on_state_change="vm_and_task_state",
        )  # fmt: skip
        async with world(config=config) as w:
            uuid = await w.create()
            for kind, what, how in steps:
                if kind == "do":
                    ctx = ADMIN if what in ("live_migrate", "force_delete") else OWNER
                    with contextlib.suppress(ActionRefused):
                        await w.engine.submit(ctx, what, uuid, action_params(what, how))
                elif kind == "fault":
                    w.sim.faults.add(FaultRule(action=what, mode=how, message="prop"))
                elif kind == "advance":
                    await anyio.sleep(what)
                elif w.sim.guest(uuid) is not None:  # a deleted guest has no events
                    w.sim.guest_event(uuid, what)
                    await anyio.sleep(1)
            await w.engine.wait_idle(timeout=86400)
            assert_invariants(w.engine, w.capture.notifications)

    run_virtual(main)
