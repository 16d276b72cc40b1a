"""What a diagram shows, independent of how it is drawn: nodes, and the facts behind each edge.

A :class:`Picture` is built from a :class:`~statemachine._diagram_export.LifecycleExport` by one
of the views below and drawn by the Mermaid and DOT renderers. Each edge fact is an
:class:`Item` (one action, one timed transition, one power-sync rule, one step of an
instance's path) with the entity it comes from (``owner``), so a diff can colour exactly the
facts that changed; renderers bundle items that share their endpoints and style into one
labelled edge.

Views:

- :func:`overview` — the stable states (vm_states) and what moves an instance between them:
  each action's success, failures that leave the state, timed transitions, hypervisor events.
- :func:`action_view` — one action at full detail: every (vm_state, task_state) it passes
  through, each step's driver call and deadline, each error path.
- :func:`reachable_view` — what can follow one state (stable or transient), optionally within
  a number of edges.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Literal

import attrs

from ._diagram_export import ExportedAction, ExportedTransition, LifecycleExport
from ._schema import ErrorTo

__all__ = [
    "ANY",
    "END",
    "START",
    "Edge",
    "Item",
    "Node",
    "Picture",
    "action_label",
    "action_view",
    "format_seconds",
    "overview",
    "reachable_view",
]

Status = Literal["same", "added", "removed", "changed"]
NodeKind = Literal["stable", "transient", "start", "end", "any"]
EdgeKind = Literal["action", "timed", "power", "path"]
Highlight = Literal["", "start", "visited", "current"]
Mode = Literal["plain", "diff", "path"]

START = "[*]"
"""The pseudo-state an instance comes from (creation)."""
END = "[*]end"
"""The pseudo-state after a final state."""
ANY = "[any]"
"""The overview's stand-in for every existing state, the source of actions allowed in any."""


@attrs.frozen
class Node:
    """A state drawn as a node; ``group`` is its vm_state (renderers may cluster by it)."""

    id: str
    label: str
    kind: NodeKind
    error: bool = False
    group: str | None = None
    detail: tuple[str, ...] = ()
    status: Status = "same"
    highlight: Highlight = ""


@attrs.frozen
class Item:
    """One fact an edge stands for.

    ``key`` identifies the fact within its source state across revisions (``action:stop``,
    ``timed:auto_confirm``); ``owner`` names the table entry it comes from, so a diff marks it
    changed when that entry changed.
    """

    source: str
    dest: str
    kind: EdgeKind
    failure: bool
    key: str
    owner: str
    text: str
    status: Status = "same"
    highlight: bool = False


@attrs.frozen
class Edge:
    """Items with the same endpoints and style, drawn as one labelled edge."""

    source: str
    dest: str
    kind: EdgeKind
    failure: bool
    status: Status
    highlight: bool
    texts: tuple[str, ...]

    @property
    def label(self) -> str:
        """The label on one line (see :meth:`text`)."""
        return self.text(", ")

    def text(self, separator: str) -> str:
        """The kind's word (failed, hypervisor), then the items, the diff mark first."""
        body = separator.join(t for t in self.texts if t)
        if self.kind == "power":
            body = f"hypervisor: {body}"
        elif self.failure and self.kind == "action":
            body = f"failed: {body}" if body else "failed"
        mark = {"same": "", "added": "+ ", "removed": "- ", "changed": "~ "}[self.status]
        return f"{mark}{body}" if body else mark.strip()


@attrs.frozen
class Picture:
    """A titled set of nodes and edge items, with notes a legend shows beside it."""

    title: str
    nodes: tuple[Node, ...]
    items: tuple[Item, ...]
    notes: tuple[str, ...] = ()
    mode: Mode = "plain"
    caption: str = ""

    def node(self, node_id: str) -> Node:
        """The node with this id (KeyError when absent: a builder bug)."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def edges(self) -> tuple[Edge, ...]:
        """The items bundled into edges, in a deterministic order."""
        bundles: dict[tuple[str, str, EdgeKind, bool, Status, bool], dict[str, None]] = {}
        for item in self.items:
            key = (item.source, item.dest, item.kind, item.failure, item.status, item.highlight)
            bundles.setdefault(key, {})[item.text] = None
        order = {node.id: i for i, node in enumerate(self.nodes)}
        edges = [
            Edge(src, dst, kind, failure, status, highlight, tuple(sorted(texts)))
            for (src, dst, kind, failure, status, highlight), texts in bundles.items()
        ]
        kinds = {"action": 0, "timed": 1, "power": 2, "path": 3}
        edges.sort(
            key=lambda e: (
                kinds[e.kind],
                e.failure,
                order.get(e.source, -1),
                order.get(e.dest, -1),
                e.status,
                e.highlight,
            )
        )
        return tuple(edges)


def format_seconds(seconds: float) -> str:
    """``60 s``, ``5 min``, ``1 h``, ``1.5 h``: deadlines and spans in a reviewer's units."""
    if seconds >= 3600 and seconds % 360 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 6 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def action_label(action: ExportedAction, *, guard: bool = True) -> str:
    """``reboot HARD [takes over]``: the name callers use, its variant, its non-default guard."""
    name = f"{action.public_name} {action.variant}" if action.variant else action.public_name
    notes = action.guard.notes() if guard else ()
    return f"{name} [{', '.join(notes)}]" if notes else name


def _vm_node(x: LifecycleExport, vm: str) -> Node:
    """A vm_state as a stable node (``building`` has no idle state, yet is a vm_state)."""
    error = any(s.error for s in x.states if s.vm_state == vm)
    return Node(vm, vm, "stable", error, vm)


def _state_node(x: LifecycleExport, name: str, *, detail: tuple[str, ...] = ()) -> Node:
    if name not in {s.name for s in x.states} and name in _vm_states(x):
        return _vm_node(x, name)
    state = x.state(name)
    if state.stable:
        return Node(name, state.vm_state, "stable", state.error, state.vm_state, detail)
    assert state.task_state is not None
    return Node(name, state.task_state, "transient", state.error, state.vm_state, detail)


_TO = {
    "revert": ErrorTo.REVERT_TASK.name.lower(),
    "rollback": ErrorTo.ROLLBACK.name.lower(),
    "error": ErrorTo.ERROR.name.lower(),
}
"""The export's names of the error-path kinds (as :func:`export_lifecycle` writes them)."""


def _error_text(x: LifecycleExport, t: ExportedTransition) -> str:
    """What a fail edge of an action view says: revert, rollback via a call, error, …."""
    action = x.action(t.action)
    step = action.steps[t.step] if t.step is not None and t.step < len(action.steps) else None
    path = (step.error_path if step is not None else None) or action.error_path
    dest_error = x.state(t.dest).error
    if path.call is not None:
        return f"{path.call} failed" if dest_error and path.to != _TO["error"] else path.call
    words = {_TO["revert"]: "revert", _TO["rollback"]: "rollback", _TO["error"]: ""}
    return words.get(path.to, "guest down" if dest_error else "guest runs")


# -- overview ----------------------------------------------------------------------------------


def overview(x: LifecycleExport) -> Picture:
    """The stable states and every way between them (see the module docstring)."""
    items: dict[Item, None] = {}
    nodes = [Node(START, "", "start")]
    nodes += [_vm_node(x, vm) for vm in _vm_states(x)]
    nodes.append(_any_node())
    initial_vm = x.state(x.initial).vm_state
    for action in x.actions:
        if action.creates:
            item = Item(
                START,
                initial_vm,
                "action",
                False,
                f"action:{action.name}",
                f"action:{action.name}",
                action_label(action),
            )
            items[item] = None
    for item in _stable_items(x):
        items[item] = None
    if x.final:
        nodes.append(Node(END, "", "end"))
        for final in x.final:
            items[Item(final, END, "action", False, "end", "", "")] = None
    free = sorted(action_label(a, guard=False) for a in x.actions if a.free)
    notes = (f"Change no state (no task_state): {', '.join(free)}.",) if free else ()
    return Picture(
        title=f"Instance lifecycle (version {x.version}): stable states",
        nodes=tuple(nodes),
        items=tuple(items),
        notes=notes,
    )


def _any_node() -> Node:
    return Node(ANY, "any existing state", "any")


def _vm_states(x: LifecycleExport) -> list[str]:
    """Every vm_state the lifecycle's states have, sorted (the overview's nodes)."""
    return sorted({s.vm_state for s in x.states})


def _stable_items(x: LifecycleExport) -> Iterable[Item]:
    """Every stable-level fact: action success and failure, timed, hypervisor events."""
    states = {s.name: s for s in x.states}
    actions = {a.name: a for a in x.actions}
    for t in x.transitions:
        action = actions[t.action]
        # an immediate action (reset_state) arrives in its acceptance
        done = t.kind == "done" or (t.kind == "accept" and action.immediate)
        if not done and t.kind != "fail":
            continue
        src, dst = states[t.source].vm_state, states[t.dest].vm_state
        owner = f"action:{action.name}"
        if action.guard.vm_states is None and (src != dst or action.immediate):
            src = ANY  # allowed in every state: one edge from "any state", not one per state
        if done:
            yield Item(src, dst, "action", False, owner, owner, action_label(action))
        elif src != dst:
            text = action_label(action, guard=False)
            yield Item(src, dst, "action", True, f"fail:{action.name}", owner, text)
    for timed in x.timed:
        owner = f"timed:{timed.name}"
        for dest in timed.dests:
            failure = states[dest].error if dest in states else False
            text = f"after {timed.option}"
            yield Item(timed.vm_state, dest, "timed", failure, owner, owner, text)
    for rule in x.power_sync:
        owner = f"power:{rule.key}"
        powers = "any" if rule.power_states is None else ", ".join(rule.power_states)
        for src, dst in rule.edges:
            yield Item(src, dst, "power", False, owner, owner, f"{powers} → {rule.runs}")


# -- one action ----------------------------------------------------------------------------


def action_view(x: LifecycleExport, name: str) -> Picture:
    """One action at the level of (vm_state, task_state) pairs, with calls and deadlines.

    Accepts from other actions' steps (a delete preempting, a hard reboot taking over) are not
    drawn one by one: the accept edge's guard note says it, and a note lists those steps.

    Raises:
        DiagramError: the lifecycle has no action ``name``.
    """
    action = x.action(name)
    owner = f"action:{name}"
    states = {s.name: s for s in x.states}
    own = [t for t in x.transitions if t.action == name]
    joins = action.joins
    kept = [
        t for t in own if t.kind not in ("accept", "internal") or joins or states[t.source].stable
    ]
    collapsed = sorted(
        {
            states[t.source].task_state or ""
            for t in own
            if t.kind in ("accept", "internal") and not joins and not states[t.source].stable
        }
    )
    ids: dict[str, None] = {}
    items: dict[Item, None] = {}
    label = action_label(action)
    if action.creates:
        ids[START] = None
        items[Item(START, x.initial, "action", False, owner, owner, label)] = None
    for t in kept:
        ids.setdefault(t.source, None)
        ids.setdefault(t.dest, None)
        if t.kind in ("accept", "internal"):
            item = Item(t.source, t.dest, "action", False, owner, owner, label)
        elif t.kind == "fail":
            key = f"fail:{t.step}"
            item = Item(t.source, t.dest, "action", True, key, owner, _error_text(x, t))
        else:
            item = Item(t.source, t.dest, "action", False, t.trigger, owner, "")
        items[item] = None
    first = {t.source: t.dest for t in kept if t.kind == "accept"}
    for timed in x.timed:
        text, towner = f"after {timed.option}", f"timed:{timed.name}"
        if timed.action == name and timed.vm_state in first:
            src = timed.vm_state
            items[Item(src, first[src], "timed", False, towner, towner, text)] = None
        elif timed.action is None:
            for node_id in list(ids):
                state = states.get(node_id)
                if state is None or state.stable or state.vm_state != timed.vm_state:
                    continue
                for dest in timed.dests:
                    ids.setdefault(dest, None)
                    failure = states[dest].error
                    items[Item(node_id, dest, "timed", failure, towner, towner, text)] = None
    for rule in x.power_sync:
        if rule.runs != name:
            continue
        powers = "any" if rule.power_states is None else ", ".join(rule.power_states)
        for src, _ in rule.edges:
            if src in first:
                key = f"power:{rule.key}"
                items[Item(src, first[src], "power", False, key, key, powers)] = None
    nodes = [_action_node(x, action, node_id) for node_id in ids]
    notes: list[str] = []
    if collapsed:
        notes.append(
            f"{label} is also accepted during other actions' steps: {_steps_text(x, collapsed)}."
        )
    if action.doc:
        notes.append(action.doc)
    return Picture(
        title=f"{action_label(action, guard=False)} (action {name!r}, lifecycle {x.version})",
        nodes=tuple(nodes),
        items=tuple(items),
        notes=tuple(notes),
    )


def _action_node(x: LifecycleExport, action: ExportedAction, node_id: str) -> Node:
    if node_id == START:
        return Node(START, "", "start")
    state = x.state(node_id)
    detail: list[str] = []
    if not state.stable:
        for step in action.steps:
            if step.task_state == state.task_state:
                detail.append(f"{step.call or '—'} ≤ {format_seconds(step.deadline)}")
    return _state_node(x, node_id, detail=tuple(detail))


def _steps_text(x: LifecycleExport, steps: list[str]) -> str:
    """``any step but deleting, soft-deleting`` or the list, whichever is shorter."""
    every = sorted({s.task_state for s in x.states if s.task_state is not None})
    missing = [s for s in every if s not in steps]
    if len(missing) < len(steps):
        return "any step" + (f" but {', '.join(missing)}" if missing else "")
    return ", ".join(steps)


# -- reachable ----------------------------------------------------------------------------------


def reachable_view(x: LifecycleExport, start: str, *, depth: int | None = None) -> Picture:
    """The states that can follow ``start``, and how; within ``depth`` edges when given.

    From a stable state this is the overview's subgraph; from a transient step, first what can
    happen during the running task (its next steps, its failure, a preempting action), then
    the overview onward from the stable states that leads to.

    Raises:
        DiagramError: the lifecycle has no state ``start``.
    """
    _state_node(x, start)  # an unknown state fails here, naming it
    states = {s.name: s for s in x.states}
    actions = {a.name: a for a in x.actions}
    items: dict[Item, None] = {}
    dist: dict[str, int] = {start: 0}
    queue: deque[str] = deque([start])
    stable_items = list(_stable_items(x))
    if x.final:
        stable_items += [Item(f, END, "action", False, "end", "", "") for f in x.final]
    while queue:
        cur = queue.popleft()
        if depth is not None and dist[cur] >= depth:
            continue
        if cur == END:
            continue
        state = states.get(cur)
        if cur != ANY and ANY not in dist and (state is None or state.stable):
            dist[ANY] = dist[cur]  # "any existing state" stands for this one too
            queue.append(ANY)
        if state is None or state.stable:  # a vm_state node (building has no idle state)
            out = [i for i in stable_items if i.source == cur]
        else:
            derived = (_derived_item(t, actions) for t in x.transitions if t.source == cur)
            out = [i for i in derived if i is not None]
        for item in out:
            items[item] = None
            if item.dest not in dist:
                dist[item.dest] = dist[cur] + 1
                queue.append(item.dest)
    nodes = []
    for node_id in dist:
        if node_id == END:
            nodes.append(Node(END, "", "end"))
            continue
        if node_id == ANY:
            nodes.append(_any_node())
            continue
        node = _state_node(x, node_id)
        nodes.append(attrs.evolve(node, highlight="start") if node_id == start else node)
    within = "" if depth is None else f" within {depth} edges"
    return Picture(
        title=f"Reachable from {start}{within} (lifecycle {x.version})",
        nodes=tuple(nodes),
        items=tuple(items),
    )


def _derived_item(t: ExportedTransition, actions: dict[str, ExportedAction]) -> Item | None:
    if t.kind == "internal":
        return None
    action = actions[t.action]
    owner = f"action:{action.name}"
    text = action_label(action, guard=t.kind == "accept")
    key = owner if t.kind != "fail" else f"fail:{action.name}"
    return Item(t.source, t.dest, "action", t.kind == "fail", key, owner, text)
