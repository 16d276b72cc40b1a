"""Invariants every run of the engine keeps, as assertions a test can make after any run.

They are what the property-based tests check after every step, shared so a service's own tests
can check them too: once nothing runs, no instance is left in a transient state; every
``.start`` is followed by exactly one ``.end`` or ``.error``; per instance, notifications are
numbered 1..n; and the stored state is what the last ``instance.update`` said.
"""

from __future__ import annotations

from collections.abc import Iterable

from .._capture import object_data
from .._schema import Lifecycle
from ..engine import Engine
from ..lifecycle import DEFAULT_LIFECYCLE
from ..notify import Notification

__all__ = [
    "assert_audit_verifies",
    "assert_invariants",
    "assert_no_transient_state",
    "assert_phases_closed",
    "assert_state_agrees",
    "unclosing_errors",
]

_UPDATE = "instance.update"
_PREFIX = "instance."


def _phases_by_error(lifecycle: Lifecycle) -> dict[str, set[str]]:
    """For each ``.error`` name, the phases the actions that emit it open (from the table):
    an error ends its own action's phases, not those of an action running beside it."""
    out: dict[str, set[str]] = {}
    for action in lifecycle.actions:
        opened = {e.removesuffix(".start") for s in action.steps for e in s.before if ".start" in e}
        for step in action.steps:
            out.setdefault(action.error_event(step), set()).update(opened)
    return out


def unclosing_errors(lifecycle: Lifecycle) -> dict[str, list[str]]:
    """The ``.error`` names a failure emits while its action has no phase open, each with the
    ``action/step`` places that do so.

    The engine sends ``.error`` to close open phases, and otherwise only for an action that
    failed before it opened any (a create that found no host, a lock that failed): a failure
    after every phase has ended (a live migration failing after ``live_migration_pre.end``)
    sends none. So only steps ahead of an action's first ``.start`` are listed, and
    :func:`assert_phases_closed` accepts an ``.error`` that ends nothing exactly there.
    """
    out: dict[str, list[str]] = {}
    for action in lifecycle.actions:
        for index, step in enumerate(action.steps):
            if any(e.endswith(".start") for e in step.before):
                break  # from here on a phase has been opened
            where = step.task_state.value if step.task_state is not None else str(index)
            out.setdefault(action.error_event(step), []).append(f"{action.name}/{where}")
    return out


def _by_instance(notifications: Iterable[Notification]) -> dict[str, list[Notification]]:
    out: dict[str, list[Notification]] = {}
    for n in notifications:
        out.setdefault(n.instance_uuid, []).append(n)
    return out


def assert_no_transient_state(engine: Engine) -> None:
    """Once no action runs, every instance is in a stable state (``task_state`` None).

    Raises:
        AssertionError: actions still run (the check would mean nothing: wait for
            ``engine.wait_idle`` first), or some instances are left transient (listed).
    """
    running = engine.statistics().running_actions
    if running:
        raise AssertionError(f"{running} actions still run; wait_idle before this check")
    stuck = [
        f"{i.uuid} {i.vm_state.value}/{i.task_state.value}"
        for i in engine.instances()
        if i.task_state is not None
    ]
    if stuck:
        raise AssertionError(f"instances left in a transient state: {stuck}")


def assert_phases_closed(
    notifications: Iterable[Notification],
    lifecycle: Lifecycle = DEFAULT_LIFECYCLE,
    *,
    allow_open: bool = False,
) -> None:
    """Per instance: sequence numbers run 1..n, and every ``.start`` is followed by exactly
    one ``.end`` or ``.error``.

    An ``.end`` must close a phase its ``.start`` opened; an ``.error`` closes the phases its
    action opened (the table says which: ``instance.power_off.error`` ends a stop's phases)
    and must close at least one, unless the table makes it fail with no phase open (see
    :func:`unclosing_errors`). Give every notification since the engine started: a bounded
    capture that dropped the oldest makes this check fail.

    Args:
        notifications: In emission order.
        lifecycle: The table the engine ran.
        allow_open: Accept phases still open at the end (actions that still run); everything
            else is still checked.

    Raises:
        AssertionError: names the instance and the first broken rule.
    """
    ends = _phases_by_error(lifecycle)
    unclosing = unclosing_errors(lifecycle)
    for uuid, items in _by_instance(notifications).items():
        numbers = [n.sequence for n in items]
        if numbers != list(range(1, len(items) + 1)):
            raise AssertionError(f"{uuid}: sequence numbers are {numbers[:50]}, not 1..n")
        open_phases: list[str] = []
        for n in items:
            event = n.event_type.removeprefix(_PREFIX)
            if event.endswith(".start"):
                open_phases.append(event.removesuffix(".start"))
            elif event.endswith(".end"):
                phase = event.removesuffix(".end")
                if phase not in open_phases:
                    raise AssertionError(
                        f"{uuid}: #{n.sequence} {n.event_type} ends no open phase {open_phases}"
                    )
                open_phases.remove(phase)
            elif event.endswith(".error"):
                base = event.removesuffix(".error")
                # one action's error: one of each of its phases (two concurrent crash dumps
                # of one instance each open their own trigger_crash_dump phase)
                closing = [p for p in ends.get(base, {base}) if p in open_phases]
                if not closing and base not in unclosing:
                    raise AssertionError(
                        f"{uuid}: #{n.sequence} {n.event_type} ends no open phase {open_phases}"
                    )
                for phase in closing:
                    open_phases.remove(phase)
        if open_phases and not allow_open:
            raise AssertionError(f"{uuid}: phases started but never ended: {open_phases}")


def assert_state_agrees(engine: Engine, notifications: Iterable[Notification]) -> None:
    """Each instance's stored state is what its last ``instance.update`` reported.

    Every commit sends one ``instance.update`` when ``notify_on_state_change`` is set, so the
    last one must carry the stored vm_state, task_state and power_state, in its payload and in
    its ``state_update``. Instances with no update yet (just inserted, or adopted) are skipped.

    Raises:
        ValueError: the engine emits no ``instance.update`` (``notify_on_state_change`` None).
        AssertionError: names the instance and both states.
    """
    if engine.config.notify_on_state_change is None:
        raise ValueError("instance.update is off: set Config(notify_on_state_change=...)")
    last: dict[str, Notification] = {}
    for n in notifications:
        if n.event_type == _UPDATE:
            last[n.instance_uuid] = n
    for uuid, update in last.items():
        inst = engine.get(uuid)
        stored = (
            inst.vm_state.value,
            inst.task_state.value if inst.task_state is not None else None,
            inst.power_state.label,
        )
        data = object_data(update.payload)
        change = object_data(data.get("state_update"))
        said = (data.get("state"), data.get("task_state"), data.get("power_state"))
        changed = (change.get("state"), change.get("new_task_state"))
        if said != stored or changed != stored[:2]:
            raise AssertionError(
                f"{uuid}: stored {stored}, but its last instance.update "
                f"(#{update.sequence}) says {said}, state_update {changed}"
            )


def assert_invariants(engine: Engine, notifications: Iterable[Notification]) -> None:
    """Every invariant above, for an engine with no action running.

    The state check runs when the engine emits ``instance.update`` (``notify_on_state_change``
    set); without it there is nothing to compare the stored state with.

    Raises:
        AssertionError: the first invariant broken, with what broke it.
    """
    held = list(notifications)
    assert_no_transient_state(engine)
    assert_phases_closed(held, engine.lifecycle)
    if engine.config.notify_on_state_change is not None:
        assert_state_agrees(engine, held)
    # The audit log's check reads the store (async): assert_audit_verifies.


async def assert_audit_verifies(engine: Engine, *, timeout: float = 60.0) -> None:
    """The audit log verifies and agrees with the stored state, for an engine at rest.

    The hash chain verifies; per instance, the versions its records leave it at run 0, 1, 2 …
    without gap or repeat (every committed change has its record and no record lacks its
    change), and the last one is the stored record's state; every accepted action has exactly
    one outcome record, but the one that still owns an instance's task_state (it runs, or a
    restart interrupted it and its deadline is pending). The engine's own background changes
    (a power sync) may be staged but not yet durable: the check waits for commits (bounded by
    ``timeout``) and looks again, a few times, before it concludes.

    Raises:
        AssertionError: what disagrees, naming the instance or action.
    """
    problem: str | None = None
    for _ in range(5):
        await engine.wait_committed(timeout)
        problem = await _audit_problem(engine)
        if problem is None:
            return
    raise AssertionError(problem)


async def _audit_problem(engine: Engine) -> str | None:
    report = await engine.store.verify()
    if not report.ok:
        return f"the audit log does not verify: {report.error}"
    for inst in engine.instances():
        records = await engine.store.read_audit(instance=inst.uuid)
        afters = [r.get("after") for r in records if r.get("after")]
        versions = [a["version"] for a in afters]
        if versions != list(range(inst.version + 1)):
            return (
                f"{inst.uuid}: audited versions {versions} for a record at version {inst.version}"
            )
        last = afters[-1]
        stored = (inst.vm_state.value, inst.task_state.value if inst.task_state else None,
                  inst.power_state.label)  # fmt: skip
        if (last["vm_state"], last["task_state"], last["power_state"]) != stored:
            return f"{inst.uuid}: last audited state {last} but stored {stored}"
        ends: dict[str, int] = {}
        for r in records:
            action_id = r.get("action_id")
            if action_id is None:
                continue
            ends.setdefault(action_id, 0)
            if r.event in ("completed", "failed", "preempted"):
                ends[action_id] += 1
        if inst.task_state is not None:
            ends.pop(inst.action_id or "", None)  # still owns the task: running, or interrupted
        unended = {a: n for a, n in ends.items() if n != 1}
        if unended and engine.statistics().running_actions == 0:
            return f"{inst.uuid}: actions without exactly one outcome: {unended}"
    return None
