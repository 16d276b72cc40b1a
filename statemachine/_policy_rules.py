"""The policy's rule language: parsing a rule's text, checking a rule set, evaluating a rule.

A rule is a boolean expression over a handful of checks about the caller and the instance::

    expr   := term ("or" term)*
    term   := factor ("and" factor)*
    factor := "not" factor | "(" expr ")" | check
    check  := "true" | "false" | "is_admin" | "is_system" | "project_member" | "same_user"
            | "locker" | "role:" ROLE | "rule:" NAME

``and`` binds tighter than ``or``, as in Python. The words come from oslo.policy's vocabulary
(``role:``, ``rule:``) so that an operator who wrote Nova policies reads them at once, but the
grammar is ism's own and much smaller: no attribute comparisons, no string substitution, nothing
a rule file could use to run code or reach data beyond the five facts below.

Everything here is bounded: a rule's text, its nesting, the number of rules and the depth of
``rule:`` references, so a hostile file cannot exhaust the stack or the heap; a rule set with
a reference cycle or an unknown reference is refused when it is built, never when it is used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import attrs

from .errors import PolicyError

__all__ = [
    "CHECKS",
    "MAX_DEPTH",
    "MAX_HEIGHT",
    "MAX_RULES",
    "MAX_RULE_LENGTH",
    "MAX_RULE_NAME",
    "AllOf",
    "AnyOf",
    "Check",
    "Expr",
    "Facts",
    "Not",
    "RuleRef",
    "compile_rules",
    "denied_by",
    "evaluate",
    "parse",
    "references",
]

CHECKS: Mapping[str, str] = {
    "true": "always passes (oslo.policy's @)",
    "false": "never passes (oslo.policy's !)",
    "is_admin": "the caller has the admin role (or is the engine itself)",
    "is_system": "the caller is the engine itself (timed transitions, power sync)",
    "project_member": "the caller's project owns the instance (always true for create)",
    "same_user": "the caller's user created the instance (always true for create)",
    "locker": "the instance is unlocked, or was locked by the caller's kind (owner or admin)",
}
"""The checks a rule may use besides ``role:<name>`` and ``rule:<name>``, with their meaning."""

MAX_RULE_LENGTH = 1024
"""Longest rule text accepted, in characters."""
MAX_RULES = 1024
"""Most rules one policy may hold."""
MAX_RULE_NAME = 64
"""Longest rule or role name."""
MAX_DEPTH = 32
"""Deepest nesting of parentheses and ``not`` in one rule, and of ``rule:`` references."""
MAX_HEIGHT = 128
"""Most levels evaluating one rule may take, references included (the stack stays shallow)."""

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ROLE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_TOKEN = re.compile(r"\s*(?:(?P<paren>[()])|(?P<word>[^\s()]+))")
_KEYWORDS = frozenset({"and", "or", "not"})


@attrs.frozen
class Check:
    """One of :data:`CHECKS`, or ``role:<arg>``."""

    name: str
    arg: str | None = None


@attrs.frozen
class RuleRef:
    """``rule:<name>``: another rule of the same policy."""

    name: str


@attrs.frozen
class Not:
    """``not <operand>``."""

    operand: Expr


@attrs.frozen
class AllOf:
    """``a and b and …``."""

    operands: tuple[Expr, ...]


@attrs.frozen
class AnyOf:
    """``a or b or …``."""

    operands: tuple[Expr, ...]


Expr = Check | RuleRef | Not | AllOf | AnyOf


def _tokens(text: str, where: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:  # only trailing whitespace is left
            break
        out.append(match.group("paren") or match.group("word"))
        pos = match.end()
    if not out:
        raise PolicyError(f"rule {where!r} is empty")
    return out


class _Parser:
    """Recursive descent over the tokens, with the nesting bounded by :data:`MAX_DEPTH`."""

    def __init__(self, tokens: list[str], where: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.where = where

    def fail(self, message: str) -> PolicyError:
        return PolicyError(f"rule {self.where!r}: {message}")

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise self.fail("ends too early")
        self.pos += 1
        return token

    def expr(self, depth: int) -> Expr:
        operands = [self.term(depth)]
        while self.peek() == "or":
            self.pos += 1
            operands.append(self.term(depth))
        return operands[0] if len(operands) == 1 else AnyOf(tuple(operands))

    def term(self, depth: int) -> Expr:
        operands = [self.factor(depth)]
        while self.peek() == "and":
            self.pos += 1
            operands.append(self.factor(depth))
        return operands[0] if len(operands) == 1 else AllOf(tuple(operands))

    def factor(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise self.fail(f"nests deeper than {MAX_DEPTH}")
        token = self.take()
        if token == "not":
            return Not(self.factor(depth + 1))
        if token == "(":
            inner = self.expr(depth + 1)
            if self.peek() != ")":
                raise self.fail("a '(' is not closed")
            self.pos += 1
            return inner
        if token == ")" or token in _KEYWORDS:
            raise self.fail(f"unexpected {token!r} where a check belongs")
        return self.check(token)

    def check(self, token: str) -> Expr:
        kind, sep, arg = token.partition(":")
        if not sep:
            if token in CHECKS:
                return Check(token)
            raise self.fail(f"unknown check {_show(token)}; known: {', '.join(CHECKS)}")
        if kind == "role":
            if not _ROLE.fullmatch(arg):
                raise self.fail(f"invalid role name {_show(arg)}")
            return Check("role", arg)
        if kind == "rule":
            if not _NAME.fullmatch(arg):
                raise self.fail(f"invalid rule name {_show(arg)}")
            return RuleRef(arg)
        raise self.fail(f"unknown check {_show(token)}; prefixes are role: and rule:")


def _show(text: str) -> str:
    """A value for an error message: quoted, and cut short so a message stays one short line."""
    return repr(text if len(text) <= 40 else text[:40] + "…")


def parse(text: object, *, where: str) -> Expr:
    """Parse one rule's text.

    Args:
        text: The rule, e.g. ``"rule:owner_or_admin and not role:suspended"``.
        where: The rule's name, for error messages.

    Raises:
        PolicyError: not a string, empty, too long, too deeply nested, or malformed.
    """
    if not isinstance(text, str):
        raise PolicyError(f"rule {where!r} must be a string, not {type(text).__name__}")
    if len(text) > MAX_RULE_LENGTH:
        raise PolicyError(f"rule {where!r} is longer than {MAX_RULE_LENGTH} characters")
    parser = _Parser(_tokens(text, where), where)
    expr = parser.expr(0)
    if parser.peek() is not None:
        raise parser.fail(f"unexpected {_show(parser.take())} after a complete rule")
    return expr


def references(expr: Expr) -> set[str]:
    """The names of the rules ``expr`` refers to directly."""
    if isinstance(expr, RuleRef):
        return {expr.name}
    if isinstance(expr, Not):
        return references(expr.operand)
    if isinstance(expr, AllOf | AnyOf):
        out: set[str] = set()
        for operand in expr.operands:
            out |= references(operand)
        return out
    return set()


def _height(expr: Expr, ref_height: Callable[[str], int]) -> int:
    """Levels of evaluation ``expr`` needs; a reference costs its rule's height plus one."""
    if isinstance(expr, Check):
        return 1
    if isinstance(expr, RuleRef):
        return 1 + ref_height(expr.name)
    if isinstance(expr, Not):
        return 1 + _height(expr.operand, ref_height)
    return 1 + max(_height(e, ref_height) for e in expr.operands)


def compile_rules(texts: Mapping[str, object]) -> dict[str, Expr]:
    """Parse every rule and check the set: names, references, no cycle, bounded depth.

    Raises:
        PolicyError: naming the first rule that is wrong.
    """
    if len(texts) > MAX_RULES:
        raise PolicyError(f"a policy holds at most {MAX_RULES} rules, not {len(texts)}")
    compiled: dict[str, Expr] = {}
    for name, text in texts.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            shown = _show(name) if isinstance(name, str) else type(name).__name__
            raise PolicyError(
                f"invalid rule name {shown}: lower-case letters, digits and _, at most "
                f"{MAX_RULE_NAME} characters"
            )
        compiled[name] = parse(text, where=name)
    heights: dict[str, int] = {}
    visiting: list[str] = []

    def height(name: str) -> int:
        if name not in compiled:
            raise PolicyError(f"rule {visiting[-1]!r} refers to unknown rule {name!r}")
        if name in visiting:
            cycle = " -> ".join((*visiting[visiting.index(name) :], name))
            raise PolicyError(f"rules refer to each other in a cycle: {cycle}")
        if name not in heights:
            if len(visiting) > MAX_DEPTH:
                raise PolicyError(f"rule {name!r}: rule: references nest deeper than {MAX_DEPTH}")
            visiting.append(name)
            heights[name] = _height(compiled[name], height)
            visiting.pop()
            if heights[name] > MAX_HEIGHT:
                raise PolicyError(
                    f"rule {name!r} nests deeper than {MAX_HEIGHT} levels, counting the rules "
                    "it refers to"
                )
        return heights[name]

    for name in compiled:
        height(name)
    return compiled


Facts = Callable[[Check], bool]
"""Answers one check for one request (the policy binds it to the caller and the instance)."""


def evaluate(expr: Expr, rules: Mapping[str, Expr], facts: Facts) -> bool:
    """Whether ``expr`` holds; ``rules`` resolves ``rule:`` references (checked acyclic)."""
    if isinstance(expr, Check):
        return facts(expr)
    if isinstance(expr, RuleRef):
        return evaluate(rules[expr.name], rules, facts)
    if isinstance(expr, Not):
        return not evaluate(expr.operand, rules, facts)
    if isinstance(expr, AllOf):
        return all(evaluate(e, rules, facts) for e in expr.operands)
    return any(evaluate(e, rules, facts) for e in expr.operands)


def denied_by(name: str, rules: Mapping[str, Expr], facts: Facts) -> str | None:
    """The name of the rule that denies, or None when rule ``name`` holds.

    A refusal names the innermost named rule that decided it: a ``rule:`` reference that fails
    is followed, and so is the first failing part of an ``and``; an ``or``, a ``not`` or a
    check that fails is reported as the rule that holds it. So ``stop`` → ``rule:admin`` names
    ``admin``, and an owner lifting an admin's lock is refused by ``unlock_override``.
    """
    expr = rules[name]
    while True:
        if isinstance(expr, RuleRef):
            name, expr = expr.name, rules[expr.name]
            continue
        if isinstance(expr, AllOf):
            failing = next((e for e in expr.operands if not evaluate(e, rules, facts)), None)
            if failing is None:
                return None
            expr = failing
            continue
        return None if evaluate(expr, rules, facts) else name
