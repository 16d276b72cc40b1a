"""Scenario files: scripted runs on the simulator, for reviews and as ism's conformance interface.

The format is documented in the README ("Scenario files") and kept stable. A file is validated
whole before anything runs, so an invalid file changes nothing and exits 2; a step whose
expectation is not met stops the run with exit 1, naming the step; outputs are written either
way. Everything runs on virtual time, deterministic under the file's ``seed``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
import attrs

from drivers.base import PowerState
from drivers.simulator import FaultPlan, FaultRule, SimulatorDriver

from . import _validate
from ._faults import fault_rule
from ._params import normalize_params, resolve_action
from .clock import VirtualClock, run_virtual
from .config import Config
from .engine import ActionHandle, Engine, Outcome
from .errors import (
    ActionRefused,
    GuestNotFound,
    InvalidRequest,
    IsmError,
    PolicyError,
    ScenarioError,
    WaitTimeout,
)
from .lifecycle import DEFAULT_LIFECYCLE
from .model import RequestContext
from .policy import Policy
from .sinks import JsonlSink, MemoryCapture, Sink
from .states import TaskState, VmState
from .store import Store

__all__ = ["Scenario", "ScenarioOutcome", "load_scenario", "run_scenario"]

DEFAULT_CONTEXT = {"user_id": "user", "project_id": "project", "roles": ["member"]}
STEP_KINDS = ("do", "fault", "wait_for", "guest", "host_down", "host_up", "advance")
WAIT_KEYS = {"vm_state", "task_state", "power_state", "host", "locked"}
MAX_STEPS = 100_000
MAX_TIMEOUT = 30 * 86400.0
MAX_HOSTS = 1000
MAX_HELD = 10_000
"""Notifications the runner keeps for its waits' failure messages (the newest)."""
MAX_FILE_BYTES = 16 << 20
"""Largest scenario file read, in bytes (16 MiB; the tour is 2 KiB)."""


@attrs.frozen
class Scenario:
    """A validated scenario file."""

    seed: int
    hosts: tuple[str, ...]
    config: Config
    steps: tuple[Mapping[str, Any], ...]
    policy: Policy = attrs.field(factory=Policy)


@attrs.frozen
class ScenarioOutcome:
    """How a run went: ``failure`` names the first step that missed its expectation."""

    failure: str | None
    state: dict[str, dict[str, Any]]
    notifications: int

    @property
    def ok(self) -> bool:
        """Whether every step met its expectation."""
        return self.failure is None


def _fail(index: int, message: str) -> ScenarioError:
    return ScenarioError(f"step {index}: {message}")


def _number(value: object, what: str, index: int, *, low: float = 0.0) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not low <= value <= MAX_TIMEOUT
    ):
        raise _fail(index, f"{what} must be a number in [{low:g}, {MAX_TIMEOUT:g}]")
    return float(value)


def load_scenario(source: str | Path | Mapping[str, Any]) -> Scenario:
    """Read and validate a scenario (a path, or the already-parsed object).

    Raises:
        ScenarioError: the file is unreadable, not JSON, or any step is malformed.
    """
    data: Any = source if isinstance(source, Mapping) else _read(source)
    if not isinstance(data, Mapping):
        raise ScenarioError("a scenario is a JSON object")
    unknown = set(data) - {"seed", "hosts", "config", "policy", "steps"}
    if unknown:
        shown = sorted(_validate.show(k) for k in unknown)
        raise ScenarioError(f"unknown top-level keys [{', '.join(shown[:5])}]")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ScenarioError("seed must be a non-negative integer")
    hosts = data.get("hosts", ["compute1"])
    if (
        not isinstance(hosts, list)
        or not hosts
        or len(hosts) > MAX_HOSTS
        or not all(isinstance(h, str) for h in hosts)
        or len(set(hosts)) != len(hosts)
    ):
        raise ScenarioError("hosts must be a non-empty list of distinct host names")
    for host in hosts:
        try:
            _validate.host(host)
        except InvalidRequest as exc:
            raise ScenarioError(f"hosts: {exc}") from None
    try:
        config = Config.from_mapping(data.get("config", {}))
    except InvalidRequest as exc:
        raise ScenarioError(f"config: {exc}") from None
    try:
        policy = Policy.from_mapping(data["policy"]) if "policy" in data else Policy()
    except PolicyError as exc:
        raise ScenarioError(f"policy: {exc}") from None
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps or len(steps) > MAX_STEPS:
        raise ScenarioError(f"steps must be a non-empty list of at most {MAX_STEPS} steps")
    created: set[str] = set()
    for index, step in enumerate(steps, 1):
        _validate_step(index, step, created, hosts)
    faults = sum(1 for step in steps if "fault" in step)
    if faults > FaultPlan.MAX_RULES:
        raise ScenarioError(f"a scenario injects at most {FaultPlan.MAX_RULES} faults")
    return Scenario(seed=seed, hosts=tuple(hosts), config=config, steps=tuple(steps), policy=policy)


def _read(source: str | Path) -> Any:
    """A file's JSON, read within :data:`MAX_FILE_BYTES`; every failure a ScenarioError."""
    try:
        with Path(source).open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(f"cannot read {source}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(f"cannot read {source}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"cannot read {source}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"not JSON: {exc.msg} at line {exc.lineno}") from None
    except (ValueError, RecursionError) as exc:  # 4300+ digit integers, absurd nesting
        kind = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ScenarioError(f"not JSON a scenario can hold: {kind}") from None


def _validate_step(index: int, step: object, created: set[str], hosts: Sequence[str]) -> None:
    if not isinstance(step, Mapping):
        raise _fail(index, "a step is an object")
    kinds = [k for k in STEP_KINDS if k in step]
    if len(kinds) != 1:
        raise _fail(index, f"a step has exactly one of {', '.join(STEP_KINDS)}")
    kind = kinds[0]
    allowed = {"do": {"do", "instance", "params", "as", "wait", "expect", "error"}}.get(
        kind, {kind}
    )
    extra = set(step) - allowed
    if extra:
        raise _fail(index, f"unknown keys {sorted(extra)} in a {kind} step")
    if kind == "do":
        _validate_do(index, step, created)
    elif kind == "fault":
        _validate_fault(index, step["fault"])
    elif kind == "wait_for":
        _validate_wait(index, step["wait_for"], created)
    elif kind == "guest":
        guest = step["guest"]
        if not isinstance(guest, Mapping) or set(guest) != {"instance", "event"}:
            raise _fail(index, "guest needs exactly instance and event")
        if not isinstance(guest["event"], str) or guest["event"] not in ("crash", "shutdown"):
            raise _fail(index, "guest event must be crash or shutdown")
        _known(index, guest["instance"], created)
    elif kind in ("host_down", "host_up"):
        if not isinstance(step[kind], str) or step[kind] not in hosts:
            raise _fail(index, f"{kind} names unknown host {_validate.show(step[kind])}")
    else:
        _number(step["advance"], "advance", index)


def _known(index: int, name: object, created: set[str]) -> None:
    if not isinstance(name, str) or name not in created:
        raise _fail(index, f"instance {_validate.show(name)} was not created by an earlier step")


def _validate_do(index: int, step: Mapping[str, Any], created: set[str]) -> None:
    action, name = step["do"], step.get("instance")
    if not isinstance(action, str) or not DEFAULT_LIFECYCLE.api_actions().get(action):
        raise _fail(index, f"unknown action {_validate.show(action)}")
    if not isinstance(name, str) or not name:
        raise _fail(index, "do needs an instance name")
    if action == "create":
        if name in created:
            raise _fail(index, f"instance {_validate.show(name)} is created twice")
        if step.get("expect", "ok") != "refused":  # a refused create creates nothing
            created.add(name)
    else:
        _known(index, name, created)
    if "params" in step and not isinstance(step["params"], Mapping):
        raise _fail(index, "params must be an object")
    if step.get("expect", "ok") != "refused":
        # a malformed request is a broken file, unless the step means to test the refusal
        params = dict(step.get("params", {}))
        if action == "create":
            params["name"] = name
        try:
            entry = resolve_action(DEFAULT_LIFECYCLE, action, params)
            normalize_params(entry, params)
        except InvalidRequest as exc:
            raise _fail(index, f"{action}: {exc}") from None
    if "as" in step:
        try:
            RequestContext.from_mapping(step["as"])
        except InvalidRequest as exc:
            raise _fail(index, f"as: {exc}") from None
    wait = step.get("wait", True)
    if not isinstance(wait, bool):
        raise _fail(index, "wait must be true or false")
    expect = step.get("expect", "ok")
    if expect not in ("ok", "refused", "failed"):
        raise _fail(index, "expect must be ok, refused or failed")
    if expect == "failed" and not wait:
        raise _fail(index, "expect failed needs wait true")
    if "error" in step and (not isinstance(step["error"], str) or expect == "ok"):
        raise _fail(index, "error names an error class, with expect refused or failed")


def _validate_fault(index: int, fault: object) -> None:
    if not isinstance(fault, Mapping):
        raise _fail(index, "fault must be an object")
    extra = set(fault) - {"action", "step", "mode", "times", "message", "nth", "probability"}
    if extra:
        raise _fail(index, f"unknown fault keys {sorted(extra)}")
    if not isinstance(fault.get("action"), str):
        raise _fail(index, "fault needs an action")
    if fault.get("mode", "raise") not in ("raise", "hang"):
        raise _fail(index, "fault mode must be raise or hang")
    for key in ("times", "nth"):
        value = fault.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
            raise _fail(index, f"fault {key} must be a positive integer")
    if "probability" in fault:
        _number(fault["probability"], "fault probability", index)
        if fault["probability"] > 1:
            raise _fail(index, "fault probability must be at most 1")
    for key in ("step", "message"):
        if key in fault and not isinstance(fault[key], str):
            raise _fail(index, f"fault {key} must be a string")
    try:  # names the table does not know would make a rule that never fires
        _fault_rule(fault)
    except InvalidRequest as exc:
        raise _fail(index, f"fault: {exc}") from None


def _fault_rule(fault: Mapping[str, Any]) -> FaultRule:
    """The simulator's rule for a (validated) fault step."""
    return fault_rule(
        DEFAULT_LIFECYCLE,
        fault["action"],
        step=fault.get("step"),
        mode=fault.get("mode", "raise"),
        nth=fault.get("nth", 1),
        times=fault.get("times", 1),
        probability=fault.get("probability"),
        message=fault.get("message", "injected fault"),
    )


def _validate_wait(index: int, wait: object, created: set[str]) -> None:
    if not isinstance(wait, Mapping):
        raise _fail(index, "wait_for must be an object")
    if "timeout" not in wait:
        raise _fail(index, "wait_for needs a timeout (virtual seconds)")
    _number(wait["timeout"], "timeout", index)
    if "event" in wait:
        if set(wait) - {"event", "timeout"} or not isinstance(wait["event"], str):
            raise _fail(index, "an event wait_for takes event and timeout only")
        return
    _known(index, wait.get("instance"), created)
    keys = set(wait) - {"instance", "timeout"}
    if not keys or keys - WAIT_KEYS:
        raise _fail(index, f"wait_for checks some of {sorted(WAIT_KEYS)}")
    for key, enum_cls in (("vm_state", VmState), ("task_state", TaskState)):
        value = wait.get(key, ...)
        if value is not ... and value is not None and value not in {e.value for e in enum_cls}:
            raise _fail(index, f"unknown {key} {value!r}")
    if "power_state" in wait:
        try:
            PowerState.from_label(wait["power_state"])
        except (ValueError, TypeError):
            raise _fail(index, f"unknown power_state {wait['power_state']!r}") from None


def _error_matches(error: BaseException, name: str) -> bool:
    chain: list[BaseException] = [error]
    if error.__cause__ is not None:
        chain.append(error.__cause__)
    return any(cls.__name__ == name for exc in chain for cls in type(exc).__mro__)


class _Runner:
    def __init__(
        self, scenario: Scenario, sinks: Sequence[Sink], store: Store | None = None
    ) -> None:
        self.scenario = scenario
        self.driver = SimulatorDriver(hosts=scenario.hosts, seed=scenario.seed)
        # bounded: a file is untrusted input; waits for an event count what arrived, not
        # what is held, so forgetting the oldest notifications changes no outcome
        self.capture = MemoryCapture(maxlen=MAX_HELD)
        self.engine = Engine(
            self.driver,
            config=scenario.config,
            sinks=[*sinks, self.capture],
            clock=VirtualClock(),
            policy=scenario.policy,
            seed=scenario.seed,
            store=store,
        )
        self.names: dict[str, str] = {}
        self.owners: dict[str, RequestContext] = {}

    async def run(self) -> str | None:
        async with self.engine:
            for index, step in enumerate(self.scenario.steps, 1):
                failure = await self.step(index, step)
                if failure is not None:
                    return f"step {index} ({_describe(step)}): {failure}"
            await self.engine.wait_idle(timeout=MAX_TIMEOUT)
        return None

    async def step(self, index: int, step: Mapping[str, Any]) -> str | None:
        if "do" in step:
            return await self.do(step)
        if "fault" in step:
            self.driver.faults.add(_fault_rule(step["fault"]))
        elif "wait_for" in step:
            return await self.wait_for(step["wait_for"])
        elif "guest" in step:
            g = step["guest"]
            try:
                self.driver.guest_event(self.names[g["instance"]], g["event"])
            except GuestNotFound:
                return f"instance {g['instance']!r} has no guest (deleted, or never built)"
            await anyio.sleep(1.0)  # one virtual second: the listener takes the event
            await self.engine.wait_idle(timeout=MAX_TIMEOUT)
        elif "host_down" in step:
            self.driver.host_down(step["host_down"])
        elif "host_up" in step:
            self.driver.host_up(step["host_up"])
        else:
            await anyio.sleep(float(step["advance"]))
            await self.engine.wait_idle(timeout=MAX_TIMEOUT)
        return None

    async def do(self, step: Mapping[str, Any]) -> str | None:
        action, name = step["do"], step["instance"]
        params = dict(step.get("params", {}))
        expect: Literal["ok", "refused", "failed"] = step.get("expect", "ok")
        ctx = (
            RequestContext.from_mapping(step["as"])
            if "as" in step
            else self.owners.get(name, RequestContext.from_mapping(DEFAULT_CONTEXT))
        )
        try:
            if action == "create":
                handle = await self.engine.submit(ctx, "create", None, {"name": name, **params})
                self.names[name] = handle.uuid
                self.owners[name] = ctx
            else:
                handle = await self.engine.submit(ctx, action, self.names[name], params)
        except ActionRefused as exc:
            if expect != "refused":
                return f"expected {expect}, refused: {type(exc).__name__}: {exc}"
            if "error" in step and not _error_matches(exc, step["error"]):
                return f"refused with {type(exc).__name__}, expected {step['error']}"
            return None
        if expect == "refused":
            return "expected refused, but it was accepted"
        if not step.get("wait", True):
            return None
        return await self._ended(handle, expect, step.get("error"))

    async def _ended(self, handle: ActionHandle, expect: str, error: str | None) -> str | None:
        try:
            result = await handle.wait()
        except WaitTimeout as exc:
            return str(exc)
        if expect == "ok" and result.outcome != Outcome.OK:
            return f"expected ok, {result.outcome}: {result.error}"
        if expect == "failed":
            if result.outcome == Outcome.OK:
                return "expected failed, but it succeeded"
            assert result.error is not None
            if error is not None and not _error_matches(result.error, error):
                cause = type(result.error.__cause__).__name__ if result.error.__cause__ else "-"
                return f"failed with {type(result.error).__name__} ({cause}), expected {error}"
        return None

    async def wait_for(self, wait: Mapping[str, Any]) -> str | None:
        timeout = float(wait["timeout"])
        try:
            if "event" in wait:
                await self.capture.wait_for(
                    "instance." + wait["event"].removeprefix("instance."), count=1, timeout=timeout
                )
            else:
                expected = {k: v for k, v in wait.items() if k in WAIT_KEYS}
                await self.engine.wait_for_state(
                    self.names[wait["instance"]], timeout=timeout, **expected
                )
        except (AssertionError, IsmError) as exc:
            return " ".join(str(exc).split())[:500]
        return None

    def state(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, uuid in self.names.items():
            inst = self.engine.get(uuid)
            out[name] = {
                "uuid": inst.uuid,
                "vm_state": inst.vm_state.value,
                "task_state": inst.task_state.value if inst.task_state else None,
                "power_state": inst.power_state.label,
                "host": inst.host,
                "flavor": inst.flavor.as_dict(),
                "locked": inst.locked,
            }
        return out


def _describe(step: Mapping[str, Any]) -> str:
    if "do" in step:
        return f"{step['do']} {step['instance']}"
    return next(k for k in STEP_KINDS if k in step)


def run_scenario(
    scenario: Scenario, *, events_out: Path | None = None, store: Store | None = None
) -> ScenarioOutcome:
    """Run on virtual time; write every notification envelope to ``events_out`` (JSON Lines);
    keep the instances, audit log and outbox in ``store`` (``ism run --db``)."""
    sinks: list[Sink] = []
    jsonl = JsonlSink(events_out) if events_out is not None else None
    if jsonl is not None:
        sinks.append(jsonl)
    runner = _Runner(scenario, sinks, store)
    try:
        failure = run_virtual(runner.run)
    finally:
        if jsonl is not None:
            jsonl.close()
    return ScenarioOutcome(
        failure=failure,
        state=runner.state(),
        notifications=runner.engine.statistics().notifications,
    )
