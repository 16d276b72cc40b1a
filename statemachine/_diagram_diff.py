"""What changed between two exported lifecycles: a list of changes, a summary, a diagram.

Both sides are :class:`~statemachine._diagram_export.LifecycleExport` values (read from a file
or from ``diagrams/lifecycle.json`` at a git revision), never code, so any two revisions
compare. A change names the table entry a reviewer would edit: an action, a timed transition,
a power-sync rule, a state or a transition. Derived consequences are folded into the entry
that caused them: the transitions and states an added action brings are part of "added action
X"; a transition that appears because an action's guard changed is listed under that action's
change. Only what no entry explains is listed on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal, TypeVar

import attrs

from ._diagram_export import (
    ExportedAction,
    ExportedErrorPath,
    ExportedGuard,
    ExportedPowerSync,
    ExportedState,
    ExportedStep,
    ExportedTimed,
    ExportedTransition,
    LifecycleExport,
)
from ._diagram_picture import (
    Item,
    Node,
    Picture,
    Status,
    action_view,
    format_seconds,
    overview,
)

__all__ = ["Change", "LifecycleDiff", "diff_exports", "diff_picture"]

ChangeKind = Literal["added", "removed", "changed"]
Subject = Literal["lifecycle", "action", "timed", "power_sync", "state", "transition"]
_Key = tuple[ChangeKind, Subject, str]

_E = TypeVar("_E", ExportedTimed, ExportedPowerSync)
_KIND_ORDER = {"added": 0, "removed": 1, "changed": 2}
_SUBJECT_ORDER = {
    s: i
    for i, s in enumerate(("lifecycle", "action", "timed", "power_sync", "state", "transition"))
}
_SUBJECT_WORDS = {
    "lifecycle": "lifecycle",
    "action": "action",
    "timed": "timed transition",
    "power_sync": "power-sync rule",
    "state": "state",
    "transition": "transition",
}
_MAX_TRANSITION_LINES = 12


@attrs.frozen
class Change:
    """One entry a reviewer reads: what was added, removed or changed, and how."""

    change: ChangeKind
    subject: Subject
    name: str
    details: tuple[str, ...] = ()

    @property
    def owner(self) -> str:
        """The picture items' owner this change colours (``action:stop``), or ``""``."""
        prefix = {"action": "action", "timed": "timed", "power_sync": "power"}.get(self.subject)
        return f"{prefix}:{self.name}" if prefix else ""

    def line(self) -> str:
        """``- ~ action `stop`: deadline of step 1 (powering-off): 3 min → 4 min``."""
        mark = {"added": "+", "removed": "-", "changed": "~"}[self.change]
        head = f"{mark} {_SUBJECT_WORDS[self.subject]} `{self.name}`"
        return head + (": " + "; ".join(self.details) if self.details else "")


@attrs.frozen
class LifecycleDiff:
    """The changes from ``old`` to ``new``, in a fixed order (added, removed, changed)."""

    old: LifecycleExport
    new: LifecycleExport
    changes: tuple[Change, ...]

    @property
    def identical(self) -> bool:
        """Whether nothing a reviewer could see changed."""
        return not self.changes

    def summary(self, old_label: str = "old", new_label: str = "new") -> str:
        """Plain text for a pull-request description (Markdown-friendly)."""
        if self.identical:
            return f"Lifecycle {old_label} → {new_label}: no change.\n"
        counts = {k: sum(c.change == k for c in self.changes) for k in _KIND_ORDER}
        versions = (
            f"version {self.old.version} → {self.new.version}"
            if self.old.version != self.new.version
            else f"version {self.new.version}"
        )
        lines = [
            f"Lifecycle {old_label} → {new_label} ({versions}): "
            + ", ".join(f"{n} {k}" for k, n in counts.items() if n),
            "",
        ]
        for kind in _KIND_ORDER:
            chosen = [c for c in self.changes if c.change == kind]
            if chosen:
                lines.append(f"{kind.capitalize()}:")
                lines.extend(f"- {c.line()[2:]}" for c in chosen)
                lines.append("")
        return "\n".join(lines)


def diff_exports(old: LifecycleExport, new: LifecycleExport) -> LifecycleDiff:
    """Every change from ``old`` to ``new``, derived consequences folded into their cause."""
    changes: dict[_Key, list[str]] = {}

    def add(kind: ChangeKind, subject: Subject, name: str, *details: str) -> None:
        changes.setdefault((kind, subject, name), []).extend(details)

    life = _field_changes(
        ("version", old.version, new.version),
        ("initial state", old.initial, new.initial),
        ("final states", old.final, new.final),
    )
    if life:
        add("changed", "lifecycle", "lifecycle", *life)

    old_actions = {a.name: a for a in old.actions}
    new_actions = {a.name: a for a in new.actions}
    for name in new_actions.keys() - old_actions.keys():
        add("added", "action", name, *_action_outline(new, new_actions[name]))
    for name in old_actions.keys() - new_actions.keys():
        add("removed", "action", name, *_action_outline(old, old_actions[name]))
    for name in old_actions.keys() & new_actions.keys():
        details = _action_changes(old_actions[name], new_actions[name])
        if details:
            add("changed", "action", name, *details)

    _diff_entries(
        add, "timed", {t.name: t for t in old.timed}, {t.name: t for t in new.timed}, _timed_text
    )
    _diff_entries(
        add,
        "power_sync",
        {r.key: r for r in old.power_sync},
        {r.key: r for r in new.power_sync},
        lambda r: [f"{r.response} (runs {r.runs or 'nothing'}) for {', '.join(r.vm_states)}"],
    )
    _fold_states_and_transitions(old, new, changes, add)

    ordered = sorted(
        changes.items(), key=lambda kv: (_KIND_ORDER[kv[0][0]], _SUBJECT_ORDER[kv[0][1]], kv[0][2])
    )
    return LifecycleDiff(
        old=old,
        new=new,
        changes=tuple(Change(k, s, n, tuple(d)) for (k, s, n), d in ordered),
    )


def _diff_entries(
    add: Callable[..., None],
    subject: Subject,
    old: dict[str, _E],
    new: dict[str, _E],
    describe: Callable[[_E], list[str]],
) -> None:
    for name in new.keys() - old.keys():
        add("added", subject, name, *describe(new[name]))
    for name in old.keys() - new.keys():
        add("removed", subject, name, *describe(old[name]))
    for name in old.keys() & new.keys():
        a, b = old[name], new[name]
        if a != b:
            fields = [
                (f.name.replace("_", " "), getattr(a, f.name), getattr(b, f.name))
                for f in attrs.fields(type(a))
            ]
            add("changed", subject, name, *_field_changes(*fields))


def _timed_text(t: ExportedTimed) -> list[str]:
    runs = t.action or "the running action fails"
    return [f"{t.vm_state} → {', '.join(t.dests)} after {t.option} ({runs})"]


def _fold_states_and_transitions(
    old: LifecycleExport,
    new: LifecycleExport,
    changes: dict[_Key, list[str]],
    add: Callable[..., None],
) -> None:
    """Attach each added or removed state and transition to the change that explains it."""
    sides: tuple[tuple[ChangeKind, LifecycleExport, LifecycleExport], ...] = (
        ("added", old, new),
        ("removed", new, old),
    )
    for kind, before, after in sides:
        gone = {s.name for s in before.states}
        states = [s for s in after.states if s.name not in gone]
        owner_of = _state_owners(changes, kind, states, after.transitions)
        folded: dict[_Key, list[str]] = {}
        for state in states:
            cause = owner_of.get(state.name)
            if cause is None:
                own: _Key = (kind, "state", state.name)
                add(*own, f"{state.kind}, in {state.vm_state}")
                owner_of[state.name] = own
            elif cause[0] == "changed":
                folded.setdefault(cause, []).append(state.name)
        for cause, names in folded.items():
            add(*cause, f"{_sign(kind)} {_count(len(names), 'state')}: {', '.join(names)}")
        seen = {(t.trigger, t.source, t.dest) for t in before.transitions}
        extra: dict[_Key, list[ExportedTransition]] = {}
        for t in after.transitions:
            if (t.trigger, t.source, t.dest) in seen:
                continue
            cause = (
                owner_of.get(t.source) or owner_of.get(t.dest) or _cause(changes, kind, [t.action])
            )
            if cause is None:
                add(kind, "transition", f"{t.source} → {t.dest} ({t.trigger})")
            elif cause[0] == "changed":
                extra.setdefault(cause, []).append(t)
        for cause, moved in extra.items():
            lines = [f"{_sign(kind)} transition {t.source} → {t.dest} ({t.trigger})" for t in moved]
            if len(lines) > _MAX_TRANSITION_LINES:
                rest = len(lines) - _MAX_TRANSITION_LINES
                lines = [*lines[:_MAX_TRANSITION_LINES], f"… and {rest} more"]
            add(*cause, *lines)


def _state_owners(
    changes: dict[_Key, list[str]],
    kind: ChangeKind,
    states: Sequence[ExportedState],
    transitions: Sequence[ExportedTransition],
) -> dict[str, _Key]:
    """Which change brought (or took away) each new (or gone) state.

    A state entered from an old state is owned by the change of the action whose transition
    enters it; a state entered only from other new states inherits their owner (a stable
    state that becomes unreachable takes its transient steps with it).
    """
    names = {s.name for s in states}
    owners: dict[str, _Key] = {}
    grew = True
    while grew:
        grew = False
        for state in states:
            if state.name in owners:
                continue
            entering = [t for t in transitions if t.dest == state.name and t.source != t.dest]
            frontier = sorted(t.action for t in entering if t.source not in names)
            cause = _cause(changes, kind, frontier)
            if cause is None:
                inherited = sorted(
                    {owners[t.source] for t in entering if t.source in owners}, key=str
                )
                cause = inherited[0] if inherited else None
            if cause is not None:
                owners[state.name] = cause
                grew = True
    return owners


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _cause(changes: dict[_Key, list[str]], kind: ChangeKind, actions: Iterable[str]) -> _Key | None:
    """The recorded change of the first of ``actions`` that was added/removed, else changed."""
    names = list(actions)
    wanted: tuple[ChangeKind, ...] = (kind, "changed")
    for change in wanted:
        for name in names:
            key: _Key = (change, "action", name)
            if key in changes:
                return key
    return None


def _sign(kind: str) -> str:
    return "+" if kind == "added" else "-"


# -- describing actions ------------------------------------------------------------------------


def _action_outline(x: LifecycleExport, action: ExportedAction) -> list[str]:
    """What an added or removed action does, in one line per fact."""
    states = {s.name: s for s in x.states}
    own = [t for t in x.transitions if t.action == action.name]
    sources = sorted({states[t.source].vm_state for t in own if t.kind in ("accept", "internal")})
    dests = sorted({states[t.dest].vm_state for t in own if t.kind == "done"})
    steps = " → ".join(_step_text(s) for s in action.steps)
    out = [f"from {', '.join(sources) or 'a new instance'}"]
    if dests:
        out.append(f"to {', '.join(dests)}")
    out += [f"steps {steps}", f"{len(own)} transitions"]
    return out


def _step_text(step: ExportedStep) -> str:
    return f"{step.task_state or '(no task)'} ({step.call or '—'}, {format_seconds(step.deadline)})"


def _action_changes(a: ExportedAction, b: ExportedAction) -> list[str]:
    """One line per difference a reviewer cares about: guard, steps, deadlines, target, …."""
    out = _field_changes(
        *(
            (
                f"guard {f.name.replace('_', ' ')}",
                getattr(a.guard, f.name),
                getattr(b.guard, f.name),
            )
            for f in attrs.fields(ExportedGuard)
        )
    )
    if [s.task_state for s in a.steps] != [s.task_state for s in b.steps]:
        out.append(
            "steps: "
            + " → ".join(_step_text(s) for s in a.steps)
            + " ⇒ "
            + " → ".join(_step_text(s) for s in b.steps)
        )
    else:
        for i, (old, new) in enumerate(zip(a.steps, b.steps, strict=True), start=1):
            where = f"step {i} ({new.task_state or 'no task'})"
            if old.deadline != new.deadline:
                out.append(
                    f"deadline of {where}: "
                    f"{format_seconds(old.deadline)} → {format_seconds(new.deadline)}"
                )
            out += _field_changes(
                (f"call of {where}", old.call, new.call),
                (f"error path of {where}", _path_text(old.error_path), _path_text(new.error_path)),
                (f"notifications of {where}", (*old.before, *old.after), (*new.before, *new.after)),
                (f"error notification of {where}", old.error_event, new.error_event),
                (f"{where} needs a host", old.needs_host, new.needs_host),
                (f"{where} accepts", old.accepts, new.accepts),
                (f"doc of {where}", old.doc, new.doc),
            )
    out += _field_changes(
        ("target", a.target, b.target),
        ("error path", _path_text(a.error_path), _path_text(b.error_path)),
        ("notification", a.event, b.event),
        ("name callers use", a.public_name, b.public_name),
        ("variant", a.variant, b.variant),
        ("variant_param", a.variant_param, b.variant_param),
        ("internal", a.internal, b.internal),
        ("params", a.params, b.params),
        ("required params", a.required, b.required),
        ("power state after", a.power_after, b.power_after),
        ("doc", a.doc, b.doc),
    )
    return out


def _path_text(path: ExportedErrorPath | None) -> str | None:
    if path is None:
        return None
    return path.to + (f" via {path.call}" if path.call else "")


def _field_changes(*fields: tuple[str, object, object]) -> list[str]:
    """``name: old → new`` per differing field; tuples as ``+ added, - removed``."""
    out = []
    for name, old, new in fields:
        if old == new:
            continue
        if name.startswith("doc") or name.endswith("doc"):
            out.append(f"{name} changed")
        elif isinstance(old, tuple) and isinstance(new, tuple):
            plus = [str(v) for v in new if v not in old]
            minus = [str(v) for v in old if v not in new]
            parts = [f"+ {', '.join(plus)}"] * bool(plus) + [f"- {', '.join(minus)}"] * bool(minus)
            out.append(f"{name}: {'; '.join(parts) or 'reordered'}")
        else:
            out.append(f"{name}: {_show(old)} → {_show(new)}")
    return out


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "any" if not value else ", ".join(str(v) for v in value)
    return str(value)


# -- the diff as a picture ---------------------------------------------------------------------


def diff_picture(
    diff: LifecycleDiff,
    *,
    action: str | None = None,
    old_label: str = "old",
    new_label: str = "new",
) -> Picture:
    """The overview (or one action's view) with added items green, removed red, changed orange.

    An item is changed when the table entry it comes from changed (a guard, a deadline, an
    error path) or when it now leads elsewhere from the same state (a target).

    Raises:
        DiagramError: ``action`` exists on neither side.
    """
    if action is None:
        old, new = overview(diff.old), overview(diff.new)
    else:
        in_old = any(a.name == action for a in diff.old.actions)
        in_new = any(a.name == action for a in diff.new.actions)
        if not in_old and not in_new:
            diff.new.action(action)  # raises, naming the actions there are
        old = action_view(diff.old, action) if in_old else _empty()
        new = action_view(diff.new, action) if in_new else _empty()
    owners = {c.owner for c in diff.changes if c.change == "changed" and c.owner}
    nodes = _merge_nodes(old.nodes, new.nodes)
    items = _merge_items(old.items, new.items, owners)
    counts = {k: sum(c.change == k for c in diff.changes) for k in _KIND_ORDER}
    what = "overview" if action is None else f"action {action!r}"
    title = f"Lifecycle diff {old_label} → {new_label} ({what}): " + (
        ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no change"
    )
    return Picture(
        title=title,
        nodes=nodes,
        items=items,
        notes=tuple(c.line() for c in diff.changes if c.subject in ("lifecycle", "power_sync")),
        mode="diff",
    )


def _empty() -> Picture:
    return Picture(title="", nodes=(), items=())


def _merge_nodes(old: Sequence[Node], new: Sequence[Node]) -> tuple[Node, ...]:
    before = {n.id: n for n in old}
    after = {n.id: n for n in new}
    out: list[Node] = []
    for node in new:
        prior = before.get(node.id)
        status: Status = "added"
        if prior is not None:
            same = (prior.label, prior.detail, prior.error) == (node.label, node.detail, node.error)
            status = "same" if same else "changed"
        out.append(attrs.evolve(node, status=status))
    out += [attrs.evolve(n, status="removed") for n in old if n.id not in after]
    return tuple(out)


def _merge_items(old: Sequence[Item], new: Sequence[Item], owners: set[str]) -> tuple[Item, ...]:
    def ident(i: Item) -> tuple[str, str, str, bool, str]:
        return (i.source, i.dest, i.kind, i.failure, i.key)

    def origin(i: Item) -> tuple[str, str, bool, str]:
        return (i.source, i.kind, i.failure, i.key)

    before = {ident(i): i for i in old}
    after = {ident(i) for i in new}
    old_origins = {origin(i) for i in old}
    out: list[Item] = []
    for item in new:
        prior = before.get(ident(item))
        status: Status
        if prior is not None:
            status = "changed" if item.owner in owners or prior.text != item.text else "same"
        else:
            status = "changed" if origin(item) in old_origins else "added"
        out.append(attrs.evolve(item, status=status))
    out += [attrs.evolve(i, status="removed") for i in old if ident(i) not in after]
    return tuple(out)
