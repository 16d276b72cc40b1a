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
from statemachine.notify import Notification
from tests.support import ADMIN, LARGE, OWNER, SMALL, world

ACTIONS = sorted(
    a.public_name for a in DEFAULT_LIFECYCLE.actions if not a.internal and not a.creates
)
STEP = st.one_of(
    st.tuples(st.just("do"), st.sampled_from(ACTIONS), st.booleans()),
    st.tuples(st.just("fault"), st.sampled_from(ACTIONS), st.sampled_from(["raise", "hang"])),
    st.tuples(st.just("advance"), st.sampled_from([1, 60, 3600]), st.just(None)),
    st.tuples(st.just("guest"), st.sampled_from(["crash", "shutdown"]), st.just(None)),
)


def _params(action: str, flip: bool) -> dict[str, Any]:
    if action == "resize":
        return {"flavor": LARGE if flip else SMALL}
    if action == "reboot":
        return {"type": "HARD" if flip else "SOFT"}
    return {}


def _phases_by_error() -> dict[str, set[str]]:
    """For each ``.error`` name, the phases the actions that emit it open (from the table):
    an error ends its own action's phases, not those of an action running beside it."""
    out: dict[str, set[str]] = {}
    for action in DEFAULT_LIFECYCLE.actions:
        opened = {e[: -len(".start")] for s in action.steps for e in s.before if ".start" in e}
        for step in action.steps:
            out.setdefault(action.error_event(step), set()).update(opened)
    return out


PHASES_BY_ERROR = _phases_by_error()


def _check_sequences(notifications: list[Notification]) -> None:
    """Per instance: sequence numbers 1..n; every .start is closed by one .end or .error."""
    by_uuid: dict[str, list[Notification]] = {}
    for n in notifications:
        by_uuid.setdefault(n.instance_uuid, []).append(n)
    for items in by_uuid.values():
        assert [n.sequence for n in items] == list(range(1, len(items) + 1))
        open_phases: list[str] = []
        for n in items:
            event = n.event_type.removeprefix("instance.")
            if event.endswith(".start"):
                open_phases.append(event[: -len(".start")])
            elif event.endswith(".end"):
                assert event[: -len(".end")] in open_phases, (event, open_phases)
                open_phases.remove(event[: -len(".end")])
            elif event.endswith(".error"):
                base = event[: -len(".error")]
                ended = PHASES_BY_ERROR.get(base, {base})
                open_phases = [p for p in open_phases if p not in ended]
        assert not open_phases, open_phases


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=14))
def test_random_runs_keep_the_invariants(steps: list[tuple[str, Any, Any]]) -> None:
    """No transient state once idle; notifications close every phase; the stored state and
    the last instance.update agree."""

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
                        await w.engine.submit(ctx, what, uuid, _params(what, how))
                elif kind == "fault":
                    w.sim.faults.add(FaultRule(action=what, mode=how, message="prop"))
                elif kind == "advance":
                    await anyio.sleep(what)
                elif w.sim.guest(uuid) is not None:  # a deleted guest has no events
                    w.sim.guest_event(uuid, what)
                    await anyio.sleep(1)
            await w.engine.wait_idle(timeout=86400)
            inst = w.engine.get(uuid)
            assert inst.task_state is None, inst
            notifications = list(w.capture.notifications)
            _check_sequences(notifications)
            updates = [n for n in w.capture.for_instance(uuid) if n.event_type == "instance.update"]
            last = updates[-1].payload["ism_object.data"]
            change = last["state_update"]["ism_object.data"]
            assert (change["state"], change["new_task_state"]) == (inst.vm_state.value, None)
            assert (last["state"], last["power_state"]) == (
                inst.vm_state.value, inst.power_state.label
            )  # fmt: skip

    run_virtual(main)
