"""Authorization as data: the default policy, overrides, the rule language, policy files."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from drivers.base import PowerState
from statemachine import Rule
from statemachine._policy_rules import MAX_DEPTH, MAX_RULE_LENGTH, parse
from statemachine.cli import main
from statemachine.errors import Forbidden, Locked, PolicyError
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from statemachine.model import SYSTEM_CONTEXT, Flavor, Instance, RequestContext
from statemachine.policy import NAMED_RULES, Policy, default_rules
from statemachine.states import VmState
from tests.support import ADMIN, OTHER, OWNER, virtual, world

OPERATOR = RequestContext(user_id="op", project_id="elsewhere", roles={"operator"})
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_default_rules_derive_from_the_table() -> None:
    """Every action's default entry is rule:<Action.rule>, and every Rule value is defined."""
    rules = default_rules()
    for action in DEFAULT_LIFECYCLE.actions:
        assert rules[action.name] == f"rule:{action.rule.value}"
    assert {rule.value for rule in Rule} <= set(NAMED_RULES)
    assert DEFAULT_LIFECYCLE.action("unlock").rule is Rule.UNLOCK_OVERRIDE
    assert Policy().rules == rules
    assert Policy().overridden == frozenset()


def test_policy_round_trips_through_its_file_form() -> None:
    """as_mapping is a valid policy file that loads back to the same rules."""
    policy = Policy({"stop": "role:operator or rule:admin"})
    again = Policy.from_mapping(json.loads(json.dumps(policy.as_mapping())))
    assert again.rules == policy.rules
    assert again.rules["stop"] == "role:operator or rule:admin"


@pytest.mark.parametrize(
    ("ctx", "action", "allowed"),
    [
        (OWNER, "stop", True),
        (OTHER, "stop", False),
        (ADMIN, "stop", True),
        (OWNER, "force_delete", False),
        (ADMIN, "force_delete", True),
        (OWNER, "evacuate", False),
        (OWNER, "live_migrate", False),
        (OWNER, "live_migrate_abort", False),
        (OWNER, "live_migrate_force_complete", False),
        (OWNER, "force_stop", False),
        (ADMIN, "force_stop", False),
        (SYSTEM_CONTEXT, "force_stop", True),
    ],
)
@virtual
async def test_default_policy_is_novas(ctx: RequestContext, action: str, allowed: bool) -> None:
    """Owner-or-admin for ordinary actions, admin only for the admin actions, system only for
    the power sync's force_stop."""
    async with world() as w:
        uuid = await w.create()
        entry = DEFAULT_LIFECYCLE.action(action)
        assert w.engine.policy.allows(ctx, entry, w.engine.get(uuid)) is allowed


@virtual
async def test_an_override_replaces_one_rule_and_a_refusal_changes_nothing() -> None:
    """With stop limited to operators, the owner is refused (naming the rule) with nothing
    changed, and an operator of another project may stop the instance."""
    policy = Policy({"stop": "role:operator"})
    async with world(policy=policy) as w:
        uuid = await w.create()
        before = w.engine.get(uuid)
        with pytest.raises(Forbidden, match=r"'stop' to be performed \(rule 'stop'\)"):
            await w.engine.act(OWNER, "stop", uuid)
        assert w.engine.get(uuid) is before
        assert w.engine.statistics().refused == 1
        await w.engine.act(OPERATOR, "stop", uuid)
        assert w.engine.get(uuid).vm_state.value == "stopped"


@virtual
async def test_unlock_override_is_a_rule_in_the_data() -> None:
    """By default an admin's lock needs an admin to lift; redefining unlock_override lets the
    owner lift it."""
    async with world() as w:
        uuid = await w.create()
        await w.engine.act(ADMIN, "lock", uuid)
        with pytest.raises(Forbidden, match="unlock_override"):
            await w.engine.act(OWNER, "unlock", uuid)
        assert w.engine.get(uuid).locked
    relaxed = Policy({"unlock_override": "rule:owner_or_admin"})
    async with world(policy=relaxed) as w:
        uuid = await w.create()
        await w.engine.act(ADMIN, "lock", uuid)
        await w.engine.act(OWNER, "unlock", uuid)
        assert not w.engine.get(uuid).locked


@virtual
async def test_bypass_lock_narrows_who_acts_on_a_locked_instance() -> None:
    """bypass_lock limited to operators-who-are-admins refuses a plain admin with Locked."""
    policy = Policy({"bypass_lock": "is_admin and role:operator"})
    ops_admin = RequestContext(user_id="root", project_id="p0", roles={"admin", "operator"})
    async with world(policy=policy) as w:
        uuid = await w.create()
        await w.engine.act(OWNER, "lock", uuid)
        before = w.engine.get(uuid)
        with pytest.raises(Locked):
            await w.engine.act(ADMIN, "stop", uuid)
        assert w.engine.get(uuid) is before
        await w.engine.act(ops_admin, "stop", uuid)
        assert policy.bypasses_lock(ops_admin, w.engine.get(uuid))
        assert not policy.bypasses_lock(ADMIN, w.engine.get(uuid))


def test_the_engine_itself_is_never_subject_to_the_policy() -> None:
    """A policy that denies everything still lets the system context through."""
    deny = Policy(dict.fromkeys(NAMED_RULES, "false"))
    stop = DEFAULT_LIFECYCLE.action("stop")
    assert not deny.allows(ADMIN, stop, None)
    assert deny.allows(SYSTEM_CONTEXT, stop, None)
    deny.check(SYSTEM_CONTEXT, stop, None)
    with pytest.raises(Forbidden, match="owner_or_admin"):
        deny.check(ADMIN, stop, None)


@pytest.mark.parametrize(
    ("text", "holds"),
    [
        ("true", True),
        ("false", False),
        ("not false", True),
        ("true and false or true", True),
        ("true and (false or false)", False),
        ("role:operator", True),
        ("role:admin", False),
        ("not (role:admin or is_system)", True),
        ("project_member", False),
        ("same_user", False),
        ("locker", True),
    ],
)
def test_rule_language_evaluates(text: str, holds: bool) -> None:
    """and binds tighter than or; checks answer about the caller and the instance."""
    policy = Policy({"stop": text})
    stop = DEFAULT_LIFECYCLE.action("stop")
    instance = _instance()
    assert policy.allows(OPERATOR, stop, instance) is holds


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"stop": ""}, "rule 'stop' is empty"),
        ({"stop": "is_admin or"}, "rule 'stop': ends too early"),
        ({"stop": "(is_admin"}, "rule 'stop': a '(' is not closed"),
        ({"stop": "is_admin)"}, "rule 'stop': unexpected ')' after a complete rule"),
        ({"stop": "and is_admin"}, "rule 'stop': unexpected 'and' where a check belongs"),
        ({"stop": "admn"}, "rule 'stop': unknown check 'admn'; known: true, false, is_admin"),
        ({"stop": "user:bob"}, "rule 'stop': unknown check 'user:bob'; prefixes are role: and"),
        ({"stop": "role:"}, "rule 'stop': invalid role name ''"),
        ({"stop": "rule:Admin"}, "rule 'stop': invalid rule name 'Admin'"),
        ({"stop": "rule:nope"}, "rule 'stop' refers to unknown rule 'nope'"),
        ({"stop": 1}, "rule 'stop' must be a string, not int"),
        ({"stop": "x" * (MAX_RULE_LENGTH + 1)}, "rule 'stop' is longer than 1024 characters"),
        ({"stop": "not " * (MAX_DEPTH + 1) + "true"}, "rule 'stop': nests deeper than 32"),
        ({"stpo": "is_admin"}, "rule 'stpo' is neither an action of the lifecycle, a named"),
        ({"Stop": "is_admin"}, "invalid rule name 'Stop': lower-case letters"),
        (
            {"a": "rule:b", "b": "rule:a", "stop": "rule:a"},
            "rules refer to each other in a cycle: a -> b -> a",
        ),
    ],
)
def test_invalid_rules_are_refused_with_exact_messages(rules: dict[str, Any], message: str) -> None:
    """A rule that does not parse or check raises PolicyError naming the rule and the fault."""
    with pytest.raises(PolicyError) as raised:
        Policy(rules)
    assert str(raised.value).startswith(message)


def test_reference_chains_are_bounded() -> None:
    """A long chain of rule: references is refused before it could exhaust the stack."""
    chain = {f"r{i}": f"rule:r{i + 1}" for i in range(200)}
    chain["r200"] = "true"
    chain["stop"] = "rule:r0"
    with pytest.raises(PolicyError, match="nest deeper than"):
        Policy(chain)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a policy is a JSON object, not list"),
        ({"rules": {}}, "policy version must be 1"),
        ({"version": True, "rules": {}}, "policy version must be 1"),
        ({"version": 1, "rules": []}, "policy rules must be an object"),
        ({"version": 1, "rules": {}, "extra": 1}, "unknown policy keys ['extra']"),
    ],
)
def test_policy_file_shape_is_checked(data: Any, message: str) -> None:
    """A policy file is {"version": 1, "rules": {...}} and nothing else."""
    with pytest.raises(PolicyError) as raised:
        Policy.from_mapping(data)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not JSON: Expecting property name"),
        (b"\xff\xfe", "is not UTF-8 text"),
        (b"[" * 100_000, "is not JSON a policy can hold"),
        (b"1" * 5000, "is not JSON a policy can hold"),
        (b" " * (1 << 20) + b"{}", "is larger than 1048576 bytes"),
    ],
)
def test_policy_files_that_cannot_be_read_are_refused(
    tmp_path: Path, content: bytes, message: str
) -> None:
    """Unreadable, oversized, non-UTF-8, non-JSON and absurd JSON files raise PolicyError."""
    path = tmp_path / "policy.json"
    path.write_bytes(content)
    with pytest.raises(PolicyError, match=message):
        Policy.load(path)
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "absent.json")


def test_cli_policy_show_prints_the_default_as_data(capsys: pytest.CaptureFixture[str]) -> None:
    """ism policy show --format json prints a valid policy file: the defaults."""
    assert main(["policy", "show", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"version": 1, "rules": default_rules()}
    assert Policy.from_mapping(shown).rules == default_rules()
    assert main(["policy", "show"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["owner_or_admin", "is_admin", "or", "project_member"]
    assert len(lines) == len(default_rules())


def test_cli_policy_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ism policy check exits 0 for a valid file and 2 with one line naming the problem."""
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"version": 1, "rules": {"stop": "role:operator"}}))
    assert main(["policy", "check", str(good)]) == 0
    assert (
        capsys.readouterr().out == f"ism policy: {good} is valid: 1 of 38 rules set by the file\n"
    )
    assert main(["policy", "show", "--file", str(good)]) == 0
    assert "* stop" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "rules": {"stop": "role:"}}))
    assert main(["policy", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"ism policy: invalid policy {bad}: rule 'stop': invalid role name ''\n"


def test_parse_builds_the_expected_tree() -> None:
    """The parser gives and precedence over or and keeps parentheses' grouping."""
    from statemachine._policy_rules import AllOf, AnyOf, Check, Not, RuleRef

    assert parse("true or false and is_admin", where="x") == AnyOf(
        (Check("true"), AllOf((Check("false"), Check("is_admin"))))
    )
    assert parse("not (rule:admin or role:ops)", where="x") == Not(
        AnyOf((RuleRef("admin"), Check("role", "ops")))
    )


def _instance() -> Instance:
    return Instance(
        uuid="11111111-2222-4333-8444-555555555555", name="vm1", user_id="u1", project_id="p1",
        flavor=Flavor(vcpus=1, memory_mb=512, root_gb=1), image="cirros",
        vm_state=VmState.ACTIVE, task_state=None, power_state=PowerState.RUNNING,
        created_at=T0, updated_at=T0, host="compute1",
    )  # fmt: skip


def test_the_readme_policy_example_is_a_valid_policy() -> None:
    """The policy file shown in the README's security section loads."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```json\n(.*?)```", readme, re.S) if '"rules"' in b]
    assert len(blocks) == 1
    policy = Policy.from_mapping(json.loads(blocks[0]))
    assert policy.overridden == {"operator", "stop", "live_migrate"}
