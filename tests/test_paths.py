"""Generated paths: every transition of the lifecycle is exercised on the real engine."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from drivers.simulator import SimulatorDriver
from statemachine._schema import state_name
from statemachine.clock import run_virtual
from statemachine.config import Config
from statemachine.engine import Engine
from statemachine.errors import InvalidRequest
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from statemachine.testing import (
    SimulatorHarness,
    covering_paths,
    run_covering_paths,
    run_path,
    transitions_of,
)
from statemachine.testing.plugin import COVERAGE_PROPERTY

ALL = {
    (t.trigger, state_name(t.source), state_name(t.dest)) for t in DEFAULT_LIFECYCLE.transitions()
}


def test_planner_covers_every_transition() -> None:
    """The planner finds a path for each transition of the machine."""
    paths = covering_paths(DEFAULT_LIFECYCLE)
    assert transitions_of(paths) == ALL
    assert max(len(p.steps) for p in paths) <= 8


def test_every_transition_is_exercised(record_property: Callable[[str, object], None]) -> None:
    """Replaying every path on the engine fires 100% of the transitions, none left transient."""
    checked: list[str] = []

    async def no_transient(engine: Engine, uuid: str) -> None:
        assert engine.get(uuid).task_state is None, engine.get(uuid)
        checked.append(uuid)

    coverage = run_virtual(
        functools.partial(
            run_covering_paths,
            driver=lambda: SimulatorDriver(hosts=("compute1", "compute2")),
            check=no_transient,
            config=Config(shelved_offload_time=-1),
        )
    )
    record_property(COVERAGE_PROPERTY, coverage.summary())
    assert coverage.expected == ALL
    assert len(checked) == coverage.paths == len(covering_paths(DEFAULT_LIFECYCLE))
    assert not coverage.missing, sorted(coverage.missing)[:10]
    assert coverage.percent == 100.0


def test_a_driver_without_controls_needs_them_given() -> None:
    """run_covering_paths refuses a driver lacking host/guest controls unless control= is
    given; a SimulatorHarness over the simulator provides them."""

    class Bare:
        """Stands for a driver that cannot take hosts down or crash guests."""

    with pytest.raises(InvalidRequest, match="pass control="):
        run_virtual(functools.partial(run_covering_paths, driver=Bare))  # type: ignore[type-var]
    path = next(p for p in covering_paths(DEFAULT_LIFECYCLE) if len(p.steps) > 2)
    sim = SimulatorDriver(hosts=("compute1", "compute2"))
    applied = run_virtual(
        functools.partial(run_path, path, driver=sim, control=SimulatorHarness(sim))
    )
    planned = {(t.trigger, state_name(t.source), state_name(t.dest)) for t in path.covers}
    assert planned <= set(applied)
