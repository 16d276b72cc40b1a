"""Nothing sensitive leaves: canary secrets in every secret-bearing input, scanned in every
output reachable today.

The canaries ride in ``admin_pass``, ``user_data``, metadata values under secret-looking keys,
and key material in failure messages (a password, a token header, a bearer token, a JSON
password, a PEM private key), injected both by the generated paths (which fail every step of
every action, error paths and clean-ups included) and by the simulator's fault plan. The
outputs scanned: notifications, log lines (every logger, DEBUG), the message of every error
raised, instance fault records, audit records (every record of every path; ``ism audit
export`` and ``tail`` of a run's database), and for ``ism run`` its stdout, stderr, events file
and state file. Every (canary, output) pair must have zero hits.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import traceback
from pathlib import Path
from typing import Any, cast

import pytest

from drivers.simulator import FaultRule, SimulatorDriver
from statemachine import paths
from statemachine._schema import Concurrency, Precondition, Rule
from statemachine.cli import main
from statemachine.clock import run_virtual
from statemachine.config import Config
from statemachine.engine import Engine
from statemachine.errors import ActionFailed, ActionRefused, IsmError
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from statemachine.model import RequestContext
from statemachine.notify import Notification
from statemachine.redact import MASK, Redactor
from statemachine.sinks import LoggingSink
from statemachine.testing import run_covering_paths
from tests.support import OWNER, SMALL, virtual, world

CANARIES = {
    "admin_pass": "CANARY-ADMINPASS-31a7",
    "user_data": "CANARY-USERDATA-8c02",
    "metadata db_password": "CANARY-METAPASS-5d19",
    "metadata api_token": "CANARY-METATOKEN-e4b0",
    "fault password=": "CANARY-FAULTPW-77c1",
    "fault X-Auth-Token": "CANARY-AUTHTOKEN-0a9d",
    "fault bearer": "CANARY-BEARER-f3e2",
    "fault JSON admin_pass": "CANARY-JSONPASS-6b44",
    "fault private key": "CANARY-PRIVKEY-1c58",
}
"""What each canary stands for → the canary. Each is unique, so a hit names its source."""

SECRET_CREATE: dict[str, Any] = {
    "admin_pass": CANARIES["admin_pass"],
    "user_data": CANARIES["user_data"],
    "metadata": {
        "db_password": CANARIES["metadata db_password"],
        "api_token": CANARIES["metadata api_token"],
        "role": "web",
    },
}
FAULT_TEXT = (
    f" (password={CANARIES['fault password=']} X-Auth-Token: {CANARIES['fault X-Auth-Token']}"
    f" Authorization: Bearer {CANARIES['fault bearer']}"
    f' {{"admin_pass": "{CANARIES["fault JSON admin_pass"]}"}}'
    f" -----BEGIN RSA PRIVATE KEY-----\n{CANARIES['fault private key']}\n"
    "-----END RSA PRIVATE KEY-----)"
)
"""Key material as a failing hypervisor or library might put it in an exception message."""

OUTPUTS = (
    "notifications",
    "log lines",
    "error messages",
    "instance faults",
    "ism run stdout",
    "ism run stderr",
    "ism run events file",
    "ism run state file",
    "audit records",
    "ism status, actions and timeline",
)
"""Every output the canary test reads; the canary count is len(CANARIES) x len(OUTPUTS)."""

OTHER = RequestContext(user_id="intruder", project_id="elsewhere", roles={"member"})
ADMIN = paths.ADMIN
ATTEMPTED = [
    a
    for a in DEFAULT_LIFECYCLE.actions
    if not a.internal
    and not a.creates
    and a.concurrency is not Concurrency.JOINS
    and Precondition.HOST_DOWN not in a.preconditions
]


class Scanner:
    """Collects text from each output and counts canary hits per (canary, output)."""

    def __init__(self) -> None:
        self.hits: collections.Counter[tuple[str, str]] = collections.Counter()
        self.scanned: collections.Counter[str] = collections.Counter()

    def scan(self, output: str, text: str) -> None:
        assert output in OUTPUTS, output
        self.scanned[output] += 1
        for source, canary in CANARIES.items():
            if canary in text:
                self.hits[(source, output)] += 1

    def error(self, exc: BaseException) -> None:
        """An error's message (and, for a failure, its one-line reason)."""
        self.scan("error messages", f"{type(exc).__name__}: {exc}")

    def logs(self, records: list[logging.LogRecord]) -> None:
        formatter = logging.Formatter()
        for record in records:
            text = record.getMessage()
            if record.exc_info:
                text += formatter.formatException(record.exc_info)
            self.scan("log lines", text)


class ScanningSink:
    """A sink that scans each notification's envelope as JSON as it is emitted (a capture of
    every path's notifications would hold tens of thousands)."""

    def __init__(self, scanner: Scanner) -> None:
        self.scanner = scanner
        self.events: collections.Counter[str] = collections.Counter()

    def send(self, notification: Notification) -> None:
        self.events[notification.event_type] += 1
        self.scanner.scan("notifications", json.dumps(notification.envelope()))

    def close(self) -> None:
        pass


def _params(action: Any, engine: Engine, uuid: str) -> dict[str, Any]:
    if action.name == "resize":
        small = engine.get(uuid).flavor.vcpus == paths.FLAVORS[0]["vcpus"]
        return {"flavor": paths.FLAVORS[1] if small else paths.FLAVORS[0]}
    if action.variant is not None:
        return {action.variant_param: action.variant}
    return {}


def _attempts(scanner: Scanner, fired: collections.Counter[str]) -> Any:
    """After each path: one more action allowed where the path left the instance (rotating
    through the table), failing in the driver with the canary text; and a refused request."""
    turn = iter(range(10**9))

    async def attempt(engine: Engine, uuid: str) -> None:
        sim = cast(SimulatorDriver, engine.driver)
        inst = engine.get(uuid)
        allowed = [
            a
            for a in ATTEMPTED
            if inst.vm_state in a.allowed_vm_states() and a.allows_task(inst.task_state)
        ]
        if allowed:
            action = allowed[next(turn) % len(allowed)]
            sim.faults.add(FaultRule(action=action.public_name, times=None,
                                     message="injected" + FAULT_TEXT))  # fmt: skip
            ctx = ADMIN if action.rule is Rule.ADMIN else paths.OWNER
            try:
                handle = await engine.submit(ctx, action.public_name, uuid,
                                             _params(action, engine, uuid))  # fmt: skip
            except ActionRefused as exc:
                scanner.error(exc)
            else:
                result = await handle.wait()
                if result.error is not None:
                    scanner.error(result.error)
            for injected in sim.faults.fired:
                if injected.context is not None:
                    fired[injected.context.action] += 1
            sim.faults.clear()
        try:
            await engine.submit(OTHER, "stop", uuid)
        except ActionRefused as exc:
            scanner.error(exc)
        await engine.wait_idle(timeout=86400)
        fault = engine.fault(uuid)
        if fault is not None:
            scanner.scan("instance faults", f"{fault.message}\n{fault.traceback or ''}")
        await engine.wait_committed(timeout=60)
        for record in await engine.store.read_audit(instance=uuid):
            scanner.scan("audit records", json.dumps(dict(record.body), default=str))

    return attempt


def test_canaries_leave_nothing_on_every_path(caplog: pytest.LogCaptureFixture) -> None:
    """Every transition of the lifecycle (every action, every error path, failures carrying
    key material) plus a driver fault after each path: no canary in any notification, log
    line, error message or fault record."""
    caplog.set_level(logging.DEBUG)
    scanner = Scanner()
    sink = ScanningSink(scanner)
    fired: collections.Counter[str] = collections.Counter()
    config = Config(
        shelved_offload_time=-1,
        include_traceback=True,  # the larger surface: tracebacks too must be scrubbed
        notify_on_state_change="vm_and_task_state",
    )
    coverage = run_virtual(
        functools.partial(
            run_covering_paths,
            driver=lambda: SimulatorDriver(hosts=("compute1", "compute2")),
            check=_attempts(scanner, fired),
            config=config,
            sinks=[sink, LoggingSink()],
            create_params=SECRET_CREATE,
            failure_detail=FAULT_TEXT,
        )
    )
    scanner.logs(caplog.records)
    assert not coverage.missing
    assert sum(v for k, v in sink.events.items() if k.endswith(".error")) > coverage.paths
    assert scanner.scanned["error messages"] >= coverage.paths
    assert scanner.scanned["instance faults"] > 0
    assert scanner.scanned["log lines"] > 0
    assert scanner.scanned["audit records"] > coverage.paths
    assert len(fired) >= 20, sorted(fired)  # driver faults hit (nearly) every action
    assert not scanner.hits, sorted(scanner.hits)


def _scenario() -> dict[str, Any]:
    admin = {"user_id": "ops", "project_id": "p0", "roles": ["admin"]}
    message = "injected" + FAULT_TEXT
    steps: list[dict[str, Any]] = [
        {"do": "create", "instance": "vm1", "params": {"flavor": SMALL, "image": "cirros",
                                                        **SECRET_CREATE}},
        {"fault": {"action": "stop", "message": message}},
        {"do": "stop", "instance": "vm1", "expect": "failed", "error": "InjectedFault"},
        {"fault": {"action": "reboot", "step": "reboot_started_hard", "message": message}},
        {"do": "reboot", "instance": "vm1", "params": {"type": "HARD"}, "expect": "failed"},
        {"fault": {"action": "live_migrate", "step": "migrating", "message": message}},
        {"do": "live_migrate", "instance": "vm1", "as": admin, "expect": "failed"},
        {"do": "stop", "instance": "vm1", "as": {"user_id": "x", "project_id": "y"},
         "expect": "refused", "error": "Forbidden"},
        {"fault": {"action": "suspend", "message": message}},
        {"do": "suspend", "instance": "vm1"},  # expected ok, fails: the run stops here
    ]  # fmt: skip
    return {"seed": 5, "hosts": ["compute1", "compute2"],
            "config": {"notify_on_state_change": "vm_and_task_state", "include_traceback": True},
            "steps": steps}  # fmt: skip


def test_ism_run_with_canaries_prints_and_writes_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A scenario full of canaries (create's secrets, key material in every fault) exits 1 at
    its last step; stdout, stderr, the events file, the state file and the logs hold none."""
    caplog.set_level(logging.DEBUG)
    scanner = Scanner()
    path = tmp_path / "canaries.json"
    path.write_text(json.dumps(_scenario()))
    events, state = tmp_path / "events.jsonl", tmp_path / "state.json"
    db, export = tmp_path / "ism.db", tmp_path / "audit.jsonl"
    code = main(["run", str(path), "--events-out", str(events), "--state-out", str(state),
                 "--db", str(db)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("ism run: step 10 (suspend vm1): expected ok, failed: ")
    assert MASK in err  # the failure's reason is there, scrubbed
    invalid = tmp_path / "invalid.json"
    bad = _scenario()
    bad["steps"][0]["params"]["admin_pass"] = CANARIES["admin_pass"] * 20  # too long
    invalid.write_text(json.dumps(bad))
    assert main(["run", str(invalid)]) == 2
    out2, err2 = capsys.readouterr()
    assert "admin_pass must be a string of at most 255 characters" in err2
    scanner.scan("ism run stdout", out + out2)
    scanner.scan("ism run stderr", err + err2)
    lines = events.read_text().splitlines()
    assert any('"priority":"ERROR"' in line for line in lines)
    scanner.scan("ism run events file", "\n".join(lines))
    scanner.scan("ism run state file", state.read_text())
    assert main(["audit", "export", str(db), "--format", "jsonl", "--output", str(export)]) == 0
    assert main(["audit", "tail", str(db), "-n", "1000"]) == 0
    tail, _ = capsys.readouterr()
    records = export.read_text().splitlines()
    assert {"accepted", "failed", "refused"} <= {json.loads(r)["event"] for r in records}
    scanner.scan("audit records", "\n".join(records) + tail)
    timeline = tmp_path / "timeline.svg"
    for argv in (["status", "--db", str(db)], ["status", "--db", str(db), "--json"],
                 ["actions", "vm1", "--db", str(db)], ["actions", "vm1", "--db", str(db), "--json"],
                 ["timeline", "--db", str(db), "--out", str(timeline)]):  # fmt: skip
        assert main(argv) == 0, argv
    shown, _ = capsys.readouterr()
    assert "reboot" in shown  # the reads showed the run
    scanner.scan("ism status, actions and timeline", shown + timeline.read_text())
    scanner.logs(caplog.records)
    assert not scanner.hits, sorted(scanner.hits)


def test_the_canary_count() -> None:
    """The canary test scans every canary in every output: 9 canaries x 10 outputs today."""
    assert len(set(CANARIES.values())) == len(CANARIES) == 9
    assert len(OUTPUTS) == 10
    for canary in CANARIES.values():
        assert Redactor().scrub("password=" + canary) == "password=" + MASK


# -- the pieces, one by one ------------------------------------------------------------------


@pytest.mark.parametrize("include", [False, True])
@virtual
async def test_tracebacks_in_notifications_only_when_configured(include: bool) -> None:
    """Fault payloads carry no traceback by default; with include_traceback one, scrubbed."""
    async with world(config=Config(include_traceback=include)) as w:
        uuid = await w.create()
        w.sim.faults.add(FaultRule(action="pause", message="boom" + FAULT_TEXT))
        with pytest.raises(ActionFailed):
            await w.engine.act(OWNER, "pause", uuid)
        (error,) = [n for n in w.capture.notifications if n.priority == "ERROR"]
        fault = error.payload["ism_object.data"]["fault"]["ism_object.data"]
        if include:
            assert "Traceback (most recent call last)" in fault["traceback"]
            assert "InjectedFault: boom (password=***" in fault["traceback"]
        else:
            assert fault["traceback"] is None
        text = json.dumps(error.envelope())
        assert not [c for c in CANARIES.values() if c in text]


def test_configured_secret_patterns_reach_the_redactor() -> None:
    """Config.secret_key_patterns decides what the Redactor masks, in metadata and in text."""
    default = Redactor()
    custom = Redactor.from_config(Config(secret_key_patterns=["vault", "^pin$"]))
    metadata = {"vault_ref": "v1", "pin": "1234", "spin": "x", "db_password": "pw"}
    assert default.metadata(metadata) == {**metadata, "db_password": MASK}
    assert custom.metadata(metadata) == {**metadata, "vault_ref": MASK, "pin": MASK}
    assert custom.scrub("vault_ref=v1 pin: 1234 spin=x") == f"vault_ref={MASK} pin: {MASK} spin=x"
    assert default.is_secret_key("key_name") is False


def test_redactor_params_is_what_a_record_may_keep() -> None:
    """Request parameters for a record (the audit log): secrets masked, metadata redacted,
    text scrubbed, the rest as given."""
    kept = Redactor().params({
        **SECRET_CREATE, "name": "vm1", "reason": "token=abc", "flavor": SMALL,
    })  # fmt: skip
    assert kept == {
        "admin_pass": MASK, "user_data": MASK, "name": "vm1", "reason": f"token={MASK}",
        "metadata": {"db_password": MASK, "api_token": MASK, "role": "web"}, "flavor": SMALL,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("failed: password=hunter2 token=abc", f"failed: password={MASK} token={MASK}"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n", MASK),
        ("retry in 5s: host=compute1", "retry in 5s: host=compute1"),
        ('{"credentials": {"secret": "x"}}', f'{{"credentials": {{"secret": {MASK}}}}}'),
        ("passphrase='a b c' next", f"passphrase={MASK} next"),
    ],
)
def test_scrub_edge_cases(text: str, expected: str) -> None:
    """Keys are judged one by one; quoted values are masked whole."""
    assert Redactor().scrub(text) == expected


# -- what only the lead's files can fix -----------------------------------------------------


@virtual
async def test_an_instance_repr_shows_no_secret_metadata() -> None:
    """repr(Instance) (in a failing test, a log of a result) masks secret metadata values."""
    async with world() as w:
        result = await w.engine.create(OWNER, name="vm1", flavor=SMALL, image="cirros",
                                       metadata=SECRET_CREATE["metadata"])  # fmt: skip
    assert CANARIES["metadata db_password"] not in repr(result.instance)


@virtual
async def test_a_failure_chain_carries_no_key_material() -> None:
    """The whole chain of a failure, as log.exception would print it, is scrubbed."""
    chain = ""
    async with world() as w:
        uuid = await w.create()
        w.sim.faults.add(FaultRule(action="pause", message="boom" + FAULT_TEXT))
        try:
            await w.engine.act(OWNER, "pause", uuid)
        except IsmError as exc:
            chain = "".join(traceback.format_exception(exc))
    assert "ActionFailed" in chain
    assert not [c for c in CANARIES.values() if c in chain]
