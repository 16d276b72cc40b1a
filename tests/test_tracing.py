"""OpenTelemetry spans: one per action and per step, children of the caller's span.

The SDK and its in-memory exporter are test dependencies only; ism itself uses the API. The
global tracer provider can be set once per process, so it is set once here and records only
while a test of this module listens (other tests' spans are dropped).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from drivers.base import GuestSpec, PowerState
from drivers.simulator import FaultRule, SimulatorDriver
from statemachine import RequestContext
from statemachine._telemetry import Telemetry
from statemachine.clock import VirtualClock
from statemachine.errors import ActionFailed
from tests.support import OWNER, virtual, world

REQUEST = RequestContext(
    user_id="u1", project_id="p1", roles=frozenset({"member"}), request_id="req-trace-1"
)
CANARY = "CANARY-span-3b9d"


class _Listening(SimpleSpanProcessor):
    """Exports ended spans only while a test listens."""

    listening = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.listening:
            super().on_end(span)


@functools.cache
def _installed() -> tuple[_Listening, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = _Listening(exporter)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return processor, exporter


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The in-memory exporter, recording for the test's duration."""
    processor, exporter = _installed()
    exporter.clear()
    processor.listening = True
    try:
        yield exporter
    finally:
        processor.listening = False
        exporter.clear()


class _TracedSimulator(SimulatorDriver):
    """A driver instrumented as a real one might be: a span of its own per power-off."""

    async def power_off(self, guest: GuestSpec, *, timeout: float) -> PowerState:
        with trace.get_tracer("test.driver").start_as_current_span("driver power_off"):
            return await super().power_off(guest, timeout=timeout)


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_action_span_is_a_child_of_the_callers_span(spans: InMemorySpanExporter) -> None:
    """The caller's span parents the action's span, which parents its step's span, which
    parents the driver's own span; request id, uuid and outcome ride on them."""

    @virtual
    async def scenario() -> None:
        sim = _TracedSimulator(hosts=["compute1"], seed=0)
        async with world(sim=sim) as w:
            uuid = await w.create()
            spans.clear()
            tracer = trace.get_tracer("test.service")
            with tracer.start_as_current_span("POST /servers/action"):
                handle = await w.engine.submit(REQUEST, "stop", uuid)
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
        async with world() as w:
            uuid = await w.create()
            w.sim.faults.add(FaultRule(action="pause", message=f"password={CANARY} refused"))
            with pytest.raises(ActionFailed):
                await w.engine.act(REQUEST, "pause", uuid)

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
        async with world() as w:
            uuid = await w.create()
            result = await w.engine.act(OWNER, "stop", uuid)
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
