"""The Prometheus collector reads ``Engine.statistics()`` at scrape time; ``--metrics-out``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from drivers.simulator import FaultRule
from statemachine import EngineCollector, MissingExtra
from statemachine.cli import main
from statemachine.errors import ActionFailed
from statemachine.metrics import METRIC_NAMES, exposition
from statemachine.states import VmState
from tests.support import OWNER, virtual, world

LABELS = {"action", "outcome", "step", "call", "vm_state", "kind", "le"}
"""Every label a family may carry: each takes its values from a finite set."""
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


def _samples(text: str) -> dict[str, list[Sample]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    [value] = [s.value for s in samples if s.name == name and s.labels == labels]
    return value


@virtual
async def test_exposition_parses_and_carries_the_statistics() -> None:
    """The text format parses, has every family, and its values are the statistics'."""
    async with world() as w:
        uuid = await w.create()
        await w.engine.act(OWNER, "stop", uuid)
        await w.engine.act(OWNER, "start", uuid)
        w.sim.faults.add(FaultRule(action="stop"))
        with pytest.raises(ActionFailed):
            await w.engine.act(OWNER, "stop", uuid)
        text = exposition(w.engine)
        stats = w.engine.statistics()
    families = _samples(text)
    assert set(families) == set(METRIC_NAMES)
    actions = families["ism_actions"]
    assert _value(actions, "ism_actions_total", action="stop", outcome="ok") == 1
    assert _value(actions, "ism_actions_total", action="stop", outcome="failed") == 1
    errors = families["ism_driver_errors"]
    assert _value(errors, "ism_driver_errors_total", kind="InjectedFault") == 1
    steps = families["ism_step_duration_seconds"]
    key = {"action": "stop", "step": "powering-off", "call": "power_off"}
    assert _value(steps, "ism_step_duration_seconds_count", **key) == 2
    assert _value(steps, "ism_step_duration_seconds_sum", **key) == pytest.approx(
        stats.step_seconds["stop", "powering-off", "power_off"].sum
    )
    assert _value(steps, "ism_step_duration_seconds_bucket", le="+Inf", **key) == 2
    instances = families["ism_instances"]
    assert {s.labels["vm_state"] for s in instances} == {s.value for s in VmState}
    assert _value(instances, "ism_instances", vm_state="active") == 1
    assert _value(families["ism_state_changes"], "ism_state_changes_total") == stats.state_changes
    assert _value(families["ism_outbox_backlog"], "ism_outbox_backlog") == 0
    # bounded labels: only finite sets, never an instance's uuid
    for samples in families.values():
        for sample in samples:
            assert set(sample.labels) <= LABELS, sample
            assert not any(UUID.match(v) for v in sample.labels.values()), sample


@virtual
async def test_collector_reads_the_engine_at_scrape_time() -> None:
    """A registered collector keeps no counters of its own: each scrape shows the engine now."""
    async with world() as w:
        registry = CollectorRegistry()
        registry.register(EngineCollector(w.engine))
        before = _samples(generate_latest(registry).decode())
        uuid = await w.create()
        await w.engine.act(OWNER, "stop", uuid)
        after = _samples(generate_latest(registry).decode())
    assert not [s for s in before["ism_actions"] if s.name == "ism_actions_total"]
    assert _value(after["ism_actions"], "ism_actions_total", action="stop", outcome="ok") == 1
    assert _value(before["ism_instances"], "ism_instances", vm_state="stopped") == 0
    assert _value(after["ism_instances"], "ism_instances", vm_state="stopped") == 1


def test_simulate_writes_the_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ism simulate --metrics-out F`` writes a parsable scrape of the whole run."""
    out = tmp_path / "ism.prom"
    assert main(["simulate", "--instances", "10", "--quiet", "--metrics-out", str(out)]) == 0
    capsys.readouterr()
    families = _samples(out.read_text(encoding="utf-8"))
    assert set(families) == set(METRIC_NAMES)
    # every instance the walks created (a failed build included) is counted once
    assert sum(s.value for s in families["ism_instances"]) == 10
    creates = [
        s.value
        for s in families["ism_actions"]
        if s.name == "ism_actions_total" and s.labels["action"] == "create"
    ]
    assert sum(creates) == 10
    assert _value(families["ism_actions_running"], "ism_actions_running") == 0


def test_simulate_without_prometheus_client_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the extra, ``--metrics-out`` fails at once with one line naming the install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    out = tmp_path / "ism.prom"
    assert main(["simulate", "--instances", "5", "--quiet", "--metrics-out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before the run
    assert captured.err.count("\n") == 1
    assert "pip install 'ism-engine[metrics]'" in captured.err
    assert "MissingExtra" in captured.err
    assert not out.exists()


def test_simulate_metrics_into_a_missing_directory_fails_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``--metrics-out`` whose directory does not exist is refused before the run."""
    out = tmp_path / "nowhere" / "ism.prom"
    assert main(["simulate", "--instances", "5", "--quiet", "--metrics-out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ism simulate: InvalidRequest: --metrics-out")


def test_collector_without_prometheus_client_is_a_typed_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Making a collector without prometheus_client raises MissingExtra (an ImportError)."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    with pytest.raises(MissingExtra) as caught:
        EngineCollector(object())  # type: ignore[arg-type]
    assert isinstance(caught.value, ImportError)
    assert (caught.value.extra, caught.value.module) == ("metrics", "prometheus_client")


def test_readme_lists_every_metric_family() -> None:
    """The README's table of metrics names exactly the families a collector yields."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| metric | type | labels |") :].split("\n\n")[0]
    listed = {
        name.removesuffix("_total")
        for row in table.splitlines()[2:]
        for name in re.findall(r"`(ism_\w+)`", row.split("|")[1])
    }
    assert listed == set(METRIC_NAMES)
