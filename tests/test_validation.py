"""Validated input at the boundary: typed errors, short messages, nothing persisted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from statemachine.cli import main
from statemachine.config import Config
from statemachine.errors import ActionRefused, InstanceNotFound, InvalidRequest, ScenarioError
from statemachine.model import Flavor, RequestContext, validate_host, validate_uuid
from statemachine.redact import MASK, Secret
from statemachine.scenario import load_scenario
from tests.support import OWNER, SMALL, virtual, world

CANARY = "canary-9f1c2e"
GOOD = {"name": "vm1", "flavor": SMALL, "image": "cirros"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"metadata": {"bad key!": "v"}}, "invalid metadata key 'bad key!'"),
        ({"metadata": {"k" * 256: "v"}}, "invalid metadata key"),
        ({"metadata": {"db_password": CANARY * 30}}, "metadata value of 'db_password' must be"),
        ({"metadata": {"k": 1}}, "metadata value of 'k' must be a string"),
        (
            {"metadata": {str(i): "v" for i in range(129)}},
            "metadata must be an object of at most 128",
        ),
        ({"metadata": ["k", "v"]}, "metadata must be an object, not a list"),
        ({"host": "compute 1"}, "invalid host 'compute 1'"),
        ({"host": "-compute1"}, "invalid host '-compute1'"),
        ({"key_name": " ops"}, "invalid key_name ' ops'"),
        ({"name": "vm\n1"}, "invalid instance name 'vm\\n1'"),
        ({"name": "x" * 1000}, "invalid instance name 'xxxxxxxx"),
        ({"image": "cirros\x07"}, "image holds control characters"),
        ({"image": ""}, "image must be a non-empty string, not ''"),
        ({"user_data": CANARY * 6000}, "user_data must be a string of at most 65535 characters"),
        ({"user_data": "\ud800" + CANARY}, "user_data is not valid Unicode"),
        ({"admin_pass": 5}, "admin_pass must be a string of at most 255 characters"),
        ({"flavor": {**SMALL, "vcpus": 2**31}}, "flavor vcpus must be at most 2147483647"),
        ({"flavor": {**SMALL, "root_gb": True}}, "flavor root_gb must be a non-negative integer"),
        ({"flavor": {**SMALL, "name": "\x00"}}, "flavor name holds control characters"),
    ],
)
@virtual
async def test_bad_create_input_is_refused_whole(params: dict[str, Any], message: str) -> None:
    """A malformed create parameter is an InvalidRequest naming it, short, never echoing a
    secret value; no instance and no notification exist afterwards."""
    async with world() as w:
        with pytest.raises(InvalidRequest) as raised:
            await w.engine.create(OWNER, **{**GOOD, **params})
        text = str(raised.value)
        assert text.startswith(message), text
        assert len(text) < 200
        assert CANARY not in text
        assert w.engine.instances() == []
        assert len(w.capture.notifications) == 0


@virtual
async def test_admin_pass_is_dropped_and_user_data_masked_in_records() -> None:
    """The handle keeps no admin_pass, and its user_data is a Secret whose repr is masked,
    while the driver still receives user_data unchanged."""
    async with world() as w:
        handle = await w.engine.create(
            OWNER, name="vm1", flavor=SMALL, image="cirros", admin_pass=CANARY + "-pass",
            user_data=CANARY + "-data", wait=False,
        )  # fmt: skip
        assert "admin_pass" not in handle.params
        assert isinstance(handle.params["user_data"], Secret)
        assert CANARY not in repr(handle)
        assert (await handle.wait()).ok
        guest = w.engine.get(handle.uuid).guest(user_data=handle.params["user_data"])
        assert guest.user_data == CANARY + "-data"
    assert repr(Secret("x")) == repr(MASK)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user_id": "", "project_id": "p"}, "user_id must be a non-empty string"),
        ({"user_id": "u", "project_id": "p\x00"}, "project_id holds control characters"),
        ({"user_id": "u", "project_id": "p", "roles": "admin"}, "roles must be a collection"),
        ({"user_id": "u", "project_id": "p", "roles": [["admin"]]}, "roles must be strings"),
        ({"user_id": "u", "project_id": "p", "roles": [str(i) for i in range(65)]}, "at most 64"),
        ({"user_id": "u", "project_id": "p", "request_id": 5}, "request_id must be a non-empty"),
        ({"user_id": "u", "project_id": "p", "is_system": "yes"}, "is_system must be true or"),
    ],
)
def test_request_contexts_are_checked_when_built(kwargs: dict[str, Any], message: str) -> None:
    """A RequestContext with a malformed field cannot be built."""
    with pytest.raises(InvalidRequest, match=message):
        RequestContext(**kwargs)


def test_a_context_refuses_a_token_without_echoing_it() -> None:
    """A context object with a token field is refused, naming the key but not its value."""
    with pytest.raises(InvalidRequest) as raised:
        RequestContext.from_mapping({"user_id": "u", "project_id": "p", "auth_token": CANARY})
    assert "auth_token" in str(raised.value)
    assert CANARY not in str(raised.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"notify_on_state_change": "always"}, "notify_on_state_change must be one of"),
        ({"notification_namespace": None}, "notification_namespace must be one of"),
        ({"include_traceback": "yes"}, "include_traceback must be true or false"),
        ({"allow_resize_to_same_host": 1}, "allow_resize_to_same_host must be true or false"),
        ({"service_host": "bad host"}, "invalid service_host 'bad host'"),
        ({"drain_timeout": -1}, "drain_timeout must not be negative"),
        ({"shutdown_timeout": float("nan")}, "shutdown_timeout must be a number"),
        ({"resize_confirm_window": 1e300}, "resize_confirm_window is out of range"),
        ({"max_actions": 0}, "max_actions must be an integer in [1, 10000000]"),
        ({"secret_key_patterns": "password"}, "secret_key_patterns must be a list"),
        ({"secret_key_patterns": ["("]}, "secret key pattern '(' is not a regular expression"),
        ({"secret_key_patterns": [""]}, "each secret key pattern is a string of 1-200"),
        ({"secret_key_patterns": ["a"] * 65}, "secret_key_patterns holds at most 64"),
        ({"bogus": 1, 2: 3}, "unknown config options ['bogus', 2]"),
    ],
)
def test_bad_configuration_is_an_invalid_request(options: dict[Any, Any], message: str) -> None:
    """Every option is checked by from_mapping with a typed error naming it."""
    with pytest.raises(InvalidRequest) as raised:
        Config.from_mapping(options)
    assert str(raised.value).startswith(message), str(raised.value)


def test_validators_of_uuids_and_hosts() -> None:
    """validate_uuid canonicalises a uuid and refuses anything else; validate_host likewise."""
    upper = "11111111-2222-4333-8444-55555555555A"
    assert validate_uuid(upper) == upper.lower()
    for bad in ("nope", "", upper + "0", "{" + upper + "}", upper.replace("-", ""), None, 5):
        with pytest.raises(InvalidRequest, match="instance must be a uuid"):
            validate_uuid(bad)
    assert validate_host("compute-1.example_org") == "compute-1.example_org"
    for bad in ("", "a b", "a" * 256, "host.", "h\u00e9"):
        with pytest.raises(InvalidRequest, match="invalid host"):
            validate_host(bad)


def test_flavor_bounds() -> None:
    """Sizes are Nova's: at least 1 vCPU and 1 MiB, every size at most 2**31-1."""
    Flavor(vcpus=2**31 - 1, memory_mb=2**31 - 1, root_gb=0, ephemeral_gb=0, swap=0)
    sizes: list[dict[str, Any]] = [{"ephemeral_gb": -1}, {"swap": 2**31}, {"vcpus": 0}]
    for kwargs in sizes:
        with pytest.raises(InvalidRequest):
            Flavor(**{"vcpus": 1, "memory_mb": 1, "root_gb": 1, **kwargs})


# -- scenario files ------------------------------------------------------------------------

CREATE = {"do": "create", "instance": "vm1", "params": {"flavor": SMALL, "image": "cirros"}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"hosts": ["a b"], "steps": [{"advance": 1}]}, "hosts: invalid host 'a b'"),
        ({"policy": {"version": 1, "rules": {"stop": "nope"}}, "steps": [{"advance": 1}]},
         "policy: rule 'stop': unknown check 'nope'"),
        ({"steps": [{"fault": {"action": "stop"}}] * 1001},
         "a scenario injects at most 1000 faults"),
        ({"steps": [{**CREATE, "expect": "refused"}, {"do": "stop", "instance": "vm1"}]},
         "step 2: instance 'vm1' was not created by an earlier step"),
        ({"steps": [{"host_down": ["compute1"]}]}, "step 1: host_down names unknown host a list"),
        ({"config": {"notify_on_state_change": "x"}, "steps": [{"advance": 1}]},
         "config: notify_on_state_change must be one of"),
        ({"x" * 1000: 1, "steps": []}, "unknown top-level keys ['xxxxxxxx"),
    ],
)  # fmt: skip
def test_scenario_boundary(data: dict[str, Any], message: str) -> None:
    """Scenario files are validated whole, with short messages, before anything runs."""
    with pytest.raises(ScenarioError) as raised:
        load_scenario(data)
    assert str(raised.value).startswith(message), str(raised.value)
    assert len(str(raised.value)) < 200


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[" * 100_000, "not JSON a scenario can hold: nested too deeply"),
        (b'{"seed": ' + b"1" * 5000 + b"}", "not JSON a scenario can hold: Exceeds the limit"),
        (b"\xff", "cannot read"),
        (b" " * (16 << 20) + b"{}", "larger than 16777216 bytes"),
    ],
)
def test_absurd_scenario_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    """Deep nesting, giant integers, bad encodings and huge files exit 2 with one line."""
    path = tmp_path / "s.json"
    path.write_bytes(content)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err, err


def test_a_guest_step_on_a_deleted_instance_fails_the_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A guest event for an instance without a guest is a failed step (exit 1), not a crash."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"steps": [
        CREATE, {"do": "delete", "instance": "vm1"},
        {"guest": {"instance": "vm1", "event": "crash"}},
    ]}))  # fmt: skip
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == "ism run: step 3 (guest): instance 'vm1' has no guest (deleted, or never built)\n"


def test_an_unwritable_output_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --events-out that cannot be written exits 2 with one line, not a traceback."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"steps": [CREATE]}))
    out = tmp_path / "missing" / "events.jsonl"
    assert main(["run", str(path), "--events-out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"ism run: cannot write {out}: No such file")


# -- what the boundary cannot reach yet: the engine's own entry (engine.py, the lead) ----------


@virtual
async def test_a_malformed_uuid_is_an_invalid_request() -> None:
    """A uuid that is not one is a bad request, not a missing instance."""
    refused: ActionRefused | None = None
    async with world() as w:
        try:
            await w.engine.act(OWNER, "stop", "../../etc/passwd")
        except ActionRefused as exc:
            refused = exc
    assert isinstance(refused, InstanceNotFound | InvalidRequest)  # refused either way
    assert isinstance(refused, InvalidRequest), refused
