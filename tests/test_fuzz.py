"""Fuzzing the public entry points with Hypothesis: nothing but ism's own errors comes out.

Each entry point gets arbitrary input: the engine API (``create``, ``act``, ``submit`` with any
action name, parameters, context and uuid), scenario files (any JSON, any bytes, and scenario-
shaped files that run), policy files and rules, ``Config.from_mapping`` and the libvirt XML
builder. Whatever comes in, what comes out is a result or an ``IsmError`` (for the XML builder,
a ``DriverError``), and a refused request leaves the engine exactly as it was.

The example counts are fixed per test (``max_examples``) so that a run's cost is known; a
failure's minimal example is printed by Hypothesis and replayed from its database.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from drivers._libvirt_xml import METADATA_NS, domain_xml, snapshot_xml, validate_guest
from drivers.base import GuestFlavor, GuestSpec, InvalidGuest
from drivers.simulator import SimulatorDriver
from statemachine.cli import main
from statemachine.clock import run_virtual
from statemachine.config import Config
from statemachine.engine import ActionHandle, Engine
from statemachine.errors import ActionRefused, IsmError, PolicyError, ScenarioError
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from statemachine.model import SYSTEM_CONTEXT, RequestContext
from statemachine.policy import Policy
from statemachine.scenario import load_scenario, run_scenario
from tests.support import ADMIN, OTHER, OWNER, SMALL, World, world

A = TypeVar("A")
R = TypeVar("R")
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
"""Any code points, lone surrogates and control characters included."""
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=10,
)
API_NAMES = sorted({a.public_name for a in DEFAULT_LIFECYCLE.actions} | {"force_stop"})
PARAM_NAMES = sorted(
    {p for a in DEFAULT_LIFECYCLE.actions for p in a.params} | {"bogus", "flavor", "type"}
)
FLAVOR = st.fixed_dictionaries(
    {
        "vcpus": st.integers(-1, 4),
        "memory_mb": st.integers(-1, 2048),
        "root_gb": st.integers(-1, 4),
    },
    optional={"name": ANY_TEXT, "swap": st.integers()},
)
PARAM_VALUES = {
    "flavor": FLAVOR | JSON,
    "type": st.sampled_from(["SOFT", "HARD", "soft", ""]) | JSON,
    "host": st.sampled_from(["compute1", "compute2", "nowhere"]) | JSON,
    "metadata": st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=3) | JSON,
    "image": st.sampled_from(["cirros", "fedora"]) | JSON,
    "name": st.sampled_from(["vm2", "snap"]) | JSON,
}
PARAMS = st.dictionaries(
    st.sampled_from(PARAM_NAMES) | ANY_TEXT,
    st.one_of(JSON, *PARAM_VALUES.values()),
    max_size=3,
)
CONTEXTS = st.one_of(
    st.sampled_from([OWNER, OTHER, ADMIN, SYSTEM_CONTEXT]),
    st.builds(
        RequestContext,
        user_id=st.sampled_from(["u1", "x"]),
        project_id=st.sampled_from(["p1", "p9"]),
        roles=st.frozensets(st.sampled_from(["admin", "member", "reader"]), max_size=2),
    ),
    st.none(),
    ANY_TEXT,
)
CREATE_ARGS = frozenset(DEFAULT_LIFECYCLE.action("create").params)
ACTION_NAMES = st.one_of(st.sampled_from(API_NAMES), ANY_TEXT, st.none(), st.integers())
"""Hashable names only: an unhashable one crashes Engine.submit's refusal counter (below)."""


def _or_error(fn: Callable[[A], R], arg: A, expected: type[Exception]) -> R | None:
    """``fn(arg)``, or None when it raised ``expected`` with a one-line message of bounded
    length; any other exception propagates and fails the test."""
    try:
        return fn(arg)
    except expected as exc:
        message = str(exc)
    assert "\n" not in message
    assert len(message) < 400, message
    return None


def _uuids(known: str) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(known), st.uuids().map(str), ANY_TEXT, st.none(), st.integers())


READS = frozenset({"hosts", "power_state"})
"""Driver calls that only read (evacuate's guard asks whether the host is down)."""


def _state(w: World) -> tuple[Any, ...]:
    """Everything a refusal must leave unchanged: every record (by identity), notifications,
    accepted count, the driver's calls that change something."""
    stats = w.engine.statistics()
    return (
        tuple((inst.uuid, id(inst)) for inst in w.engine.instances()),
        len(w.capture.notifications),
        stats.accepted,
        stats.running_actions,
        {op: n for op, n in w.sim.statistics().calls.items() if op not in READS},
    )


REQUEST = st.tuples(
    st.sampled_from(["submit", "act", "create"]), CONTEXTS, ACTION_NAMES, st.data(), PARAMS
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(requests=st.lists(REQUEST, min_size=1, max_size=5))
def test_engine_api_raises_only_ism_errors_and_refusals_change_nothing(
    requests: list[tuple[str, Any, Any, st.DataObject, dict[str, Any]]],
) -> None:
    """Any action name, params, context and uuid: a result or an IsmError, and after a refusal
    every record, notification count and driver call count is as it was."""

    async def main() -> None:
        async with world() as w:
            known = await w.create()
            for how, ctx, action, data, params in requests:
                uuid = data.draw(_uuids(known))
                before = _state(w)
                handle: ActionHandle | None = None
                try:
                    if how == "create":
                        kwargs = {k: v for k, v in params.items() if k in CREATE_ARGS}
                        kwargs = {"name": "vm", "flavor": SMALL, "image": "cirros", **kwargs}
                        handle = await w.engine.create(ctx, wait=False, **kwargs)
                    elif how == "act":
                        await w.engine.act(ctx, action, uuid, params)
                    else:
                        handle = await w.engine.submit(ctx, action, uuid, params)
                except ActionRefused as exc:
                    event(f"refused: {type(exc).__name__}")
                    assert _state(w) == before
                    continue
                except IsmError as exc:
                    event(f"accepted, then {type(exc).__name__}")
                    assert how == "act"  # accepted, then failed or was preempted
                else:
                    event("accepted")
                if isinstance(handle, ActionHandle):
                    result = await handle.wait()
                    assert result.error is None or isinstance(result.error, IsmError)
                await w.engine.wait_idle(timeout=86400)

    run_virtual(main)


def test_an_unhashable_action_name_is_refused() -> None:
    """An action name that is not a string is refused like any unknown action."""
    raised: list[Exception] = []

    async def main() -> None:
        async with world() as w:
            uuid = await w.create()
            try:
                await w.engine.submit(OWNER, ["stop"], uuid)  # type: ignore[arg-type]
            except Exception as exc:  # whatever it is, judged below
                raised.append(exc)

    run_virtual(main)
    assert len(raised) == 1
    assert isinstance(raised[0], ActionRefused), repr(raised[0])


def test_bogus_action_names_do_not_grow_the_statistics() -> None:
    """A thousand distinct unknown action names leave the per-action counters bounded by the
    table's names."""

    counters: list[int] = []

    async def main() -> None:
        async with world() as w:
            uuid = await w.create()
            for i in range(1000):
                with contextlib.suppress(ActionRefused):
                    await w.engine.submit(OWNER, f"bogus-{i}", uuid)
            counters.append(len(w.engine.statistics().by_action))

    run_virtual(main)
    assert counters[0] <= len(API_NAMES) + 1, counters


# -- scenario files ----------------------------------------------------------------------------

_NAME = st.sampled_from(["vm1", "vm2"])
_STEP = st.one_of(
    st.fixed_dictionaries(
        {"do": st.just("create"), "instance": _NAME},
        optional={
            "params": st.fixed_dictionaries(
                {"flavor": st.just(SMALL) | FLAVOR, "image": st.just("cirros")},
                optional={"metadata": st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=2),
                          "admin_pass": ANY_TEXT, "host": st.just("compute1") | ANY_TEXT},
            ),
            "expect": st.sampled_from(["ok", "refused", "failed"]),
        },
    ),
    st.fixed_dictionaries(
        {"do": st.sampled_from(API_NAMES), "instance": _NAME},
        optional={
            "params": st.dictionaries(st.sampled_from(PARAM_NAMES), JSON, max_size=2),
            "expect": st.sampled_from(["ok", "refused", "failed"]),
            "wait": st.booleans(),
            "as": st.sampled_from([{"user_id": "u", "project_id": "p", "roles": ["admin"]},
                                   {"user_id": "x", "project_id": "y"}]) | JSON,
            "error": st.sampled_from(["Forbidden", "InvalidState", "Locked"]),
        },
    ),
    st.fixed_dictionaries(
        {"fault": st.fixed_dictionaries(
            {"action": st.sampled_from(API_NAMES)},
            optional={"mode": st.sampled_from(["raise", "hang"]), "message": ANY_TEXT,
                      "times": st.integers(0, 3)},
        )}
    ),
    st.fixed_dictionaries({"advance": st.integers(0, 4000) | st.floats(-1, 1e6)}),
    st.fixed_dictionaries(
        {"guest": st.fixed_dictionaries(
            {"instance": _NAME, "event": st.sampled_from(["crash", "shutdown", "melt"])}
        )}
    ),
    st.fixed_dictionaries({"host_down": st.sampled_from(["compute1", "compute2"])}),
    st.fixed_dictionaries({"host_up": st.sampled_from(["compute1", "compute2"])}),
    st.fixed_dictionaries(
        {"wait_for": st.fixed_dictionaries(
            {"instance": _NAME, "timeout": st.integers(0, 700)},
            optional={"vm_state": st.sampled_from(["active", "stopped", "bogus"]),
                      "locked": JSON},
        )}
    ),
)  # fmt: skip
_SENSIBLE_PARAMS: dict[str, dict[str, Any]] = {
    name: {} for name in API_NAMES if name not in ("create", "force_stop")
}
_SENSIBLE_PARAMS.update(
    reboot={"type": "HARD"}, resize={"flavor": {"vcpus": 2, "memory_mb": 1024, "root_gb": 2}},
    rebuild={"image": "fedora"}, snapshot={"name": "snap"}, live_migrate={"host": "compute2"},
    evacuate={"host": "compute2"}, lock={"reason": "audit"},
)  # fmt: skip
_ADMIN_AS = {"user_id": "ops", "project_id": "p0", "roles": ["admin"]}
_SENSIBLE_STEP = st.one_of(
    st.builds(
        lambda action, expect, admin, wait: {
            "do": action, "instance": "vm1", "params": _SENSIBLE_PARAMS[action],
            "expect": expect, "wait": wait or expect == "failed",
            **({"as": _ADMIN_AS} if admin else {}),
        },
        st.sampled_from(sorted(_SENSIBLE_PARAMS)), st.sampled_from(["ok", "refused", "failed"]),
        st.booleans(), st.booleans(),
    ),
    st.fixed_dictionaries({"fault": st.fixed_dictionaries(
        {"action": st.sampled_from(sorted(_SENSIBLE_PARAMS))},
        optional={"mode": st.sampled_from(["raise", "hang"]), "message": ANY_TEXT},
    )}),
    st.fixed_dictionaries({"advance": st.integers(0, 4000)}),
    st.fixed_dictionaries({"guest": st.fixed_dictionaries(
        {"instance": st.just("vm1"), "event": st.sampled_from(["crash", "shutdown"])}
    )}),
    st.fixed_dictionaries({"host_down": st.sampled_from(["compute1", "compute2"])}),
    st.fixed_dictionaries({"host_up": st.sampled_from(["compute1", "compute2"])}),
    st.fixed_dictionaries({"wait_for": st.fixed_dictionaries(
        {"instance": st.just("vm1"), "timeout": st.integers(0, 700),
         "vm_state": st.sampled_from(["active", "stopped", "error"])},
    )}),
)  # fmt: skip
_FIRST = st.just({"do": "create", "instance": "vm1",
                  "params": {"flavor": SMALL, "image": "cirros"}})  # fmt: skip
SENSIBLE = st.fixed_dictionaries(
    {"steps": st.tuples(_FIRST, st.lists(_SENSIBLE_STEP, max_size=8)).map(
        lambda t: [t[0], *t[1]]
    ), "hosts": st.just(["compute1", "compute2"])},
    optional={
        "seed": st.integers(0, 3),
        "config": st.fixed_dictionaries({}, optional={
            "resize_confirm_window": st.integers(0, 120),
            "notify_on_state_change": st.sampled_from(["vm_state", "vm_and_task_state"]),
        }),
        "policy": st.fixed_dictionaries({"version": st.just(1), "rules": st.dictionaries(
            st.sampled_from(["stop", "unlock_override", "bypass_lock"]),
            st.sampled_from(["true", "role:admin", "rule:admin or locker"]), max_size=2,
        )}),
    },
)  # fmt: skip
"""Scenarios valid by construction, so that they run (their expectations may still miss)."""
HOSTILE = st.fixed_dictionaries(
    {"steps": st.lists(st.one_of(_STEP, st.dictionaries(ANY_TEXT, JSON, max_size=3)),
                       max_size=6)},
    optional={
        "seed": st.integers(-1, 3) | JSON,
        "hosts": st.just(["compute1", "compute2"]) | JSON,
        "config": st.dictionaries(
            st.sampled_from(["resize_confirm_window", "notify_on_state_change", "bogus"]),
            JSON, max_size=1,
        ),
        "policy": st.fixed_dictionaries(
            {"version": st.just(1), "rules": st.dictionaries(
                st.sampled_from(["stop", "unlock_override", "bypass_lock", "x"]),
                st.sampled_from(["true", "role:admin", "rule:admin or locker", "("]),
                max_size=2,
            )}
        ) | JSON,
    },
)  # fmt: skip
"""Scenarios with wrong types, unknown names and values out of range in any place."""
SCENARIOS = st.one_of(SENSIBLE, SENSIBLE, HOSTILE)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=SCENARIOS)
def test_scenarios_load_and_run_with_only_ism_errors(data: dict[str, Any]) -> None:
    """A scenario-shaped file either fails validation with ScenarioError or runs to an outcome
    (its steps met, or the first one that was not, named); nothing else escapes."""
    scenario = _or_error(load_scenario, data, ScenarioError)
    if scenario is None:
        event("refused by validation")
        return
    outcome = run_scenario(scenario)
    event("ran: every step met" if outcome.ok else "ran: a step missed")
    assert outcome.failure is None or outcome.failure.startswith("step ")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.one_of(st.binary(max_size=64), JSON.map(lambda d: json.dumps(d).encode())))
def test_ism_run_on_any_file_exits_with_one_line(content: bytes) -> None:
    """`ism run` on arbitrary bytes exits 0, 1 or 2, and a failure is one line on stderr."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.json"
        path.write_bytes(content)
        err, out = io.StringIO(), io.StringIO()
        with redirect_stderr(err), redirect_stdout(out):
            code = main(["run", str(path)])
    assert code in (0, 1, 2)
    if code:
        assert err.getvalue().count("\n") == 1, err.getvalue()


# -- policies ----------------------------------------------------------------------------------

TOKENS = st.sampled_from([
    "and", "or", "not", "(", ")", "true", "false", "is_admin", "is_system", "project_member",
    "same_user", "locker", "role:admin", "role:", "rule:admin", "rule:owner_or_admin",
    "rule:stop", "rule:nope", "role:ops", "admin", "::", "rule:x:y",
])  # fmt: skip
RULE_TEXT = st.one_of(st.lists(TOKENS, max_size=12).map(" ".join), ANY_TEXT)


@settings(max_examples=400, deadline=None)
@given(rules=st.dictionaries(
    st.sampled_from(["stop", "unlock_override", "bypass_lock", "admin", "x"]) | ANY_TEXT,
    RULE_TEXT | JSON,
    max_size=3,
), ctx=st.sampled_from([OWNER, OTHER, ADMIN, SYSTEM_CONTEXT]))  # fmt: skip
def test_any_rules_build_a_policy_or_raise_policy_error(
    rules: dict[str, Any], ctx: RequestContext
) -> None:
    """Arbitrary rule texts either fail with PolicyError or give a policy whose every check
    answers True or False (or refuses with Forbidden / Locked)."""
    policy = _or_error(Policy, rules, PolicyError)
    if policy is None:
        return
    for action in DEFAULT_LIFECYCLE.actions:
        assert policy.allows(ctx, action, None) in (True, False)
        with contextlib.suppress(ActionRefused):
            policy.check(ctx, action, None)


@settings(max_examples=300, deadline=None)
@given(data=JSON | st.fixed_dictionaries({"version": JSON, "rules": JSON}))
def test_any_json_policy_file_raises_only_policy_error(data: Any) -> None:
    """Whatever JSON a policy file holds, loading it succeeds or raises PolicyError."""
    with contextlib.suppress(PolicyError):
        Policy.from_mapping(data)


@settings(max_examples=150, deadline=None)
@given(content=st.binary(max_size=128))
def test_any_bytes_policy_file_raises_only_policy_error(content: bytes) -> None:
    """Whatever bytes a policy file holds, reading it succeeds or raises PolicyError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.json"
        path.write_bytes(content)
        with contextlib.suppress(PolicyError):
            Policy.load(path)


# -- configuration -----------------------------------------------------------------------------

CONFIG_KEYS = sorted(field.name for field in attrs.fields(Config))


@settings(max_examples=400, deadline=None)
@given(options=st.dictionaries(st.sampled_from(CONFIG_KEYS) | ANY_TEXT, JSON, max_size=4))
def test_any_configuration_builds_or_raises_invalid_request(options: dict[str, Any]) -> None:
    """Config.from_mapping and then Engine(config=...) raise nothing but IsmError."""

    async def build() -> None:
        config = _or_error(Config.from_mapping, options, IsmError)
        if config is not None:
            _or_error(lambda c: Engine(SimulatorDriver(), config=c), config, IsmError)

    run_virtual(build)


# -- the libvirt XML builder -------------------------------------------------------------------

SIZES = st.one_of(st.integers(), st.booleans(), st.floats(), st.none(), ANY_TEXT)


@settings(max_examples=500, deadline=None)
@given(
    uuid=st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), ANY_TEXT,
                   st.integers(), st.none()),
    name=st.one_of(ANY_TEXT, st.text(max_size=300), st.integers()),
    image=st.one_of(ANY_TEXT, st.just("cirros")),
    vcpus=st.one_of(st.integers(1, 8), SIZES),
    memory=st.one_of(st.integers(1, 4096), SIZES),
)  # fmt: skip
def test_domain_xml_refuses_with_invalid_guest_or_round_trips(
    uuid: Any, name: Any, image: Any, vcpus: Any, memory: Any
) -> None:
    """validate_guest raises only DriverError; what it accepts becomes XML that parses back to
    exactly the values given, with the domain named from the uuid."""
    spec = GuestSpec(uuid=uuid, name=name, host="h", flavor=GuestFlavor(vcpus, memory, 1),
                     image=image)  # fmt: skip
    valid = _or_error(validate_guest, spec, InvalidGuest)
    if valid is None:
        return
    root = ET.fromstring(domain_xml(valid, domain_type="test"))
    ns = {"ism": METADATA_NS}
    assert root.findtext("uuid") == str(uuidlib.UUID(uuid))
    assert root.findtext("name") == f"ism-{uuidlib.UUID(uuid)}"
    assert root.findtext("metadata/ism:instance/ism:name", namespaces=ns) == name
    assert root.findtext("metadata/ism:instance/ism:image", namespaces=ns) == image
    assert root.findtext("vcpu") == str(vcpus)
    assert len(root.findall("devices")) == 1
    assert not root.findall("devices/*")


@settings(max_examples=300, deadline=None)
@given(description=st.one_of(ANY_TEXT, st.text(max_size=300), st.integers(), st.none()))
def test_snapshot_xml_refuses_with_invalid_guest_or_round_trips(description: Any) -> None:
    """A snapshot's description is refused with InvalidGuest or carried exactly."""
    try:
        xml = snapshot_xml("11111111-2222-4333-8444-555555555555", description)
    except InvalidGuest:
        return
    root = ET.fromstring(xml)
    assert root.findtext("description") == description
    assert [child.tag for child in root] == ["name", "description"]
