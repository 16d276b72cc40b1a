"""OpenTelemetry spans: one per action and per step, children of the caller's span.

The SDK and its in-memory exporter are test dependencies only; ism itself uses the API. Each
test gives its engine a provider of its own (the global one can be set once per process);
one test checks the global provider in a process of its own.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer

from drivers.base import GuestSpec, PowerState
from drivers.simulator import FaultRule, SimulatorDriver
from statemachine import Engine, RequestContext
from statemachine._telemetry import Telemetry
from statemachine.clock import VirtualClock
from statemachine.errors import ActionFailed
from tests.support import OWNER, SMALL, virtual, world

REQUEST = RequestContext(
    user_id="u1", project_id="p1", roles=frozenset({"member"}), request_id="req-trace-1"
)
CANARY = "CANARY-span-3b9d"


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """An exporter that keeps the spans of this test's tracer provider (see :func:`traced`)."""
    return InMemorySpanExporter()


@asynccontextmanager
async def traced(
    exporter: InMemorySpanExporter, sim: SimulatorDriver | None = None
) -> AsyncIterator[tuple[Engine, SimulatorDriver, Tracer]]:
    """An engine whose spans go to ``exporter`` (its own provider, not the global one), and a
    tracer of the same provider for the caller's spans."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sim = sim or SimulatorDriver(hosts=["compute1"], seed=0)
    engine = Engine(sim, clock=VirtualClock(), seed=0, tracer_provider=provider)
    async with engine:
        yield engine, sim, provider.get_tracer("test.service")


class _TracedSimulator(SimulatorDriver):
    """A driver instrumented as a real one might be: a span of its own per power-off."""

    tracer: Tracer | None = None

    async def power_off(self, guest: GuestSpec, *, timeout: float) -> PowerState:
        assert self.tracer is not None
        with self.tracer.start_as_current_span("driver power_off"):
            return await super().power_off(guest, timeout=timeout)


async def _create(engine: Engine) -> str:
    result = await engine.create(OWNER, name="vm1", flavor=SMALL, image="cirros")
    return result.instance.uuid


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_action_span_is_a_child_of_the_callers_span(spans: InMemorySpanExporter) -> None:
    """The caller's span parents the action's span, which parents its step's span, which
    parents the driver's own span; request id, uuid and outcome ride on them."""

    @virtual
    async def scenario() -> None:
        sim = _TracedSimulator(hosts=["compute1"], seed=0)
        async with traced(spans, sim) as (engine, _, tracer):
            sim.tracer = tracer
            uuid = await _create(engine)
            spans.clear()
            with tracer.start_as_current_span("POST /servers/action"):
                handle = await engine.submit(REQUEST, "stop", uuid)
            await handle.wait()  # the action runs on after the caller's span ended
            holder.append(uuid)

    holder: list[str] = []
    scenario()
    [uuid] = holder
    [caller] = _named(spans, "POST /servers/action")
    [action] = _named(spans, "ism stop")
    [step] = _named(spans, "ism stop powering-off")
    [driver] = _named(spans, "driver power_off")
    assert caller.context is not None
    assert action.context is not None
    assert step.context is not None
    assert action.parent is not None
    assert action.parent.span_id == caller.context.span_id
    assert action.context.trace_id == caller.context.trace_id
    assert step.parent is not None
    assert step.parent.span_id == action.context.span_id
    assert driver.parent is not None
    assert driver.parent.span_id == step.context.span_id
    assert action.attributes is not None
    assert step.attributes is not None
    assert dict(action.attributes) == {
        "ism.action": "stop",
        "ism.action.id": action.attributes["ism.action.id"],
        "ism.instance.uuid": uuid,
        "ism.user_id": "u1",
        "ism.project_id": "p1",
        "ism.request_id": "req-trace-1",
        "ism.outcome": "ok",
        "ism.vm_state": "stopped",
        "ism.step": "powering-off",
    }
    assert step.attributes["ism.request_id"] == "req-trace-1"
    assert step.attributes["ism.instance.uuid"] == uuid
    assert step.attributes["ism.step"] == "powering-off"
    assert step.attributes["ism.step.call"] == "power_off"
    assert step.attributes["ism.outcome"] == "ok"
    assert action.status.status_code is StatusCode.UNSET


def test_failed_action_marks_both_spans_with_the_error_class(
    spans: InMemorySpanExporter,
) -> None:
    """A driver failure sets ERROR and ``error.type`` on the step and action spans, with the
    message scrubbed and no traceback."""

    @virtual
    async def scenario() -> None:
        async with traced(spans) as (engine, sim, _):
            uuid = await _create(engine)
            sim.faults.add(FaultRule(action="pause", message=f"password={CANARY} refused"))
            with pytest.raises(ActionFailed):
                await engine.act(REQUEST, "pause", uuid)

    scenario()
    [action] = _named(spans, "ism pause")
    [step] = _named(spans, "ism pause pausing")
    for span in (action, step):
        assert span.attributes is not None
        assert span.attributes["ism.outcome"] == "failed"
        assert span.attributes["error.type"] == "InjectedFault"
        assert span.status.status_code is StatusCode.ERROR
        [event] = span.events
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "InjectedFault"
        assert "password=***" in str(event.attributes["exception.message"])
        assert "exception.stacktrace" not in event.attributes
    for span in spans.get_finished_spans():
        assert CANARY not in span.to_json()


def test_spans_are_stamped_with_the_engines_clock(spans: InMemorySpanExporter) -> None:
    """On virtual time a span's start and end are the engine clock's, like its notifications."""

    @virtual
    async def scenario() -> None:
        async with traced(spans) as (engine, _, _):
            uuid = await _create(engine)
            result = await engine.act(OWNER, "stop", uuid)
            durations.append(result.duration)

    durations: list[float] = []
    scenario()
    [action] = _named(spans, "ism stop")
    assert action.start_time is not None
    assert action.end_time is not None
    epoch = int(VirtualClock().epoch.timestamp() * 1e9)
    assert 0 <= action.start_time - epoch < 3600 * 10**9  # within the virtual hour, not today
    assert (action.end_time - action.start_time) / 1e9 == pytest.approx(durations[0], abs=1e-3)


def test_without_opentelemetry_tracing_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry-api the engine makes no spans and runs as before."""
    for name in ("opentelemetry", "opentelemetry.trace", "opentelemetry.context"):
        monkeypatch.setitem(sys.modules, name, None)
    assert Telemetry(VirtualClock()).tracing is False

    @virtual
    async def scenario() -> None:
        async with world() as w:
            assert w.engine._telemetry.tracing is False
            uuid = await w.create()
            await w.engine.act(OWNER, "stop", uuid)
            assert w.engine.statistics().by_action["stop"] == {"ok": 1}

    scenario()


GLOBAL_PROVIDER = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from drivers import SimulatorDriver
from statemachine import Engine, RequestContext, VirtualClock, run_virtual

engine = Engine(SimulatorDriver(seed=0), clock=VirtualClock(), seed=0)  # before the provider
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
ctx = RequestContext(user_id="u", project_id="p")


async def main() -> None:
    async with engine:
        made = await engine.create(ctx, name="vm", flavor={"vcpus": 1, "memory_mb": 1,
                                   "root_gb": 1}, image="cirros")
        await engine.act(ctx, "stop", made.instance.uuid)


run_virtual(main)
print(sorted(s.name for s in exporter.get_finished_spans()))
"""


def test_default_is_the_global_provider_even_one_set_later() -> None:
    """Without ``tracer_provider`` the spans go to the global provider, even one the service
    installs after making the engine (a process of its own: the global is set once)."""
    result = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(
        sorted(
            [
                "ism create",
                "ism create scheduling",
                "ism create spawning",
                "ism stop",
                "ism stop powering-off",
            ]
        )
    )


def test_a_provider_that_records_nothing_makes_no_spans() -> None:
    """With the API alone (its no-op or not-yet-set proxy provider) no span is made at all;
    an SDK provider turns tracing on."""
    from opentelemetry.trace import NoOpTracerProvider

    assert Telemetry(VirtualClock(), tracer_provider=NoOpTracerProvider()).tracing is False
    assert Telemetry(VirtualClock(), tracer_provider=TracerProvider()).tracing is True
