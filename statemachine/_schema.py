"""The types the lifecycle table is written in, and what is derived from them.

The table itself is :mod:`statemachine.lifecycle`. This module holds the vocabulary (``Step``,
``Action``, ``TimedTransition`` …), derives the flat list of state changes that the
``transitions`` machine, the diagrams and the generated test paths all use, and validates a
definition: every transient step resolves to a stable state and has an error path and a
deadline, every state is reachable, no state but ``deleted`` is a dead end.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

import attrs

from drivers.base import PowerState

from .errors import LifecycleError
from .states import TaskState, VmState

__all__ = [
    "ANY_VM_STATE",
    "Action",
    "Call",
    "Concurrency",
    "ErrorPath",
    "ErrorTo",
    "Lifecycle",
    "PayloadClass",
    "PowerSyncRule",
    "Precondition",
    "Rule",
    "State",
    "Step",
    "SyncResponse",
    "Target",
    "TimedTransition",
    "Transition",
    "state_name",
]

PayloadClass = tuple[str, str, tuple[str, ...]]
"""A notification payload class: its name, its version, and its fields beyond the instance's
(``("InstanceActionVolumePayload", "1.7", ("fault", "volume_id"))``)."""

State = tuple[VmState, TaskState | None]
"""An instance's lifecycle position: the stable state and the step in progress (or None)."""

ANY_VM_STATE: frozenset[VmState] = frozenset(VmState) - {VmState.DELETED}
"""Nova's ``vm_state=None`` ("any"): every state an instance that still exists can be in."""


def state_name(state: State) -> str:
    """The machine's name for a state: ``active`` when idle, ``active/powering-off`` otherwise."""
    vm, task = state
    return vm.value if task is None else f"{vm.value}/{task.value}"


class Call(enum.StrEnum):
    """What a step does. The engine binds each to code in one place (``statemachine._calls``)."""

    SCHEDULE = "schedule"
    SPAWN = "spawn"
    DESTROY = "destroy"
    RELEASE = "release"
    POWER_OFF = "power_off"
    POWER_ON = "power_on"
    REBOOT = "reboot"
    PAUSE = "pause"
    UNPAUSE = "unpause"
    SUSPEND = "suspend"
    RESUME = "resume"
    RESCUE = "rescue"
    UNRESCUE = "unrescue"
    SNAPSHOT = "snapshot"
    SHELVE_OFFLOAD = "shelve_offload"
    UNSHELVE_SPAWN = "unshelve_spawn"
    PREP_RESIZE = "prep_resize"
    MIGRATE_DISK = "migrate_disk_and_power_off"
    FINISH_MIGRATION = "finish_migration"
    CONFIRM_MIGRATION = "confirm_migration"
    FINISH_REVERT_MIGRATION = "finish_revert_migration"
    ROLLBACK_RESIZE = "rollback_resize"
    REBUILD = "rebuild"
    SPAWN_IMAGE = "spawn_image"
    EVACUATE_SCHEDULE = "evacuate_schedule"
    PRE_LIVE_MIGRATION = "pre_live_migration"
    LIVE_MIGRATION = "live_migration"
    LIVE_MIGRATION_ABORT = "live_migration_abort"
    LIVE_MIGRATION_FORCE_COMPLETE = "live_migration_force_complete"
    POST_LIVE_MIGRATION = "post_live_migration"
    ROLLBACK_LIVE_MIGRATION = "rollback_live_migration"
    TRIGGER_CRASH_DUMP = "trigger_crash_dump"
    LOCK = "lock"
    UNLOCK = "unlock"


class Concurrency(enum.Enum):
    """What an action may do while another action owns the instance's task_state."""

    EXCLUSIVE = "refused while a task runs"
    PREEMPTS = "preempts the running action"
    TAKES_OVER = "takes over the running action"
    JOINS = "needs a running task that accepts it, then takes it over"
    FREE = "sets no task_state, never conflicts"


class Rule(enum.StrEnum):
    """The policy rule an action is checked against, by name.

    Each value names a rule of the policy's data (:mod:`statemachine.policy`), which gives it
    an expression a service can override; an action's own entry in the default policy is
    ``rule:<value>``.
    """

    OWNER_OR_ADMIN = "owner_or_admin"
    ADMIN = "admin"
    SYSTEM = "system"
    UNLOCK_OVERRIDE = "unlock_override"
    """Nova's ``unlock_override``: the instance's project or an admin, and a lock an admin set
    needs an admin to lift."""


class Precondition(enum.Enum):
    """Checks beyond vm_state / task_state / lock that an action's acceptance needs."""

    HOST_DOWN = "the instance's host is down"
    HAS_HOST = "the instance has a host"
    OTHER_HOST = "a requested host is not the instance's own"


class ErrorTo(enum.Enum):
    """Where a failed step leaves the instance."""

    REVERT_TASK = "task_state cleared, vm_state unchanged"
    ERROR = "vm_state error"
    ROLLBACK = "undo the action's bookkeeping, back to the prior stable state"
    ACTIVE_IF_RUNNING = "active when the guest still runs, else error"


@attrs.frozen
class ErrorPath:
    """A failed step's way out: where it ends, an optional clean-up call, and its events.

    When the clean-up call fails too, the instance goes to ``error``: nothing else is known
    to be true of it then.
    """

    to: ErrorTo
    call: Call | str | None = None
    events: tuple[str, ...] = ()
    doc: str = ""


@attrs.frozen
class Target:
    """Where a successful action leaves ``vm_state``.

    Exactly one of ``to``, ``by_source``, ``same`` or ``prior`` applies: a fixed state, a state
    per source state, the source state itself, or the state recorded before a resize (one of
    ``prior``'s candidates).
    """

    to: VmState | None = None
    by_source: Mapping[VmState, VmState] | None = None
    same: bool = False
    prior: tuple[VmState, ...] = ()

    def candidates(self, source: VmState) -> tuple[VmState, ...]:
        """Every state this target can lead to from ``source`` (the machine needs them all)."""
        if self.to is not None:
            return (self.to,)
        if self.by_source is not None:
            return (self.by_source[source],) if source in self.by_source else ()
        if self.same:
            return (source,)
        return self.prior

    def resolve(self, source: VmState, old_vm_state: VmState | None) -> VmState:
        """The state to enter, given the instance's source state and recorded prior state."""
        if self.prior:
            if old_vm_state not in self.prior:
                return self.prior[0]
            return old_vm_state
        (state,) = self.candidates(source)
        return state

    def describe(self) -> str:
        """A short text for docs and diagrams."""
        if self.to is not None:
            return self.to.value
        if self.by_source is not None:
            return ", ".join(f"{a.value}→{b.value}" for a, b in self.by_source.items())
        if self.same:
            return "unchanged"
        return "prior (" + " or ".join(s.value for s in self.prior) + ")"


@attrs.frozen
class Step:
    """One task_state step: its driver call, its deadline and the notifications around it.

    ``before`` events are emitted once the step's task_state is committed, before the call;
    ``after`` events once the *next* state (the next step, or the target) is committed, so an
    ``.end`` snapshot shows where the action arrived, as Nova's do. A ``needs_host`` step is
    skipped, with its events, when the instance has no host (delete of a never-scheduled
    instance). ``accepts`` names the actions (``Concurrency.JOINS``) that may take over during
    this step. A step with ``task_state=None`` belongs to a ``FREE`` action.
    """

    task_state: TaskState | None
    call: Call | str | None = None
    deadline: float = 60.0
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    on_error: ErrorPath | None = None
    error_event: str | None = None
    needs_host: bool = False
    accepts: frozenset[str] = frozenset()
    doc: str = ""


@attrs.frozen
class Action:
    """One user-facing (or internal) action, in Nova's words, with everything the engine needs.

    ``event`` is the notification name whose ``.error`` a failure emits (``power_off`` for
    ``stop``). ``api_name``/``variant`` let two entries share one API name (``reboot`` with
    ``type`` SOFT or HARD); ``variant_param`` names the parameter that picks the entry (``type``,
    or ``state`` for ``reset_state``). ``vm_states=None`` means any existing instance;
    ``task_states=None`` any task_state. ``params`` lists the API words the action takes,
    ``required`` those it needs.

    An action whose one step has no task_state and which preempts (``reset_state``) is
    *immediate*: its acceptance writes its target in the same compare-and-swap that ends the
    running action, as Nova's ``os-resetState`` does with one save, so there is no moment at
    which it owns a task another request could see.
    """

    name: str
    doc: str
    event: str
    steps: tuple[Step, ...]
    target: Target
    on_error: ErrorPath
    vm_states: frozenset[VmState] | None
    task_states: frozenset[TaskState | None] | None = frozenset({None})
    lock_check: bool = True
    rule: Rule = Rule.OWNER_OR_ADMIN
    concurrency: Concurrency = Concurrency.EXCLUSIVE
    preconditions: frozenset[Precondition] = frozenset()
    must_have_launched: bool = True
    api_name: str | None = None
    variant: str | None = None
    variant_param: str = "type"
    params: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    internal: bool = False
    power_after: PowerState | None = None

    @property
    def creates(self) -> bool:
        """A creation action has no source state: it inserts a new instance."""
        return self.vm_states is not None and not self.vm_states

    @property
    def owns_task(self) -> bool:
        """Whether the action holds the instance's task_state while it runs: not a FREE
        action, nor an immediate one, which leaves nothing to hold after its acceptance."""
        return self.steps[0].task_state is not None

    @property
    def immediate(self) -> bool:
        """Whether the acceptance's write is the whole state change (see the class)."""
        return self.concurrency is not Concurrency.FREE and not self.owns_task

    @property
    def public_name(self) -> str:
        """The name callers use (``reboot`` for both reboot entries)."""
        return self.api_name or self.name

    def allowed_vm_states(self) -> frozenset[VmState]:
        """The vm_states the guard admits, ``None`` resolved to every existing state."""
        return ANY_VM_STATE if self.vm_states is None else self.vm_states

    def allows_task(self, task: TaskState | None) -> bool:
        """Whether the guard admits this task_state."""
        return self.task_states is None or task in self.task_states

    def error_path(self, step: Step) -> ErrorPath:
        """The error path of a step (its own, or the action's)."""
        return step.on_error or self.on_error

    def error_event(self, step: Step | None) -> str:
        """The notification whose ``.error`` a failure in ``step`` emits."""
        return (step.error_event if step is not None else None) or self.event


@attrs.frozen
class TimedTransition:
    """A state that moves on by itself after a configured time (Nova's periodic tasks).

    ``option`` is Nova's option name; ``zero`` says what 0 means for it (``never`` or ``now``),
    a negative value always means never. ``action`` runs as the system when the time is up;
    ``action=None`` fails the running action instead (the build timeout). ``task_state`` of
    ``"any"`` arms the timer on entering ``vm_state`` whatever the task.
    """

    name: str
    vm_state: VmState
    option: str
    action: str | None
    zero: Literal["never", "now"] = "never"
    any_task: bool = False
    doc: str = ""

    def delay(self, value: float) -> float | None:
        """Seconds until the transition fires for an option value, or None for never."""
        if value < 0 or (value == 0 and self.zero == "never"):
            return None
        return float(value)


class SyncResponse(enum.Enum):
    """What the power sync does when the hypervisor disagrees with the stable state."""

    NOTHING = "nothing"
    STOP = "stop"
    FORCE_STOP = "force_stop"
    LOG = "log"

    @property
    def runs(self) -> str | None:
        """The action the sync runs for this response (its value names it), or None.

        The diagrams draw a hypervisor-event edge through this action's target.
        """
        return self.value if self in (SyncResponse.STOP, SyncResponse.FORCE_STOP) else None


@attrs.frozen
class PowerSyncRule:
    """One row of Nova's ``_sync_instance_power_state`` table; first match wins."""

    vm_states: frozenset[VmState]
    power_states: frozenset[PowerState] | None
    response: SyncResponse
    doc: str = ""


@attrs.frozen
class Transition:
    """One state change the machine allows, derived from the table.

    ``kind`` is ``accept`` (the action starts), ``advance`` (next step), ``done`` (the target),
    ``fail`` (the error path) or ``internal`` (a FREE action: no state change).
    """

    trigger: str
    source: State
    dest: State
    action: str
    kind: Literal["accept", "advance", "done", "fail", "internal"]
    step: int | None = None


def trigger_name(action: str, kind: str, step: int | None = None) -> str:
    """The machine's trigger for one kind of change of one action."""
    if kind == "advance":
        return f"{action}:{step}"
    if kind == "accept":
        return action
    return f"{action}:{kind}"


@attrs.frozen
class Lifecycle:
    """The whole lifecycle as data; validated when built (see :meth:`validate`)."""

    actions: tuple[Action, ...]
    initial: State
    final: frozenset[VmState]
    timed: tuple[TimedTransition, ...]
    power_sync: tuple[PowerSyncRule, ...]
    api_status: Mapping[VmState, tuple[str, Mapping[TaskState, str]]]
    version: str = "1"
    payload_classes: Mapping[str, PayloadClass] = attrs.field(factory=dict)
    """Payload classes of events the table adds (``volume_attach`` → Nova's
    ``InstanceActionVolumePayload``), beside the built-in ones (``statemachine.notify``)."""
    _by_name: dict[str, Action] = attrs.field(init=False, repr=False, eq=False)
    _by_api: dict[str, tuple[Action, ...]] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        by_name: dict[str, Action] = {}
        by_api: dict[str, list[Action]] = {}
        for action in self.actions:
            if action.name in by_name:
                raise LifecycleError(f"action {action.name!r} is declared twice")
            by_name[action.name] = action
            by_api.setdefault(action.public_name, []).append(action)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_api", {k: tuple(v) for k, v in by_api.items()})

    def action(self, name: str) -> Action:
        """The entry named ``name`` (internal name, e.g. ``reboot_hard``)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise LifecycleError(f"no action named {name!r}") from None

    def has_action(self, name: str) -> bool:
        """Whether an entry has that internal name."""
        return name in self._by_name

    def api_actions(self) -> dict[str, tuple[Action, ...]]:
        """The entries by the name callers use."""
        return dict(self._by_api)

    def variant_param(self, api_name: str) -> str:
        """The parameter that picks among an API name's entries (``type`` when it has one)."""
        entries = self._by_api.get(api_name)
        return entries[0].variant_param if entries else "type"

    def resolve(self, api_name: str, variant: str | None) -> Action | None:
        """The entry for an API name and variant (the first variant is the default)."""
        entries = self._by_api.get(api_name)
        if not entries:
            return None
        if variant is None:
            return entries[0]
        for entry in entries:
            if entry.variant == variant:
                return entry
        return None

    def status(self, vm: VmState, task: TaskState | None) -> str:
        """Nova's user-facing status (``nova/api/openstack/common.py``) for a state pair."""
        entry = self.api_status.get(vm)
        if entry is None:
            return "UNKNOWN"
        default, by_task = entry
        if task is not None and task in by_task:
            return by_task[task]
        return default

    # -- derived ---------------------------------------------------------------------------

    def transitions(self) -> list[Transition]:
        """Every state change the lifecycle allows, from the states reachable from ``initial``."""
        return _derive(self)[1]

    def states(self) -> list[State]:
        """Every reachable state, in discovery order (deterministic)."""
        return _derive(self)[0]

    def extend(
        self,
        *,
        actions: Iterable[Action] = (),
        payload_classes: Mapping[str, PayloadClass] | None = None,
        version: str | None = None,
    ) -> Lifecycle:
        """A new lifecycle with ``actions`` added: an embedding service's own actions, run,
        drawn, documented and covered by generated paths like the built-in ones.

        Raises:
            LifecycleError: the result is not a valid lifecycle (names the culprit).
        """
        added = tuple(actions)
        extended = attrs.evolve(
            self,
            actions=(*self.actions, *added),
            payload_classes={**self.payload_classes, **(payload_classes or {})},
            version=version or "+".join([self.version, *(a.name for a in added)]),
        )
        extended.validate()
        return extended

    def payload_fields(self, action: Action) -> frozenset[str]:
        """The extra payload fields of the action's own events (filled from its params)."""
        out: set[str] = set()
        for step in action.steps:
            for event in (*step.before, *step.after):
                base = event.rsplit(".", 1)[0] if event.endswith((".start", ".end")) else event
                spec = self.payload_classes.get(base)
                if spec is not None:
                    out.update(spec[2])
        return frozenset(out) - {"fault"}

    def validate(self) -> None:
        """Fail with a :class:`LifecycleError` naming the culprit when the definition is broken."""
        _validate(self)


def _sources(action: Action, states: Iterable[State]) -> Iterator[State]:
    vms = action.allowed_vm_states()
    for vm, task in states:
        if vm in vms and action.allows_task(task):
            yield vm, task


def _action_edges(action: Action, source: State) -> Iterator[Transition]:
    """The transitions one action contributes when it starts from ``source``."""
    name = action.name
    vm = source[0]
    tasks = [step.task_state for step in action.steps]
    if action.concurrency is Concurrency.FREE:
        yield Transition(trigger_name(name, "accept"), source, source, name, "internal")
        return
    if action.immediate:
        for dest_vm in action.target.candidates(vm):
            yield Transition(
                trigger_name(name, "accept"), source, (dest_vm, None), name, "accept", 0
            )
        return
    first: State = (vm, tasks[0])
    yield Transition(trigger_name(name, "accept"), source, first, name, "accept", 0)
    for i in range(1, len(tasks)):
        if tasks[i] != tasks[i - 1]:
            yield Transition(
                trigger_name(name, "advance", i),
                (vm, tasks[i - 1]),
                (vm, tasks[i]),
                name,
                "advance",
                i,
            )
    for dest_vm in action.target.candidates(vm):
        yield Transition(trigger_name(name, "done"), (vm, tasks[-1]), (dest_vm, None), name, "done")
    for i, step in enumerate(action.steps):
        path = action.error_path(step)
        dests = _error_dests(path.to, vm)
        if path.call is not None and VmState.ERROR not in dests:
            dests = (*dests, VmState.ERROR)  # the clean-up call itself can fail
        for dest_vm in dests:
            yield Transition(
                trigger_name(name, "fail"),
                (vm, step.task_state),
                (dest_vm, None),
                name,
                "fail",
                i,
            )


def _error_dests(to: ErrorTo, vm: VmState) -> tuple[VmState, ...]:
    if to is ErrorTo.ERROR:
        return (VmState.ERROR,)
    if to is ErrorTo.ACTIVE_IF_RUNNING:
        return (VmState.ACTIVE, VmState.ERROR)
    return (vm,)


_CACHE: dict[int, tuple[Lifecycle, list[State], list[Transition]]] = {}


def _derive(lc: Lifecycle) -> tuple[list[State], list[Transition]]:
    """Explore from ``initial`` until no action adds a state (a fixpoint; the table is small)."""
    cached = _CACHE.get(id(lc))
    if cached is not None and cached[0] is lc:
        return cached[1], cached[2]
    seen: dict[State, None] = {lc.initial: None}
    edges: dict[tuple[str, State, State], Transition] = {}
    for action in lc.actions:
        if action.creates:
            # a creation has no source: the record is inserted at its first step
            for edge in _action_edges(action, (lc.initial[0], None)):
                if edge.kind != "accept":
                    edges[(edge.trigger, edge.source, edge.dest)] = edge
                    seen.setdefault(edge.dest, None)
    grew = True
    while grew:
        grew = False
        for action in lc.actions:
            for source in list(_sources(action, list(seen))):
                for edge in _action_edges(action, source):
                    key = (edge.trigger, edge.source, edge.dest)
                    if key in edges:
                        continue
                    edges[key] = edge
                    if edge.dest not in seen:
                        seen[edge.dest] = None
                        grew = True
    states, transitions = list(seen), list(edges.values())
    _CACHE[id(lc)] = (lc, states, transitions)
    return states, transitions


def _validate(lc: Lifecycle) -> None:
    names = {a.name for a in lc.actions}
    for api_name, entries in lc.api_actions().items():
        params = {e.variant_param for e in entries}
        if len(entries) > 1 and (len(params) != 1 or any(e.variant is None for e in entries)):
            raise LifecycleError(
                f"the entries of {api_name!r} need a variant each, picked by one parameter"
            )
        for entry in entries:
            if entry.variant is not None and entry.variant_param not in entry.params:
                raise LifecycleError(
                    f"action {entry.name!r} does not take its variant's parameter "
                    f"{entry.variant_param!r}"
                )
    for action in lc.actions:
        where = f"action {action.name!r}"
        if not action.event:
            raise LifecycleError(f"{where} has no notification name")
        if not action.steps:
            raise LifecycleError(f"{where} has no steps")
        free = action.concurrency is Concurrency.FREE
        immediate = action.concurrency is Concurrency.PREEMPTS and len(action.steps) == 1
        for i, step in enumerate(action.steps):
            at = f"{where} step {i} ({step.task_state})"
            if step.task_state is None and not (free or immediate):
                raise LifecycleError(
                    f"{at}: only a FREE action, or a PREEMPTS action of one step, "
                    "has a step without a task_state"
                )
            if step.task_state is not None and free:
                raise LifecycleError(f"{at}: a FREE action sets no task_state")
            if step.task_state is None and immediate and step.call is not None:
                raise LifecycleError(f"{at}: an immediate action calls nothing")
            if not step.deadline > 0:
                raise LifecycleError(f"{at} has no positive deadline")
            for other in step.accepts:
                if other not in names:
                    raise LifecycleError(f"{at} accepts unknown action {other!r}")
                if lc.action(other).concurrency is not Concurrency.JOINS:
                    raise LifecycleError(f"{at} accepts {other!r}, which does not join a task")
        target = action.target
        chosen = [
            target.to is not None,
            target.by_source is not None,
            target.same,
            bool(target.prior),
        ]
        if sum(chosen) != 1:
            raise LifecycleError(f"{where} needs exactly one kind of target")
        if target.by_source is not None:
            missing = action.allowed_vm_states() - set(target.by_source)
            if missing:
                raise LifecycleError(
                    f"{where} has no target from {sorted(s.value for s in missing)}"
                )
        if action.concurrency is Concurrency.JOINS and not any(
            action.name in step.accepts for other in lc.actions for step in other.steps
        ):
            raise LifecycleError(f"{where} joins a task but no step accepts it")
        if action.required - action.params:
            raise LifecycleError(f"{where} requires params it does not declare")
    for timed in lc.timed:
        if timed.action is not None and timed.action not in names:
            raise LifecycleError(
                f"timed transition {timed.name!r} names unknown action {timed.action!r}"
            )
    states, edges = _derive(lc)
    reached_vm = {vm for vm, _ in states}
    for vm in VmState:
        if vm not in reached_vm:
            raise LifecycleError(
                f"vm_state {vm.value!r} is unreachable from {state_name(lc.initial)}"
            )
    reached_task = {task for _, task in states}
    for action in lc.actions:
        for step in action.steps:
            if step.task_state not in reached_task:
                raise LifecycleError(
                    f"step {step.task_state} of action {action.name!r} is unreachable"
                )
        if not any(e.action == action.name for e in edges) and action.name != "create":
            raise LifecycleError(f"action {action.name!r} can never start")
    outgoing: dict[State, int] = {}
    resets = {a.name for a in lc.actions if a.immediate}  # an operator's way out of anything
    for edge in edges:
        if edge.kind != "internal" and edge.action not in resets:
            outgoing[edge.source] = outgoing.get(edge.source, 0) + 1
    for state in states:
        vm, task = state
        if vm in lc.final and task is None:
            continue
        if not outgoing.get(state):
            raise LifecycleError(f"state {state_name(state)!r} is a dead end")
        if (
            task is not None
            and not any(e.source == state and e.dest[1] is None for e in edges)
            and not _leads_to_stable(state, edges)
        ):
            raise LifecycleError(f"transient state {state_name(state)!r} never resolves")


def _leads_to_stable(state: State, edges: list[Transition]) -> bool:
    todo, seen = [state], {state}
    while todo:
        cur = todo.pop()
        for edge in edges:
            if edge.source == cur and edge.kind != "accept":
                if edge.dest[1] is None:
                    return True
                if edge.dest not in seen:
                    seen.add(edge.dest)
                    todo.append(edge.dest)
    return False
