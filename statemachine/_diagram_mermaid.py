"""Mermaid ``stateDiagram-v2`` source for a :class:`~statemachine._diagram_picture.Picture`.

Mermaid renders on code hosts, which is why the README and ``diagrams/*.mmd`` use it. Its state
ids cannot contain ``-`` or ``/`` (``powering-off``, ``active/powering-off``), so every state is
declared ``state "label" as id`` with an id made of letters, digits and ``_``. stateDiagram-v2
cannot style single transitions, so an edge's kind is in its label (``failed:``, ``after …``,
``hypervisor:``) and a diff marks labels ``+`` / ``-`` / ``~``; states get ``classDef`` classes
(stable, transient, error, added, removed, changed, visited, current).

The output keeps to a small grammar (see ``tests/mermaid_grammar.py``): a header line, ``%%``
comments, ``classDef``, ``state "…" as id``, ``a --> b`` with an optional `` : label``,
``note`` blocks and ``class`` lines.
"""

from __future__ import annotations

import re

from ._diagram_picture import ANY, END, START, Node, Picture

__all__ = ["STYLES", "mermaid_ids", "to_mermaid"]

STYLES: dict[str, str] = {
    "stable": "fill:#e3f2fd,stroke:#1565c0,stroke-width:2px,color:#0d47a1",
    "transient": "fill:#fffde7,stroke:#8d6e63,stroke-dasharray:4 3,color:#4e342e",
    "error": "fill:#ffebee,stroke:#c62828,stroke-width:2px,color:#b71c1c",
    "added": "fill:#e8f5e9,stroke:#2e7d32,stroke-width:3px,color:#1b5e20",
    "removed": "fill:#fce4ec,stroke:#c62828,stroke-width:3px,stroke-dasharray:6 3,color:#b71c1c",
    "changed": "fill:#fff3e0,stroke:#ef6c00,stroke-width:3px,color:#e65100",
    "visited": "fill:#e3f2fd,stroke:#0d47a1,stroke-width:3px,color:#0d47a1",
    "current": "fill:#90caf9,stroke:#0d47a1,stroke-width:5px,color:#000",
    "start": "fill:#b3e5fc,stroke:#01579b,stroke-width:4px,color:#000",
    "any": "fill:#fafafa,stroke:#78909c,stroke-dasharray:6 3,color:#455a64",
}
"""The class of each node kind and mark, as Mermaid ``classDef`` CSS."""

_KEYWORDS = frozenset({"state", "note", "end", "class", "classdef", "direction", "as", "click"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def mermaid_ids(picture: Picture) -> dict[str, str]:
    """A Mermaid-safe id per node id (``active/powering-off`` → ``active__powering_off``).

    Deterministic for a picture: a collision (``a-b`` and ``a_b``) gets a numbered suffix in
    node order.
    """
    ids: dict[str, str] = {START: "[*]", END: "[*]"}
    taken: set[str] = set()
    for node in picture.nodes:
        if node.id in (START, END):
            continue
        base = "any_state" if node.id == ANY else _UNSAFE.sub("_", node.id.replace("/", "__"))
        if not base or base[0].isdigit() or base.lower() in _KEYWORDS:
            base = f"s_{base}"
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}_{n}", n + 1
        taken.add(candidate)
        ids[node.id] = candidate
    return ids


def _text(text: str) -> str:
    """Label text Mermaid reads literally: no quotes, semicolons, hashes, braces or newlines."""
    for bad, good in (('"', "'"), (";", ","), ("#", "no. "), ("{", "("), ("}", ")")):
        text = text.replace(bad, good)
    return " ".join(text.split())


def _node_label(node: Node, grouped: bool) -> str:
    label = node.label
    if node.kind == "transient" and grouped and node.group:
        label = f"{label} ({node.group})"
    return _text(" · ".join((label, *node.detail)))


def _node_class(node: Node) -> str:
    if node.status != "same":
        return node.status
    if node.highlight:
        return node.highlight
    if node.error and node.kind == "stable":
        return "error"
    return node.kind


def to_mermaid(picture: Picture) -> str:
    """The picture as Mermaid source, ending in a newline; deterministic."""
    ids = mermaid_ids(picture)
    real = [n for n in picture.nodes if n.id not in (START, END)]
    lines = ["stateDiagram-v2", f"    %% {_text(picture.title)}"]
    if picture.caption:
        lines.append(f"    %% {_text(picture.caption)}")
    classes = {node.id: _node_class(node) for node in real}
    for name in STYLES:
        if name in classes.values():
            lines.append(f"    classDef {name} {STYLES[name]}")
    for node in real:
        lines.append(f'    state "{_node_label(node, True)}" as {ids[node.id]}')
    for edge in picture.edges():
        label = _text(edge.label)
        arrow = f"    {ids[edge.source]} --> {ids[edge.dest]}"
        lines.append(f"{arrow} : {label}" if label else arrow)
    if picture.notes and real:
        lines.append(f"    note right of {ids[real[0].id]}")
        lines.extend(f"        {_text(note)}" for note in picture.notes)
        lines.append("    end note")
    by_class: dict[str, list[str]] = {}
    for node in real:
        by_class.setdefault(classes[node.id], []).append(ids[node.id])
    for name in STYLES:
        if name in by_class:
            lines.append(f"    class {','.join(by_class[name])} {name}")
    return "\n".join(lines) + "\n"
