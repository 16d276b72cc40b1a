"""Payload building and redaction, without an engine."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from drivers.base import PowerState
from statemachine.model import Fault, Flavor, Instance, RequestContext
from statemachine.notify import Notifier, NotifySettings
from statemachine.redact import redact_metadata, scrub
from statemachine.sinks import JsonlSink, MemoryCapture
from statemachine.states import TaskState, VmState

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
CTX = RequestContext(user_id="u1", project_id="p1", roles=frozenset({"member"}), request_id="r1")


def _instance(**changes: object) -> Instance:
    base = Instance(
        uuid="11111111-2222-4333-8444-555555555555", name="vm1", user_id="u1", project_id="p1",
        flavor=Flavor(vcpus=1, memory_mb=512, root_gb=1), image="cirros",
        vm_state=VmState.ACTIVE, task_state=None, power_state=PowerState.RUNNING,
        created_at=T0, updated_at=T0, host="compute1",
        metadata={"db_password": "canary-META", "role": "web"},
    )  # fmt: skip
    return base.evolve(**changes) if changes else base


def _notifier(capture: MemoryCapture, **settings: object) -> Notifier:
    ids = iter(f"id-{i}" for i in range(1000))
    return Notifier(
        settings=NotifySettings(**settings),  # type: ignore[arg-type]
        sinks=[capture],
        wall=lambda: T0,
        new_id=lambda: next(ids),
    )


def test_envelope_and_payload_shape() -> None:
    """An action event has Nova's envelope, payload class, version and allow-listed data."""
    capture = MemoryCapture()
    n = _notifier(capture).emit("power_off.start", _instance(), ctx=CTX)
    env = n.envelope()
    assert env["event_type"] == "instance.power_off.start"
    assert env["priority"] == "INFO"
    assert env["publisher_id"] == "ism-compute:compute1"
    assert env["timestamp"] == "2026-03-01 12:00:00.000000"
    assert env["sequence"] == 1
    payload = env["payload"]
    assert payload["ism_object.name"] == "InstanceActionPayload"
    assert payload["ism_object.version"] == "1.9"
    data = payload["ism_object.data"]
    assert data["state"] == "active"
    assert data["power_state"] == "running"
    assert data["tenant_id"] == "p1"
    assert data["request_id"] == "r1"
    assert data["fault"] is None
    assert data["created_at"] == "2026-03-01T12:00:00Z"
    assert data["flavor"]["ism_object.name"] == "FlavorPayload"
    assert data["metadata"] == {}  # create's metadata and key_name are never emitted
    assert data["key_name"] is None
    assert "canary-META" not in json.dumps(env)


@pytest.mark.parametrize(
    ("event", "name", "version"),
    [
        ("create.start", "InstanceCreatePayload", "1.13"),
        ("resize_prep.end", "InstanceActionResizePrepPayload", "1.4"),
        ("rescue.end", "InstanceActionRescuePayload", "1.4"),
        ("rebuild.start", "InstanceActionRebuildPayload", "1.10"),
        ("snapshot.end", "InstanceActionSnapshotPayload", "1.10"),
        ("exists", "InstanceExistsPayload", "2.1"),
        ("lock", "InstanceActionPayload", "1.9"),
    ],
)
def test_payload_class_per_event(event: str, name: str, version: str) -> None:
    """Each event carries Nova's payload class and version for it."""
    capture = MemoryCapture()
    payload = _notifier(capture).emit(event, _instance(), ctx=CTX).payload
    assert (payload["ism_object.name"], payload["ism_object.version"]) == (name, version)


def test_nova_namespace() -> None:
    """The nova setting emits nova_object.* keys and nova-compute publishers."""
    capture = MemoryCapture()
    n = _notifier(capture, namespace="nova").emit("pause.end", _instance(host=None), ctx=CTX)
    assert set(n.payload) == {
        "nova_object.name", "nova_object.namespace", "nova_object.version", "nova_object.data"
    }  # fmt: skip
    assert n.payload["nova_object.namespace"] == "nova"
    assert n.publisher_id == "nova-compute:ism"


def test_error_carries_a_scrubbed_fault() -> None:
    """An error notification is ERROR with an ExceptionPayload whose message is scrubbed."""
    capture = MemoryCapture()
    fault = Fault("InjectedFault", "failed: password=hunter2 token=abc", "stop", "powering-off",
                  T0, "drivers.base", "_operate")  # fmt: skip
    n = _notifier(capture).emit("power_off.error", _instance(), ctx=CTX, fault=fault)
    assert n.priority == "ERROR"
    data = n.payload["ism_object.data"]["fault"]["ism_object.data"]
    assert data["exception"] == "InjectedFault"
    assert data["exception_message"] == "failed: password=*** token=***"
    assert data["traceback"] is None


def test_update_modes() -> None:
    """instance.update follows Nova's send_update: off, or one per save, with the old and new
    states only when the state changed under the mode (else old equals new)."""
    old = _instance()
    new = _instance(task_state=TaskState.POWERING_OFF)
    done = new.evolve(vm_state=VmState.STOPPED, task_state=None)

    def updates(mode: str | None) -> list[dict[str, object]]:
        capture = MemoryCapture()
        notifier = _notifier(capture, notify_on_state_change=mode)
        notifier.emit_update(old, new, CTX)
        notifier.emit_update(new, done, CTX)
        return [
            n.payload["ism_object.data"]["state_update"]["ism_object.data"]
            for n in capture.notifications
        ]

    assert updates(None) == []
    assert updates("vm_state") == [
        {"old_state": "active", "state": "active", "old_task_state": "powering-off",
         "new_task_state": "powering-off"},
        {"old_state": "active", "state": "stopped", "old_task_state": "powering-off",
         "new_task_state": None},
    ]  # fmt: skip
    assert updates("vm_and_task_state") == [
        {"old_state": "active", "state": "active", "old_task_state": None,
         "new_task_state": "powering-off"},
        {"old_state": "active", "state": "stopped", "old_task_state": "powering-off",
         "new_task_state": None},
    ]  # fmt: skip


def test_sequence_is_per_instance() -> None:
    """Each instance's notifications are numbered 1, 2, 3 … independently."""
    capture = MemoryCapture()
    notifier = _notifier(capture)
    a, b = _instance(), _instance(uuid="99999999-2222-4333-8444-555555555555")
    seqs = [notifier.emit("lock", inst, ctx=CTX).sequence for inst in (a, b, a, a, b)]
    assert seqs == [1, 1, 2, 3, 2]


def test_jsonl_sink_writes_one_envelope_per_line(tmp_path: object) -> None:
    """The JSON Lines sink writes valid JSON, one envelope per line, in order."""
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "out.jsonl"
    sink = JsonlSink(path)
    ids = iter(["m1", "m2"])  # message ids are unique: the sink drops a repeated one
    notifier = Notifier(settings=NotifySettings(), sinks=[sink], wall=lambda: T0,
                        new_id=ids.__next__)  # fmt: skip
    for event in ("stop.start", "stop.end"):
        notifier.emit(event, _instance(), ctx=CTX)
    sink.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["event_type"] for line in lines] == [
        "instance.stop.start", "instance.stop.end"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=hunter2", "password=***"),
        ('{"adminPass": "s3cret"}', '{"adminPass": ***}'),
        ("admin_pass: abc def", "admin_pass: *** def"),
        ("X-Auth-Token: gAAAAA", "X-Auth-Token: ***"),
        ("Authorization: Bearer abc.def", "Authorization: ***"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", "***"),
        ("host compute1 is down", "host compute1 is down"),
        ("key_name=mykey", "key_name=mykey"),
    ],
)
def test_scrub(text: str, expected: str) -> None:
    """Secrets in free text are masked; ordinary text is left alone."""
    assert scrub(text) == expected


def test_redact_metadata() -> None:
    """Values of secret-looking keys are masked, others kept, key_name is not a secret."""
    assert redact_metadata({"api_key": "1", "DB_PASSWORD": "2", "role": "3", "key_name": "4"}) == {
        "api_key": "***", "DB_PASSWORD": "***", "role": "3", "key_name": "4"
    }  # fmt: skip
