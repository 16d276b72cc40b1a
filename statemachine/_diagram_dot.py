"""Graphviz DOT for a :class:`~statemachine._diagram_picture.Picture`, and SVG through ``dot``.

ism writes DOT itself rather than through the ``graphviz`` package or the ``transitions``
diagram extension: the picture needs per-edge styles (red failures, dashed timed transitions,
dotted hypervisor events, diff colours), clusters per vm_state and a legend, which are plain
DOT attributes; the text is deterministic, so its hash identifies an SVG whatever Graphviz
version drew it; and no Python dependency is added for what is string formatting plus one
subprocess.

The SVG carries ``<!-- ism-diagram-source sha256=… -->``, the hash of the DOT it was drawn
from: ``ism diagram --check`` compares that, never the SVG bytes, which differ between
Graphviz versions.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess

from ._diagram_picture import Edge, Node, Picture
from .errors import DiagramError

__all__ = [
    "DOT_TIMEOUT",
    "SVG_MARK",
    "dot_binary",
    "render_svg",
    "source_hash",
    "svg_source_hash",
    "to_dot",
]

DOT_TIMEOUT = 60.0
"""Seconds one ``dot`` run may take (the overview takes well under one)."""

SVG_MARK = "ism-diagram-source"

_FONT = "Helvetica"
_INK = "#37474f"
_RED = "#c62828"
_TIMED = "#6a1b9a"
_POWER = "#00838f"
_STATUS = {"added": "#2e7d32", "removed": "#c62828", "changed": "#ef6c00", "same": "#9e9e9e"}
_PATH = "#0d47a1"
_FAINT = "#b0bec5"


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**values: str | float) -> str:
    return "[" + ", ".join(f"{k}={_quoted(v)}" for k, v in values.items()) + "]"


def _quoted(value: str | float) -> str:
    return f"<{value}>" if isinstance(value, _Html) else _q(_value(value))


def _node_attrs(node: Node, mode: str) -> dict[str, str | float]:
    if node.kind in ("start", "end"):
        shape, width = ("circle", 0.18) if node.kind == "start" else ("doublecircle", 0.14)
        return {
            "shape": shape,
            "style": "filled",
            "fillcolor": "black",
            "label": "",
            "width": width,
            "fixedsize": "true",
        }
    label = "\n".join((node.label, *node.detail))
    out: dict[str, str | float]
    if node.kind == "any":
        out = {
            "shape": "box",
            "style": "rounded,dashed",
            "color": "#78909c",
            "fontcolor": "#455a64",
            "fontsize": 12.0,
            "label": label,
        }
    elif node.kind == "stable":
        out = {
            "shape": "box",
            "style": "rounded,filled",
            "fillcolor": "#e3f2fd",
            "color": "#1565c0",
            "penwidth": 1.6,
            "fontsize": 13.0,
            "label": label,
        }
    else:
        out = {
            "shape": "ellipse",
            "style": "dashed,filled",
            "fillcolor": "#fffde7",
            "color": "#8d6e63",
            "fontsize": 10.0,
            "label": label,
        }
    if node.error and node.kind == "stable":
        out.update(fillcolor="#ffebee", color=_RED, fontcolor="#b71c1c", penwidth=2.0)
    elif node.error:
        out.update(color=_RED)  # a step of the error state: still a step
    if mode == "diff" and node.status != "same":
        out.update(color=_STATUS[node.status], penwidth=3.0)
        out["label"] = {"added": "+ ", "removed": "- ", "changed": "~ "}[node.status] + label
        if node.status == "removed":
            out["style"] = str(out["style"]).replace("filled", "dashed,filled")
    elif mode == "path":
        if node.highlight in ("visited", "current"):
            out.update(color=_PATH, penwidth=2.6)
        else:
            out.update(color=_FAINT, fontcolor="#78909c")
        if node.highlight == "current":
            out.update(fillcolor="#90caf9", penwidth=4.0, peripheries="2")
    if node.highlight == "start":
        out.update(penwidth=3.5, peripheries="2", color=_PATH)
    return out


def _edge_attrs(edge: Edge, mode: str) -> dict[str, str | float]:
    out: dict[str, str | float] = {"color": _INK, "fontcolor": _INK}
    if edge.kind == "timed":
        out.update(style="dashed", color=_TIMED, fontcolor=_TIMED)
    elif edge.kind == "power":
        out.update(style="dotted", penwidth=1.8, color=_POWER, fontcolor=_POWER)
    if edge.failure:
        out.update(color=_RED, fontcolor=_RED)
    if mode == "diff":
        colour = _STATUS[edge.status]
        out.update(color=colour, fontcolor=colour)
        if edge.status != "same":
            out["penwidth"] = 2.4
    elif mode == "path":
        if edge.kind == "path":
            out.update(color=_RED if edge.failure else _PATH, penwidth=2.8)
            out["fontcolor"] = out["color"]
        else:
            out.update(color=_FAINT, fontcolor=_FAINT)
    label = edge.text("\n")
    if label:
        out["label"] = label
    return out


class _Html(str):
    """A Graphviz HTML-like label: written ``<…>``, not quoted."""

    __slots__ = ()


def _e(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_SAMPLE = {"solid": "———", "dashed": "- - - -", "dotted": "· · · · ·"}


def _legend(picture: Picture) -> list[str]:
    """One table node explaining shapes, colours and line styles (those the mode uses)."""
    rows = [
        ("#e3f2fd", "#1565c0", "#0d47a1", "state", "stable state (vm_state)"),
        ("#fffde7", "#8d6e63", "#4e342e", "step", "transient step (task_state): call ≤ deadline"),
        ("#ffebee", _RED, "#b71c1c", "error", "error state"),
    ]
    cells = [
        f'<tr><td bgcolor="{fill}" color="{line}" border="1" style="rounded">'
        f'<font color="{ink}">{word}</font></td><td align="left">{_e(text)}</td></tr>'
        for fill, line, ink, word, text in rows
    ]
    lines: list[tuple[str, str, str]] = [
        (_INK, "solid", "action [guard beyond the default: owner or admin, lock checked, idle]"),
        (_RED, "solid", "failed: … (a step's error path)"),
        (_TIMED, "dashed", "after <option> (timed transition)"),
        (_POWER, "dotted", "hypervisor: <power states> → action (power sync)"),
    ]
    if picture.mode == "diff":
        lines = [
            (_STATUS["added"], "solid", "+ added"),
            (_STATUS["removed"], "solid", "- removed"),
            (_STATUS["changed"], "solid", "~ changed: guard, deadline, target or error path"),
            (_STATUS["same"], "solid", "unchanged (failed: … marks error paths)"),
        ]
    elif picture.mode == "path":
        lines = [
            (_PATH, "solid", "the instance's path: n. +time since its first record"),
            (_RED, "solid", "a failure on the path"),
            (_FAINT, "solid", "what else the lifecycle allows"),
        ]
    cells += [
        f'<tr><td><font color="{colour}"><b>{_SAMPLE[style]}</b></font></td>'
        f'<td align="left">{_e(text)}</td></tr>'
        for colour, style, text in lines
    ]
    table = (
        '<table border="1" color="#cfd8dc" cellborder="0" cellspacing="3" cellpadding="2">'
        '<tr><td colspan="2"><b>Legend</b></td></tr>' + "".join(cells) + "</table>"
    )
    node = _attrs(shape="plaintext", fontsize=9.0, label=_Html(table))
    return [f'  "legend" {node}', '  { rank="min"; "legend" }']


def _attrs_line(**values: str | float) -> str:
    """Graph or cluster attributes as ``key="value"; …`` statements."""
    return "; ".join(f"{k}={_q(_value(v))}" for k, v in values.items())


def _value(value: str | float) -> str:
    if isinstance(value, _Html):
        return value
    return f"{value:g}" if isinstance(value, float) else str(value)


def to_dot(picture: Picture, *, legend: bool = True) -> str:
    """The picture as DOT source, ending in a newline; deterministic."""
    title = "\n".join((picture.title, *picture.notes))
    graph = _attrs(
        label=title,
        labelloc="t",
        fontname=_FONT,
        fontsize=14.0,
        rankdir="TB",
        nodesep=0.35,
        ranksep=0.5,
        newrank="true",
    )
    lines = [
        "digraph lifecycle {",
        f"  graph {graph}",
        f"  node {_attrs(fontname=_FONT)}",
        f"  edge {_attrs(fontname=_FONT, fontsize=9.0, arrowsize=0.7)}",
    ]
    groups: dict[str, list[Node]] = {}
    for node in picture.nodes:
        if node.group is not None:
            groups.setdefault(node.group, []).append(node)
    clustered = {
        g for g, members in groups.items() if len(members) > 1 or members[0].kind == "transient"
    }
    emitted: set[str] = set()
    for node in picture.nodes:
        if node.id in emitted:
            continue
        if node.group in clustered:
            members = groups[node.group]
            lines.append(f"  subgraph {_q('cluster_' + node.group)} {{")
            cluster = _attrs_line(
                label=node.group,
                style="rounded",
                color="#b0bec5",
                fontcolor="#607d8b",
                fontsize=10.0,
            )
            lines.append(f"    {cluster}")
            for member in members:
                lines.append(f"    {_q(member.id)} {_attrs(**_node_attrs(member, picture.mode))}")
                emitted.add(member.id)
            lines.append("  }")
        else:
            lines.append(f"  {_q(node.id)} {_attrs(**_node_attrs(node, picture.mode))}")
            emitted.add(node.id)
    for edge in picture.edges():
        attrs = _edge_attrs(edge, picture.mode)
        lines.append(f"  {_q(edge.source)} -> {_q(edge.dest)} {_attrs(**attrs)}")
    if legend:
        lines.extend(_legend(picture))
    lines.append("}")
    return "\n".join(lines) + "\n"


def source_hash(dot_source: str) -> str:
    """The sha256 of DOT source: what an SVG records of what it was drawn from."""
    return hashlib.sha256(dot_source.encode("utf-8")).hexdigest()


def dot_binary() -> str | None:
    """The path of Graphviz's ``dot``, or None when it is not installed."""
    return shutil.which("dot")


def render_svg(dot_source: str, *, timeout: float = DOT_TIMEOUT) -> str:
    """Draw DOT with Graphviz's ``dot`` and mark the SVG with the source's hash.

    Raises:
        DiagramError: ``dot`` is missing, fails, or takes longer than ``timeout`` seconds.
    """
    binary = dot_binary()
    if binary is None:
        raise DiagramError("Graphviz's dot is not installed (Debian: apt-get install graphviz)")
    try:
        done = subprocess.run(
            [binary, "-Tsvg"],
            input=dot_source.encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DiagramError(f"dot took longer than {timeout:g} s") from None
    except OSError as exc:
        raise DiagramError(f"dot could not run: {exc}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DiagramError(f"dot failed (exit {done.returncode}): {' '.join(message)[:300]}")
    svg = done.stdout.decode("utf-8")
    mark = f"<!-- {SVG_MARK} sha256={source_hash(dot_source)} -->\n"
    at = svg.find("<svg")
    if at < 0:
        raise DiagramError("dot wrote no <svg> element")
    return svg[:at] + mark + svg[at:]


_MARK_RE = re.compile(rf"<!-- {SVG_MARK} sha256=([0-9a-f]{{64}}) -->")


def svg_source_hash(svg: str) -> str | None:
    """The source hash an SVG written by :func:`render_svg` carries, or None."""
    found = _MARK_RE.search(svg)
    return found.group(1) if found else None
