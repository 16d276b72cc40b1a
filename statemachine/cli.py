"""The ``ism`` command. Every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from drivers.base import Driver, DriverError

from . import _cli_diagrams, _cli_policy
from .errors import InvalidRequest, IsmError, ScenarioError

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000000")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be non-negative")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ism", description="ism: an async state-machine engine for instance lifecycles."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser("simulate", help="run a simulated fleet and print a summary")
    sim.add_argument("--instances", type=_positive_int, default=200, metavar="N")
    sim.add_argument("--seed", type=_seed, default=0, metavar="S")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_driver_options(sim)

    run = sub.add_parser("run", help="run a scenario file on the simulator")
    run.add_argument("scenario", type=Path)
    run.add_argument("--events-out", type=Path, metavar="EVENTS.jsonl")
    run.add_argument("--state-out", type=Path, metavar="STATE.json")

    bench = sub.add_parser("bench", help="measure ism against a naive transitions machine")
    bench.add_argument("--quick", action="store_true", help="10,000 instances, one repetition")
    bench.add_argument("--instances", type=_positive_int, default=10_000, metavar="N")
    bench.add_argument("--repeat", type=_positive_int, default=3)
    bench.add_argument("--json", type=Path, dest="json_out", metavar="FILE")

    states = sub.add_parser("states", help="list the lifecycle's states and actions")
    states.add_argument("--format", dest="fmt", choices=("text", "markdown"), default="text")

    # diagram (and diagram diff), lifecycle export: statemachine/_cli_diagrams.py
    _cli_diagrams.add_parsers(sub)
    # policy show, policy check (issue 8): statemachine/_cli_policy.py
    _cli_policy.add_parsers(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    from .scenario import load_scenario, run_scenario

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"ism run: invalid scenario {args.scenario}: {exc}", file=sys.stderr)
        return 2
    try:
        outcome = run_scenario(scenario, events_out=args.events_out)
        if args.state_out is not None:
            args.state_out.write_text(json.dumps(outcome.state, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:  # an output that cannot be written: one line, not a traceback
        print(f"ism run: cannot write {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if outcome.failure is not None:
        print(f"ism run: {outcome.failure}", file=sys.stderr)
        return 1
    print(
        f"ism run: {len(scenario.steps)} steps met their expectations; "
        f"{outcome.notifications} notifications, {len(outcome.state)} instances"
    )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from .simulate import simulate

    driver = _chosen_driver(args)
    started = time.perf_counter()
    report = simulate(
        instances=args.instances,
        seed=args.seed,
        progress=None if args.quiet else sys.stderr,
        driver=driver,
    )
    print(report.render())
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0 if report.stuck == 0 else 1


# -- choosing a driver (issue 5: the libvirt driver) ----------------------------------------------


def _add_driver_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--driver",
        choices=("simulator", "libvirt"),
        default="simulator",
        help="the hypervisor: the simulated fleet (default) or libvirt at --uri",
    )
    parser.add_argument(
        "--uri", metavar="URI", help="libvirt URI, e.g. test:///default or qemu:///system"
    )


def _chosen_driver(args: argparse.Namespace) -> Driver | None:
    """None for the simulator; a (not yet opened) LibvirtDriver for ``--driver libvirt``."""
    if args.driver == "simulator":
        if args.uri is not None:
            raise InvalidRequest("--uri needs --driver libvirt")
        return None
    if not args.uri:
        raise InvalidRequest("--driver libvirt needs --uri (e.g. test:///default)")
    from drivers.libvirt import LibvirtDriver

    return LibvirtDriver(args.uri)


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    repeat = 1 if args.quick else args.repeat
    print(run_bench(instances=args.instances, repeat=repeat, json_out=args.json_out))
    return 0


def _states(args: argparse.Namespace) -> int:
    from .lifecycle import DEFAULT_LIFECYCLE

    if args.fmt == "markdown":
        return _cli_diagrams.states_markdown(args)

    for name, entries in sorted(DEFAULT_LIFECYCLE.api_actions().items()):
        for action in entries:
            if action.internal:
                continue
            vms = (
                "any"
                if action.vm_states is None
                else ", ".join(sorted(s.value for s in action.vm_states)) or "(new)"
            )
            steps = " → ".join(str(s.task_state or "—") for s in action.steps)
            label = f"{name} {action.variant}" if action.variant else name
            print(f"{label:<30} from [{vms}] via {steps} → {action.target.describe()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ism`` console script and ``python -m statemachine``."""
    args = _parser().parse_args(argv)
    handlers = {
        "run": _run,
        "simulate": _simulate,
        "bench": _bench,
        "states": _states,
        "diagram": _cli_diagrams.diagram,
        "lifecycle": _cli_diagrams.lifecycle,
        "policy": _cli_policy.policy,
    }
    try:
        return handlers[args.command](args)
    except (IsmError, DriverError) as exc:
        print(f"ism {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ism {args.command}: interrupted", file=sys.stderr)
        return 130
