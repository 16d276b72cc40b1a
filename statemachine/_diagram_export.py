"""The lifecycle exported as plain, versioned data: what every diagram and diff is drawn from.

:func:`export_lifecycle` turns a :class:`~statemachine._schema.Lifecycle` into a
:class:`LifecycleExport` (frozen attrs classes of strings, numbers and tuples), and
:meth:`LifecycleExport.to_json` / :meth:`LifecycleExport.from_json` move it to and from JSON.
The export is complete enough that nothing downstream needs the code that produced it: the
derived states and transitions, every action's guard, steps, deadlines, target and error paths,
the timed transitions with their option names and the power-sync rules with the edges they
cause. That is what lets ``ism diagram diff`` compare two git revisions by reading their
committed ``diagrams/lifecycle.json`` instead of importing old code.

The JSON is deterministic (sorted states and transitions, sorted keys, table order for actions),
so the committed file is itself a readable review artifact and ``--check`` can compare it as
text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs

from ._schema import (
    Action,
    Concurrency,
    ErrorPath,
    Lifecycle,
    PowerSyncRule,
    Rule,
    Step,
    TimedTransition,
    Transition,
    state_name,
)
from .errors import DiagramError
from .states import VmState

__all__ = [
    "EXPORT_FORMAT",
    "ExportedAction",
    "ExportedErrorPath",
    "ExportedGuard",
    "ExportedPowerSync",
    "ExportedState",
    "ExportedStep",
    "ExportedTimed",
    "ExportedTransition",
    "LifecycleExport",
    "export_lifecycle",
]

EXPORT_FORMAT = "ism-lifecycle-export/1"
"""The export's own schema version; a reader refuses any other (the lifecycle's is ``version``)."""

_T = TypeVar("_T")


@attrs.frozen
class ExportedState:
    """One derived state: a stable vm_state (``task_state`` None) or a transient step of one."""

    name: str
    vm_state: str
    task_state: str | None
    error: bool
    status: str

    @property
    def stable(self) -> bool:
        """Whether this is a vm_state with no task running."""
        return self.task_state is None

    @property
    def kind(self) -> str:
        """``stable`` or ``transient``, as the export and the legend call them."""
        return "stable" if self.stable else "transient"


@attrs.frozen
class ExportedGuard:
    """What an action's acceptance checks; ``None`` lists mean "any"."""

    vm_states: tuple[str, ...] | None
    task_states: tuple[str | None, ...] | None
    lock_check: bool
    rule: str
    concurrency: str
    preconditions: tuple[str, ...]
    must_have_launched: bool

    def notes(self) -> tuple[str, ...]:
        """The parts that differ from the default guard, in a few words each, for labels.

        The default is: the policy rule ``owner_or_admin``, the lock checked, no extra
        precondition, and the instance idle (no task running). Allowed vm_states are not a
        note: a diagram shows them as the edges' sources.
        """
        notes: list[str] = []
        if self.rule != Rule.OWNER_OR_ADMIN.value:
            notes.append(self.rule)
        if self.concurrency == _concurrency(Concurrency.PREEMPTS):
            notes.append("preempts")
        elif self.concurrency == _concurrency(Concurrency.TAKES_OVER):
            notes.append("takes over")
        elif self.concurrency == _concurrency(Concurrency.JOINS):
            notes.append("joins a task")
        elif self.task_states is None:
            notes.append("any task")
        elif self.task_states and set(self.task_states) != {None}:
            notes.append("during a task")
        if not self.lock_check and self.vm_states != ():  # a new instance has no lock yet
            notes.append("lock ignored")
        notes.extend(p.replace("_", " ") for p in self.preconditions)
        return tuple(notes)


@attrs.frozen
class ExportedErrorPath:
    """Where a failed step leaves the instance, and the clean-up call on the way."""

    to: str
    call: str | None
    events: tuple[str, ...]
    doc: str


@attrs.frozen
class ExportedStep:
    """One step of an action: its task_state, driver call, deadline and notifications."""

    task_state: str | None
    call: str | None
    deadline: float
    before: tuple[str, ...]
    after: tuple[str, ...]
    error_path: ExportedErrorPath | None
    error_event: str | None
    needs_host: bool
    accepts: tuple[str, ...]
    doc: str


@attrs.frozen
class ExportedAction:
    """One entry of the table, with everything a reviewer compares between two revisions."""

    name: str
    public_name: str
    variant: str | None
    doc: str
    event: str
    internal: bool
    creates: bool
    guard: ExportedGuard
    params: tuple[str, ...]
    required: tuple[str, ...]
    steps: tuple[ExportedStep, ...]
    target: str
    error_path: ExportedErrorPath
    power_after: str | None
    variant_param: str = "type"

    @property
    def immediate(self) -> bool:
        """An action whose acceptance is its whole change (``reset_state``): it sets no
        task_state, yet leaves the instance in another state."""
        return not self.free and bool(self.steps) and self.steps[0].task_state is None

    @property
    def free(self) -> bool:
        """An action that sets no task_state (``lock``): it changes no state."""
        return self.guard.concurrency == _concurrency(Concurrency.FREE)

    @property
    def joins(self) -> bool:
        """An action that takes over a running task that accepts it (live_migrate_abort)."""
        return self.guard.concurrency == _concurrency(Concurrency.JOINS)


@attrs.frozen
class ExportedTransition:
    """One derived state change (see :class:`statemachine._schema.Transition`).

    ``guard`` repeats the action's non-default guard notes on ``accept`` transitions, so the
    list reads on its own.
    """

    trigger: str
    action: str
    kind: str
    step: int | None
    source: str
    dest: str
    guard: tuple[str, ...]


@attrs.frozen
class ExportedTimed:
    """A timed transition: after ``option`` seconds in ``vm_state``, ``action`` runs.

    ``dests`` are the stable states it can lead to (``action=None`` fails the running action,
    so its dests are that failure's).
    """

    name: str
    vm_state: str
    option: str
    action: str | None
    zero: str
    any_task: bool
    doc: str
    dests: tuple[str, ...]


@attrs.frozen
class ExportedPowerSync:
    """One power-sync rule (first match wins) and the hypervisor-event edges it causes."""

    vm_states: tuple[str, ...]
    power_states: tuple[str, ...] | None
    response: str
    runs: str | None
    doc: str
    edges: tuple[tuple[str, str], ...]

    @property
    def key(self) -> str:
        """What identifies the rule across revisions: the states it matches."""
        powers = "any" if self.power_states is None else ",".join(self.power_states)
        return f"{','.join(self.vm_states)} @ {powers}"


@attrs.frozen
class LifecycleExport:
    """A whole lifecycle as plain data (see the module docstring)."""

    version: str
    initial: str
    final: tuple[str, ...]
    states: tuple[ExportedState, ...]
    actions: tuple[ExportedAction, ...]
    transitions: tuple[ExportedTransition, ...]
    timed: tuple[ExportedTimed, ...]
    power_sync: tuple[ExportedPowerSync, ...]

    def state(self, name: str) -> ExportedState:
        """The state called ``name`` (``active`` or ``active/powering-off``).

        Raises:
            DiagramError: the lifecycle has no such state.
        """
        for state in self.states:
            if state.name == name:
                return state
        raise DiagramError(f"the lifecycle has no state {name!r}")

    def action(self, name: str) -> ExportedAction:
        """The action entry called ``name`` (its internal name, e.g. ``reboot_hard``).

        Raises:
            DiagramError: the lifecycle has no such action.
        """
        for action in self.actions:
            if action.name == name:
                return action
        known = ", ".join(a.name for a in self.actions)
        raise DiagramError(f"the lifecycle has no action {name!r} (it has: {known})")

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys, two-space indent, trailing newline)."""
        data = {"format": EXPORT_FORMAT, **attrs.asdict(self)}
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, origin: str = "export") -> LifecycleExport:
        """Read what :meth:`to_json` wrote.

        Raises:
            DiagramError: not JSON, another format, or a field missing or of the wrong type;
                the message names ``origin`` and the field.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DiagramError(f"{origin}: not JSON ({exc})") from None
        reader = _Reader(data, origin)
        fmt = reader.opt_text("format")
        if fmt != EXPORT_FORMAT:
            raise DiagramError(f"{origin}: format {fmt!r} is not {EXPORT_FORMAT!r}")
        return cls(
            version=reader.text("version"),
            initial=reader.text("initial"),
            final=reader.texts("final"),
            states=reader.each("states", _read_state),
            actions=reader.each("actions", _read_action),
            transitions=reader.each("transitions", _read_transition),
            timed=reader.each("timed", _read_timed),
            power_sync=reader.each("power_sync", _read_power_sync),
        )


# -- from the table --------------------------------------------------------------------------


def export_lifecycle(lc: Lifecycle) -> LifecycleExport:
    """Export ``lc`` (derived states and transitions included); deterministic for one table."""
    derived_states = lc.states()
    transitions = lc.transitions()
    states = tuple(
        ExportedState(
            name=state_name(s),
            vm_state=s[0].value,
            task_state=None if s[1] is None else s[1].value,
            error=s[0] is VmState.ERROR,
            status=lc.status(*s),
        )
        for s in sorted(derived_states, key=state_name)
    )
    actions = tuple(_export_action(a) for a in lc.actions)
    guards = {a.name: a.guard.notes() for a in actions}
    exported = tuple(
        sorted(
            (_export_transition(t, guards[t.action]) for t in transitions),
            key=lambda t: (t.action, t.trigger, t.source, t.dest),
        )
    )
    return LifecycleExport(
        version=lc.version,
        initial=state_name(lc.initial),
        final=tuple(sorted(s.value for s in lc.final)),
        states=states,
        actions=actions,
        transitions=exported,
        timed=tuple(_export_timed(lc, t, transitions) for t in lc.timed),
        power_sync=tuple(_export_sync(lc, rule) for rule in lc.power_sync),
    )


def _values(items: Iterable[Any]) -> tuple[str, ...]:
    return tuple(sorted(str(getattr(i, "value", i)) for i in items))


def _export_action(a: Action) -> ExportedAction:
    task_states = (
        None
        if a.task_states is None
        else tuple(sorted((t.value if t is not None else None for t in a.task_states), key=_nf))
    )
    return ExportedAction(
        name=a.name,
        public_name=a.public_name,
        variant=a.variant,
        variant_param=a.variant_param,
        doc=a.doc,
        event=a.event,
        internal=a.internal,
        creates=a.creates,
        guard=ExportedGuard(
            vm_states=None if a.vm_states is None else _values(a.vm_states),
            task_states=task_states,
            lock_check=a.lock_check,
            rule=a.rule.value,
            concurrency=_concurrency(a.concurrency),
            preconditions=tuple(sorted(p.name.lower() for p in a.preconditions)),
            must_have_launched=a.must_have_launched,
        ),
        params=_values(a.params),
        required=_values(a.required),
        steps=tuple(_export_step(s) for s in a.steps),
        target=a.target.describe(),
        error_path=_export_error(a.on_error),
        power_after=None if a.power_after is None else a.power_after.label,
    )


def _concurrency(value: Concurrency) -> str:
    """The export's name of a concurrency class (``takes_over``)."""
    return value.name.lower()


def _nf(value: str | None) -> str:
    """Sort key that puts ``None`` (idle) first."""
    return "" if value is None else value


def _export_step(s: Step) -> ExportedStep:
    return ExportedStep(
        task_state=None if s.task_state is None else s.task_state.value,
        call=None if s.call is None else str(s.call),
        deadline=float(s.deadline),
        before=s.before,
        after=s.after,
        error_path=None if s.on_error is None else _export_error(s.on_error),
        error_event=s.error_event,
        needs_host=s.needs_host,
        accepts=tuple(sorted(s.accepts)),
        doc=s.doc,
    )


def _export_error(path: ErrorPath) -> ExportedErrorPath:
    return ExportedErrorPath(
        to=path.to.name.lower(),
        call=None if path.call is None else str(path.call),
        events=path.events,
        doc=path.doc,
    )


def _export_transition(t: Transition, guard: tuple[str, ...]) -> ExportedTransition:
    return ExportedTransition(
        trigger=t.trigger,
        action=t.action,
        kind=t.kind,
        step=t.step,
        source=state_name(t.source),
        dest=state_name(t.dest),
        guard=guard if t.kind == "accept" else (),
    )


def _export_timed(
    lc: Lifecycle, timed: TimedTransition, transitions: list[Transition]
) -> ExportedTimed:
    vm = timed.vm_state
    if timed.action is not None:
        dests = lc.action(timed.action).target.candidates(vm)
    else:
        # no action: the running one fails, so it ends where that vm_state's steps fail to
        dests = tuple(
            {t.dest[0]: None for t in transitions if t.kind == "fail" and t.source[0] is vm}
        )
    return ExportedTimed(
        name=timed.name,
        vm_state=vm.value,
        option=timed.option,
        action=timed.action,
        zero=timed.zero,
        any_task=timed.any_task,
        doc=timed.doc,
        dests=_values(dests),
    )


def _export_sync(lc: Lifecycle, rule: PowerSyncRule) -> ExportedPowerSync:
    runs = rule.response.runs
    edges: list[tuple[str, str]] = []
    if runs is not None and lc.has_action(runs):
        action = lc.action(runs)
        for vm in sorted(rule.vm_states, key=lambda v: v.value):
            if vm in action.allowed_vm_states():
                edges.extend((vm.value, dest.value) for dest in action.target.candidates(vm))
    return ExportedPowerSync(
        vm_states=_values(rule.vm_states),
        power_states=None
        if rule.power_states is None
        else tuple(p.label for p in sorted(rule.power_states)),
        response=rule.response.value,
        runs=runs,
        doc=rule.doc,
        edges=tuple(edges),
    )


# -- from JSON ---------------------------------------------------------------------------------


class _Reader:
    """Typed access to one JSON object, with errors that name the file and the field."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise DiagramError(f"{where}: expected an object")
        self._data: dict[str, object] = data
        self._where = where

    def _get(self, key: str) -> object:
        if key not in self._data:
            raise DiagramError(f"{self._where}: missing {key!r}")
        return self._data[key]

    def _fail(self, key: str, what: str) -> DiagramError:
        return DiagramError(f"{self._where}.{key}: expected {what}")

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self._data.get(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string or null")
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, "a number")
        return float(value)

    def opt_int(self, key: str) -> int | None:
        value = self._data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._fail(key, "an integer or null")
        return value

    def _list(self, key: str) -> list[object]:
        value = self._get(key)
        if not isinstance(value, list):
            raise self._fail(key, "a list")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        items = self._list(key)
        if not all(isinstance(i, str) for i in items):
            raise self._fail(key, "a list of strings")
        return tuple(str(i) for i in items)

    def opt_texts(self, key: str) -> tuple[str, ...] | None:
        return None if self._data.get(key) is None else self.texts(key)

    def texts_or_null(self, key: str) -> tuple[str | None, ...] | None:
        if self._data.get(key) is None:
            return None
        items = self._list(key)
        if not all(i is None or isinstance(i, str) for i in items):
            raise self._fail(key, "a list of strings or nulls")
        return tuple(None if i is None else str(i) for i in items)

    def pairs(self, key: str) -> tuple[tuple[str, str], ...]:
        out = []
        for item in self._list(key):
            if not (
                isinstance(item, list) and len(item) == 2 and all(isinstance(i, str) for i in item)
            ):
                raise self._fail(key, "a list of [source, dest] pairs")
            out.append((str(item[0]), str(item[1])))
        return tuple(out)

    def sub(self, key: str) -> _Reader:
        return _Reader(self._get(key), f"{self._where}.{key}")

    def opt_sub(self, key: str) -> _Reader | None:
        return None if self._data.get(key) is None else self.sub(key)

    def each(self, key: str, read: Callable[[_Reader], _T]) -> tuple[_T, ...]:
        items = self._list(key)
        return tuple(
            read(_Reader(item, f"{self._where}.{key}[{i}]")) for i, item in enumerate(items)
        )


def _read_state(r: _Reader) -> ExportedState:
    return ExportedState(
        name=r.text("name"),
        vm_state=r.text("vm_state"),
        task_state=r.opt_text("task_state"),
        error=r.flag("error"),
        status=r.text("status"),
    )


def _read_error(r: _Reader) -> ExportedErrorPath:
    return ExportedErrorPath(
        to=r.text("to"), call=r.opt_text("call"), events=r.texts("events"), doc=r.text("doc")
    )


def _read_step(r: _Reader) -> ExportedStep:
    error = r.opt_sub("error_path")
    return ExportedStep(
        task_state=r.opt_text("task_state"),
        call=r.opt_text("call"),
        deadline=r.number("deadline"),
        before=r.texts("before"),
        after=r.texts("after"),
        error_path=None if error is None else _read_error(error),
        error_event=r.opt_text("error_event"),
        needs_host=r.flag("needs_host"),
        accepts=r.texts("accepts"),
        doc=r.text("doc"),
    )


def _read_guard(r: _Reader) -> ExportedGuard:
    return ExportedGuard(
        vm_states=r.opt_texts("vm_states"),
        task_states=r.texts_or_null("task_states"),
        lock_check=r.flag("lock_check"),
        rule=r.text("rule"),
        concurrency=r.text("concurrency"),
        preconditions=r.texts("preconditions"),
        must_have_launched=r.flag("must_have_launched"),
    )


def _read_action(r: _Reader) -> ExportedAction:
    return ExportedAction(
        name=r.text("name"),
        public_name=r.text("public_name"),
        variant=r.opt_text("variant"),
        variant_param=r.opt_text("variant_param") or "type",
        doc=r.text("doc"),
        event=r.text("event"),
        internal=r.flag("internal"),
        creates=r.flag("creates"),
        guard=_read_guard(r.sub("guard")),
        params=r.texts("params"),
        required=r.texts("required"),
        steps=r.each("steps", _read_step),
        target=r.text("target"),
        error_path=_read_error(r.sub("error_path")),
        power_after=r.opt_text("power_after"),
    )


def _read_transition(r: _Reader) -> ExportedTransition:
    return ExportedTransition(
        trigger=r.text("trigger"),
        action=r.text("action"),
        kind=r.text("kind"),
        step=r.opt_int("step"),
        source=r.text("source"),
        dest=r.text("dest"),
        guard=r.texts("guard"),
    )


def _read_timed(r: _Reader) -> ExportedTimed:
    return ExportedTimed(
        name=r.text("name"),
        vm_state=r.text("vm_state"),
        option=r.text("option"),
        action=r.opt_text("action"),
        zero=r.text("zero"),
        any_task=r.flag("any_task"),
        doc=r.text("doc"),
        dests=r.texts("dests"),
    )


def _read_power_sync(r: _Reader) -> ExportedPowerSync:
    return ExportedPowerSync(
        vm_states=r.texts("vm_states"),
        power_states=r.opt_texts("power_states"),
        response=r.text("response"),
        runs=r.opt_text("runs"),
        doc=r.text("doc"),
        edges=r.pairs("edges"),
    )
