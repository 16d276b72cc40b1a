"""The scenario runner and ``ism run``: exit codes, outputs, and bad files."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine.cli import main
from statemachine.errors import ScenarioError
from statemachine.scenario import load_scenario

TOUR = Path(__file__).parent / "scenarios" / "tour.json"
FLAVOR = {"vcpus": 1, "memory_mb": 512, "root_gb": 1}


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def _run(tmp_path: Path, scenario: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([
        "run", str(scenario), "--events-out", str(tmp_path / "events.jsonl"),
        "--state-out", str(tmp_path / "state.json"),
    ])  # fmt: skip
    return code, capsys.readouterr().err


def test_tour_scenario_passes_and_writes_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's tour scenario exits 0 and writes every envelope and every instance."""
    code, err = _run(tmp_path, TOUR, capsys)
    assert (code, err) == (0, "")
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    envelopes = [json.loads(line) for line in lines]
    assert envelopes, "no notifications written"
    for env in envelopes:
        assert set(env) == {
            "event_type", "priority", "publisher_id", "timestamp", "message_id", "payload",
            "sequence",
        }  # fmt: skip
        assert env["event_type"].startswith("instance.")
    types = [e["event_type"] for e in envelopes]
    assert "instance.reboot.error" in types
    assert "instance.resize_confirm.end" in types  # auto-confirmed after the window
    assert "instance.power_off.end" in types  # the crash was synced to stopped
    text = "\n".join(lines)
    for secret in ("hunter2-canary", "I2Nsb3VkLWNvbmZpZw==", "ops-key", '"tier"'):
        assert secret not in text
    state = json.loads((tmp_path / "state.json").read_text())
    assert set(state) == {"vm1", "vm2"}
    assert state["vm1"] == {
        "uuid": state["vm1"]["uuid"], "vm_state": "stopped", "task_state": None,
        "power_state": "shutdown", "host": "compute1",
        "flavor": {"vcpus": 2, "memory_mb": 1024, "root_gb": 2}, "locked": True,
    }  # fmt: skip
    assert state["vm2"]["vm_state"] == "deleted"
    by_instance: dict[str, list[int]] = {}
    for env in envelopes:
        uuid = env["payload"]["ism_object.data"]["uuid"]
        by_instance.setdefault(uuid, []).append(env["sequence"])
    for seqs in by_instance.values():
        assert seqs == list(range(1, len(seqs) + 1))


def test_same_seed_same_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs of one file write identical event files: the run is deterministic."""
    outs = []
    for i in range(2):
        out = tmp_path / f"e{i}.jsonl"
        assert main(["run", str(TOUR), "--events-out", str(out)]) == 0
        outs.append(out.read_text())
    capsys.readouterr()
    assert outs[0] == outs[1]


def test_unmet_expectation_exits_1_naming_the_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step that does not meet its expectation stops the run with exit 1 and names it."""
    path = _write(tmp_path, {"steps": [
        {"do": "create", "instance": "vm1", "params": {"flavor": FLAVOR, "image": "cirros"}},
        {"do": "unpause", "instance": "vm1"},
    ]})  # fmt: skip
    code, err = _run(tmp_path, path, capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("ism run: step 2 (unpause vm1): expected ok, refused: InvalidState")
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["vm1"]["vm_state"] == "active"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ([], "a scenario is a JSON object"),
        ({"steps": []}, "non-empty list"),
        ({"steps": [{"do": "fly", "instance": "vm1"}]}, "step 1: unknown action 'fly'"),
        ({"steps": [{"do": "stop", "instance": "ghost"}]}, "step 1: instance 'ghost' was not"),
        ({"steps": [{"advance": -1}]}, "step 1: advance must be a number"),
        ({"steps": [{"advance": 1, "do": "stop"}]}, "step 1: a step has exactly one of"),
        ({"config": {"bogus": 1}, "steps": [{"advance": 1}]}, "unknown config options"),
        ({"seed": "x", "steps": [{"advance": 1}]}, "seed must be"),
        ({"hosts": [], "steps": [{"advance": 1}]}, "hosts must be"),
        ({"steps": [{"wait_for": {"event": "x"}}]}, "step 1: wait_for needs a timeout"),
        ({"steps": [{"host_down": "nowhere"}]}, "step 1: host_down names unknown host"),
        ({"steps": [{"fault": {"action": "stop", "mode": "explode"}}]}, "fault mode"),
        ({"steps": [{"fault": {"action": "stopp"}}]}, "step 1: fault: unknown action 'stopp'"),
        (
            {"steps": [{"fault": {"action": "stop", "step": "spawning"}}]},
            "step 1: fault: 'stop' has no step 'spawning'",
        ),
        (
            {
                "steps": [
                    {
                        "do": "create",
                        "instance": "vm1",
                        "params": {
                            "flavor": {"vcpus": "x", "memory_mb": 1, "root_gb": 1},
                            "image": "cirros",
                        },
                    }
                ]
            },
            "step 1: create: flavor vcpus must be a non-negative integer",
        ),
        (
            {
                "steps": [
                    {
                        "do": "create",
                        "instance": "vm1",
                        "params": {
                            "flavor": {"vcpus": 1, "memory_mb": 1, "root_gb": 1},
                            "image": "cirros",
                            "colour": "red",
                        },
                    }
                ]
            },
            "step 1: create: 'create' takes no parameter ['colour']",
        ),
    ],
)
def test_invalid_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, message: str
) -> None:
    """An invalid file is refused whole: exit 2, one line naming the problem, nothing written."""
    code, err = _run(tmp_path, _write(tmp_path, content), capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "events.jsonl").exists()
    assert not (tmp_path / "state.json").exists()


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that cannot be read is an invalid scenario."""
    code, err = _run(tmp_path, tmp_path / "absent.json", capsys)
    assert code == 2
    assert "cannot read" in err


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)  # fmt: skip
_KEYS = st.sampled_from([
    "do", "instance", "params", "as", "wait", "expect", "error", "fault", "wait_for", "guest",
    "host_down", "host_up", "advance", "timeout",
])  # fmt: skip
_STEP = st.dictionaries(_KEYS, _JSON | st.sampled_from(["create", "vm1", "stop", "crash"]),
                        max_size=4)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        _JSON,
        st.fixed_dictionaries(
            {"steps": st.lists(_STEP, max_size=5)},
            optional={"seed": _JSON, "hosts": _JSON, "config": _JSON},
        ),
    )
)
def test_loading_any_json_raises_only_scenario_errors(data: Any) -> None:
    """Whatever JSON a file holds, loading it either succeeds or raises ScenarioError."""
    with contextlib.suppress(ScenarioError):
        load_scenario(data if isinstance(data, dict) else {"steps": data})
