"""The ``ism policy`` subcommands: show the default (or a file's effective) policy, check a file.

Kept apart from :mod:`statemachine.cli`, like the diagram commands. Exit codes: 0 success; 2
with one line on stderr when a policy file is invalid (the same convention as ``ism run``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import PolicyError

__all__ = ["add_parsers", "policy"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``policy show`` and ``policy check`` to the ``ism`` parser."""
    policy = sub.add_parser("policy", help="show the authorization policy, or check a file")
    inner = policy.add_subparsers(dest="policy_command", metavar="show|check", required=True)
    show = inner.add_parser("show", help="print every rule (Nova's defaults, or FILE's)")
    show.add_argument("--format", dest="fmt", choices=("json", "text"), default="text")
    show.add_argument("--file", type=Path, metavar="FILE", help="a policy file to merge over")
    check = inner.add_parser("check", help="validate a policy file; exit 2 naming the problem")
    check.add_argument("file", type=Path, metavar="FILE")


def policy(args: argparse.Namespace) -> int:
    """Run ``ism policy show`` or ``ism policy check``."""
    from .policy import Policy

    try:
        loaded = Policy.load(args.file) if args.file is not None else Policy()
    except PolicyError as exc:
        print(f"ism policy: invalid policy {args.file}: {exc}", file=sys.stderr)
        return 2
    if args.policy_command == "check":
        print(
            f"ism policy: {args.file} is valid: {len(loaded.overridden)} of "
            f"{len(loaded.rules)} rules set by the file"
        )
        return 0
    if args.fmt == "json":
        print(json.dumps(loaded.as_mapping(), indent=2))
        return 0
    width = max(len(name) for name in loaded.rules)
    for name, text in loaded.rules.items():
        mark = "*" if name in loaded.overridden else " "
        print(f"{mark} {name:<{width}}  {text}")
    return 0
