"""Where a state change's time goes: ``ism bench --profile``.

A benchmark says how fast; when a target is missed the next question is where the time went,
and a profile that only one machine's engineer can read answers nobody. This attributes one
run's time to the parts of a change named below (each part's inclusive time under cProfile,
the parts chosen so none calls another) and measures the cyclic garbage collector's pauses in
a second run without the profiler, which would distort them.
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import pstats
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import attrs

__all__ = ["COMPONENTS", "Breakdown", "Measure", "profile_changes"]

COMPONENTS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("guard and transition check (transitions machine)", (("statemachine/machine.py", "apply"),)),
    ("Nova notification payloads", (("statemachine/notify.py", "build"),)),
    ("audit entries", (("statemachine/engine.py", "_entry"),)),
    ("store write (committer, store, outbox)", (("statemachine/_committer.py", "persist"),)),
    ("policy", (("statemachine/policy.py", "check"),)),
    (
        "telemetry (metrics, spans)",
        tuple(
            ("statemachine/_telemetry.py", name)
            for name in ("accepted", "action_started", "action_ended", "step", "committed")
        ),
    ),
    ("simulated hypervisor calls", (("drivers/simulator.py", "_operate"),)),
)
"""Each part: a name and the functions whose inclusive time is its own. None of these calls
another, so the parts add up; what is left is the engine's control flow, its tasks, cancel
scopes and locks, and the event loop."""


@attrs.frozen
class Breakdown:
    """Seconds per part of one profiled run, and the collector's share of an unprofiled one."""

    changes: int
    profiled_s: float
    parts: tuple[tuple[str, float], ...]
    wall_s: float
    gc_s: float
    gc_collections: int
    own: tuple[tuple[str, float], ...] = ()
    """Own (exclusive) seconds of code the parts do not name, by where it lives."""

    def render(self) -> str:
        """A table: each part's seconds, share and microseconds per state change."""
        per = 1e6 / max(self.changes, 1)
        lines = [
            f"where the time goes: {self.changes:,} state changes under cProfile "
            f"({self.profiled_s:.2f} s, profiler overhead included)",
            f"  {'part':<56}{'s':>8}{'share':>8}{'us/change':>11}",
        ]
        for name, seconds in self.parts:
            share = 100 * seconds / max(self.profiled_s, 1e-9)
            lines.append(f"  {name:<56}{seconds:>8.2f}{share:>7.1f}%{seconds * per:>11.1f}")
        if self.own:
            lines.append("  of the rest, own time by where the code lives:")
            for name, seconds in self.own:
                share = 100 * seconds / max(self.profiled_s, 1e-9)
                lines.append(f"    {name:<54}{seconds:>8.2f}{share:>7.1f}%{seconds * per:>11.1f}")
        lines.append(
            f"  cyclic GC, measured without the profiler: {self.gc_s:.2f} s of {self.wall_s:.2f} s"
            f" wall ({100 * self.gc_s / max(self.wall_s, 1e-9):.1f}%, "
            f"{self.gc_collections} collections)"
        )
        return "\n".join(lines)


OWN_TIME: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("anyio (task groups, cancel scopes, locks)", ("/anyio/",)),
    ("asyncio (the event loop, tasks)", ("/asyncio/",)),
    (
        "engine.py, handles.py (ism's control flow)",
        ("statemachine/engine.py", "statemachine/handles.py"),
    ),
    ("logging", ("/logging/",)),
)
"""Where the rest's own time is looked for; a function inside a part also counts here, so
these lines overlap the parts a little (anyio inside a store write, say)."""


def _own(stats: pstats.Stats, places: tuple[str, ...]) -> float:
    table: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    table = stats.stats  # type: ignore[attr-defined]
    return sum(row[2] for (path, _l, _f), row in table.items() if any(p in path for p in places))


def _inclusive(stats: pstats.Stats, targets: tuple[tuple[str, str], ...]) -> float:
    total = 0.0
    table: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    table = stats.stats  # type: ignore[attr-defined]
    for (path, _line, function), (_cc, _nc, _tt, cumulative, _callers) in table.items():
        if any(path.endswith(suffix) and function == name for suffix, name in targets):
            total += cumulative
    return total


Measure = Callable[[], AbstractContextManager[None]]
"""What a run enters around the part to be measured (its fleet's cycle, not its setup)."""


def profile_changes(run: Callable[[Measure], int]) -> Breakdown:
    """Profile the measured part of ``run`` (which drives the fleet and returns the state
    changes it made), then run it again unprofiled with the collector's pauses timed."""
    profiler = cProfile.Profile()
    spans: list[float] = []

    @contextlib.contextmanager
    def profiled() -> Iterator[None]:
        t0 = time.perf_counter()
        profiler.enable()
        try:
            yield
        finally:
            profiler.disable()
            spans.append(time.perf_counter() - t0)

    changes = run(profiled)
    stats = pstats.Stats(profiler)
    parts = [(name, _inclusive(stats, targets)) for name, targets in COMPONENTS]
    rest = max(0.0, spans[0] - sum(seconds for _, seconds in parts))
    parts.append(("engine control flow, tasks, cancel scopes, event loop", rest))
    started: list[float] = []
    paused = [0.0, 0.0]

    def clock_gc(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            paused[0] += time.perf_counter() - started.pop()
            paused[1] += 1

    @contextlib.contextmanager
    def collected() -> Iterator[None]:
        gc.callbacks.append(clock_gc)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            spans.append(time.perf_counter() - t0)
            gc.callbacks.remove(clock_gc)

    run(collected)
    own = tuple((name, _own(stats, places)) for name, places in OWN_TIME)
    return Breakdown(changes, spans[0], tuple(parts), spans[1], paused[0], int(paused[1]), own=own)
