"""ism as the fake cloud of a test suite: fixtures, waits, virtual time, faults, paths.

The pytest plugin (:mod:`statemachine.testing.plugin`, registered as ``ism`` through the
``pytest11`` entry point) gives tests ``ism_engine``, ``ism_simulator``, ``ism_capture`` and
``ism_clock``; it works with pytest-asyncio's strict mode and with anyio's plugin. Everything
here also works without pytest::

    from statemachine.testing import BackgroundEngine, SimulatorHarness, assert_invariants

This package imports no pytest: only the plugin module does.
"""

from ..clock import virtual_loop_factory
from ..paths import (
    Check,
    CoveringPath,
    PathCoverage,
    PathStep,
    SimulatorControl,
    covering_paths,
    run_covering_paths,
    run_path,
    transitions_of,
)
from ._background import BackgroundEngine, EngineNotRunning
from ._invariants import (
    assert_audit_verifies,
    assert_invariants,
    assert_no_transient_state,
    assert_phases_closed,
    assert_state_agrees,
    unclosing_errors,
)
from ._simulation import SimulatorHarness
from ._time import NotOnVirtualTime, VirtualTime, virtual_anyio_backend

__all__ = [
    "BackgroundEngine",
    "Check",
    "CoveringPath",
    "EngineNotRunning",
    "NotOnVirtualTime",
    "PathCoverage",
    "PathStep",
    "SimulatorControl",
    "SimulatorHarness",
    "VirtualTime",
    "assert_audit_verifies",
    "assert_invariants",
    "assert_no_transient_state",
    "assert_phases_closed",
    "assert_state_agrees",
    "covering_paths",
    "run_covering_paths",
    "run_path",
    "transitions_of",
    "unclosing_errors",
    "virtual_anyio_backend",
    "virtual_loop_factory",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("statemachine."):
        _obj.__module__ = __name__
del _name, _obj
