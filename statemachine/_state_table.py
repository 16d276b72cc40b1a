"""The lifecycle as Markdown tables (``ism states --format markdown``), drawn from the export.

Two tables: the stable states (Nova's API status, what can start there, what moves on by
itself, what the power sync does) and the actions (allowed states, the guard beyond the
default, the steps with their driver calls and deadlines, where success and failure lead, and
the notifications). The README embeds this output and a test keeps it equal.
"""

from __future__ import annotations

from ._diagram_export import ExportedAction, LifecycleExport
from ._diagram_picture import action_label, format_seconds

__all__ = ["states_markdown"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "—"


def states_markdown(x: LifecycleExport) -> str:
    """Both tables as Markdown text ending in a newline; deterministic."""
    states = {s.name: s for s in x.states}
    vm_states = sorted({s.vm_state for s in x.states})
    starts: dict[str, set[str]] = {vm: set() for vm in vm_states}
    for t in x.transitions:
        if t.kind in ("accept", "internal") and states[t.source].stable:
            action = x.action(t.action)
            starts[states[t.source].vm_state].add(action_label(action, guard=False))
    initial_vm = states[x.initial].vm_state
    for action in x.actions:
        if action.creates:
            starts[initial_vm].add(f"(new: {action_label(action, guard=False)})")
    lines = [
        "| vm_state | API status | actions from it | after a time | hypervisor events |",
        "|---|---|---|---|---|",
    ]
    for vm in vm_states:
        status = next((s.status for s in x.states if s.vm_state == vm and s.stable), None)
        if status is None:
            status = next(s.status for s in x.states if s.vm_state == vm)
        timed = [f"{t.action or 'error'} after `{t.option}`" for t in x.timed if t.vm_state == vm]
        sync = [
            f"{', '.join(r.power_states or ('any',))} → {r.runs}"
            for r in x.power_sync
            if vm in r.vm_states and r.runs is not None and any(e[0] == vm for e in r.edges)
        ]
        lines.append(
            f"| `{vm}` | {status} | {_cell(', '.join(sorted(starts[vm])))} | "
            f"{_cell('; '.join(timed))} | {_cell('; '.join(sync))} |"
        )
    lines += [
        "",
        "| action | from vm_state | guard | steps: task_state (call, deadline) | success | "
        "failure | notifications |",
        "|---|---|---|---|---|---|---|",
    ]
    for action in x.actions:
        lines.append(_action_row(x, action))
    return "\n".join(lines) + "\n"


def _action_row(x: LifecycleExport, action: ExportedAction) -> str:
    guard = action.guard
    if action.creates:
        sources = "(new instance)"
    elif guard.vm_states is None:
        sources = "any"
    else:
        sources = ", ".join(guard.vm_states)
    notes = list(guard.notes())
    if action.internal:
        notes.append("internal")
    steps = " → ".join(
        f"{s.task_state or '(no task)'} ({s.call or '—'}, {format_seconds(s.deadline)})"
        for s in action.steps
    )
    paths = {action.error_path.to: action.error_path}
    for step in action.steps:
        if step.error_path is not None:
            paths.setdefault(step.error_path.to, step.error_path)
    failure = ", ".join(
        p.to.replace("_", " ") + (f" via {p.call}" if p.call else "") for p in paths.values()
    )
    if action.free or action.immediate:  # no task to revert: the state stays as it is
        failure = "unchanged, fault recorded"
    events: list[str] = []
    for step in action.steps:
        events += [*step.before, *step.after]
    events.append(f"{action.event}.error")
    name = action_label(action, guard=False)
    return (
        f"| `{name}` | {_cell(sources)} | {_cell(', '.join(notes))} | {_cell(steps)} | "
        f"{_cell(action.target)} | {_cell(failure)} | {_cell(', '.join(events))} |"
    )
