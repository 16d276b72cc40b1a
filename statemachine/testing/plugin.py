"""ism's pytest plugin: an engine on the simulator, on virtual time, for any async test.

Registered as ``ism`` through the ``pytest11`` entry point, so installing ``ism-engine`` is all
it takes. Fixtures (function-scoped):

``ism_engine``
    A running :class:`~statemachine.Engine` on ``ism_simulator``, sending to ``ism_capture``,
    configured by ``ism_config`` and seeded by ``ism_seed``; left (drained) after the test.
``ism_simulator``
    A :class:`~statemachine.testing.SimulatorHarness`: the simulator, its fault injection, its
    hosts (``ism_hosts``) and guest events.
``ism_capture``
    The :class:`~statemachine.MemoryCapture` every notification goes to, with its waits.
``ism_clock``
    :class:`~statemachine.testing.VirtualTime`: read and advance the loop's virtual clock.
``ism_config``, ``ism_hosts``, ``ism_seed``
    What the fixtures above are built from: override them, or set them per test with
    ``@pytest.mark.ism(config=..., hosts=..., seed=..., virtual_time=...)``.

How the loop becomes virtual: pytest-asyncio (>= 1.4) asks plugins for loop factories through
its ``pytest_asyncio_loop_factories`` hook; this plugin answers with a
:class:`~statemachine.VirtualTimeLoop` factory for every test that uses an ism fixture or
carries the ``ism`` marker (unless ``virtual_time=False``). With anyio's plugin the test module
says so itself, through its ``anyio_backend`` fixture
(:func:`~statemachine.testing.virtual_anyio_backend`).

How ``ism_engine`` runs under either plugin: it is a plain async fixture, which anyio's plugin
runs for anyio tests. pytest-asyncio's strict mode runs only fixtures it was told about, so for
its tests this plugin hands it a copy of the fixture marked (with ``pytest_asyncio.fixture``)
for the loop scope of the requesting test; a fixture of a narrower loop scope than its test
would otherwise run on another loop. The engine itself lives in a task of its own
(:class:`~statemachine.testing.BackgroundEngine`), because pytest-asyncio sets a fixture up
and tears it down in two different tasks, which an anyio task group does not allow.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from typing import Any

import pytest

from drivers.simulator import LatencyModel, SimulatorDriver

from ..clock import Clock, SystemClock, VirtualClock, is_virtual, virtual_loop_factory
from ..config import Config
from ..engine import Engine
from ..sinks import MemoryCapture
from ._background import BackgroundEngine
from ._simulation import SimulatorHarness
from ._time import HOW_TO, VirtualTime

try:  # optional: anyio-only users need not install it
    import pytest_asyncio
except ImportError:  # pragma: no cover - pytest-asyncio is part of the testing extra
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = [
    "COVERAGE_PROPERTY",
    "ism_capture",
    "ism_clock",
    "ism_config",
    "ism_engine",
    "ism_hosts",
    "ism_seed",
    "ism_simulator",
]

COVERAGE_PROPERTY = "ism_transition_coverage"
"""A ``record_property`` name whose values (``PathCoverage.summary()``) the plugin prints in the
terminal summary."""

DEFAULT_HOSTS = ("compute1", "compute2")
"""Two hosts, so live migration and evacuation have somewhere to go."""

_USES_ISM = frozenset({"ism_engine", "ism_simulator", "ism_capture", "ism_clock"})
_MARKER_OPTIONS = frozenset({"config", "hosts", "seed", "virtual_time"})
_VIRTUAL_LOOP = virtual_loop_factory()
"""One factory object for every ism test, so pytest-asyncio shares loops across tests of a
wider loop scope (it caches a runner per factory)."""


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``ism`` marker (strict markers reject undeclared ones)."""
    config.addinivalue_line(
        "markers",
        "ism(config=None, hosts=None, seed=None, virtual_time=True): settings of the ism "
        "fixtures for this test (config: a Config or a mapping of its options by Nova name)",
    )


# -- settings --------------------------------------------------------------------------------


def _options(node: pytest.Item | pytest.Collector) -> dict[str, Any]:
    """The ``ism`` marker's keyword arguments closest to ``node``, checked."""
    marker = node.get_closest_marker("ism")
    if marker is None:
        return {}
    unknown = sorted(set(marker.kwargs) - _MARKER_OPTIONS)
    if marker.args or unknown:
        pytest.fail(
            f"{node.nodeid}: mark.ism takes only keyword arguments {sorted(_MARKER_OPTIONS)}"
            + (f", not {unknown}" if unknown else ""),
            pytrace=False,
        )
    return dict(marker.kwargs)


def _virtual(node: pytest.Item | pytest.Collector) -> bool:
    value = _options(node).get("virtual_time", True)
    if not isinstance(value, bool):
        pytest.fail(f"{node.nodeid}: mark.ism virtual_time must be True or False", pytrace=False)
    return value


@pytest.fixture
def ism_config(request: pytest.FixtureRequest) -> Config:
    """The engine's configuration: the ``ism`` marker's ``config`` (a :class:`Config` or a
    mapping of options by their Nova names), else Nova's defaults."""
    value = _options(request.node).get("config")
    if value is None:
        return Config()
    if isinstance(value, Config):
        return value
    try:
        return Config.from_mapping(value)
    except ValueError as exc:  # InvalidRequest, or a validator's own ValueError
        pytest.fail(f"mark.ism config: {exc}", pytrace=False)


@pytest.fixture
def ism_hosts(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The simulated hosts: the ``ism`` marker's ``hosts``, else ``compute1`` and
    ``compute2``."""
    value = _options(request.node).get("hosts", DEFAULT_HOSTS)
    if isinstance(value, str) or not all(isinstance(h, str) for h in value):
        pytest.fail("mark.ism hosts must be a sequence of host names", pytrace=False)
    return tuple(value)


@pytest.fixture
def ism_seed(request: pytest.FixtureRequest) -> int:
    """The seed of the engine (uuids) and the simulator (latencies, random faults): the
    ``ism`` marker's ``seed``, else 0. The same seed gives the same run."""
    value = _options(request.node).get("seed", 0)
    if isinstance(value, bool) or not isinstance(value, int):
        pytest.fail("mark.ism seed must be an integer", pytrace=False)
    return value


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def ism_capture() -> MemoryCapture:
    """Every notification the engine emits, with event-driven waits that always end."""
    return MemoryCapture()


@pytest.fixture
def ism_simulator(
    request: pytest.FixtureRequest, ism_hosts: tuple[str, ...], ism_seed: int
) -> SimulatorHarness:
    """The simulated fleet, with typed fault injection, hosts and guest events.

    On virtual time the simulator takes its usual latencies (seconds of virtual time, none of
    wall time); with ``virtual_time=False`` it answers at once, so tests stay fast.
    """
    latency = None if _virtual(request.node) else LatencyModel(scale=0)
    return SimulatorHarness(SimulatorDriver(hosts=ism_hosts, seed=ism_seed, latency=latency))


@pytest.fixture
def ism_clock(request: pytest.FixtureRequest) -> VirtualTime:
    """The test loop's virtual clock: ``await ism_clock.advance(3600)`` in no wall time."""
    if not _virtual(request.node):
        pytest.fail("ism_clock needs virtual time; this test has virtual_time=False", pytrace=False)
    return VirtualTime()


def _engine_fixture() -> Callable[..., AsyncIterator[Engine]]:
    """A new function object for ``ism_engine``'s body: one stays plain (anyio runs it), the
    others get marked for pytest-asyncio, one per loop scope."""

    async def ism_engine(
        request: pytest.FixtureRequest,
        ism_simulator: SimulatorHarness,
        ism_capture: MemoryCapture,
        ism_config: Config,
        ism_seed: int,
    ) -> AsyncIterator[Engine]:
        """A running engine on ``ism_simulator``, notifying ``ism_capture``; drained after."""
        clock: Clock
        if _virtual(request.node):
            if not is_virtual():
                pytest.fail(
                    "ism_engine runs on virtual time, but this loop is not. "
                    f"{HOW_TO} Or mark the test ism(virtual_time=False).",
                    pytrace=False,
                )
            clock = VirtualClock()
        else:
            clock = SystemClock()
        engine = Engine(
            ism_simulator.driver,
            config=ism_config,
            sinks=[ism_capture],
            clock=clock,
            seed=ism_seed,
        )
        host = BackgroundEngine(engine)
        await host.start()
        try:
            yield engine
        finally:
            await host.stop()

    return ism_engine


_plain_engine = _engine_fixture()
"""Unmarked: what anyio's plugin runs (pytest-asyncio's strict mode leaves it alone)."""
_declared_engine = _engine_fixture()
"""The declared fixture, marked as pytest-asyncio's when it is installed (pytest-asyncio checks
the marks of every async fixture an asyncio test uses)."""

if pytest_asyncio is not None:
    ism_engine = pytest_asyncio.fixture(_declared_engine, name="ism_engine")
else:  # pragma: no cover - anyio only
    ism_engine = pytest.fixture(name="ism_engine")(_declared_engine)


@functools.cache
def _engine_for_pytest_asyncio(loop_scope: str) -> Callable[..., AsyncIterator[Engine]]:
    """``ism_engine``'s body marked for pytest-asyncio with ``loop_scope``: the decorator marks
    the function it is given; the fixture definition it returns is not needed."""
    assert pytest_asyncio is not None
    func = _engine_fixture()
    pytest_asyncio.fixture(func, loop_scope=loop_scope)  # type: ignore[call-overload]
    return func


def _asyncio_loop_scope(item: object) -> str | None:
    """The loop scope of a pytest-asyncio test (its marker's, else the configured default);
    None for anything else."""
    if pytest_asyncio is None or not isinstance(item, pytest.Item):
        return None
    if not pytest_asyncio.is_async_test(item):
        return None
    marker = item.get_closest_marker("asyncio")
    kwargs = marker.kwargs if marker is not None else {}
    scope = kwargs.get("loop_scope") or kwargs.get("scope")
    return str(scope or item.config.getini("asyncio_default_test_loop_scope"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, object, object]:
    """Have ``ism_engine`` run by whichever async plugin runs the requesting test, on the
    test's own loop."""
    if fixturedef.func is not _declared_engine:
        return (yield)  # not ours (or overridden by the user)
    func: Callable[..., AsyncIterator[Engine]]
    if "anyio_backend" in request.fixturenames:
        func = _plain_engine  # anyio runs plain async fixtures of anyio tests
    else:
        scope = _asyncio_loop_scope(request.node)
        if scope is None:
            pytest.fail(
                f"{request.node.nodeid}: ism_engine is async; use it from a test marked "
                "@pytest.mark.asyncio (pytest-asyncio) or @pytest.mark.anyio",
                pytrace=False,
            )
        func = _engine_for_pytest_asyncio(scope)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fixturedef, "func", func)
        return (yield)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    """A virtual-time loop for tests that use ism; no opinion on the others.

    pytest-asyncio requires an answer for every test once any plugin implements this hook:
    when no other plugin or conftest does, the others get asyncio's ordinary loop, made as
    pytest-asyncio would make it.
    """
    fixtures = set(getattr(item, "fixturenames", ()))
    if (fixtures & _USES_ISM or item.get_closest_marker("ism")) and _virtual(item):
        return {"ism-virtual-time": _VIRTUAL_LOOP}
    if len(item.ihook.pytest_asyncio_loop_factories.get_hookimpls()) > 1:
        return None
    return {"asyncio": asyncio.new_event_loop}


# -- reporting ------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used ism gets two report sections: the last notifications, and
    every instance's state as the engine holds it."""
    report = yield
    if report.failed and call.when == "call":
        funcargs: dict[str, object] = getattr(item, "funcargs", {})
        capture = funcargs.get("ism_capture")
        if isinstance(capture, MemoryCapture):
            report.sections.append(("ism notifications", capture.describe()))
        engine = funcargs.get("ism_engine")
        if isinstance(engine, Engine):
            report.sections.append(("ism instances", _instances(engine)))
    return report


def _instances(engine: Engine) -> str:
    lines = []
    for inst in engine.instances()[:50]:
        task = inst.task_state.value if inst.task_state is not None else None
        fault = f" fault={inst.fault.exception}: {inst.fault.message}" if inst.fault else ""
        lines.append(
            f"{inst.uuid} {inst.name}: vm_state={inst.vm_state.value} task_state={task} "
            f"power_state={inst.power_state.label} host={inst.host}{fault}"
        )
    return "\n".join(lines) or "(no instances)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every transition coverage a test recorded under :data:`COVERAGE_PROPERTY`."""
    lines: list[str] = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if name == COVERAGE_PROPERTY and f"{report.nodeid}: {value}" not in lines:
                    lines.append(f"{report.nodeid}: {value}")
    if lines:
        terminalreporter.write_sep("-", "ism transition coverage")
        for line in lines:
            terminalreporter.write_line(line)
