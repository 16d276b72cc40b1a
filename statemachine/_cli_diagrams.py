"""The ``ism`` subcommands about the lifecycle's picture: diagram, diagram diff, lifecycle export.

``diagram --db DB --instance NAME`` (a path read from the audit log) is handed to
:mod:`statemachine._cli_history`, which also holds ``ism timeline``.

Kept apart from :mod:`statemachine.cli` so the command's other subcommands and these evolve
without touching each other. Exit codes: 0 success; ``diagram --check`` 1 when a file is stale;
``diagram diff`` 0 identical, 1 different (like ``diff``), 2 when a side cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import _cli_history
from .errors import DiagramError

if TYPE_CHECKING:
    from .diagrams import DiagramFormat

__all__ = ["add_parsers", "diagram", "lifecycle", "states_markdown"]

_SUFFIXES: dict[str, DiagramFormat] = {
    ".mmd": "mermaid",
    ".md": "mermaid",
    ".dot": "dot",
    ".gv": "dot",
    ".svg": "svg",
}
_FORMATS = ("mermaid", "dot", "svg")


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be between 0 and 1000")
    return value


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``diagram`` (with ``diff``) and ``lifecycle export`` to the ``ism`` parser."""
    diagram = sub.add_parser(
        "diagram",
        help="draw the lifecycle (Mermaid, DOT, SVG); --write/--check diagrams/; diff revisions",
    )
    diagram.add_argument(
        "--format",
        dest="fmt",
        choices=_FORMATS,
        help="default: from --out's suffix (.svg, .dot, .mmd), else mermaid",
    )
    view = diagram.add_mutually_exclusive_group()
    view.add_argument("--action", metavar="NAME", help="one action's region (e.g. resize)")
    view.add_argument("--from", dest="start", metavar="STATE", help="what follows one state")
    view.add_argument("--write", action="store_true", help="regenerate diagrams/")
    view.add_argument("--check", action="store_true", help="exit 1 naming each stale file")
    view.add_argument("--instance", metavar="NAME", help="one instance's path (from --db)")
    diagram.add_argument("--db", metavar="DB", help="with --instance: the store to read")
    diagram.add_argument("--depth", type=_depth, metavar="N", help="with --from: edges to follow")
    diagram.add_argument("--out", type=Path, metavar="FILE", help="write here, not to stdout")
    diagram.add_argument("--root", type=Path, default=Path("."), help="repository root")
    inner = diagram.add_subparsers(dest="diagram_command", metavar="diff")
    diff = inner.add_parser(
        "diff", help="what changed between two lifecycles (export files or git revisions)"
    )
    diff.add_argument("old", help="an exported lifecycle JSON file, or a git revision")
    diff.add_argument("new", help="an exported lifecycle JSON file, or a git revision")
    diff.add_argument(
        "--out",
        dest="diff_out",
        type=Path,
        metavar="FILE",
        help="also draw the diff here (.svg, .mmd or .dot)",
    )
    diff.add_argument(
        "--format",
        dest="diff_fmt",
        choices=_FORMATS,
        help="the drawing's format (default: from --out's suffix)",
    )
    diff.add_argument(
        "--action",
        dest="diff_action",
        metavar="NAME",
        help="draw one action's region instead of the overview",
    )
    diff.add_argument(
        "--root",
        dest="diff_root",
        type=Path,
        default=Path("."),
        help="the git repository revisions are read from",
    )

    life = sub.add_parser("lifecycle", help="the lifecycle as data")
    life_sub = life.add_subparsers(dest="lifecycle_command", required=True, metavar="export")
    export = life_sub.add_parser("export", help="print the exported lifecycle (what diagrams use)")
    export.add_argument("--format", dest="fmt", choices=("json",), default="json")
    export.add_argument("--out", type=Path, metavar="FILE", help="write here, not to stdout")


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")


def diagram(args: argparse.Namespace) -> int:
    """``ism diagram``: draw, regenerate, check, or (``diff``) compare."""
    from .diagrams import check_diagrams, render, write_diagrams
    from .lifecycle import DEFAULT_LIFECYCLE

    if args.diagram_command == "diff":
        return _diff(args)
    if args.check:
        stale = check_diagrams(DEFAULT_LIFECYCLE, args.root)
        for item in stale:
            print(
                f"ism diagram: stale: {item.path} ({item.reason}; run: ism diagram --write)",
                file=sys.stderr,
            )
        return 1 if stale else 0
    if args.write:
        for path in write_diagrams(DEFAULT_LIFECYCLE, args.root):
            print(f"wrote {path}")
        return 0
    if args.depth is not None and args.start is None:
        raise DiagramError("--depth goes with --from STATE")
    fmt: DiagramFormat = args.fmt or (args.out and _SUFFIXES.get(args.out.suffix)) or "mermaid"
    if args.instance is not None or args.db is not None:
        # issue 6 item 5: a path read from the audit log (statemachine/_cli_history.py)
        return _cli_history.instance_diagram(args, fmt)
    text = render(DEFAULT_LIFECYCLE, fmt, action=args.action, start=args.start, depth=args.depth)
    _emit(text, args.out)
    return 0


def _diff(args: argparse.Namespace) -> int:
    from .diagrams import diff_exports, load_export, load_export_at, render_diff

    try:
        sides = []
        for spec in (args.old, args.new):
            path = Path(spec)
            sides.append(
                load_export(path) if path.is_file() else load_export_at(spec, args.diff_root)
            )
        result = diff_exports(sides[0], sides[1])
        drawing = None
        if args.diff_fmt is not None and args.diff_out is None:
            raise DiagramError("--format goes with --out FILE")
        if args.diff_out is not None:
            fmt: DiagramFormat | None = args.diff_fmt or _SUFFIXES.get(args.diff_out.suffix)
            if fmt is None:
                raise DiagramError("--out needs a .svg, .mmd or .dot name, or --format")
            drawing = render_diff(
                result, fmt, action=args.diff_action, old_label=args.old, new_label=args.new
            )
    except DiagramError as exc:
        print(f"ism diagram diff: {exc}", file=sys.stderr)
        return 2
    if drawing is not None:
        try:
            args.diff_out.write_text(drawing, encoding="utf-8")
        except OSError as exc:
            print(f"ism diagram diff: cannot write {args.diff_out}: {exc}", file=sys.stderr)
            return 2
    sys.stdout.write(result.summary(args.old, args.new))
    return 0 if result.identical else 1


def lifecycle(args: argparse.Namespace) -> int:
    """``ism lifecycle export``: the exported lifecycle as JSON."""
    from .diagrams import export_lifecycle
    from .lifecycle import DEFAULT_LIFECYCLE

    _emit(export_lifecycle(DEFAULT_LIFECYCLE).to_json(), args.out)
    return 0


def states_markdown(args: argparse.Namespace) -> int:
    """``ism states --format markdown``: the README's tables of states and actions."""
    from .diagrams import export_lifecycle
    from .diagrams import states_markdown as tables
    from .lifecycle import DEFAULT_LIFECYCLE

    del args
    sys.stdout.write(tables(export_lifecycle(DEFAULT_LIFECYCLE)))
    return 0
