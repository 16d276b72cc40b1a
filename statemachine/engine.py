"""The engine: accepts actions, runs their steps, owns the instances' state.

Layers, one job each (httpx's ``send`` chain): :meth:`Engine.submit` → ``_accept`` (policy,
lock, guards, concurrency, compare-and-swap) → ``_run`` (preemption scope, outcome) →
``_run_steps`` → ``_run_step`` (deadline, driver call) → ``_commit`` (machine, CAS, notify).

Semantics are Nova's, made explicit (``reference/action-events.md``): one action owns an
instance's task_state at a time; a second is refused unless the table lets it preempt, take
over or join; every step is a compare-and-swap on the task_state and the owning action; each
driver call runs under its step's deadline; a failure emits ``.error`` then follows the error
path, so once nothing runs no instance is left in a transient state.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import traceback
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self, final, overload

import anyio
import attrs
from anyio.abc import TaskGroup

from drivers.base import (
    CURRENT_CALL,
    CallContext,
    Driver,
    DriverError,
    LifecycleEvent,
    PowerState,
)

from ._calls import CALLS, StepRun
from ._params import normalize_params, resolve_action
from ._placement import Placement
from ._schema import (
    Action,
    Concurrency,
    ErrorTo,
    Lifecycle,
    Precondition,
    Step,
    SyncResponse,
    TimedTransition,
    trigger_name,
)
from ._timers import TimerHandle, TimerService
from ._watch import ChangeFeed
from .clock import Clock, SystemClock
from .config import Config
from .errors import (
    ActionFailed,
    ActionPreempted,
    ActionRefused,
    BuildTimeout,
    Busy,
    Conflict,
    EngineClosed,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    IsmError,
    Locked,
    StepDeadlineExceeded,
    UnexpectedDeletingTaskState,
    WaitTimeout,
)
from .handles import (
    ActionHandle,
    ActionResult,
    EngineStatistics,
    Outcome,
    StateChange,
    StepHook,
    StepInfo,
    next_action_id,
)
from .lifecycle import DEFAULT_LIFECYCLE
from .machine import LifecycleMachine
from .model import SYSTEM_CONTEXT, Fault, Flavor, Instance, RequestContext
from .notify import Notifier, NotifySettings
from .policy import Policy
from .redact import scrub
from .sinks import Sink
from .states import TaskState, VmState
from .store import MemoryStore

__all__ = [
    "ActionHandle",
    "ActionResult",
    "Engine",
    "EngineStatistics",
    "Outcome",
    "StateChange",
    "StepHook",
    "StepInfo",
]

log = logging.getLogger("ism.engine")


@final
class Engine:
    """Drives instances through their lifecycle on one driver.

    Use as an async context manager: entering starts the timer service and the hypervisor
    event listener in a task group; leaving stops accepting actions, lets running ones finish
    within ``config.drain_timeout``, then cancels the rest (each ends down its error path or
    preempted, never half-written).
    """

    def __init__(
        self,
        driver: Driver,
        *,
        config: Config | None = None,
        sinks: Sequence[Sink] = (),
        lifecycle: Lifecycle = DEFAULT_LIFECYCLE,
        clock: Clock | None = None,
        policy: Policy | None = None,
        seed: int | None = None,
        hooks: Sequence[StepHook] = (),
    ) -> None:
        self.driver = driver
        self._hooks = tuple(hooks)
        self.config = config or Config()
        self.lifecycle = lifecycle
        self.machine = LifecycleMachine(lifecycle)
        self.clock: Clock = clock or SystemClock()
        self.policy = policy or Policy()
        self._rng = random.Random(seed) if seed is not None else None
        self._check_deadlines()
        self._store = MemoryStore()
        self._placement = Placement()
        self._timers = TimerService()
        self._notifier = Notifier(
            settings=NotifySettings(
                namespace=self.config.notification_namespace,
                notify_on_state_change=self.config.notify_on_state_change,
                include_traceback=self.config.include_traceback,
            ),
            sinks=list(sinks),
            wall=self.clock.wall,
            new_id=self._new_uuid,
            service_host=self.config.service_host,
        )
        self._running: dict[str, ActionHandle] = {}
        self._inflight: set[ActionHandle] = set()
        self._active = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._armed: dict[tuple[str, str], TimerHandle] = {}
        self._chained: dict[str, str] = {}
        self._user_data_by_uuid: dict[str, str] = {}
        self._feed = ChangeFeed()
        self._tg: TaskGroup | None = None
        self._accepting = False
        self._accepted = 0
        self._refused = 0
        self._outcomes: dict[str, int] = {}
        self._by_action: dict[str, dict[str, int]] = {}
        self._changes = 0
        self._notifications = 0

    # -- life of the engine --------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._timers.run)
        for record in self._store.all():
            self._rearm(record)
        if self.config.handle_virt_lifecycle_events:
            self._tg.start_soon(self._listen)
        self._accepting = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._accepting = False
        assert self._tg is not None
        try:
            if exc is None:
                with anyio.move_on_after(self.config.drain_timeout):
                    await self.wait_idle(timeout=self.config.drain_timeout)
        finally:
            for handle in list(self._inflight):
                handle.scope.cancel()
            # cancelled actions take their error path (shielded commits); give them a bound
            with anyio.move_on_after(self.config.drain_timeout, shield=True):
                while self._active:
                    await self._idle.wait()
            self._tg.cancel_scope.cancel()
            tg, self._tg = self._tg, None
            result = await tg.__aexit__(exc_type, exc, tb)
            self._feed.close()
        return result

    def _check_deadlines(self) -> None:
        """Power-off waits shutdown_timeout for the guest: its deadline must be longer."""
        from ._schema import Call

        for action in self.lifecycle.actions:
            for step in action.steps:
                if step.call is Call.POWER_OFF and step.deadline <= self.config.shutdown_timeout:
                    raise InvalidRequest(
                        f"shutdown_timeout {self.config.shutdown_timeout:g} s must be shorter than "
                        f"the {step.deadline:g} s deadline of {action.name}'s {step.task_state}"
                    )

    # -- identities and clocks --------------------------------------------------------------

    def _new_uuid(self) -> str:
        if self._rng is None:
            return str(uuidlib.uuid4())
        return str(uuidlib.UUID(int=self._rng.getrandbits(128), version=4))

    def _user_data(self, uuid: str) -> str | None:
        return self._user_data_by_uuid.get(uuid)

    # -- queries ------------------------------------------------------------------------------

    def get(self, uuid: str) -> Instance:
        """The instance's current snapshot.

        Raises:
            InstanceNotFound: no instance has that uuid.
        """
        return self._store.get(uuid)

    def instances(
        self,
        *,
        vm_state: VmState | None = None,
        host: str | None = None,
        project_id: str | None = None,
        name: str | None = None,
        include_deleted: bool = True,
    ) -> list[Instance]:
        """Snapshots of the instances that match every filter given."""
        out = []
        for inst in self._store.all():
            if vm_state is not None and inst.vm_state is not vm_state:
                continue
            if host is not None and inst.host != host:
                continue
            if project_id is not None and inst.project_id != project_id:
                continue
            if name is not None and inst.name != name:
                continue
            if not include_deleted and inst.vm_state is VmState.DELETED:
                continue
            out.append(inst)
        return out

    def status(self, uuid: str) -> str:
        """Nova's user-facing status (``ACTIVE``, ``SHUTOFF``, ``HARD_REBOOT`` …)."""
        inst = self.get(uuid)
        return self.lifecycle.status(inst.vm_state, inst.task_state)

    def fault(self, uuid: str) -> Fault | None:
        """The instance's last fault, if any."""
        return self.get(uuid).fault

    def running(self, uuid: str) -> ActionHandle | None:
        """The action that owns the instance's task_state, if one runs."""
        return self._running.get(uuid)

    def _count(self, action: str, outcome: str) -> None:
        row = self._by_action.setdefault(action, {})
        row[outcome] = row.get(outcome, 0) + 1

    def statistics(self) -> EngineStatistics:
        """A frozen snapshot of counters and sizes."""
        by_state: dict[str, int] = {}
        count = 0
        for inst in self._store.all():
            count += 1
            by_state[inst.vm_state.value] = by_state.get(inst.vm_state.value, 0) + 1
        return EngineStatistics(
            instances=count,
            by_vm_state=by_state,
            running_actions=self._active,
            accepted=self._accepted,
            refused=self._refused,
            outcomes=dict(self._outcomes),
            by_action={k: dict(v) for k, v in self._by_action.items()},
            state_changes=self._changes,
            notifications=self._notifications,
            timers_armed=self._timers.statistics().armed,
        )

    def adopt(self, records: Iterable[Instance]) -> int:
        """Take over instances that already exist and are idle (another system's, a benchmark's).

        All or nothing: a record in a transient or unknown state, or a uuid already held, is
        refused with :class:`InvalidRequest` and none is adopted.
        """
        batch = list(records)
        known = set(self.lifecycle.states())
        for record in batch:
            if not isinstance(record, Instance) or record.task_state is not None:
                raise InvalidRequest("only idle Instance records can be adopted")
            if record.state not in known:
                raise InvalidRequest(f"state {record.state} is not in the lifecycle")
        try:
            self._store.load(batch)
        except Conflict as exc:
            raise InvalidRequest(f"cannot adopt: {exc}") from None
        for record in batch:
            self._placement.update(record)
        if self._tg is not None:
            for record in batch:
                self._rearm(record)
        return len(batch)

    # -- acting -------------------------------------------------------------------------------

    @overload
    async def create(
        self,
        ctx: RequestContext,
        *,
        name: str,
        flavor: Flavor | Mapping[str, Any],
        image: str,
        host: str | None = None,
        admin_pass: str | None = None,
        user_data: str | None = None,
        metadata: Mapping[str, str] | None = None,
        key_name: str | None = None,
        wait: Literal[True] = True,
    ) -> ActionResult: ...

    @overload
    async def create(
        self,
        ctx: RequestContext,
        *,
        name: str,
        flavor: Flavor | Mapping[str, Any],
        image: str,
        host: str | None = None,
        admin_pass: str | None = None,
        user_data: str | None = None,
        metadata: Mapping[str, str] | None = None,
        key_name: str | None = None,
        wait: Literal[False],
    ) -> ActionHandle: ...

    async def create(
        self,
        ctx: RequestContext,
        *,
        name: str,
        flavor: Flavor | Mapping[str, Any],
        image: str,
        host: str | None = None,
        admin_pass: str | None = None,
        user_data: str | None = None,
        metadata: Mapping[str, str] | None = None,
        key_name: str | None = None,
        wait: bool = True,
    ) -> ActionResult | ActionHandle:
        """Create an instance; with ``wait`` return its result, else its handle.

        ``admin_pass`` is validated and then dropped: no driver of ism injects passwords, so
        keeping it could only leak it. ``user_data`` reaches the driver and nothing else.
        """
        params: dict[str, Any] = {"flavor": flavor, "image": image, "name": name}
        for key, value in (
            ("host", host),
            ("admin_pass", admin_pass),
            ("user_data", user_data),
            ("metadata", metadata),
            ("key_name", key_name),
        ):
            if value is not None:
                params[key] = value
        handle = await self.submit(ctx, "create", None, params)
        return await self._finish(handle) if wait else handle

    async def act(
        self,
        ctx: RequestContext,
        action: str,
        instance: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> ActionResult:
        """Run ``action`` on ``instance`` (uuid) and wait for it.

        Raises:
            ActionRefused: not accepted (a subclass says why); nothing changed.
            ActionFailed: accepted, then failed; the instance went down the error path.
            ActionPreempted: accepted, then preempted (by a delete, or a take-over).
        """
        handle = await self.submit(ctx, action, instance, params)
        return await self._finish(handle, timeout)

    async def _finish(self, handle: ActionHandle, timeout: float | None = None) -> ActionResult:
        result = await handle.wait(timeout)
        if result.error is not None:
            raise result.error
        return result

    async def submit(
        self,
        ctx: RequestContext,
        action: str,
        instance: str | None,
        params: Mapping[str, Any] | None = None,
    ) -> ActionHandle:
        """Accept ``action`` and start it; return at once with its handle.

        Raises:
            ActionRefused: not accepted; nothing changed.
        """
        try:
            return await self._accept(ctx, action, instance, dict(params or {}))
        except ActionRefused:
            self._refused += 1
            self._count(action, "refused")
            raise

    # -- acceptance -----------------------------------------------------------------------

    async def _accept(
        self,
        ctx: RequestContext,
        name: str,
        uuid: str | None,
        raw: dict[str, Any],
    ) -> ActionHandle:
        if not self._accepting or self._tg is None:
            raise EngineClosed("the engine is not running", action=name, instance=uuid)
        if not isinstance(ctx, RequestContext):
            raise InvalidRequest("ctx must be a RequestContext", action=name)
        action = resolve_action(self.lifecycle, name, raw, system=ctx.is_system)
        params = normalize_params(action, raw)
        if self._active >= self.config.max_actions:
            raise Busy(
                f"{self._active} actions in flight (max_actions)", action=name, instance=uuid
            )
        if action.creates:
            return await self._accept_create(ctx, action, params)
        if uuid is None:
            raise InvalidRequest(f"'{name}' needs an instance", action=name)
        return await self._accept_existing(ctx, action, uuid, params)

    async def _accept_existing(
        self, ctx: RequestContext, action: Action, uuid: str, params: dict[str, Any]
    ) -> ActionHandle:
        """Guards, then the compare-and-swap that starts the action. A swap that loses only to
        a change that left the guards true (a lock, a power-state update) is retried, bounded;
        a real conflict surfaces as the guards' refusal or as :class:`Conflict`."""
        name = action.public_name
        for attempt in range(3):
            inst = self._store.get(uuid)
            if inst.vm_state is VmState.DELETED:
                raise InstanceNotFound(uuid)
            self.policy.check(ctx, action, inst)
            await self._check_guards(ctx, action, inst, params)
            running = self._running.get(uuid)
            if action.concurrency is Concurrency.FREE:
                self.machine.apply(trigger_name(action.name, "accept"), inst.state, inst.state)
                handle = self._new_handle(action, inst, ctx, params)
                self._start(handle, running_slot=False)
                return handle
            if action.concurrency is Concurrency.JOINS:
                step = running.step if running is not None else None
                if running is None or step is None or action.name not in step.accepts:
                    raise InvalidState(
                        name, uuid, "task_state", f"{inst.task_state} (not yet joinable)"
                    )
            handle = self._new_handle(action, inst, ctx, params)
            first = (inst.vm_state, action.steps[0].task_state)
            self.machine.apply(trigger_name(action.name, "accept"), inst.state, first)
            new = inst.evolve(
                task_state=first[1],
                action_id=handle.id,
                updated_at=self.clock.wall(),
                request_id=ctx.request_id,
            )
            try:
                await self._store.swap(inst, new)
            except Conflict:
                if attempt == 2:
                    raise
                continue
            handle.inst = new
            if running is not None and action.concurrency is not Concurrency.EXCLUSIVE:
                self._preempt(running, by=action.public_name, current=inst)
            self._committed(inst, new, handle)
            self._start(handle, running_slot=True)
            return handle
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _check_guards(
        self, ctx: RequestContext, action: Action, inst: Instance, params: Mapping[str, Any]
    ) -> None:
        name, uuid = action.public_name, inst.uuid
        if action.lock_check and inst.locked and not ctx.is_admin:
            raise Locked(name, uuid)
        if inst.vm_state not in action.allowed_vm_states():
            raise InvalidState(name, uuid, "vm_state", inst.vm_state.value)
        if not action.allows_task(inst.task_state):
            raise InvalidState(name, uuid, "task_state", inst.task_state)
        if action.must_have_launched and inst.launched_at is None:
            raise InvalidState(name, uuid, "launched_at", None)
        if Precondition.HAS_HOST in action.preconditions and inst.host is None:
            raise InvalidState(name, uuid, "host", None)
        if Precondition.HOST_DOWN in action.preconditions and await self._host_up(inst.host):
            raise InvalidState(name, uuid, "host", f"{inst.host} (up: evacuate needs it down)")
        if Precondition.OTHER_HOST in action.preconditions and params.get("host") == inst.host:
            raise InvalidRequest(f"cannot {name} to the instance's own host", action=name)

    async def _accept_create(
        self, ctx: RequestContext, action: Action, params: dict[str, Any]
    ) -> ActionHandle:
        self.policy.check(ctx, action, None)
        now = self.clock.wall()
        vm, task = self.lifecycle.initial
        uuid = self._new_uuid()
        inst = Instance(
            uuid=uuid,
            name=params["name"],
            user_id=ctx.user_id,
            project_id=ctx.project_id,
            flavor=params["flavor"],
            image=params["image"],
            vm_state=vm,
            task_state=task,
            power_state=PowerState.NOSTATE,
            created_at=now,
            updated_at=now,
            key_name=params.get("key_name"),
            metadata=params.get("metadata", {}),
            request_id=ctx.request_id,
        )
        handle = self._new_handle(action, inst, ctx, params)
        inst = attrs.evolve(inst, action_id=handle.id)
        handle.inst = inst
        await self._store.insert(inst)
        if "user_data" in params:
            self._user_data_by_uuid[uuid] = params["user_data"]
        self._committed(None, inst, handle)
        self._start(handle, running_slot=True)
        return handle

    def _new_handle(
        self, action: Action, inst: Instance, ctx: RequestContext, params: Mapping[str, Any]
    ) -> ActionHandle:
        extra: dict[str, Any] = {}
        if "flavor" in params and not action.creates:
            extra["new_flavor"] = params["flavor"]  # resize_prep's payload carries it
        if "rescue_image" in action.params:
            extra["rescue_image_ref"] = params.get("rescue_image", inst.image)
        return ActionHandle(
            id=next_action_id(),
            action=action,
            uuid=inst.uuid,
            ctx=ctx,
            params=params,
            started_at=anyio.current_time(),
            inst=inst,
            extra=extra,
        )

    def _start(self, handle: ActionHandle, *, running_slot: bool) -> None:
        assert self._tg is not None
        self._accepted += 1
        if running_slot:
            self._running[handle.uuid] = handle
        self._inflight.add(handle)
        self._active += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._tg.start_soon(self._run, handle, name=f"ism:{handle.name}:{handle.uuid}")

    def _preempt(self, victim: ActionHandle, *, by: str, current: Instance) -> None:
        """End ``victim``: it emits its ``.error`` now (so every ``.start`` has an end), then
        its scope is cancelled; its next compare-and-swap would fail anyway."""
        victim.preempted_by = by
        if victim.open_phases:
            err = ActionPreempted(victim.name, victim.uuid, by)
            self._emit(
                f"{victim.action.error_event(victim.step)}.error",
                current,
                victim,
                fault=self._fault(err, victim),
            )
        victim.scope.cancel()
        if self._running.get(victim.uuid) is victim:
            del self._running[victim.uuid]

    # -- running ----------------------------------------------------------------------------

    async def _run(self, handle: ActionHandle) -> None:
        error: IsmError | None = None
        outcome = Outcome.FAILED  # until it is known to have ended otherwise
        try:
            with handle.scope:
                error = await self._run_steps(handle)
            if self._running.get(handle.uuid) is handle:
                del self._running[handle.uuid]
            chained = self._chained.pop(handle.uuid, None)
            if chained is not None:
                await self._system_action(chained, handle.uuid, "timed transition")
            if handle.preempted_by is not None:
                outcome = Outcome.PREEMPTED
                error = ActionPreempted(handle.name, handle.uuid, handle.preempted_by)
            elif handle.scope.cancel_called and not handle.ended:
                # cancelled by the build timeout or the engine shutting down
                reason = handle.interrupt or ActionFailed(
                    handle.name, handle.uuid, None, "the engine stopped"
                )
                with anyio.CancelScope(shield=True):
                    error = await self._fail(handle, reason)
                outcome = Outcome.FAILED
            elif error is not None:
                outcome = (
                    Outcome.PREEMPTED if isinstance(error, ActionPreempted) else Outcome.FAILED
                )
            else:
                outcome = Outcome.OK
        finally:
            self._inflight.discard(handle)
            if outcome is Outcome.FAILED and error is None:
                # cancelled from outside (the engine's task group): left as it was
                error = ActionFailed(handle.name, handle.uuid, _step_name(handle.step), "cancelled")
            if self._running.get(handle.uuid) is handle:
                del self._running[handle.uuid]
            try:
                inst = self._store.get(handle.uuid)
            except InstanceNotFound:
                inst = handle.inst
            handle.result = ActionResult(
                action=handle.name,
                instance=inst,
                outcome=outcome,
                error=error,
                request_id=handle.ctx.request_id,
                started_at=handle.started_at,
                ended_at=anyio.current_time(),
            )
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
            self._count(handle.name, outcome)
            handle.done.set()
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _run_steps(self, handle: ActionHandle) -> IsmError | None:
        """Run every step; return the error that ended the action, or None."""
        action = handle.action
        pending: dict[str, Any] = {}
        previous: Step | None = None
        for index, step in enumerate(action.steps):
            if step.needs_host and handle.inst.host is None:
                continue
            if previous is not None:
                failed = await self._advance(handle, previous, step, index, pending)
                if failed is not None:
                    return failed
                pending = {}
            if handle.scope.cancel_called:
                # preempted (or interrupted) before this step began: say nothing more; the
                # first step's events would otherwise go out before the first checkpoint
                return None
            handle.step, handle.step_index = step, index
            for event in step.before:
                self._emit(event, handle.inst, handle)
            try:
                pending = await self._run_step(handle, step)
            except Exception as exc:  # translated at this edge; BaseException propagates
                if isinstance(exc, Conflict):
                    return self._lost(handle, exc)
                return await self._fail(handle, exc)
            previous = step
        assert previous is not None
        return await self._finish_steps(handle, previous, pending)

    async def _advance(
        self,
        handle: ActionHandle,
        previous: Step,
        step: Step,
        index: int,
        pending: dict[str, Any],
    ) -> IsmError | None:
        vm = handle.inst.vm_state
        try:
            if step.task_state != previous.task_state:
                await self._commit(
                    handle,
                    trigger_name(handle.action.name, "advance", index),
                    (vm, step.task_state),
                    pending,
                )
            elif pending:
                await self._commit(handle, None, None, pending)
            elif handle.action.concurrency is not Concurrency.FREE:
                self._check_owner(handle)  # nothing to write: still, is the task still ours?
        except Conflict as exc:
            return self._lost(handle, exc)
        for event in previous.after:
            self._emit(event, handle.inst, handle)
        return None

    async def _finish_steps(
        self, handle: ActionHandle, last: Step, pending: dict[str, Any]
    ) -> IsmError | None:
        action = handle.action
        try:
            if action.concurrency is Concurrency.FREE:
                if pending:
                    await self._commit(handle, None, None, pending)
            else:
                current = self._store.get(handle.uuid)
                dest_vm = action.target.resolve(current.vm_state, current.old_vm_state)
                if action.power_after is not None and "power_state" not in pending:
                    pending["power_state"] = action.power_after
                await self._commit(
                    handle, trigger_name(action.name, "done"), (dest_vm, None), pending
                )
        except Conflict as exc:
            return self._lost(handle, exc)
        handle.ended = True
        for event in last.after:
            self._emit(event, handle.inst, handle)
        return None

    async def _run_step(self, handle: ActionHandle, step: Step) -> dict[str, Any]:
        if step.call is None and not self._hooks:
            return {}
        run = StepRun(
            engine=self,
            action=handle.action,
            step=step,
            inst=handle.inst,
            ctx=handle.ctx,
            params=handle.params,
            extra=handle.extra,
        )
        token = CURRENT_CALL.set(CallContext(handle.action.public_name, _step_name(step)))
        try:
            with self._deadline(step.deadline):
                await self._run_hooks(handle, step)
                return await CALLS[step.call](run) if step.call is not None else {}
        finally:
            CURRENT_CALL.reset(token)
        raise StepDeadlineExceeded(handle.action.name, _step_name(step), step.deadline)

    @contextlib.contextmanager
    def _deadline(self, seconds: float) -> Iterator[anyio.CancelScope]:
        """A cancel scope the timer service cancels after ``seconds``: every deadline of a
        transient state is a timer-service entry, like the timed transitions, so one heap holds
        them all (and their lateness is measured in one place)."""
        scope = anyio.CancelScope()
        timer = self._timers.call_at(anyio.current_time() + seconds, scope.cancel)
        try:
            with scope:
                yield scope
        finally:
            self._timers.cancel(timer)

    async def _run_hooks(
        self, handle: ActionHandle, step: Step, *, error_path: bool = False
    ) -> None:
        if not self._hooks:
            return
        info = StepInfo(
            handle.action.public_name,
            handle.action.variant,
            handle.step_index,
            step.task_state,
            handle.inst,
            error_path,
        )
        for hook in self._hooks:
            await hook(info)

    def _lost(self, handle: ActionHandle, exc: Conflict) -> IsmError:
        """A step's compare-and-swap lost: another action owns the instance now."""
        by = handle.preempted_by or "another action"
        handle.preempted_by = by
        return ActionPreempted(handle.name, handle.uuid, by)

    async def _fail(self, handle: ActionHandle, exc: BaseException) -> IsmError:
        """Emit ``.error``, run the error path, commit where it leads; return ActionFailed."""
        action, step = handle.action, handle.step or handle.action.steps[0]
        fault = self._fault(exc, handle)
        self._emit(f"{action.error_event(step)}.error", handle.inst, handle, fault=fault)
        failed = ActionFailed(action.name, handle.uuid, _step_name(step), scrub(str(exc)))
        failed.__cause__ = exc
        if action.concurrency is Concurrency.FREE:
            await self._commit(handle, None, None, {"fault": fault})
            handle.ended = True
            return failed
        path = action.error_path(step)
        to = path.to
        changes: dict[str, Any] = {"fault": fault}
        if path.events:
            self._emit(path.events[0], handle.inst, handle)
        if path.call is not None:
            run = StepRun(
                self,
                action,
                step,
                self._store.get(handle.uuid),
                handle.ctx,
                handle.params,
                handle.extra,
            )
            try:
                with self._deadline(step.deadline) as scope:
                    await self._run_hooks(handle, step, error_path=True)
                    changes.update(await CALLS[path.call](run))
                if scope.cancelled_caught:
                    raise StepDeadlineExceeded(action.name, _step_name(step), step.deadline)
            except Exception as cleanup:
                log.warning(
                    "error path of %s on %s failed: %s",
                    action.name,
                    handle.uuid,
                    scrub(str(cleanup)),
                )
                to = ErrorTo.ERROR
        vm = handle.inst.vm_state
        if to is ErrorTo.ERROR:
            dest = VmState.ERROR
        elif to is ErrorTo.ACTIVE_IF_RUNNING:
            dest = VmState.ACTIVE if await self._guest_running(handle.inst) else VmState.ERROR
        else:
            dest = vm
        if action.creates and handle.inst.host is not None and dest is VmState.ERROR:
            changes["host"] = None  # a failed build keeps no host (Nova: delete is then local)
        if to is ErrorTo.ERROR and action.creates:
            self._placement.release(handle.uuid)
        try:
            await self._commit(handle, trigger_name(action.name, "fail"), (dest, None), changes)
        except Conflict as lost:
            return self._lost(handle, lost)
        handle.ended = True
        for event in path.events[1:]:
            self._emit(event, handle.inst, handle)
        return failed

    async def _guest_running(self, inst: Instance) -> bool:
        try:
            with anyio.fail_after(60):
                power = await self.driver.power_state(inst.guest())
        except (DriverError, TimeoutError):
            return False
        return power is PowerState.RUNNING

    def _fault(self, exc: BaseException, handle: ActionHandle) -> Fault:
        tb = None
        if self.config.include_traceback and exc.__traceback__ is not None:
            tb = scrub("".join(traceback.format_exception(exc)))
        frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
        return Fault(
            exception=type(exc).__name__,
            message=scrub(str(exc)),
            action=handle.action.name,
            step=_step_name(handle.step),
            created_at=self.clock.wall(),
            module_name=type(exc).__module__,
            function_name=frames[-1].name if frames else "",
            traceback=tb,
        )

    # -- committing -------------------------------------------------------------------------

    async def _commit(
        self,
        handle: ActionHandle,
        trigger: str | None,
        dest: tuple[VmState, TaskState | None] | None,
        changes: Mapping[str, Any],
    ) -> Instance:
        """Compare-and-swap the record the action expects (task_state and owner), validated by
        the machine, then notify. Shielded: a commit either happens whole or not at all."""
        with anyio.CancelScope(shield=True):
            for _ in range(8):  # bounded: retries only when a FREE change slipped in between
                if handle.action.concurrency is Concurrency.FREE:
                    current = self._store.get(handle.uuid)  # owns no task: nothing to expect
                else:
                    current = self._check_owner(handle)
                fields = dict(changes)
                if dest is not None and trigger is not None:
                    vm, task = self.machine.apply(trigger, current.state, dest)
                    fields["vm_state"], fields["task_state"] = vm, task
                    if task is None:
                        fields["action_id"] = None
                fields["updated_at"] = self.clock.wall()
                new = current.evolve(**fields)
                try:
                    await self._store.swap(current, new)
                except Conflict:
                    continue
                handle.inst = new
                self._committed(current, new, handle)
                return new
            raise Conflict(handle.uuid, {"version": "stable"}, {"version": "changing"})
        raise AssertionError("unreachable: a shielded scope does not swallow exceptions")

    def _check_owner(self, handle: ActionHandle) -> Instance:
        """The current record, if the action still owns its task; :class:`Conflict` if not."""
        current = self._store.get(handle.uuid)
        if current.task_state != handle.inst.task_state or current.action_id != handle.id:
            cls = (
                UnexpectedDeletingTaskState
                if current.task_state is TaskState.DELETING
                else Conflict
            )
            raise cls(
                handle.uuid,
                {"task_state": handle.inst.task_state, "action_id": handle.id},
                {"task_state": current.task_state, "action_id": current.action_id},
            )
        return current

    def _committed(self, old: Instance | None, new: Instance, handle: ActionHandle | None) -> None:
        """Everything that follows a commit, synchronously: placement, timers, notify, watch."""
        self._changes += 1
        self._placement.update(new)
        self._rearm(new)
        if old is not None:
            ctx = handle.ctx if handle is not None else None
            if self._notifier.emit_update(old, new, ctx) is not None:
                self._notifications += 1
        if self._feed.active:
            self._feed.publish(StateChange(old, new, handle.name if handle else None))

    def _emit(
        self, event: str, inst: Instance, handle: ActionHandle, *, fault: Fault | None = None
    ) -> None:
        if event.endswith(".start"):
            handle.open_phases.add(event[:-6])
        elif event.endswith(".end"):
            handle.open_phases.discard(event[:-4])
        elif event.endswith(".error"):
            handle.open_phases.clear()
        self._notifier.emit(event, inst, ctx=handle.ctx, fault=fault, extra=handle.extra)
        self._notifications += 1

    # -- timed transitions --------------------------------------------------------------------

    def _rearm(self, inst: Instance) -> None:
        for timed in self.lifecycle.timed:
            key = (inst.uuid, timed.name)
            wanted = inst.vm_state is timed.vm_state and (timed.any_task or inst.task_state is None)
            armed = self._armed.get(key)
            if armed is not None and (not wanted or not armed.armed):
                self._timers.cancel(armed)
                del self._armed[key]
                armed = None
            if wanted and armed is None:
                delay = timed.delay(self.config.option(timed.option))
                if delay == 0 and timed.action is not None:
                    # "now" (shelved_offload_time 0): the committing action chains it before
                    # it ends, so no observer sees the instance idle in between
                    self._chained[inst.uuid] = timed.action
                elif delay is not None:
                    self._armed[key] = self._timers.call_at(
                        anyio.current_time() + delay,
                        functools.partial(self._fire, inst.uuid, timed),
                    )

    def _fire(self, uuid: str, timed: TimedTransition) -> None:
        self._armed.pop((uuid, timed.name), None)
        inst = self._store.get(uuid)
        if timed.action is None:
            running = self._running.get(uuid)
            if running is not None and inst.vm_state is timed.vm_state:
                running.interrupt = BuildTimeout(self.config.option(timed.option))
                running.scope.cancel()
            return
        assert self._tg is not None
        self._tg.start_soon(self._system_action, timed.action, uuid, timed.name)

    async def _system_action(self, action: str, uuid: str, why: str) -> None:
        """Start an action on the engine's own behalf; a refusal is logged, not raised."""
        if not self._accepting:
            return
        try:
            await self.submit(SYSTEM_CONTEXT, action, uuid)
        except ActionRefused as exc:
            log.info("%s: %s on %s was refused: %s", why, action, uuid, exc)

    # -- hosts ------------------------------------------------------------------------------

    async def _host_up(self, host: str | None) -> bool:
        if host is None:
            return False
        for info in await self.driver.hosts():
            if info.name == host:
                return info.up
        return False

    async def _pick_host(
        self,
        inst: Instance,
        flavor: Flavor,
        *,
        force: str | None = None,
        exclude: Sequence[str] = (),
        claim: bool = True,
    ) -> str:
        host = self._placement.pick(await self.driver.hosts(), flavor, force=force, exclude=exclude)
        if claim:
            self._placement.claim(inst.uuid, (host, flavor))
        return host

    # -- the hypervisor's events (Nova's power sync) -------------------------------------------

    async def _listen(self) -> None:
        async for event in self.driver.events():
            await self.handle_lifecycle_event(event)

    async def handle_lifecycle_event(self, event: LifecycleEvent) -> None:
        """Apply Nova's power-sync rules to one hypervisor event.

        Skipped while a task runs (Nova never fights an in-flight task) and when stale (the
        hypervisor no longer reports the event's state). ism departs from Nova in one place:
        a STOPPED event also matches a CRASHED guest, since the core has no periodic sync yet
        to catch the crash later.
        """
        try:
            inst = self._store.get(event.uuid)
        except InstanceNotFound:
            return
        if inst.task_state is not None or inst.vm_state is VmState.DELETED:
            return
        try:
            with anyio.fail_after(60):
                power = await self.driver.power_state(inst.guest())
        except (DriverError, TimeoutError) as exc:
            log.info("power sync of %s skipped: %s", inst.uuid, scrub(str(exc)))
            return
        expected = event.transition.expected_power_state
        if power != expected and not (
            expected is PowerState.SHUTDOWN and power is PowerState.CRASHED
        ):
            return
        await self.sync_power_state(inst.uuid, power)

    async def sync_power_state(self, uuid: str, power: PowerState) -> None:
        """Record what the hypervisor reports and act as Nova's sync table says."""
        inst = self._store.get(uuid)
        if inst.task_state is not None:
            return
        if inst.power_state is not power:
            new = inst.evolve(power_state=power, updated_at=self.clock.wall())
            try:
                await self._store.swap(inst, new)
            except Conflict:
                return
            self._committed(inst, new, None)
            inst = new
        for rule in self.lifecycle.power_sync:
            if inst.vm_state in rule.vm_states and (
                rule.power_states is None or power in rule.power_states
            ):
                if rule.response is SyncResponse.STOP:
                    await self._system_action("stop", uuid, "power sync")
                elif rule.response is SyncResponse.FORCE_STOP:
                    await self._system_action("force_stop", uuid, "power sync")
                elif rule.response is SyncResponse.LOG:
                    log.warning("instance %s is %s but reports %s", uuid, inst.vm_state, power)
                return

    # -- waiting and watching ------------------------------------------------------------

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no action runs (the clock's seconds).

        Raises:
            WaitTimeout: actions still run after ``timeout``.
        """
        with anyio.move_on_after(timeout):
            while self._active:
                await self._idle.wait()
            return
        running = ", ".join(f"{h.name}@{h.uuid}" for h in list(self._running.values())[:10])
        raise WaitTimeout(f"{self._active} actions still run after {timeout:g} s: {running}")

    async def wait_for_state(self, uuid: str, *, timeout: float, **expected: Any) -> Instance:
        """Wait, driven by commits and never by polling, until the named fields match.

        ``expected`` names Instance fields (``vm_state="active"``, ``task_state=None``); enum
        fields compare by value (``power_state="running"``).

        Raises:
            WaitTimeout: the state did not match within ``timeout``; says what it was.
            InstanceNotFound: no such instance.
        """
        return await self._feed.wait_for(uuid, lambda: self.get(uuid), timeout, expected)

    def watch(
        self, *, buffer: int | None = None
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[StateChange]]:
        """Every committed change from now on, through a bounded buffer.

        A watcher that falls ``buffer`` changes behind is dropped: its iterator raises
        :class:`WatchOverflow` rather than letting memory grow without bound.
        """
        return self._feed.watch(buffer or self.config.watch_buffer)


def _step_name(step: Step | None) -> str | None:
    return step.task_state.value if step is not None and step.task_state is not None else None
