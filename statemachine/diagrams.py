"""Diagrams of the lifecycle, drawn from the same table the engine runs, and kept current.

Everything here starts from :func:`export_lifecycle`: the table (states, transitions, guards,
deadlines, timed transitions, power sync) as plain versioned data. Views of it (the stable
overview, one action, what is reachable from a state, one instance's path) are drawn as
Mermaid ``stateDiagram-v2`` (renders on code hosts), Graphviz DOT, or SVG through Graphviz's
``dot``. Two exports compare with :func:`diff_lifecycles`, so a reviewer sees what a change does
to the lifecycle without reading code.

``diagrams/`` in the repository holds the generated files (:func:`write_diagrams`):
``lifecycle.json`` (the export), ``lifecycle.mmd``/``.svg`` (the overview, also in the README)
and ``actions/<action>.mmd``/``.svg``. :func:`check_diagrams` names each stale file without
needing Graphviz: Mermaid and JSON compare as text, an SVG by the hash of its DOT source that
it carries (SVG bytes differ between Graphviz versions).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs

from ._audit_read import AuditPath, AuditTimeline, path_from_audit, timeline_from_audit
from ._diagram_diff import Change, LifecycleDiff, diff_exports, diff_picture
from ._diagram_dot import dot_binary, render_svg, source_hash, svg_source_hash, to_dot
from ._diagram_export import EXPORT_FORMAT, LifecycleExport, export_lifecycle
from ._diagram_history import (
    MAX_PATH_POINTS,
    MAX_TIMELINE_INTERVALS,
    MAX_TIMELINE_ROWS,
    PathPoint,
    StateInterval,
    path_view,
    timeline_svg,
)
from ._diagram_mermaid import to_mermaid
from ._diagram_picture import Picture, action_view, overview, reachable_view
from ._schema import Lifecycle
from ._state_table import states_markdown
from .errors import DiagramError

__all__ = [
    "ACTIONS_DIR",
    "DIAGRAMS_DIR",
    "EXPORT_FORMAT",
    "EXPORT_PATH",
    "MAX_PATH_POINTS",
    "MAX_TIMELINE_INTERVALS",
    "MAX_TIMELINE_ROWS",
    "OVERVIEW_PATH",
    "AuditPath",
    "AuditTimeline",
    "Change",
    "DiagramFormat",
    "LifecycleDiff",
    "LifecycleExport",
    "PathPoint",
    "StaleFile",
    "StateInterval",
    "check_diagrams",
    "diff_exports",
    "diff_lifecycles",
    "dot_binary",
    "export_lifecycle",
    "instance_path_diagram",
    "load_export",
    "load_export_at",
    "mermaid_overview",
    "path_from_audit",
    "render",
    "render_diff",
    "states_markdown",
    "timeline_from_audit",
    "timeline_svg",
    "write_diagrams",
]

DIAGRAMS_DIR = Path("diagrams")
EXPORT_PATH = DIAGRAMS_DIR / "lifecycle.json"
OVERVIEW_PATH = DIAGRAMS_DIR / "lifecycle.mmd"
ACTIONS_DIR = DIAGRAMS_DIR / "actions"
GIT_TIMEOUT = 30.0
"""Seconds ``git show`` may take to read an old export."""

DiagramFormat = Literal["mermaid", "dot", "svg"]


def _export(lifecycle: Lifecycle | LifecycleExport) -> LifecycleExport:
    return lifecycle if isinstance(lifecycle, LifecycleExport) else export_lifecycle(lifecycle)


def _draw(picture: Picture, fmt: DiagramFormat) -> str:
    if fmt == "mermaid":
        return to_mermaid(picture)
    source = to_dot(picture)
    return source if fmt == "dot" else render_svg(source)


def render(
    lifecycle: Lifecycle | LifecycleExport,
    fmt: DiagramFormat = "mermaid",
    *,
    action: str | None = None,
    start: str | None = None,
    depth: int | None = None,
) -> str:
    """Draw the overview, one ``action``, or what is reachable from ``start``.

    Args:
        lifecycle: the table, or an export of one.
        fmt: ``mermaid``, ``dot`` or ``svg`` (needs Graphviz's ``dot``).
        action: an action's internal name (``resize``, ``reboot_hard``).
        start: a state name (``resized``, ``active/resize_migrated``); ``depth`` bounds the
            edges followed from it.

    Raises:
        DiagramError: both ``action`` and ``start``, an unknown name, a negative depth, or
            (for SVG) Graphviz missing or failing.
    """
    x = _export(lifecycle)
    if action is not None and start is not None:
        raise DiagramError("draw one action or the states reachable from one state, not both")
    if depth is not None and (start is None or depth < 0):
        raise DiagramError("depth needs a start state and must be 0 or more")
    if action is not None:
        picture = action_view(x, action)
    elif start is not None:
        picture = reachable_view(x, start, depth=depth)
    else:
        picture = overview(x)
    return _draw(picture, fmt)


def mermaid_overview(lifecycle: Lifecycle | LifecycleExport) -> str:
    """The overview as Mermaid source: what ``diagrams/lifecycle.mmd`` and the README hold."""
    return to_mermaid(overview(_export(lifecycle)))


def instance_path_diagram(
    lifecycle: Lifecycle | LifecycleExport,
    points: Sequence[PathPoint],
    fmt: DiagramFormat = "svg",
    *,
    instance: str = "",
) -> str:
    """The overview with one instance's path (``points``, oldest first) and current state.

    Raises:
        DiagramError: no points, too many, times out of order, or (SVG) Graphviz failing.
    """
    return _draw(path_view(_export(lifecycle), points, instance=instance), fmt)


# -- reading exports ---------------------------------------------------------------------------


def load_export(path: Path) -> LifecycleExport:
    """Read an export written by ``ism lifecycle export --format json``.

    Raises:
        DiagramError: the file cannot be read or is not an export.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DiagramError(f"cannot read {path}: {exc}") from None
    return LifecycleExport.from_json(text, origin=str(path))


_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.~^/@{}+-]*$")


def load_export_at(revision: str, root: Path = Path(".")) -> LifecycleExport:
    """Read the ``diagrams/lifecycle.json`` committed at a git ``revision`` of ``root``.

    The old lifecycle is read as data, never imported, so any revision with an export compares.

    Raises:
        DiagramError: not a revision name, git missing or failing, no export at that revision.
    """
    if not _REVISION.match(revision):
        raise DiagramError(f"{revision!r} is neither an export file nor a git revision")
    spec = f"{revision}:{EXPORT_PATH.as_posix()}"
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "show", spec],
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DiagramError(f"git show {spec} took longer than {GIT_TIMEOUT:g} s") from None
    except OSError as exc:
        raise DiagramError(f"git could not run: {exc}") from None
    if done.returncode != 0:
        message = " ".join(done.stderr.decode("utf-8", "replace").split())[:300]
        raise DiagramError(f"git show {spec} failed: {message}")
    return LifecycleExport.from_json(done.stdout.decode("utf-8", "replace"), origin=spec)


def diff_lifecycles(
    old: Lifecycle | LifecycleExport, new: Lifecycle | LifecycleExport
) -> LifecycleDiff:
    """What changed from ``old`` to ``new`` (see :class:`LifecycleDiff`)."""
    return diff_exports(_export(old), _export(new))


def render_diff(
    diff: LifecycleDiff,
    fmt: DiagramFormat = "svg",
    *,
    action: str | None = None,
    old_label: str = "old",
    new_label: str = "new",
) -> str:
    """The diff drawn: added green, removed red, changed orange (Mermaid: ``+``/``-``/``~``).

    Raises:
        DiagramError: ``action`` on neither side, or (SVG) Graphviz missing or failing.
    """
    picture = diff_picture(diff, action=action, old_label=old_label, new_label=new_label)
    return _draw(picture, fmt)


# -- the committed diagrams --------------------------------------------------------------------


@attrs.frozen
class _Expected:
    """A committed file's expected content: text, or (SVG) the DOT it must be drawn from."""

    path: Path
    text: str | None = None
    dot: str | None = None


def _expected(lc: Lifecycle) -> list[_Expected]:
    x = export_lifecycle(lc)
    pictures = [(DIAGRAMS_DIR / "lifecycle", overview(x))]
    pictures += [(ACTIONS_DIR / a.name, action_view(x, a.name)) for a in x.actions]
    out = [_Expected(EXPORT_PATH, text=x.to_json())]
    for stem, picture in pictures:
        out.append(_Expected(stem.with_suffix(".mmd"), text=to_mermaid(picture)))
        out.append(_Expected(stem.with_suffix(".svg"), dot=to_dot(picture)))
    return out


@attrs.frozen
class StaleFile:
    """A file under ``diagrams/`` that does not match the table, and why."""

    path: Path
    reason: Literal["missing", "differs", "unexpected"]


def _stale(expected: _Expected, root: Path) -> StaleFile | None:
    path = root / expected.path
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return StaleFile(expected.path, "missing")
    except (OSError, UnicodeDecodeError):
        return StaleFile(expected.path, "differs")
    if expected.text is not None:
        same = current == expected.text
    else:
        assert expected.dot is not None
        same = svg_source_hash(current) == source_hash(expected.dot)
    return None if same else StaleFile(expected.path, "differs")


def _unexpected(expected: list[_Expected], root: Path) -> list[StaleFile]:
    wanted = {e.path for e in expected}
    folder = root / ACTIONS_DIR
    found = sorted(folder.glob("*.mmd")) + sorted(folder.glob("*.svg")) if folder.is_dir() else []
    return [
        StaleFile(p.relative_to(root), "unexpected")
        for p in found
        if p.relative_to(root) not in wanted
    ]


def check_diagrams(lc: Lifecycle, root: Path) -> list[StaleFile]:
    """The files under ``root/diagrams`` that are stale, missing or left over; [] when current.

    Needs no Graphviz: an SVG is current when the DOT hash it carries is the current DOT's.
    """
    expected = _expected(lc)
    stale = [s for e in expected if (s := _stale(e, root)) is not None]
    return stale + _unexpected(expected, root)


def write_diagrams(lc: Lifecycle, root: Path) -> list[Path]:
    """Regenerate ``root/diagrams``; return the files written or removed.

    Only stale files are rewritten, so an SVG drawn by another Graphviz version from the same
    DOT stays as it is. Every SVG is drawn before anything is written: when Graphviz is missing
    or fails, nothing changes.

    Raises:
        DiagramError: an SVG is stale and Graphviz's ``dot`` is missing or fails.
    """
    expected = _expected(lc)
    stale = {s.path for e in expected if (s := _stale(e, root)) is not None}
    contents: dict[Path, str] = {}
    for e in expected:
        if e.path in stale:
            contents[e.path] = e.text if e.text is not None else render_svg(e.dot or "")
    changed = []
    for rel, text in contents.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        changed.append(rel)
    for leftover in _unexpected(expected, root):
        (root / leftover.path).unlink()
        changed.append(leftover.path)
    return changed
