"""The lifecycle table itself: Nova's facts, validation, and what is derived from it."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from drivers.base import PowerState
from statemachine._schema import Action, Step, Target, state_name
from statemachine.errors import LifecycleError
from statemachine.lifecycle import (
    ALLOW_HARD_REBOOT,
    ALLOW_REBOOT,
    ALLOW_SOFT_REBOOT,
    ALLOW_TRIGGER_CRASH_DUMP,
    DEFAULT_LIFECYCLE,
)
from statemachine.machine import LifecycleMachine
from statemachine.states import TaskState, VmState

LC = DEFAULT_LIFECYCLE

# The actions DESIGN.md and action-events.md name; each must have an entry.
NOVA_ACTIONS = {
    "create", "delete", "force_delete", "soft_delete", "restore", "stop", "start", "reboot",
    "pause", "unpause", "suspend", "resume", "shelve", "shelve_offload", "unshelve", "rescue",
    "unrescue", "resize", "confirm_resize", "revert_resize", "rebuild", "snapshot",
    "live_migrate", "live_migrate_abort", "live_migrate_force_complete", "evacuate",
    "trigger_crash_dump", "lock", "unlock",
}  # fmt: skip


def test_every_nova_action_has_an_entry() -> None:
    """Every action of the reference has an entry under its API name."""
    assert set(LC.api_actions()) >= NOVA_ACTIONS


def test_state_values_are_novas_strings() -> None:
    """Hyphenated values are Nova's exactly."""
    assert VmState.SOFT_DELETED.value == "soft-delete"
    assert TaskState.POWERING_OFF.value == "powering-off"
    assert TaskState.SOFT_DELETING.value == "soft-deleting"
    assert [p.label for p in PowerState] == [
        "pending", "running", "paused", "shutdown", "crashed", "suspended"
    ]  # fmt: skip
    assert [int(p) for p in PowerState] == [0, 1, 3, 4, 6, 7]


def test_nova_guard_sets() -> None:
    """The named guard sets match nova/compute/vm_states.py and task_states.py."""
    assert {ALLOW_SOFT_REBOOT} == {frozenset({VmState.ACTIVE})}
    assert (
        frozenset(
            {VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED, VmState.SUSPENDED, VmState.ERROR}
        )
        == ALLOW_HARD_REBOOT
    )
    assert (
        frozenset({VmState.ACTIVE, VmState.PAUSED, VmState.RESCUED, VmState.RESIZED, VmState.ERROR})
        == ALLOW_TRIGGER_CRASH_DUMP
    )
    assert len(ALLOW_REBOOT) == 9
    assert None in ALLOW_REBOOT


@pytest.mark.parametrize(
    ("name", "vm_states"),
    [
        ("stop", {"active", "error"}),
        ("start", {"stopped"}),
        ("shelve", {"active", "stopped", "paused", "suspended"}),
        ("unshelve", {"shelved", "shelved_offloaded"}),
        ("rescue", {"active", "stopped", "error"}),
        ("resize", {"active", "stopped"}),
        ("rebuild", {"active", "stopped", "error"}),
        ("live_migrate", {"active", "paused"}),
        ("snapshot", {"active", "stopped", "paused", "suspended"}),
        ("evacuate", {"active", "stopped", "error"}),
        ("restore", {"soft-delete"}),
    ],
)
def test_guards_follow_nova(name: str, vm_states: set[str]) -> None:
    """Allowed vm_states per action are the reference's §2 table."""
    action = LC.action(name)
    assert {s.value for s in action.allowed_vm_states()} == vm_states


def test_lock_check_and_admin_rules() -> None:
    """Evacuate and snapshot skip the lock check; admin-only actions are the default policy's."""
    no_lock = {a.name for a in LC.actions if not a.lock_check}
    assert {"evacuate", "snapshot", "lock", "unlock", "create"} <= no_lock
    admin = {a.name for a in LC.actions if a.rule.value == "admin"}
    assert admin == {
        "force_delete", "evacuate", "live_migrate", "live_migrate_abort",
        "live_migrate_force_complete", "reset_state", "reset_state_error",
    }  # fmt: skip


def test_default_lifecycle_is_valid_and_complete() -> None:
    """Validation passes; every vm_state and every step is reachable."""
    LC.validate()
    states = LC.states()
    assert {vm for vm, _ in states} == set(VmState)
    steps = {s.task_state for a in LC.actions for s in a.steps}
    assert steps - {None} <= {t for _, t in states}


def test_every_transient_state_has_an_error_path_and_deadline() -> None:
    """Each transient state has a fail edge to a stable state; each step has a deadline."""
    edges = LC.transitions()
    for vm, task in LC.states():
        if task is None:
            continue
        fails = [e for e in edges if e.source == (vm, task) and e.kind == "fail"]
        assert fails, state_name((vm, task))
        assert all(e.dest[1] is None for e in fails)
    assert all(s.deadline > 0 for a in LC.actions for s in a.steps)


def test_no_dead_end_but_deleted() -> None:
    """Every state but deleted has a way out."""
    sources = {e.source for e in LC.transitions() if e.kind != "internal"}
    for state in LC.states():
        if state != (VmState.DELETED, None):
            assert state in sources, state_name(state)


def _broken(**changes: Any) -> None:
    actions = tuple(attrs.evolve(a, **changes) if a.name == "pause" else a for a in LC.actions)
    attrs.evolve(LC, actions=actions).validate()


def test_duplicate_action_is_named() -> None:
    """Declaring an action twice fails naming it."""
    with pytest.raises(LifecycleError, match="'stop' is declared twice"):
        attrs.evolve(LC, actions=(*LC.actions, LC.action("stop")))


def test_step_without_deadline_is_named() -> None:
    """A step with no positive deadline fails naming the action and step."""
    bad = (Step(TaskState.PAUSING, None, 0.0),)
    with pytest.raises(LifecycleError, match=r"action 'pause' step 0 \(pausing\)"):
        _broken(steps=bad)


def test_missing_target_is_named() -> None:
    """A target that names no state fails naming the action."""
    with pytest.raises(LifecycleError, match="action 'pause' needs exactly one kind of target"):
        _broken(target=Target())


def test_unreachable_state_is_named() -> None:
    """Removing the only way into a state fails naming the state."""
    actions = tuple(a for a in LC.actions if a.name != "rescue")
    with pytest.raises(LifecycleError, match="vm_state 'rescued' is unreachable"):
        attrs.evolve(LC, actions=actions).validate()


def test_dead_end_is_named() -> None:
    """A stable state nothing leaves (here: paused, once unpause and others are gone) is named."""
    leaving = {
        "unpause", "delete", "force_delete", "soft_delete", "shelve", "live_migrate",
        "snapshot", "reboot_hard", "trigger_crash_dump", "force_stop", "lock", "unlock",
    }  # fmt: skip
    actions = tuple(
        a
        if a.name not in leaving
        else attrs.evolve(
            a, vm_states=(a.allowed_vm_states() - {VmState.PAUSED}) or frozenset({VmState.ERROR})
        )
        for a in LC.actions
    )
    with pytest.raises(LifecycleError, match="'paused' is a dead end"):
        attrs.evolve(LC, actions=actions).validate()


def test_join_without_accepting_step_is_named() -> None:
    """A joining action that no step accepts can never run."""
    lm = LC.action("live_migrate")
    steps = tuple(attrs.evolve(s, accepts=frozenset()) for s in lm.steps)
    actions = tuple(attrs.evolve(a, steps=steps) if a is lm else a for a in LC.actions)
    with pytest.raises(LifecycleError, match="joins a task but no step accepts it"):
        attrs.evolve(LC, actions=actions).validate()


def test_machine_performs_only_declared_changes() -> None:
    """The transitions machine applies a declared change and refuses an undeclared one."""
    machine = LifecycleMachine(LC)
    assert machine.apply("stop", (VmState.ACTIVE, None), (VmState.ACTIVE, TaskState.POWERING_OFF))
    with pytest.raises(LifecycleError, match="not allowed from 'stopped'"):
        machine.apply("stop", (VmState.STOPPED, None), (VmState.STOPPED, TaskState.POWERING_OFF))
    with pytest.raises(LifecycleError, match="cannot lead"):
        machine.apply("stop:done", (VmState.ACTIVE, TaskState.POWERING_OFF), (VmState.PAUSED, None))
    assert machine._machine.models == []  # no add_model: instances are never registered


@pytest.mark.parametrize(
    ("vm", "task", "status"),
    [
        (VmState.ACTIVE, None, "ACTIVE"),
        (VmState.ACTIVE, TaskState.REBOOTING, "REBOOT"),
        (VmState.ACTIVE, TaskState.REBOOT_STARTED_HARD, "HARD_REBOOT"),
        (VmState.ACTIVE, TaskState.RESIZE_PREP, "RESIZE"),
        (VmState.ACTIVE, TaskState.REBUILDING, "REBUILD"),
        (VmState.ACTIVE, TaskState.MIGRATING, "MIGRATING"),
        (VmState.STOPPED, None, "SHUTOFF"),
        (VmState.RESIZED, None, "VERIFY_RESIZE"),
        (VmState.RESIZED, TaskState.RESIZE_REVERTING, "REVERT_RESIZE"),
        (VmState.ERROR, TaskState.REBUILD_SPAWNING, "REBUILD"),
        (VmState.SOFT_DELETED, None, "SOFT_DELETED"),
        (VmState.BUILDING, TaskState.SPAWNING, "BUILD"),
        (VmState.SHELVED_OFFLOADED, None, "SHELVED_OFFLOADED"),
    ],
)
def test_api_status(vm: VmState, task: TaskState | None, status: str) -> None:
    """Nova's user-facing status per (vm_state, task_state), §1.4."""
    assert LC.status(vm, task) == status


def test_adding_an_action_is_one_entry() -> None:
    """A new action (one entry) is validated, reachable and gets machine transitions."""
    extra = Action(
        name="set_admin_password",
        doc="Nova's set_admin_password.",
        event="set_admin_password",
        steps=(Step(TaskState.POWERING_ON, None, 30.0, before=("x.start",), after=("x.end",)),),
        target=Target(same=True),
        on_error=LC.action("stop").on_error,
        vm_states=frozenset({VmState.ACTIVE}),
    )
    lc = attrs.evolve(LC, actions=(*LC.actions, extra))
    lc.validate()
    machine = LifecycleMachine(lc)
    assert machine.has("set_admin_password", (VmState.ACTIVE, None))
