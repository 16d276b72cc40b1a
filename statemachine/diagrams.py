"""Diagrams of the lifecycle, drawn from the same table the engine runs.

The overview is a Mermaid ``stateDiagram-v2`` of the stable states: an edge per pair of states
an action (or a timed transition) connects on success, and the failure edges into ``error``.
Transient steps are listed per action in ``ism states``. Mermaid ids cannot contain ``-``
(``soft-delete``), so each state gets an id and a label.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ._schema import Lifecycle
from .states import VmState

__all__ = ["OVERVIEW_PATH", "check_diagrams", "mermaid_overview", "write_diagrams"]

OVERVIEW_PATH = Path("diagrams") / "lifecycle.mmd"


def _id(state: VmState) -> str:
    return state.name.lower()


def mermaid_overview(lc: Lifecycle) -> str:
    """The stable-state overview as Mermaid source (deterministic: sorted edges)."""
    ok: dict[tuple[VmState, VmState], set[str]] = defaultdict(set)
    failing: dict[VmState, set[str]] = defaultdict(set)
    stable = {vm for vm, task in lc.states() if task is None}
    for t in lc.transitions():
        vm, task = t.source
        if t.kind == "done" and t.source[0] != t.dest[0]:
            ok[(vm, t.dest[0])].add(lc.action(t.action).public_name)
        elif t.kind == "fail" and t.dest[0] is VmState.ERROR and vm is not VmState.ERROR:
            failing[vm].add(lc.action(t.action).public_name)
        del task
    for timed in lc.timed:
        if timed.action is not None:
            action = lc.action(timed.action)
            for dest in action.target.candidates(timed.vm_state):
                if dest is not timed.vm_state:
                    ok[(timed.vm_state, dest)].add(f"after {timed.option}")
    lines = ["stateDiagram-v2"]
    for state in sorted(stable | {lc.initial[0]}, key=lambda s: s.name):
        lines.append(f'    state "{state.value}" as {_id(state)}')
    lines.append(f"    [*] --> {_id(lc.initial[0])} : create")
    for (src, dst), names in sorted(ok.items(), key=lambda kv: (kv[0][0].name, kv[0][1].name)):
        lines.append(f"    {_id(src)} --> {_id(dst)} : {', '.join(sorted(names))}")
    for src, names in sorted(failing.items(), key=lambda kv: kv[0].name):
        lines.append(f"    {_id(src)} --> error : failed {', '.join(sorted(names))}")
    for final in sorted(lc.final, key=lambda s: s.name):
        lines.append(f"    {_id(final)} --> [*]")
    return "\n".join(lines) + "\n"


def write_diagrams(lc: Lifecycle, root: Path) -> list[Path]:
    """Regenerate the committed diagrams under ``root``; return the files written."""
    path = root / OVERVIEW_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(mermaid_overview(lc), encoding="utf-8")
    return [path]


def check_diagrams(lc: Lifecycle, root: Path) -> list[Path]:
    """The committed diagrams that differ from what the table gives now (stale ones)."""
    path = root / OVERVIEW_PATH
    current = path.read_text(encoding="utf-8") if path.exists() else None
    return [] if current == mermaid_overview(lc) else [path]
