"""Generated paths: every transition of the lifecycle is exercised on the real engine."""

from __future__ import annotations

from collections import Counter

from drivers.simulator import SimulatorDriver
from statemachine._schema import state_name
from statemachine.config import Config
from statemachine.engine import Engine
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from statemachine.paths import covering_paths, run_path, transitions_of
from tests.support import virtual

ALL = {
    (t.trigger, state_name(t.source), state_name(t.dest)) for t in DEFAULT_LIFECYCLE.transitions()
}


def test_planner_covers_every_transition() -> None:
    """The planner finds a path for each transition of the machine."""
    paths = covering_paths(DEFAULT_LIFECYCLE)
    assert transitions_of(paths) == ALL
    assert max(len(p.steps) for p in paths) <= 8


@virtual
async def test_every_transition_is_exercised() -> None:
    """Replaying every path on the engine fires 100% of the transitions, none left transient."""
    applied: Counter[tuple[str, str, str]] = Counter()

    async def no_transient(engine: Engine, uuid: str) -> None:
        assert engine.get(uuid).task_state is None, engine.get(uuid)

    for path in covering_paths(DEFAULT_LIFECYCLE):
        sim = SimulatorDriver(hosts=("compute1", "compute2"))
        applied.update(
            await run_path(
                path, driver=sim, control=sim, check=no_transient,
                config=Config(shelved_offload_time=-1),
            )
        )  # fmt: skip
    missing = ALL - set(applied)
    coverage = 100 * (len(ALL) - len(missing)) / len(ALL)
    print(f"transition coverage: {coverage:.1f}% of {len(ALL)}")
    assert not missing, sorted(missing)[:10]
