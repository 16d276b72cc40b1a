"""Generated paths: short action sequences that, together, exercise every transition.

The planner explores the lifecycle's stable states by running actions (and failing them) the
way a user would, then, for every transition of the machine, builds the shortest path that
reaches its source and fires it: run an action, fail it at a step, or hold one action at a step
while another preempts, takes over or joins it. :func:`run_path` replays a path on a real engine
(any driver), holding and failing steps through the engine's step hooks, and
:func:`run_covering_paths` replays them all and reports the transition coverage.

Public through :mod:`statemachine.testing`.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import anyio
import attrs

from drivers.base import Driver

from ._calls import StepCall
from ._schema import Action, Concurrency, ErrorTo, Lifecycle, Precondition, Transition, state_name
from .clock import VirtualClock
from .config import Config
from .engine import ActionHandle, Engine, StepInfo
from .errors import ActionFailed, InvalidRequest
from .lifecycle import DEFAULT_LIFECYCLE
from .model import SYSTEM_CONTEXT, RequestContext
from .sinks import Sink
from .states import VmState

__all__ = [
    "Check",
    "CoveringPath",
    "PathCoverage",
    "PathStep",
    "SimulatorControl",
    "covering_paths",
    "run_covering_paths",
    "run_path",
    "transitions_of",
]

OWNER = RequestContext(user_id="paths", project_id="paths", roles=frozenset({"member"}))
ADMIN = RequestContext(user_id="paths-admin", project_id="ops", roles=frozenset({"admin"}))
FLAVORS = (
    {"vcpus": 1, "memory_mb": 512, "root_gb": 1},
    {"vcpus": 2, "memory_mb": 1024, "root_gb": 2},
)
RUNNING_STATES = frozenset({VmState.ACTIVE, VmState.RESCUED})


@attrs.frozen
class PathStep:
    """Run ``action`` (internal name); ``fail`` fails it at that step index; ``hold`` keeps it
    at that step until the next path step has been accepted."""

    action: str
    fail: int | None = None
    hold: int | None = None
    guest: Literal["crash", "run"] | None = None
    """With ``fail``: crash the guest, or have it running, just before the step fails (the
    error path of a reboot depends on whether the guest still runs)."""
    cleanup_fails: bool = False
    """With ``fail``: the error path's clean-up call fails too (the instance goes to error)."""


@attrs.frozen
class CoveringPath:
    """A path and the transitions it was planned for."""

    steps: tuple[PathStep, ...]
    covers: tuple[Transition, ...]


@attrs.frozen
class _Node:
    vm: VmState
    prior: VmState | None
    launched: bool
    host: bool
    running: bool


def _ok(action: Action, node: _Node, *, idle: bool = True) -> bool:
    """Whether the guards admit ``action`` on ``node`` (``idle=False``: while a task runs)."""
    if node.vm not in action.allowed_vm_states() or (idle and not action.allows_task(None)):
        return False
    if action.must_have_launched and not node.launched:
        return False
    needs_host = action.preconditions & {Precondition.HAS_HOST, Precondition.HOST_DOWN}
    return not (needs_host and not node.host)


def _after_success(action: Action, node: _Node) -> _Node:
    dest = action.target.resolve(node.vm, node.prior)
    if action.immediate:  # a reset: the record changes, the guest does not
        return _Node(dest, node.prior, node.launched, node.host, node.running)
    host = node.host
    if action.name == "shelve_offload":
        host = False
    if action.name in ("create", "unshelve"):
        host = True
    prior = node.vm if dest is VmState.RESIZED else None
    running = dest in RUNNING_STATES or (dest is VmState.RESIZED and node.vm is VmState.ACTIVE)
    return _Node(dest, prior, node.launched or action.name in ("create", "unshelve"), host, running)


def _after_failure(action: Action, index: int, node: _Node) -> _Node:
    if action.immediate:  # its acceptance wrote the target; a failing hook only records it
        return _after_success(action, node)
    to = action.error_path(action.steps[index]).to
    if to is ErrorTo.ERROR:
        dest = VmState.ERROR
    elif to is ErrorTo.ACTIVE_IF_RUNNING:
        dest = VmState.ACTIVE if node.running else VmState.ERROR
    else:
        dest = node.vm
    host = node.host and not (action.creates and dest is VmState.ERROR)
    return _Node(dest, node.prior, node.launched, host, node.running and dest is not VmState.ERROR)


def _explore(lc: Lifecycle) -> dict[_Node, tuple[PathStep, ...]]:
    """Shortest path (by steps) to every abstract stable node."""
    create = next(a for a in lc.actions if a.creates)
    start = _Node(VmState.BUILDING, None, False, False, False)
    paths: dict[_Node, tuple[PathStep, ...]] = {}
    queue: deque[tuple[_Node, tuple[PathStep, ...]]] = deque()
    for i in range(len(create.steps)):
        node = _after_failure(create, i, start)
        queue.append((node, (PathStep("create", fail=i),)))
    queue.appendleft((_after_success(create, start), (PathStep("create"),)))
    while queue:
        node, path = queue.popleft()
        if node in paths or len(path) > 8:
            continue
        paths[node] = path
        for action in lc.actions:
            if action.creates or action.concurrency is Concurrency.JOINS:
                continue
            if not _ok(action, node) or (action.vm_states is None and node.vm is VmState.DELETED):
                continue
            queue.append((_after_success(action, node), (*path, PathStep(action.name))))
            for i in range(len(action.steps)):
                queue.append(
                    (_after_failure(action, i, node), (*path, PathStep(action.name, fail=i)))
                )
    return paths


def _holder(lc: Lifecycle, node: _Node, task: object, joiner: str | None) -> PathStep | None:
    """An action that, started from ``node``, sits at ``task`` (and accepts ``joiner``)."""
    for action in lc.actions:
        if action.creates or action.concurrency is Concurrency.JOINS or not action.owns_task:
            continue
        if not _ok(action, node):
            continue
        for i, step in enumerate(action.steps):
            if (task is None or step.task_state == task) and (
                joiner is None or joiner in step.accepts
            ):
                return PathStep(action.name, hold=i)
    return None


def covering_paths(lc: Lifecycle) -> list[CoveringPath]:
    """Paths that together fire every transition of ``lc`` (shortest found for each)."""
    nodes = _explore(lc)
    ordered = sorted(nodes.items(), key=lambda kv: len(kv[1]))
    plans: dict[tuple[PathStep, ...], list[Transition]] = {}
    create = next(a for a in lc.actions if a.creates)
    for t in lc.transitions():
        action = lc.action(t.action)
        vm, task = t.source
        plan: tuple[PathStep, ...] | None = None
        if vm is lc.initial[0] and not action.creates:
            # the only way into building/*: a create held at one of its steps
            tasks = [s.task_state for s in create.steps]
            fail = t.step if t.kind == "fail" else None
            if t.kind not in ("accept", "internal") or task in tasks:
                index = tasks.index(task) if t.kind in ("accept", "internal") else 0
                plan = (PathStep(create.name, hold=index), PathStep(action.name, fail=fail))
            else:  # another action took the build over (a delete): hold that one too
                building = _Node(vm, None, False, False, False)
                holder = _holder(lc, building, task, None)
                if holder is not None:
                    plan = (PathStep(create.name, hold=0), holder, PathStep(action.name))
        for node, path in [] if plan is not None else ordered:
            if node.vm is not vm:
                continue
            if action.creates:
                break
            joins = action.concurrency is Concurrency.JOINS
            if joins or (t.kind in ("accept", "internal") and task is not None):
                holder = _holder(lc, node, None if joins else task, action.name if joins else None)
                if holder is None or not _ok(action, node, idle=False):
                    continue
                if t.kind == "fail":
                    assert t.step is not None
                    if _after_failure(action, t.step, node).vm is t.dest[0]:
                        plan = (*path, holder, PathStep(action.name, fail=t.step))
                else:
                    plan = (*path, holder, PathStep(action.name))
            elif t.kind in ("accept", "internal", "advance", "done"):
                if _ok(action, node) and (
                    t.kind != "done" or action.target.resolve(vm, node.prior) is t.dest[0]
                ):
                    plan = (*path, PathStep(action.name))
            elif t.kind == "fail" and t.step is not None and _ok(action, node):
                path_to = action.error_path(action.steps[t.step]).to
                if path_to is ErrorTo.ACTIVE_IF_RUNNING:
                    # set the guest explicitly: whether it still runs decides the path
                    guest: Literal["crash", "run"] = (
                        "run" if t.dest[0] is VmState.ACTIVE else "crash"
                    )
                    plan = (*path, PathStep(action.name, fail=t.step, guest=guest))
                elif _after_failure(action, t.step, node).vm is t.dest[0]:
                    plan = (*path, PathStep(action.name, fail=t.step))
                elif t.dest[0] is VmState.ERROR and action.error_path(action.steps[t.step]).call:
                    plan = (*path, PathStep(action.name, fail=t.step, cleanup_fails=True))
            if plan is not None:
                break
        if action.creates:
            plan = (PathStep("create", fail=t.step) if t.kind == "fail" else PathStep("create"),)
        if plan is None:
            raise LookupError(f"no path found for {t.trigger} {state_name(t.source)}")
        plans.setdefault(plan, []).append(t)
    return [CoveringPath(steps=k, covers=tuple(v)) for k, v in plans.items()]


class _Director:
    """The step hook that fails or holds the path's steps."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        self.fail: tuple[str, int] | None = None
        self.fail_cleanup: str | None = None
        self.hold: tuple[str, int] | None = None
        self.before_fail: Callable[[], Awaitable[None]] | None = None
        self.held = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, info: StepInfo) -> None:
        key = (info.action if info.variant is None else f"{info.action}:{info.variant}", info.index)
        if info.error_path:
            if self.fail_cleanup == key[0]:
                self.fail_cleanup = None
                raise RuntimeError(f"path: clean-up of {key[0]} fails{self.detail}")
            return
        if self.fail is not None and key == self.fail:
            self.fail = None
            if self.before_fail is not None:
                await self.before_fail()
            raise RuntimeError(f"path: fail {key[0]} at step {key[1]}{self.detail}")
        if self.hold is not None and key == self.hold:
            self.hold = None
            self.held.set()
            with anyio.fail_after(3600):
                await self.release.wait()


def _key(action: Action) -> str:
    return (
        action.public_name if action.variant is None else f"{action.public_name}:{action.variant}"
    )


@runtime_checkable
class SimulatorControl(Protocol):
    """What a path needs from the hypervisor beyond the Driver protocol (the simulator has it):
    a host taken down for an evacuation, a guest crashed before a reboot fails."""

    def host_down(self, name: str) -> None: ...

    def host_up(self, name: str) -> None: ...

    def guest_event(self, uuid: str, kind: Literal["crash", "shutdown"]) -> None: ...


Check = Callable[[Engine, str], Awaitable[None]]
"""An assertion run after a path, with the engine (still running, idle) and the instance."""

D = TypeVar("D", bound=Driver)


async def run_path(
    path: CoveringPath,
    *,
    driver: Driver,
    control: SimulatorControl,
    check: Check | None = None,
    config: Config | None = None,
    lifecycle: Lifecycle = DEFAULT_LIFECYCLE,
    calls: Mapping[str, StepCall] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    sinks: Sequence[Sink] = (),
    create_params: Mapping[str, Any] | None = None,
    failure_detail: str = "",
) -> Counter[tuple[str, str, str]]:
    """Replay ``path`` on a fresh engine over ``driver``; return the transitions it applied.

    ``check`` runs after the path with the engine and the instance's uuid, for assertions of
    the caller's own (the engine is still running then, with nothing in flight).

    Args:
        calls: The lifecycle's own calls, for actions an embedding service added.
        params: By action name, the parameters of actions the path generator does not know
            (an added action's ``volume_id``).
        sinks: The engine's notification sinks (to see what the path emitted).
        create_params: Merged into the create's parameters (``admin_pass``, ``user_data``,
            ``metadata`` …: the redaction tests put canary secrets there).
        failure_detail: Appended to the message of every failure the path injects.
    """
    director = _Director(failure_detail)
    engine = Engine(
        driver,
        config=config or Config(),
        sinks=sinks,
        hooks=[director],
        clock=VirtualClock(),
        lifecycle=lifecycle,
        calls=calls,
    )
    async with engine:
        uuid = await _replay(
            engine, director, path, driver, control, params or {}, create_params or {}
        )
        await engine.wait_idle(timeout=86400)
        if check is not None:
            await check(engine, uuid)
    return engine.machine.applied


async def _replay(
    engine: Engine,
    director: _Director,
    path: CoveringPath,
    driver: Driver,
    control: SimulatorControl,
    given: Mapping[str, Mapping[str, Any]],
    create_params: Mapping[str, Any],
) -> str:
    lc = engine.lifecycle
    uuid: str | None = None
    held: list[ActionHandle] = []
    for step in path.steps:
        action = lc.action(step.action)
        ctx = (
            SYSTEM_CONTEXT if action.internal else ADMIN if action.rule.value == "admin" else OWNER
        )
        params: dict[str, Any] = {}
        if action.creates:
            params = {"name": "path", "flavor": FLAVORS[0], "image": "cirros", **create_params}
        elif action.name == "resize":
            assert uuid is not None
            small = engine.get(uuid).flavor.vcpus == FLAVORS[0]["vcpus"]
            params = {"flavor": FLAVORS[1] if small else FLAVORS[0]}
        if action.variant is not None:
            params[action.variant_param] = action.variant
        params.update(given.get(action.name, {}))
        director.fail = (_key(action), step.fail) if step.fail is not None else None
        director.before_fail = None
        director.fail_cleanup = _key(action) if step.cleanup_fails else None
        if step.guest is not None and uuid is not None:
            director.before_fail = _guest_setter(engine, driver, control, uuid, step.guest)
        if step.hold is not None:
            director.hold = (_key(action), step.hold)
            director.held = anyio.Event()
            director.release = anyio.Event()
        down = None
        if Precondition.HOST_DOWN in action.preconditions and uuid is not None:
            down = engine.get(uuid).host
            if down is not None:
                control.host_down(down)
        handle = await engine.submit(ctx, action.public_name, uuid, params)
        uuid = handle.uuid
        if step.hold is not None:
            with anyio.fail_after(3600):
                await director.held.wait()
            held.append(handle)
            continue
        result = await handle.wait()
        director.release.set()
        if down is not None:
            control.host_up(down)
        if step.fail is None and not result.ok:
            raise AssertionError(f"{step.action} failed on a path: {result.error}")
        if step.fail is not None and not isinstance(result.error, ActionFailed):
            raise AssertionError(f"{step.action} did not fail at step {step.fail}: {result}")
    for handle in held:
        await handle.wait()
    assert uuid is not None
    return uuid


def _guest_setter(
    engine: Engine, driver: Driver, control: SimulatorControl, uuid: str, want: str
) -> Callable[[], Awaitable[None]]:
    async def set_guest() -> None:
        if want == "crash":
            control.guest_event(uuid, "crash")
        else:
            await driver.power_on(engine.get(uuid).guest())

    return set_guest


def transitions_of(paths: Iterable[CoveringPath]) -> set[tuple[str, str, str]]:
    """The (trigger, source, dest) names the paths were planned to fire."""
    return {(t.trigger, state_name(t.source), state_name(t.dest)) for p in paths for t in p.covers}


@attrs.frozen
class PathCoverage:
    """Which of the lifecycle's transitions a run of covering paths exercised.

    Attributes:
        expected: Every (trigger, source, dest) of the lifecycle.
        applied: How often each transition fired (the machine's own count, not the plan).
        paths: How many paths ran.
    """

    expected: frozenset[tuple[str, str, str]]
    applied: Mapping[tuple[str, str, str], int]
    paths: int

    @property
    def missing(self) -> frozenset[tuple[str, str, str]]:
        """Transitions no path fired."""
        return self.expected - set(self.applied)

    @property
    def percent(self) -> float:
        """The share of ``expected`` that fired, in percent."""
        if not self.expected:
            return 100.0
        return 100 * (len(self.expected) - len(self.missing)) / len(self.expected)

    def summary(self) -> str:
        """One line: ``transition coverage: 100.0% of 327 transitions (141 paths)``."""
        line = (
            f"transition coverage: {self.percent:.1f}% of {len(self.expected)} transitions "
            f"({self.paths} paths)"
        )
        if self.missing:
            line += f"; missing e.g. {sorted(self.missing)[:3]}"
        return line


async def run_covering_paths(
    *,
    driver: Callable[[], D],
    control: Callable[[D], SimulatorControl] | None = None,
    check: Check | None = None,
    config: Config | None = None,
    lifecycle: Lifecycle = DEFAULT_LIFECYCLE,
    calls: Mapping[str, StepCall] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    sinks: Sequence[Sink] = (),
    create_params: Mapping[str, Any] | None = None,
    failure_detail: str = "",
) -> PathCoverage:
    """Replay every covering path of ``lifecycle``, each on a fresh engine and driver.

    Run it on virtual time (``run_virtual``, or a test on ism's virtual loop): paths wait out
    deadlines and latencies.

    Args:
        driver: Makes a fresh driver for each path (the paths leave guests behind).
        control: The host and guest controls for a driver; by default the driver itself,
            which must then have them (the simulator does).
        check: Assertions of your own, run after each path with the engine and the uuid.
        config: The engine's configuration for every path; by default Nova's, but with
            ``shelved_offload_time=-1``, since the paths offload a shelved instance themselves.
        lifecycle: The table whose transitions are planned and counted.
        calls: The lifecycle's own calls, for actions an embedding service added.
        params: Parameters by action name for actions the generator does not know.
        sinks: Notification sinks given to every path's engine.
        create_params: Merged into every create's parameters.
        failure_detail: Appended to the message of every failure the paths inject.

    Returns:
        The coverage: which transitions fired, how often, and which did not.

    Raises:
        InvalidRequest: no ``control`` given and the driver lacks the controls.
        AssertionError: a path went another way than planned, or ``check`` failed.
    """
    applied: Counter[tuple[str, str, str]] = Counter()
    config = config or Config(shelved_offload_time=-1)
    paths = covering_paths(lifecycle)
    for path in paths:
        made = driver()
        if control is not None:
            controls = control(made)
        elif isinstance(made, SimulatorControl):
            controls = made
        else:
            raise InvalidRequest(
                f"{type(made).__name__} has no host_down/host_up/guest_event: pass control="
            )
        applied.update(
            await run_path(
                path,
                driver=made,
                control=controls,
                check=check,
                config=config,
                lifecycle=lifecycle,
                calls=calls,
                params=params,
                sinks=sinks,
                create_params=create_params,
                failure_detail=failure_detail,
            )
        )
    expected = frozenset(
        (t.trigger, state_name(t.source), state_name(t.dest)) for t in lifecycle.transitions()
    )
    return PathCoverage(expected=expected, applied=dict(applied), paths=len(paths))
