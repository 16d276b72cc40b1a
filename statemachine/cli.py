"""The ``ism`` command. Every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.base import Driver, DriverError

from . import _cli_diagrams, _cli_history, _cli_policy, _cli_store
from .errors import InvalidRequest, IsmError, ScenarioError
from .outbox import Transport
from .sinks import JsonlSink
from .store import Store, open_store

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000000")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    """A comma-separated list of fleet sizes, each as ``_positive_int`` takes it."""
    sizes = tuple(_positive_int(part.strip()) for part in text.split(","))
    return tuple(sorted(set(sizes)))


def _directory(text: str) -> Path:
    """An existing directory (checked before a long run starts, not when it first writes)."""
    path = Path(text)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise argparse.ArgumentTypeError(f"{text} {what}")
    return path


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
    _add_store_options(sim)
    sim.add_argument(
        "--no-group-commit",
        action="store_false",
        dest="group_commit",
        help="commit each change in its own transaction (the benchmark's baseline)",
    )
    sim.add_argument("--events-out", type=Path, metavar="EVENTS.jsonl", help="append envelopes")
    sim.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="write re-sent notifications to --events-out again (to observe at-least-once)",
    )
    sim.add_argument(
        "--resume", action="store_true", help="continue an interrupted run on --db after recovery"
    )
    sim.add_argument(
        "--notify",
        metavar="AMQP_URL",
        help="also publish every notification to RabbitMQ (amqp://user:pass@host:port/vhost)",
    )
    sim.add_argument("--notify-exchange", metavar="NAME", help="the topic exchange (default: ism)")
    sim.add_argument(
        "--host",
        metavar="NAME",
        help="run one engine of a shared fleet, serving host NAME only (real time; needs --db)",
    )
    sim.add_argument(
        "--evacuate",
        metavar="HOST",
        help="with --host: first rebuild HOST's instances here once its engine stopped beating",
    )
    sim.add_argument(
        "--service-down-time",
        type=float,
        default=60.0,
        metavar="S",
        help="with --host: a host whose engine has not heartbeat for S seconds is down (60)",
    )
    sim.add_argument(
        "--metrics-out",
        type=Path,
        metavar="FILE",
        help="write the engine's Prometheus metrics (text format) here at the end of the run",
    )

    run = sub.add_parser("run", help="run a scenario file on the simulator")
    run.add_argument("scenario", type=Path)
    run.add_argument("--events-out", type=Path, metavar="EVENTS.jsonl")
    run.add_argument("--state-out", type=Path, metavar="STATE.json")
    _add_store_options(run)

    bench = sub.add_parser(
        "bench", help="ism beside a plain-Python floor and a naive transitions machine"
    )
    bench.add_argument(
        "--quick", action="store_true", help="check that it runs: small sizes, one repetition"
    )
    bench.add_argument(
        "--sizes",
        type=_sizes,
        metavar="N,N,…",
        help="fleet sizes (default 1000,10000,100000; 500 with --quick)",
    )
    bench.add_argument(
        "--repeat", type=_positive_int, metavar="K", help="runs per figure, medians (3)"
    )
    bench.add_argument(
        "--repeat-large",
        type=_positive_int,
        metavar="K",
        help="runs at sizes from 50,000 up (1: a naive run of 100,000 takes minutes and ~9 GB)",
    )
    bench.add_argument("--json", type=Path, dest="json_out", metavar="FILE")
    bench.add_argument(
        "--store-instances",
        type=_positive_int,
        metavar="N",
        help="instances in the SQLite runs (default 1000; 100 with --quick)",
    )
    bench.add_argument(
        "--store-dir",
        type=_directory,
        metavar="DIR",
        help="where the SQLite runs write (the disk measured)",
    )
    bench.add_argument(
        "--timers",
        type=_positive_int,
        metavar="N",
        help="deadlines armed in one timer service (default 100000; 10000 with --quick)",
    )
    bench.add_argument(
        "--timer-fleet",
        type=_positive_int,
        metavar="N",
        help="instances driven while the timers fire (default 10000; 500 with --quick)",
    )
    bench.add_argument(
        "--timer-concurrency",
        type=_sizes,
        metavar="N,N,…",
        help="actions in flight in that fleet, a pair of runs each (10,100; the first is the "
        "headline's)",
    )
    bench.add_argument(
        "--pg-url",
        metavar="URL",
        help="also run the store rows on this PostgreSQL database (a fresh schema each run)",
    )
    bench.add_argument(
        "--profile",
        type=_positive_int,
        metavar="N",
        help="instead: where the memory-store cycle of N instances spends its time",
    )

    states = sub.add_parser("states", help="list the lifecycle's states and actions")
    states.add_argument("--format", dest="fmt", choices=("text", "markdown"), default="text")

    # diagram (and diagram diff), lifecycle export: statemachine/_cli_diagrams.py
    _cli_diagrams.add_parsers(sub)
    # audit, actions, status: statemachine/_cli_store.py
    _cli_store.add_parsers(sub)
    # timeline (history drawn from the audit log): statemachine/_cli_history.py
    _cli_history.add_parsers(sub)
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
        outcome = run_scenario(scenario, events_out=args.events_out, store=_chosen_store(args))
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

    metrics = _metrics_writer(args.metrics_out)
    driver = _chosen_driver(args)
    store = _chosen_store(args)
    sinks = (
        [JsonlSink(args.events_out, append=True, dedupe=not args.keep_duplicates)]
        if args.events_out
        else []
    )
    started = time.perf_counter()
    try:
        report = simulate(
            instances=args.instances,
            seed=args.seed,
            progress=None if args.quiet else sys.stderr,
            driver=driver,
            store=store,
            sinks=sinks,
            group_commit=args.group_commit,
            resume=args.resume,
            on_ready=_ready if args.db else None,
            transports=_transports(args),
            **_host_mode(args),
            on_engine=metrics.engines.append if metrics is not None else None,
        )
    finally:
        for sink in sinks:
            sink.close()
    if metrics is not None:
        metrics.write()
    print(report.render())
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    if args.db:
        print(f"store: {args.db} (ism status --db {args.db}; ism audit verify {args.db})")
    if report.signal is not None:
        return 128 + report.signal
    return 0 if report.stuck == 0 else 1


def _host_mode(args: argparse.Namespace) -> dict[str, Any]:
    """--host / --evacuate / --service-down-time, checked together."""
    if args.host is None:
        if args.evacuate is not None:
            raise InvalidRequest("--evacuate needs --host (the engine that takes them in)")
        return {}
    if args.db is None:
        raise InvalidRequest("--host needs --db: engines of one fleet share its store")
    if args.evacuate == args.host:
        raise InvalidRequest("--evacuate names another host than --host")
    if not 0 < args.service_down_time <= 3600:
        raise InvalidRequest("--service-down-time must be in (0, 3600] seconds")
    return {
        "host": args.host,
        "evacuate": args.evacuate,
        "service_down_time": args.service_down_time,
    }


class _MetricsOut:
    """Where ``--metrics-out`` writes the engine's metrics once the run ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engines: list[Engine] = []

    def write(self) -> None:
        from .metrics import write_metrics

        try:
            write_metrics(self.engines[0], self.path)
        except OSError as exc:
            raise InvalidRequest(f"--metrics-out {self.path}: {exc.strerror or exc}") from None


def _metrics_writer(path: Path | None) -> _MetricsOut | None:
    """Checked before the run, so a missing extra or directory is said at once, not after."""
    if path is None:
        return None
    from .metrics import require_client

    require_client()
    if not path.parent.is_dir():
        raise InvalidRequest(f"--metrics-out {path}: no directory {path.parent}")
    return _MetricsOut(path)


def _transports(args: argparse.Namespace) -> list[Transport]:
    """The AMQP transport ``--notify`` names (none without it)."""
    if args.notify is None:
        if args.notify_exchange is not None:
            raise InvalidRequest("--notify-exchange needs --notify")
        return []
    if not args.notify.startswith(("amqp://", "amqps://")):
        raise InvalidRequest("--notify takes an amqp:// URL")
    from .amqp import AmqpTransport

    return [AmqpTransport(args.notify, exchange=args.notify_exchange)]


def _ready(recovered: int, seconds: float) -> None:
    """Said at once (a run may be killed before its summary): what recovery found."""
    print(
        f"ism simulate: engine ready in {seconds:.3f} s, {recovered} interrupted instances "
        "taken up by recovery",
        file=sys.stderr,
        flush=True,
    )


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="DB", help="keep state in this SQLite file (or URL)")
    parser.add_argument(
        "--audit-key-file", type=Path, metavar="FILE", help="HMAC key that signs the audit head"
    )


def _chosen_store(args: argparse.Namespace) -> Store | None:
    """The store named by ``--db`` (None: in memory)."""
    from ._cli_store import _key

    key = _key(args.audit_key_file)
    if args.db is None:
        if args.audit_key_file is not None:
            raise InvalidRequest("--audit-key-file needs --db")
        return None
    return open_store(args.db, hmac_key=key)


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
    from .bench import BenchPlan, run_bench

    if args.profile is not None:
        from ._bench_ism import profile_ism_memory

        print(profile_ism_memory(args.profile).render())
        return 0
    quick = args.quick
    plan = BenchPlan(
        sizes=args.sizes or ((500,) if quick else (1000, 10_000, 100_000)),
        repeat=args.repeat or (1 if quick else 3),
        repeat_large=args.repeat_large or 1,
        store_instances=args.store_instances or (100 if quick else 1000),
        store_dir=args.store_dir,
        pg_url=args.pg_url,
        timers=args.timers or (10_000 if quick else 100_000),
        timer_fleet=args.timer_fleet or (500 if quick else 10_000),
        timer_concurrency=args.timer_concurrency or ((10,) if quick else (10, 100)),
        timer_spread_s=1.0 if quick else 3.0,
    )
    print(run_bench(plan, json_out=args.json_out))
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
        "audit": _cli_store.audit,
        "actions": _cli_store.actions,
        "status": _cli_store.status,
        "timeline": _cli_history.timeline,
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
    except BrokenPipeError:
        # the reader went away (``ism status | head``): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
