"""Who may do what, as data: named rules a service can override, checked before every action.

The default policy is derived from the lifecycle table: each action's entry is
``rule:<Action.rule>`` (``stop`` → ``rule:owner_or_admin``), and the named rules say what those
mean, in Nova's defaults:

=================== ============================================== ==============================
rule                expression                                     meaning
=================== ============================================== ==============================
``owner_or_admin``  ``is_admin or project_member``                 Nova's ``admin_or_owner``
``admin``           ``is_admin``                                   Nova's ``admin_api``
``system``          ``is_system``                                  the engine's own work only
``unlock_override`` ``rule:owner_or_admin and (locker or           Nova's ``unlock_override``
                    is_admin)``
``bypass_lock``     ``is_admin``                                   who may act on a locked
                                                                   instance (Nova: admins)
=================== ============================================== ==============================

A service overrides any of them with a policy file (``{"version": 1, "rules": {...}}``; see
:meth:`Policy.from_mapping` and the README, "Security"), which is validated whole when loaded:
a bad file raises :class:`~statemachine.errors.PolicyError` and changes nothing.

The engine asks only :meth:`Policy.check`. The engine's own work (timed transitions, power
sync, recovery: :data:`~statemachine.model.SYSTEM_CONTEXT`) is never subject to the policy, so
no policy file can stop a reclaim or a build timeout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from ._policy_rules import (
    CHECKS,
    Check,
    Expr,
    Facts,
    compile_rules,
    denied_by,
    evaluate,
    references,
)
from ._schema import Action, Lifecycle, Rule
from .errors import Forbidden, Locked, PolicyError
from .lifecycle import DEFAULT_LIFECYCLE
from .model import Instance, RequestContext

__all__ = [
    "BYPASS_LOCK",
    "CHECKS",
    "MAX_POLICY_BYTES",
    "NAMED_RULES",
    "POLICY_VERSION",
    "Policy",
    "default_rules",
    "locker_kind",
]

POLICY_VERSION = 1
"""The policy file format's version (the ``version`` key)."""

MAX_POLICY_BYTES = 1 << 20
"""Largest policy file read, in bytes (1 MiB: a policy is a few dozen short rules)."""

BYPASS_LOCK = "bypass_lock"
"""The rule that says who may act on a locked instance (Nova: ``context.is_admin``)."""

NAMED_RULES: Mapping[str, str] = {
    Rule.OWNER_OR_ADMIN: "is_admin or project_member",
    Rule.ADMIN: "is_admin",
    Rule.SYSTEM: "is_system",
    Rule.UNLOCK_OVERRIDE: "rule:owner_or_admin and (locker or is_admin)",
    BYPASS_LOCK: "is_admin",
}
"""The named rules of Nova's defaults: one per :class:`~statemachine.Rule` value, and
:data:`BYPASS_LOCK`. Actions refer to them; a policy file may redefine any of them."""


def locker_kind(ctx: RequestContext, instance: Instance) -> Literal["owner", "admin"]:
    """What ``locked_by`` a lock by ``ctx`` records: ``owner`` for the instance's own project,
    ``admin`` for anyone else and for the engine itself (Nova's ``lock``)."""
    return "owner" if ctx.project_id == instance.project_id and not ctx.is_system else "admin"


def _action_rule(action: Action) -> str:
    return f"rule:{action.rule.value}"


def default_rules(lifecycle: Lifecycle = DEFAULT_LIFECYCLE) -> dict[str, str]:
    """Nova's default policy for ``lifecycle`` as data: the named rules, then one entry per
    action (``rule:<Action.rule>``), in the table's order."""
    rules = {str(name): text for name, text in NAMED_RULES.items()}
    for action in lifecycle.actions:
        rules[action.name] = _action_rule(action)
    return rules


def _facts(ctx: RequestContext, instance: Instance | None) -> Facts:
    """The answers to every check for one request, bound to the caller and the instance."""

    def fact(check: Check) -> bool:
        name = check.name
        if name == "role":
            return check.arg in ctx.roles
        if name == "is_admin":
            return ctx.is_admin
        if name == "is_system":
            return ctx.is_system
        if name == "true":
            return True
        if name == "false":
            return False
        if instance is None:  # create: the caller builds in its own project, as itself
            return True
        if name == "project_member":
            return ctx.project_id == instance.project_id
        if name == "same_user":
            return ctx.user_id == instance.user_id
        # locker: Nova's is_expected_locked_by
        return instance.locked_by is None or instance.locked_by == locker_kind(ctx, instance)

    return fact


@attrs.frozen(init=False)
class Policy:
    """Named rules, each a small boolean expression; an action is checked against the rule that
    bears its (internal) name, or, if the policy has none, ``rule:<Action.rule>`` from the table.

    ``Policy()`` is Nova's default policy. ``Policy(rules)`` overrides some of its rules; the
    rest keep their defaults. Rules are parsed and checked when the policy is built.

    Args:
        rules: Rule name → rule text, merged over :func:`default_rules` of ``lifecycle``.
        lifecycle: The table whose action names the rules may use.

    Raises:
        PolicyError: a name that is neither an action, a named rule nor referred to, a rule
            that does not parse, an unknown ``rule:`` reference, a cycle, or too much nesting.
    """

    rules: Mapping[str, str]
    """Every rule, defaults included: what :meth:`as_mapping` writes."""
    overridden: frozenset[str]
    """The names the caller's ``rules`` set."""
    _compiled: Mapping[str, Expr] = attrs.field(repr=False, eq=False)

    def __init__(
        self, rules: Mapping[str, str] | None = None, *, lifecycle: Lifecycle = DEFAULT_LIFECYCLE
    ) -> None:
        if rules is not None and not isinstance(rules, Mapping):
            raise PolicyError("policy rules must be a mapping of rule name to rule text")
        given = dict(rules or {})
        merged = {**default_rules(lifecycle), **given}
        compiled = compile_rules(merged)
        used: set[str] = set()
        for expr in compiled.values():
            used |= references(expr)
        actions = {action.name for action in lifecycle.actions}
        for name in given:
            if name not in actions and name not in NAMED_RULES and name not in used:
                raise PolicyError(
                    f"rule {name!r} is neither an action of the lifecycle, a named rule, nor "
                    "used by another rule (a typo?)"
                )
        self.__attrs_init__(merged, frozenset(given), compiled)

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: object, *, lifecycle: Lifecycle = DEFAULT_LIFECYCLE) -> Policy:
        """Build from a policy file's object: ``{"version": 1, "rules": {name: text}}``.

        Raises:
            PolicyError: the object is not of that shape, or a rule is invalid.
        """
        if not isinstance(data, Mapping):
            raise PolicyError(f"a policy is a JSON object, not {type(data).__name__}")
        unknown = sorted(str(k)[:40] for k in set(data) - {"version", "rules"})
        if unknown:
            raise PolicyError(f"unknown policy keys {unknown}; a policy has version and rules")
        version = data.get("version")
        if version != POLICY_VERSION or isinstance(version, bool):
            raise PolicyError(f"policy version must be {POLICY_VERSION}")
        rules = data.get("rules")
        if not isinstance(rules, Mapping):
            raise PolicyError("policy rules must be an object of rule name to rule text")
        return cls(rules, lifecycle=lifecycle)

    @classmethod
    def load(cls, path: str | Path, *, lifecycle: Lifecycle = DEFAULT_LIFECYCLE) -> Policy:
        """Read and validate a policy file (JSON, at most :data:`MAX_POLICY_BYTES`).

        Raises:
            PolicyError: unreadable, too large, not UTF-8 JSON, or invalid.
        """
        try:
            with Path(path).open("rb") as file:
                raw = file.read(MAX_POLICY_BYTES + 1)
        except OSError as exc:
            raise PolicyError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_POLICY_BYTES:
            raise PolicyError(f"{path} is larger than {MAX_POLICY_BYTES} bytes")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise PolicyError(f"{path} is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise PolicyError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
        except (ValueError, RecursionError):  # an integer of 4300+ digits, absurd nesting
            raise PolicyError(f"{path} is not JSON a policy can hold") from None
        return cls.from_mapping(data, lifecycle=lifecycle)

    def as_mapping(self) -> dict[str, Any]:
        """The policy as a file holds it (every rule, defaults included)."""
        return {"version": POLICY_VERSION, "rules": dict(self.rules)}

    # -- checking ----------------------------------------------------------------------------

    def _entry(self, action: Action) -> str:
        """The rule named for ``action``; an action the policy does not know (a lifecycle of
        the caller's own) falls back to its table rule, which must then be defined."""
        if action.name in self._compiled:
            return action.name
        if action.rule.value in self._compiled:
            return action.rule.value
        raise PolicyError(f"the policy has no rule for action {action.name!r}")

    def allows(self, ctx: RequestContext, action: Action, instance: Instance | None) -> bool:
        """Whether the rule of ``action`` lets ``ctx`` perform it (the lock aside)."""
        if ctx.is_system:
            return True
        facts = _facts(ctx, instance)
        return evaluate(self._compiled[self._entry(action)], self._compiled, facts)

    def bypasses_lock(self, ctx: RequestContext, instance: Instance) -> bool:
        """Whether ``ctx`` may act on ``instance`` while it is locked (rule ``bypass_lock``)."""
        if ctx.is_system:
            return True
        return evaluate(self._compiled[BYPASS_LOCK], self._compiled, _facts(ctx, instance))

    def check(self, ctx: RequestContext, action: Action, instance: Instance | None) -> None:
        """Refuse unless ``ctx`` may perform ``action`` on ``instance``; nothing is changed.

        Raises:
            Forbidden: the action's rule denies; ``rule`` names the innermost named rule that
                decided (``owner_or_admin``, ``admin``, ``unlock_override`` …).
            Locked: the instance is locked, the action checks locks, and ``bypass_lock``
                denies the caller.
        """
        if ctx.is_system:
            return
        facts = _facts(ctx, instance)
        denied = denied_by(self._entry(action), self._compiled, facts)
        if denied is not None:
            target = instance.uuid if instance is not None else None
            raise Forbidden(action.public_name, target, denied)
        if (
            action.lock_check
            and instance is not None
            and instance.locked
            and not evaluate(self._compiled[BYPASS_LOCK], self._compiled, facts)
        ):
            raise Locked(action.public_name, instance.uuid)
