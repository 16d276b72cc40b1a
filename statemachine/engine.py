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
import datetime as dt
import functools
import hashlib
import json
import logging
import random
import traceback
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, final, overload

import anyio
import attrs
from anyio.abc import TaskGroup

from drivers.base import (
    CURRENT_CALL,
    CallContext,
    Driver,
    DriverError,
    HostInfo,
    LifecycleEvent,
    PowerState,
)

from ._calls import CALLS, StepCall, StepRun
from ._committer import Committer
from ._ids import random_uuid, uuid_from_bits
from ._params import normalize_params, resolve_action
from ._placement import Placement
from ._schema import (
    Action,
    Concurrency,
    ErrorTo,
    Lifecycle,
    Precondition,
    State,
    Step,
    SyncResponse,
    TimedTransition,
    state_name,
    trigger_name,
)
from ._telemetry import Telemetry
from ._timers import TimerHandle, TimerService
from ._validate import wait_timeout
from ._watch import ChangeFeed
from .audit import AuditEntry, AuditEvent
from .clock import Clock, SystemClock
from .config import Config
from .errors import (
    ActionFailed,
    ActionPreempted,
    ActionRefused,
    BuildTimeout,
    Busy,
    Conflict,
    DuplicateRequest,
    EngineClosed,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    IsmError,
    LifecycleError,
    Locked,
    StepDeadlineExceeded,
    StoreError,
    UnexpectedDeletingTaskState,
    WaitTimeout,
    WrongHost,
)
from .handles import (
    ActionHandle,
    ActionResult,
    EngineStatistics,
    NoteSpec,
    Outcome,
    StateChange,
    StepHook,
    StepInfo,
)
from .history import ActionRecord, actions_from_audit
from .lifecycle import DEFAULT_LIFECYCLE
from .machine import LifecycleMachine
from .model import SYSTEM_CONTEXT, Fault, Flavor, Instance, RequestContext, validate_uuid
from .notify import Notification, Notifier, NotifySettings
from .outbox import Outbox, Transport
from .policy import Policy
from .recovery import Recovery, RecoveryRule, match_rule
from .redact import Redactor, scrub
from .sinks import Sink
from .states import TaskState, VmState
from .store import MemoryStore, RequestRecord, Store, Write

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

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
TIMED_RETRY_MAX = 60.0
"""The longest wait between tries of a timed transition refused as Busy (seconds)."""


@final
class Engine:
    """Drives instances through their lifecycle on one driver.

    Use as an async context manager: entering starts the timer service and the hypervisor
    event listener in a task group; leaving stops accepting actions, lets running ones finish
    within ``config.drain_timeout``, then cancels the rest (each ends down its error path or
    preempted, never half-written).

    ``tracer_provider`` is OpenTelemetry's provider of ism's spans (one per action and per
    step; the global provider when None; nothing without ``opentelemetry-api``).
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
        store: Store | None = None,
        transports: Sequence[Transport] = (),
        after_hooks: Sequence[StepHook] = (),
        calls: Mapping[str, StepCall] | None = None,
        state_map: Mapping[str, str] | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.driver = driver
        self._hooks = tuple(hooks)
        self._after_hooks = tuple(after_hooks)
        self._calls: dict[str, StepCall] = {**CALLS, **(calls or {})}
        self.config = config or Config()
        self.lifecycle = lifecycle
        self.machine = LifecycleMachine(lifecycle)
        self.clock: Clock = clock or SystemClock()
        self.policy = policy or Policy()
        self._seed = seed
        self._rng = random.Random(seed) if seed is not None else None
        self._ids = random.Random(f"{seed}:actions") if seed is not None else None
        self._check_deadlines()
        self._check_calls()
        self._state_map = self._checked_state_map(state_map or {})
        self._redactor = Redactor.from_config(self.config)
        self._api_names = frozenset(lifecycle.api_actions())
        self._store: Store = store if store is not None else MemoryStore()
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
            payload_classes=lifecycle.payload_classes,
        )
        self._outbox = Outbox(
            self._store,
            sinks,
            flush_marks=self._flush_marks,
            transports=transports,
            max_backlog=self.config.outbox_max_backlog,
        )
        self._committer = Committer(
            self._store,
            deliver=self._outbox.deliver,
            take_sent=self._outbox.take_sent,
            group=self.config.group_commit,
            max_batch=self.config.commit_batch,
            max_pending=self.config.commit_queue,
            timeout=self.config.commit_timeout,
        )
        self._by_request: dict[str, ActionHandle | anyio.Event] = {}
        self.recovered: list[tuple[str, RecoveryRule | None]] = []
        """What the last start's recovery found: each interrupted instance and its rule."""
        self.recovery_seconds = 0.0
        self._syncing = False
        self._syncs = 0
        self._background: set[anyio.CancelScope] = set()
        """Scopes of the engine's own background passes (power sync), cancelled first on exit
        so that nothing commits once the committer stops."""
        self._running: dict[str, ActionHandle] = {}
        self._inflight: set[ActionHandle] = set()
        self._active = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._armed: dict[tuple[str, str], TimerHandle] = {}
        self._chained: dict[str, tuple[str, dict[str, Any], str] | TimedTransition] = {}
        """What an action starts as the system once it ends: (action, params, why)."""
        self._feed = ChangeFeed()
        self._tg: TaskGroup | None = None
        self._accepting = False
        self._accepted = 0
        self._refused = 0
        self._outcomes: dict[str, int] = {}
        self._by_action: dict[str, dict[str, int]] = {}
        self._changes = 0
        self._notifications = 0
        # latencies, spans and the action log, for operators (issue 12)
        self._telemetry = Telemetry(self.clock, tracer_provider=tracer_provider)

    # -- life of the engine --------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._store.open(writer=self.config.service_host)
        if self._seed is not None and self._store.generation > 1:
            # a reopened store already holds this seed's ids: continue with fresh ones,
            # deterministic for (seed, generation)
            self._rng = random.Random(f"{self._seed}:{self._store.generation}")
            self._ids = random.Random(f"{self._seed}:{self._store.generation}:actions")
        self._notifier.restore_sequences(self._store.last_sequences())
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._timers.run)
        self._tg.start_soon(self._committer.run)
        try:
            await self._check_lifecycle()
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self._store.close()
            raise
        self._tg.start_soon(self._outbox.run)
        if self._outbox.transports:
            await self._outbox.open_transports()
            self._tg.start_soon(self._outbox.publish)
        await self._outbox.replay()
        for record in self._store.all():
            self._rearm(record, restart=True)
        self._accepting = True  # recovery's own follow-ups go through submit
        if self.config.hosts is not None:
            await self._heartbeat()
        await self._recover()
        self._arm_sync()
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
        for scope in list(self._background):
            scope.cancel()
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
                await self._committer.wait_idle()
                await self._committer.flush_marks()
            if self._outbox.transports:
                # what the broker confirms in the bound is marked; the rest stays for next time
                with anyio.move_on_after(self.config.drain_timeout, shield=True):
                    await self._outbox.publish_all()
                    await self._committer.flush_marks()
                with anyio.CancelScope(shield=True):
                    await self._outbox.close_transports()
            self._tg.cancel_scope.cancel()
            tg, self._tg = self._tg, None
            try:
                result = await tg.__aexit__(exc_type, exc, tb)
            finally:
                self._feed.close()
                with anyio.CancelScope(shield=True):
                    await self._store.close()
        return result

    def _checked_state_map(self, state_map: Mapping[str, str]) -> dict[State, State]:
        """``state_map`` (old state name → new) with both sides parsed; every target must be
        a state of this engine's lifecycle."""
        known = {state_name(s): s for s in self.lifecycle.states()}
        out: dict[State, State] = {}
        for old, new in state_map.items():
            if new not in known:
                raise LifecycleError(f"state_map: {new!r} is not a state of this lifecycle")
            vm, _, task = old.partition("/")
            try:
                source = (VmState(vm), TaskState(task) if task else None)
            except ValueError:
                raise LifecycleError(f"state_map: {old!r} names no vm_state/task_state") from None
            out[source] = known[new]
        return out

    async def _check_lifecycle(self) -> None:
        """Make sure the store was written by this lifecycle, or can be read by it.

        The store keeps the version and a fingerprint of the lifecycle's export. A different
        lifecycle may run on it only if every stored instance's state (and so every in-flight
        task and armed deadline, which derive from the state) is one it knows, or is mapped by
        ``state_map`` to one it knows: those changes are written, audited, before anything
        runs. Otherwise nothing is written and :class:`LifecycleError` names the instances:
        never misread.
        """
        from ._diagram_export import export_lifecycle

        export = export_lifecycle(self.lifecycle).to_json().encode()
        mine = json.dumps(
            {"version": self.lifecycle.version, "sha256": hashlib.sha256(export).hexdigest()},
            sort_keys=True,
        )
        stored = await self._store.get_meta("lifecycle")
        if stored == mine:
            return
        if stored is not None:
            await self._migrate_states(json.loads(stored).get("version", "?"))
        await self._store.set_meta("lifecycle", mine)

    async def _migrate_states(self, old_version: str) -> None:
        known = set(self.lifecycle.states())
        moves: list[tuple[Instance, State]] = []
        unknown: list[str] = []
        for inst in self._store.all():
            if inst.vm_state is VmState.DELETED or inst.state in known:
                continue
            target = self._state_map.get(inst.state)
            if target is None:
                unknown.append(f"{inst.uuid} ({state_name(inst.state)})")
            else:
                moves.append((inst, target))
        if unknown:
            raise LifecycleError(
                f"lifecycle {self.lifecycle.version} cannot read a store written by lifecycle "
                f"{old_version}: {len(unknown)} instances are in states it does not have: "
                + ", ".join(unknown[:10])
                + " (map them with Engine(state_map=...))"
            )
        why = f"lifecycle {old_version} -> {self.lifecycle.version}"
        for inst, (vm, task) in moves:
            new = inst.evolve(
                vm_state=vm,
                task_state=task,
                action_id=inst.action_id if task is not None else None,
                updated_at=self.clock.wall(),
            )
            self._store.stage(inst, new)
            ends = inst.task_state is not None and task is None  # the mapping ends its action
            entry = AuditEntry.build(
                "preempted" if ends else "state",
                when=self.clock.wall(),
                instance=inst.uuid,
                action=None,
                action_id=inst.action_id if ends else None,
                ctx=SYSTEM_CONTEXT,
                outcome="preempted" if ends else None,
                before=inst,
                after=new,
                message=f"{why}: {state_name(inst.state)} mapped to {state_name((vm, task))}",
            )
            with anyio.CancelScope(shield=True):
                await self._committer.persist(Write(instance=new, expected=inst, audit=(entry,)))
            log.warning("%s: %s moved to %s", why, inst.uuid, state_name((vm, task)))

    def _check_calls(self) -> None:
        """Every call the lifecycle names is bound: a built-in one, or one of ``calls``."""
        for action in self.lifecycle.actions:
            for step in action.steps:
                for call in (step.call, action.error_path(step).call):
                    if call is not None and call not in self._calls:
                        raise LifecycleError(
                            f"action {action.name!r} step {step.task_state}: call {call!r} is "
                            "not bound (pass it in Engine(calls=...))"
                        )

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
            return random_uuid()
        return uuid_from_bits(self._rng.getrandbits(128))

    async def _flush_marks(self) -> None:
        await self._committer.flush_marks()

    def _new_action_id(self) -> str:
        if self._ids is None:
            return random_uuid()
        return uuid_from_bits(self._ids.getrandbits(128))

    @property
    def store(self) -> Store:
        """Where the engine's instances, audit log and outbox live."""
        return self._store

    def _user_data(self, uuid: str) -> str | None:
        return self._store.user_data(uuid)

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
        measured = self._telemetry.snapshot()
        timers = self._timers.statistics()
        outbox = self._outbox.statistics()
        return EngineStatistics(
            instances=count,
            by_vm_state=by_state,
            running_actions=self._active,
            accepted=self._accepted,
            refused=self._refused,
            outcomes=dict(self._outcomes),
            by_action={k: {str(o): n for o, n in v.items()} for k, v in self._by_action.items()},
            state_changes=self._changes,
            notifications=self._notifications,
            timers_armed=timers.armed,
            action_seconds=measured.action_seconds,
            step_seconds=measured.step_seconds,
            vm_state_seconds=measured.vm_state_seconds,
            driver_errors=measured.driver_errors,
            timers_fired=timers.fired,
            timer_lateness=timers.lateness,
            outbox_backlog=outbox.backlog,
            outbox_oldest_age=self._telemetry.outbox_age(outbox.oldest_timestamp),
            power_syncs=self._syncs,
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
        load = getattr(self._store, "load", None)
        if load is None:
            raise InvalidRequest("adopt needs a store that loads records (the memory store)")
        try:
            load(batch)
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
        if timeout is not None:
            timeout = wait_timeout(timeout)
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

        A request id (``ctx.request_id``) that was already accepted — by this engine, an earlier
        run on the same store, or another engine on it — returns the first action's handle
        (running, or ended with its recorded outcome) instead of running it twice.

        Raises:
            ActionRefused: not accepted; nothing changed but the refusal's audit record.
        """
        rid = ctx.request_id if isinstance(ctx, RequestContext) else None
        reservation: anyio.Event | None = None
        try:
            if rid is not None:
                earlier = await self._earlier_request(ctx, action, instance, rid)
                if earlier is not None:
                    return earlier
                reservation = anyio.Event()
                self._by_request[rid] = reservation
                record = await self._store.find_request(rid)
                if record is not None:
                    return await self._replayed(ctx, record, action, instance)
            try:
                return await self._accept(ctx, action, instance, dict(params or {}))
            except DuplicateRequest:
                # another engine on the same store took the id first (its write won)
                record = await self._store.find_request(rid or "")
                if record is None:
                    raise
                return await self._replayed(ctx, record, action, instance)
        except ActionRefused as exc:
            self._refused += 1
            known = isinstance(action, str) and action in self._api_names
            self._count(action if known else "(unknown)", "refused")  # bounded by the table
            self._telemetry.refused(ctx, action, instance, exc)
            if not isinstance(exc, EngineClosed):
                await self._audit_refusal(ctx, action, instance, exc)
            raise
        finally:
            if reservation is not None:
                if self._by_request.get(rid or "") is reservation:
                    del self._by_request[rid or ""]
                reservation.set()

    async def _earlier_request(
        self, ctx: RequestContext, action: str, instance: str | None, rid: str
    ) -> ActionHandle | None:
        """The in-flight action of a request id, waiting (bounded) while it is being accepted."""
        slot = self._by_request.get(rid)
        if isinstance(slot, anyio.Event):
            with anyio.move_on_after(self.config.commit_timeout):
                await slot.wait()
            slot = self._by_request.get(rid)
        if not isinstance(slot, ActionHandle):
            return None
        self._same_request(slot.action.name, slot.uuid, action, instance, rid)
        return slot

    def _same_request(
        self, first: str, first_instance: str | None, action: str, instance: str | None, rid: str
    ) -> None:
        """A repeated request id must repeat its request, not name another one."""
        public = self.lifecycle.action(first).public_name
        creates = self.lifecycle.action(first).creates
        if public != action or (not creates and first_instance != instance):
            raise InvalidRequest(
                f"request id {rid} was already used for '{public}' on {first_instance}",
                action=action,
                instance=instance,
            )

    async def _replayed(
        self, ctx: RequestContext, record: RequestRecord, action: str, instance: str | None
    ) -> ActionHandle:
        """A handle, already ended, carrying the outcome the audit log recorded for a request
        accepted earlier (an action interrupted by a restart says so)."""
        self._same_request(record.action, record.instance, action, instance, record.request_id)
        entry = self.lifecycle.action(record.action)
        uuid = record.instance or ""
        trail = await self._store.read_audit(action_id=record.action_id)
        ends = [r for r in trail if r.event in ("completed", "failed", "preempted")]
        last = ends[-1] if ends else None
        error: IsmError | None = None
        outcome = Outcome.OK
        if last is None:
            outcome = Outcome.FAILED
            error = ActionFailed(entry.public_name, uuid, None, "interrupted: the engine stopped")
        elif last.event == "failed":
            outcome = Outcome.FAILED
            fault = last.get("fault") or {}
            before = last.get("before") or {}
            error = ActionFailed(
                entry.public_name, uuid, before.get("task_state"), str(fault.get("message", ""))
            )
        elif last.event == "preempted":
            outcome = Outcome.PREEMPTED
            error = ActionPreempted(entry.public_name, uuid, str(last.get("message") or "?"))
        inst = self._store.get(uuid)
        now = anyio.current_time()
        handle = ActionHandle(
            id=record.action_id,
            action=entry,
            uuid=uuid,
            ctx=ctx,
            params={},
            started_at=now,
            inst=inst,
        )
        handle.result = ActionResult(
            action=entry.public_name,
            instance=inst,
            outcome=outcome,
            error=error,
            request_id=record.request_id,
            started_at=now,
            ended_at=now,
        )
        handle.done.set()
        return handle

    async def _audit_refusal(
        self, ctx: object, action: object, instance: object, exc: ActionRefused
    ) -> None:
        """Record a refusal (whoever asked, whatever they sent, bounded and scrubbed)."""
        context = ctx if isinstance(ctx, RequestContext) else None
        entry = AuditEntry.build(
            "refused",
            when=self.clock.wall(),
            instance=instance[:64] if isinstance(instance, str) else None,
            action=action[:64] if isinstance(action, str) else None,
            action_id=None,
            ctx=context,
            outcome="refused",
            message=f"{type(exc).__name__}: {str(exc)[:512]}",
        )
        with anyio.CancelScope(shield=True):
            await self._committer.persist(Write(audit=(entry,)))

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
        if self._outbox.overloaded:
            raise Busy(
                f"{self._outbox.backlog} notifications wait for delivery (outbox_max_backlog)",
                action=name,
                instance=uuid,
            )
        if action.creates:
            return await self._accept_create(ctx, action, params)
        if uuid is None:
            raise InvalidRequest(f"'{name}' needs an instance", action=name)
        return await self._accept_existing(ctx, action, validate_uuid(uuid), params)

    async def _accept_existing(
        self, ctx: RequestContext, action: Action, uuid: str, params: dict[str, Any]
    ) -> ActionHandle:
        """Guards, then the compare-and-swap that starts the action. A swap that loses only to
        a change that left the guards true (a lock, a power-state update) is retried, bounded;
        a real conflict surfaces as the guards' refusal or as :class:`Conflict`.

        The swap's write carries the acceptance's audit record, the request id and the
        ``.error`` of a preempted action, in one unit. The first step's opening events come
        from the action's own task once it runs, so an action preempted before that says
        nothing at all."""
        name = action.public_name
        for attempt in range(3):
            inst = await self._own(action, uuid)
            if inst.vm_state is VmState.DELETED:
                raise InstanceNotFound(uuid)
            self.policy.check(ctx, action, inst)
            await self._check_guards(ctx, action, inst, params)
            running = self._running.get(uuid)
            if action.concurrency is Concurrency.FREE:
                self.machine.apply(trigger_name(action.name, "accept"), inst.state, inst.state)
                handle = self._new_handle(action, inst, ctx, params)
                # nothing changes yet: the acceptance is recorded with the action's first write
                handle.pending_audit.append(self._entry("accepted", handle, before=inst))
                self._start(handle, running_slot=False)
                return handle
            if action.concurrency is Concurrency.JOINS:
                step = running.step if running is not None else None
                if running is None or step is None or action.name not in step.accepts:
                    raise InvalidState(
                        name, uuid, "task_state", f"{inst.task_state} (not yet joinable)"
                    )
            handle = self._new_handle(action, inst, ctx, params)
            first: tuple[VmState, TaskState | None]
            if action.immediate:  # the acceptance is the whole change
                first = (action.target.resolve(inst.vm_state, inst.old_vm_state), None)
            else:
                first = (inst.vm_state, action.steps[0].task_state)
            self.machine.apply(trigger_name(action.name, "accept"), inst.state, first)
            new = inst.evolve(
                vm_state=first[0],
                task_state=first[1],
                action_id=None if action.immediate else handle.id,
                updated_at=self.clock.wall(),
                request_id=ctx.request_id,
            )
            try:
                self._store.stage(inst, new)
            except Conflict:
                if attempt == 2:
                    raise
                continue
            handle.inst = new
            if running is not None and action.concurrency is not Concurrency.EXCLUSIVE:
                handle.pending.extend(self._preempt(running, by=action.public_name, current=inst))
            await self._accepted_write(handle, inst, new)
            self._start(handle, running_slot=action.owns_task)
            return handle
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _own(self, action: Action, uuid: str) -> Instance:
        """The instance, if this engine serves its host. Another engine's instance is read
        again from storage (it may have moved here) and refused with :class:`WrongHost` —
        unless the action is an evacuation, which is for a host whose engine is down."""
        try:
            inst = self._store.get(uuid)
        except InstanceNotFound:
            if self.config.hosts is None:
                raise
            inst = await self._store.refresh(uuid)  # created by another engine
        if self.serves(inst.host):
            return inst
        inst = await self._store.refresh(uuid)
        if self.serves(inst.host) or Precondition.HOST_DOWN in action.preconditions:
            return inst
        raise WrongHost(action.public_name, uuid, inst.host)

    async def _accepted_write(
        self, handle: ActionHandle, old: Instance | None, new: Instance
    ) -> None:
        """Persist a staged acceptance (shielded: once staged it is written, whatever happens
        to the caller, or the instance would be left owned by an action that never runs)."""
        self._note_update(handle, old, new)
        with anyio.CancelScope(shield=True):
            await self._persist(handle, old, new, "accepted")
        self._committed(old, new, handle)

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
            state_since=now,
            task_since=now,
            key_name=params.get("key_name"),
            metadata=params.get("metadata", {}),
            request_id=ctx.request_id,
        )
        handle = self._new_handle(action, inst, ctx, params)
        inst = attrs.evolve(inst, action_id=handle.id)
        handle.inst = inst
        self._store.stage(None, inst)
        handle.user_data = params.get("user_data")
        await self._accepted_write(handle, None, inst)
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
        for field in self.lifecycle.payload_fields(action):  # an added action's own fields
            if field in params:
                extra[field] = params[field]
        handle = ActionHandle(
            id=self._new_action_id(),
            action=action,
            uuid=inst.uuid,
            ctx=ctx,
            params=params,
            started_at=anyio.current_time(),
            inst=inst,
            extra=extra,
        )
        if ctx.request_id is not None:
            handle.request = RequestRecord(ctx.request_id, handle.id, action.name, inst.uuid)
        return handle

    @staticmethod
    def _first_step(action: Action, inst: Instance) -> tuple[int, Step]:
        for index, step in enumerate(action.steps):
            if not (step.needs_host and inst.host is None):
                return index, step
        raise AssertionError(f"{action.name}: every step was skipped")

    def _enter_step(self, handle: ActionHandle, at: tuple[int, Step]) -> None:
        """The action is now at this step: note the step's opening events."""
        handle.step_index, handle.step = at
        for event in handle.step.before:
            self._note(event, handle.inst, handle)

    def _start(
        self,
        handle: ActionHandle,
        *,
        running_slot: bool,
        body: Callable[[], Awaitable[IsmError | None]] | None = None,
    ) -> None:
        assert self._tg is not None
        self._accepted += 1
        if running_slot:
            self._running[handle.uuid] = handle
        if handle.ctx.request_id is not None:
            self._by_request[handle.ctx.request_id] = handle
        self._inflight.add(handle)
        self._telemetry.accepted(handle)
        self._active += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._tg.start_soon(self._run, handle, body, name=f"ism:{handle.name}:{handle.uuid}")

    def _preempt(self, victim: ActionHandle, *, by: str, current: Instance) -> list[NoteSpec]:
        """End ``victim`` at once: mark it preempted and cancel its scope (its next
        compare-and-swap would fail anyway). Returns its ``.error``, which travels in the
        preemptor's write, so every ``.start`` has an end."""
        victim.preempted_by = by
        notes: list[NoteSpec] = []
        if victim.open_phases:
            err = ActionPreempted(victim.name, victim.uuid, by)
            notes.append(
                NoteSpec(
                    f"{victim.action.error_event(victim.step)}.error",
                    current,
                    victim.ctx,
                    self._fault(err, victim),
                    victim.extra,
                )
            )
            victim.open_phases.clear()
        victim.scope.cancel()
        if self._running.get(victim.uuid) is victim:
            del self._running[victim.uuid]
        return notes

    # -- running ----------------------------------------------------------------------------

    async def _run(
        self,
        handle: ActionHandle,
        body: Callable[[], Awaitable[IsmError | None]] | None = None,
    ) -> None:
        """Run the action (its steps, or ``body`` for an action recovery takes up) to its end,
        and record how it ended."""
        error: IsmError | None = None
        outcome = Outcome.FAILED  # until it is known to have ended otherwise
        self._telemetry.action_started(handle)
        try:
            with handle.scope:
                error = await (body() if body is not None else self._run_steps(handle))
            if self._running.get(handle.uuid) is handle:
                del self._running[handle.uuid]
            chained = self._chained.pop(handle.uuid, None)
            if isinstance(chained, TimedTransition):  # due "now": deferred, not lost, if Busy
                await self._timed_action(handle.uuid, chained)
            elif chained is not None:
                await self._system_action(chained[0], handle.uuid, chained[2], chained[1])
            if handle.preempted_by is not None:
                outcome = Outcome.PREEMPTED
                error = ActionPreempted(handle.name, handle.uuid, handle.preempted_by)
            elif handle.scope.cancel_called and not handle.ended:
                if handle.interrupt is None and not self._accepting and self._store.durable:
                    # the engine stops: what is durable stays mid-step, and recovery takes
                    # the action up at the next start (it writes the outcome then)
                    error = ActionFailed(
                        handle.name, handle.uuid, _step_name(handle.step),
                        "interrupted: the engine stopped; recovery resumes it at the next start",
                    )  # fmt: skip
                else:  # the build timeout, or an engine whose store does not survive it
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
            if outcome is Outcome.PREEMPTED:
                assert isinstance(error, ActionPreempted)
                handle.pending_audit.append(
                    self._entry("preempted", handle, outcome="preempted", message=error.by)
                )
            with anyio.CancelScope(shield=True):
                await self._flush(handle)
        finally:
            self._inflight.discard(handle)
            if outcome is Outcome.FAILED and error is None:
                # cancelled from outside (the engine's task group): left as it was
                error = ActionFailed(handle.name, handle.uuid, _step_name(handle.step), "cancelled")
            if self._running.get(handle.uuid) is handle:
                del self._running[handle.uuid]
            rid = handle.ctx.request_id
            if rid is not None and self._by_request.get(rid) is handle:
                del self._by_request[rid]
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
            self._telemetry.action_ended(handle)
            handle.done.set()
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _run_steps(self, handle: ActionHandle, *, resume: bool = False) -> IsmError | None:
        """Run every step; return the error that ended the action, or None.

        Each step's opening events were noted when the action arrived at it (with the
        acceptance, or with the previous step's commit); whatever is still unwritten is
        flushed before the step's driver call. With ``resume`` the action is already at its
        step (recovery takes it up there) and runs that step's call again.
        """
        action = handle.action
        if handle.scope.cancel_called:
            return None  # preempted (or interrupted) before it began: it says nothing
        if not resume:  # recovery resumes an action at the step it was interrupted in
            self._enter_step(handle, self._first_step(action, handle.inst))
        pending: dict[str, Any] = {}
        previous: Step | None = None
        for index, step in enumerate(action.steps):
            if index < handle.step_index or (step.needs_host and handle.inst.host is None):
                continue
            if previous is not None:
                failed = await self._advance(handle, previous, step, index, pending)
                if failed is not None:
                    return failed
                pending = {}
            if handle.scope.cancel_called:
                # preempted (or interrupted) before this step's call: say nothing more here
                return None
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
        """Move to the next step: its task_state and the previous step's results in one
        commit, which also carries the previous step's closing and this step's opening events."""
        vm = handle.inst.vm_state
        after = (*previous.after,)
        try:
            if step.task_state != previous.task_state:
                await self._commit(
                    handle,
                    trigger_name(handle.action.name, "advance", index),
                    (vm, step.task_state),
                    pending,
                    after=after,
                    enter=(index, step),
                )
                return None
            if pending:
                await self._commit(handle, None, None, pending, after=after, enter=(index, step))
                return None
            if handle.action.owns_task:
                self._check_owner(handle)  # nothing to write: still, is the task still ours?
        except Conflict as exc:
            return self._lost(handle, exc)
        for event in after:
            self._note(event, handle.inst, handle)
        self._enter_step(handle, (index, step))
        return None

    async def _finish_steps(
        self, handle: ActionHandle, last: Step, pending: dict[str, Any]
    ) -> IsmError | None:
        action = handle.action
        try:
            if action.immediate and not pending and not last.after:
                # its acceptance wrote the change: only the outcome is left to record
                with anyio.CancelScope(shield=True):
                    await self._persist(handle, None, None, "completed", outcome="ok")
            elif not action.owns_task:
                await self._commit(handle, None, None, pending, after=last.after, audit="completed")
            else:
                current = self._store.get(handle.uuid)
                dest_vm = action.target.resolve(current.vm_state, current.old_vm_state)
                if action.power_after is not None and "power_state" not in pending:
                    pending["power_state"] = action.power_after
                await self._commit(
                    handle,
                    trigger_name(action.name, "done"),
                    (dest_vm, None),
                    pending,
                    after=last.after,
                    audit="completed",
                )
        except Conflict as exc:
            return self._lost(handle, exc)
        handle.ended = True
        return None

    async def _run_step(self, handle: ActionHandle, step: Step) -> dict[str, Any]:
        if step.call is None and not self._hooks and not self._after_hooks:
            return {}
        await self._flush(handle)
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
            with (
                self._deadline(step.deadline) as deadline,
                self._telemetry.step(handle, step, deadline),
            ):
                await self._run_hooks(handle, step)
                changes = await self._calls[step.call](run) if step.call is not None else {}
                await self._run_hooks(handle, step, after=changes)
                return changes
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
        self,
        handle: ActionHandle,
        step: Step,
        *,
        error_path: bool = False,
        after: Mapping[str, Any] | None = None,
    ) -> None:
        hooks = self._hooks if after is None else self._after_hooks
        if not hooks:
            return
        info = StepInfo(
            handle.action.public_name,
            handle.action.variant,
            handle.step_index,
            step.task_state,
            handle.inst,
            error_path,
            after,
        )
        for hook in hooks:
            await hook(info)

    def _lost(self, handle: ActionHandle, exc: Conflict) -> IsmError:
        """A step's compare-and-swap lost: another action owns the instance now."""
        by = handle.preempted_by or "another action"
        handle.preempted_by = by
        return ActionPreempted(handle.name, handle.uuid, by)

    async def _fail(self, handle: ActionHandle, exc: BaseException) -> IsmError:
        """Note ``.error``, run the error path, commit where it leads; return ActionFailed.

        ``.error`` closes the action's open phases; one that has closed them all already (a
        live migration failing after its pre phase ended) says nothing more, and one that
        never opened a phase (a create that found no host) still reports its failure.
        """
        action, step = handle.action, handle.step or handle.action.steps[0]
        fault = self._fault(exc, handle)
        if handle.open_phases or not handle.opened_any:
            self._note(f"{action.error_event(step)}.error", handle.inst, handle, fault=fault)
        self._scrub_chain(exc)
        failed = ActionFailed(action.name, handle.uuid, _step_name(step), str(exc))
        failed.__cause__ = exc
        if not action.owns_task:
            await self._commit(handle, None, None, {"fault": fault}, audit="failed", fault=fault)
            handle.ended = True
            return failed
        path = action.error_path(step)
        to = path.to
        changes: dict[str, Any] = {"fault": fault}
        if path.events:
            self._note(path.events[0], handle.inst, handle)
        if path.call is not None:
            await self._flush(handle)  # what led here is written before the clean-up call
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
                with (
                    self._deadline(step.deadline) as scope,
                    self._telemetry.step(handle, step, scope, error_path=path.call),
                ):
                    await self._run_hooks(handle, step, error_path=True)
                    changes.update(await self._calls[path.call](run))
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
            await self._flush(handle)
            dest = VmState.ACTIVE if await self._guest_running(handle.inst) else VmState.ERROR
        else:
            dest = vm
        if action.creates and handle.inst.host is not None and dest is VmState.ERROR:
            changes["host"] = None  # a failed build keeps no host (Nova: delete is then local)
        if to is ErrorTo.ERROR and action.creates:
            self._placement.release(handle.uuid)
        try:
            await self._commit(
                handle,
                trigger_name(action.name, "fail"),
                (dest, None),
                changes,
                after=path.events[1:],
                audit="failed",
                fault=fault,
            )
        except Conflict as lost:
            return self._lost(handle, lost)
        handle.ended = True
        return failed

    def _scrub_chain(self, exc: BaseException) -> None:
        """Scrub the messages of a failure's exception chain in place: the caller gets it as
        the ``__cause__`` of an ActionFailed, and a ``log.exception`` of that prints it all."""
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen and len(seen) < 8:
            seen.add(id(current))
            current.args = tuple(
                self._redactor.scrub(a) if isinstance(a, str) else a for a in current.args
            )
            current = current.__cause__ or current.__context__

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
            tb = self._redactor.scrub("".join(traceback.format_exception(exc)))
        frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
        return Fault(
            exception=type(exc).__name__,
            message=self._redactor.scrub(str(exc)),
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
        *,
        after: Sequence[str] = (),
        enter: tuple[int, Step] | None = None,
        audit: AuditEvent = "state",
        fault: Fault | None = None,
    ) -> Instance:
        """Compare-and-swap the record the action expects (task_state and owner), validated by
        the machine, and make it durable with its audit record and notifications: what was
        noted before, ``instance.update``, the ``after`` events, and the opening events of the
        step it ``enter``s. Shielded: a commit either happens whole or not at all."""
        with anyio.CancelScope(shield=True):
            for _ in range(8):  # bounded: retries only when a FREE change slipped in between
                if not handle.action.owns_task:
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
                    self._store.stage(current, new)
                except Conflict:
                    continue
                saved = handle.snapshot_notes()
                handle.inst = new
                self._note_update(handle, current, new)
                for event in after:
                    self._note(event, new, handle)
                if enter is not None:
                    self._enter_step(handle, enter)
                outcome = {"completed": "ok", "failed": "failed"}.get(audit)
                try:
                    await self._persist(handle, current, new, audit, outcome=outcome, fault=fault)
                except Conflict:
                    # lost in storage (another engine): the working set was reloaded
                    handle.restore_notes(saved)
                    continue
                self._committed(current, new, handle)
                return new
            raise Conflict(handle.uuid, {"version": "stable"}, {"version": "changing"})
        raise AssertionError("unreachable: a shielded scope does not swallow exceptions")

    async def _persist(
        self,
        handle: ActionHandle | None,
        old: Instance | None,
        new: Instance | None,
        event: AuditEvent | None,
        *,
        outcome: str | None = None,
        fault: Fault | None = None,
        notes: Sequence[NoteSpec] = (),
    ) -> None:
        """Write one unit: the staged change (if any), what the action has pending, one audit
        entry for this change, and the notifications, built now (after the swap won, so their
        sequence numbers have no gaps).
        """
        specs = [*handle.pending, *notes] if handle is not None else list(notes)
        entries = list(handle.pending_audit) if handle is not None else []
        if event is not None:
            entries.append(
                self._entry(event, handle, before=old, after=new, outcome=outcome, fault=fault)
            )
        request = handle.request if handle is not None else None
        user_data = handle.user_data if handle is not None and old is None else None
        if handle is not None:
            handle.pending, handle.pending_audit, handle.request = [], [], None
        built = tuple(self._build(spec) for spec in specs)
        write = Write(
            instance=new,
            expected=old if new is not None else None,
            audit=tuple(entries),
            notifications=built,
            request=request,
            user_data=user_data,
        )
        await self._committer.persist(write)
        self._notifications += len(built)

    async def _flush(self, handle: ActionHandle) -> None:
        """Write whatever the action noted but has not written yet (no state change)."""
        if handle.pending or handle.pending_audit or handle.request is not None:
            await self._persist(handle, None, None, None)

    def _build(self, spec: NoteSpec) -> Notification:
        return self._notifier.build(
            spec.event,
            spec.instance,
            ctx=spec.ctx,
            fault=spec.fault,
            extra=spec.extra,
            state_update=spec.state_update,
        )

    def _entry(
        self,
        event: AuditEvent,
        handle: ActionHandle | None,
        *,
        before: Instance | None = None,
        after: Instance | None = None,
        outcome: str | None = None,
        fault: Fault | None = None,
        message: str | None = None,
    ) -> AuditEntry:
        inst = after or before or (handle.inst if handle is not None else None)
        return AuditEntry.build(
            event,
            when=self.clock.wall(),
            instance=inst.uuid if inst is not None else None,
            action=handle.name if handle is not None else None,
            action_id=handle.id if handle is not None else None,
            ctx=handle.ctx if handle is not None else SYSTEM_CONTEXT,
            outcome=outcome,
            before=before,
            after=after,
            fault=fault,
            message=message,
        )

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
        """What follows a durable commit, synchronously: placement, timers, watchers."""
        self._changes += 1
        self._telemetry.committed(old, new)
        self._placement.update(new)
        self._rearm(new)
        if self._feed.active:
            self._feed.publish(StateChange(old, new, handle.name if handle else None))

    def _note_update(self, handle: ActionHandle, old: Instance | None, new: Instance) -> None:
        """``instance.update`` for a change (when enabled), noted with the change."""
        if old is None:
            return
        update = self._notifier.state_update(old, new)
        if update is not None:
            handle.pending.append(NoteSpec("update", new, handle.ctx, state_update=update))

    def _note(
        self, event: str, inst: Instance, handle: ActionHandle, *, fault: Fault | None = None
    ) -> None:
        """Note a notification of ``handle``'s; it is written with the action's next write."""
        if event.endswith(".start"):
            handle.open_phases.add(event[:-6])
            handle.opened_any = True
        elif event.endswith(".end"):
            handle.open_phases.discard(event[:-4])
        elif event.endswith(".error"):
            handle.open_phases.clear()
        handle.pending.append(NoteSpec(event, inst, handle.ctx, fault, handle.extra))

    # -- timed transitions --------------------------------------------------------------------

    def _rearm(self, inst: Instance, *, restart: bool = False) -> None:
        """Arm (or disarm) the instance's timed transitions for its current state.

        The due instant is ``state_since`` plus the configured delay, so an engine that
        restarts arms each with the time remaining, and at once when it is past.
        """
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
                if delay == 0 and timed.action is not None and not restart:
                    # "now" (shelved_offload_time 0): the committing action chains it before
                    # it ends, so no observer sees the instance idle in between
                    self._chained[inst.uuid] = timed
                elif delay is not None:
                    self._armed[key] = self._timers.call_at(
                        anyio.current_time() + self._remaining(inst.state_since, delay),
                        functools.partial(self._fire, inst.uuid, timed),
                    )

    def _remaining(self, since: dt.datetime | None, delay: float) -> float:
        """Seconds left of ``delay`` counted from the wall-clock instant ``since``."""
        if since is None:
            return delay
        return max(0.0, delay - (self.clock.wall() - since).total_seconds())

    def _fire(self, uuid: str, timed: TimedTransition, attempt: int = 0) -> None:
        self._armed.pop((uuid, timed.name), None)
        inst = self._store.get(uuid)
        if timed.action is None:
            running = self._running.get(uuid)
            if running is not None and inst.vm_state is timed.vm_state:
                running.interrupt = BuildTimeout(self.config.option(timed.option))
                running.scope.cancel()
            return
        assert self._tg is not None
        self._tg.start_soon(self._timed_action, uuid, timed, attempt)

    async def _timed_action(self, uuid: str, timed: TimedTransition, attempt: int = 0) -> None:
        """A due timed transition's action. Refused as Busy (the engine at its bound), it is
        tried again after a back-off (1 s doubling to 60 s) instead of being lost: the
        instance would otherwise stay shelved, or unreclaimed, for good. Other refusals stand:
        the instance moved on, and its next commit re-arms what its new state wants."""
        assert timed.action is not None
        refused = await self._system_action(timed.action, uuid, timed.name)
        key = (uuid, timed.name)
        if isinstance(refused, Busy) and self._accepting and key not in self._armed:
            delay = min(TIMED_RETRY_MAX, 2.0 ** min(attempt, 6))
            log.warning("%s on %s deferred %g s: %s", timed.name, uuid, delay, refused)
            self._armed[key] = self._timers.call_at(
                anyio.current_time() + delay,
                functools.partial(self._fire, uuid, timed, attempt + 1),
            )

    async def _system_action(
        self, action: str, uuid: str, why: str, params: Mapping[str, Any] | None = None
    ) -> ActionRefused | None:
        """Start an action on the engine's own behalf; a refusal is logged and returned, not
        raised."""
        if not self._accepting:
            return None
        try:
            await self.submit(SYSTEM_CONTEXT, action, uuid, params)
        except ActionRefused as exc:
            log.info("%s: %s on %s was refused: %s", why, action, uuid, exc)
            return exc
        return None

    # -- hosts ------------------------------------------------------------------------------

    def serves(self, host: str | None) -> bool:
        """Whether this engine serves ``host`` (every host, unless ``Config.hosts`` names
        them: several engines on one store, one per compute host)."""
        hosts = self.config.hosts
        return hosts is None or host in hosts

    async def _host_up(self, host: str | None) -> bool:
        """A host of ours is up when its hypervisor answers; another engine's host is up
        while that engine's heartbeat is younger than ``service_down_time`` (Nova's
        servicegroup)."""
        if host is None:
            return False
        if not self.serves(host):
            beat = (await self._store.services()).get(host)
            age = (self.clock.wall() - beat).total_seconds() if beat is not None else None
            return age is not None and age < self.config.service_down_time
        try:
            with anyio.fail_after(60):  # a hypervisor that does not answer is down
                hosts = await self.driver.hosts()
        except (DriverError, TimeoutError):
            return False
        for info in hosts:
            if info.name == host:
                return info.up
        return False

    async def host_up(self, host: str) -> bool:
        """Whether ``host`` is up: its hypervisor answers (a host of ours), or its engine's
        heartbeat is younger than ``service_down_time`` (another engine's)."""
        return await self._host_up(host)

    async def _hosts(self) -> list[HostInfo]:
        """The hypervisor's hosts this engine may place on."""
        return [h for h in await self.driver.hosts() if self.serves(h.name)]

    async def _pick_host(
        self,
        inst: Instance,
        flavor: Flavor,
        *,
        force: str | None = None,
        exclude: Sequence[str] = (),
        claim: bool = True,
    ) -> str:
        host = self._placement.pick(await self._hosts(), flavor, force=force, exclude=exclude)
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
        a STOPPED event also matches a CRASHED guest, so a crash is acted on when it happens
        rather than at the next periodic sync (``sync_power_state_interval`` away).
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
                self._store.stage(inst, new)
            except Conflict:
                return
            update = self._notifier.state_update(inst, new)
            notes = [NoteSpec("update", new, SYSTEM_CONTEXT, state_update=update)] if update else []
            with anyio.CancelScope(shield=True):
                try:
                    await self._persist(None, inst, new, "state", notes=notes)
                except Conflict:
                    return
            self._committed(inst, new, None)
            inst = new
        for rule in self.lifecycle.power_sync:
            if inst.vm_state in rule.vm_states and (
                rule.power_states is None or power in rule.power_states
            ):
                runs = rule.response.runs
                if runs is not None:
                    await self._system_action(runs, uuid, "power sync")
                elif rule.response is SyncResponse.LOG:
                    log.warning("instance %s is %s but reports %s", uuid, inst.vm_state, power)
                return

    # -- recovery after a restart (statemachine.recovery) ------------------------------------

    async def _recover(self) -> None:
        """Apply the recovery rules to every instance left mid-action, then sync every idle
        instance's power state with the driver (in the background)."""
        started = anyio.current_time()
        self.recovered = []
        mine = []
        for inst in list(self._store.all()):
            if inst.task_state is None or inst.uuid in self._running:
                continue
            if await self._recovers(inst):  # else another engine's: its own start recovers it
                mine.append(inst)
        powers = await self._query_powers(mine)
        for inst in mine:
            assert inst.task_state is not None  # chosen for having one
            power = powers[inst.uuid]
            rule = match_rule(inst.vm_state, inst.task_state, power or PowerState.NOSTATE)
            response = rule.response if rule is not None else Recovery.NOTHING
            handle = await self._orphan(inst)
            self.recovered.append((inst.uuid, rule))
            log.info("recovery: %s %s/%s -> %s", inst.uuid, inst.vm_state, inst.task_state,
                     response.name)  # fmt: skip
            if response is Recovery.NOTHING:
                self._arm_orphan(handle)
                continue
            why = ActionFailed(
                handle.name, inst.uuid, _step_name(handle.step), "interrupted: the engine restarted"
            )
            if response is Recovery.FAIL_THEN_HARD_REBOOT:
                self._chained[inst.uuid] = ("reboot", {"type": "HARD"}, "recovery")
            self._start(
                handle, running_slot=True, body=self._recovery_body(handle, response, why, power)
            )
        self.recovery_seconds = anyio.current_time() - started
        assert self._tg is not None
        self._tg.start_soon(self._sync_all)

    async def _recovers(self, inst: Instance) -> bool:
        """Whether this engine's recovery takes ``inst`` up: its host is ours, or it has no
        host yet and this engine accepted its action (the audit log's writer says so)."""
        if inst.host is not None:
            return self.serves(inst.host)
        if self.config.hosts is None or inst.action_id is None:
            return True
        trail = await self._store.read_audit(action_id=inst.action_id, limit=1)
        return not trail or trail[0].writer == self.config.service_host

    def _recovery_body(
        self,
        handle: ActionHandle,
        response: Recovery,
        why: IsmError,
        power: PowerState | None,
    ) -> Callable[[], Awaitable[IsmError | None]]:
        if response is Recovery.RESUME:
            return functools.partial(self._run_steps, handle, resume=True)
        if response is Recovery.DONE:
            return functools.partial(self._complete_orphan, handle, power)
        return functools.partial(self._fail, handle, why)

    async def _orphan(self, inst: Instance) -> ActionHandle:
        """The interrupted action that owns ``inst``'s task_state: its entry (named by the audit
        log, else the first that has this task_state), positioned at its step with the phases
        it had opened, on the system's behalf, under its own action id."""
        task = inst.task_state
        candidates = [
            a for a in self.lifecycle.actions if any(s.task_state is task for s in a.steps)
        ]
        name = None
        if inst.action_id is not None:
            trail = await self._store.read_audit(action_id=inst.action_id, limit=1)
            name = trail[0].get("action") if trail else None
        action = ([a for a in candidates if a.public_name == name] or candidates)[0]
        index = next(i for i, step in enumerate(action.steps) if step.task_state is task)
        handle = ActionHandle(
            id=inst.action_id or self._new_action_id(),
            action=action,
            uuid=inst.uuid,
            ctx=SYSTEM_CONTEXT,
            params={},
            started_at=anyio.current_time(),
            inst=inst,
        )
        handle.step, handle.step_index = action.steps[index], index
        for i, step in enumerate(action.steps[: index + 1]):
            handle.open_phases |= {e[:-6] for e in step.before if e.endswith(".start")}
            if i < index:
                handle.open_phases -= {e[:-4] for e in step.after if e.endswith(".end")}
        handle.opened_any = bool(handle.open_phases)
        return handle

    async def _complete_orphan(
        self, handle: ActionHandle, power: PowerState | None
    ) -> IsmError | None:
        """The interrupted action evidently finished: walk its remaining steps without their
        calls (each a change the machine allows) and commit its target."""
        steps = handle.action.steps
        for index in range(handle.step_index + 1, len(steps)):
            failed = await self._advance(handle, steps[index - 1], steps[index], index, {})
            if failed is not None:
                return failed
        changes = {"power_state": power} if power is not None else {}
        return await self._finish_steps(handle, steps[-1], changes)

    def _arm_orphan(self, handle: ActionHandle) -> None:
        """Re-arm an interrupted step's deadline from ``task_since``: once past, the action
        takes its error path (Nova leaves these to periodic timeouts)."""
        assert handle.step is not None
        due = self._remaining(handle.inst.task_since, handle.step.deadline)
        self._timers.call_at(anyio.current_time() + due, functools.partial(self._expire, handle))

    def _expire(self, handle: ActionHandle) -> None:
        if not self._accepting:
            return  # the engine stops: the next start re-arms it
        try:
            inst = self._store.get(handle.uuid)
        except InstanceNotFound:
            return
        if inst.action_id != handle.id or inst.task_state is None or handle.uuid in self._running:
            return  # taken over since (a delete), or already resolved
        assert handle.step is not None
        handle.inst = inst
        why = StepDeadlineExceeded(
            handle.action.name, _step_name(handle.step), handle.step.deadline
        )
        self._start(handle, running_slot=True, body=functools.partial(self._fail, handle, why))

    async def _query_powers(self, instances: list[Instance]) -> dict[str, PowerState | None]:
        """Each instance's power state, asked ``recovery_concurrency`` at a time: one at a time,
        a hypervisor that does not answer would hold the start for 60 s per instance."""
        powers: dict[str, PowerState | None] = {}

        async def ask(inst: Instance) -> None:
            powers[inst.uuid] = await self._query_power(inst)

        await self._each_bounded(instances, ask)
        return powers

    async def _each_bounded(
        self, instances: Iterable[Instance], work: Callable[[Instance], Awaitable[None]]
    ) -> None:
        """``work`` on every instance, ``recovery_concurrency`` at a time: a bounded pool of
        workers sharing one iterator, never a task per instance."""
        pending = iter(instances)

        async def worker() -> None:
            for inst in pending:
                await work(inst)

        async with anyio.create_task_group() as tg:
            for _ in range(self.config.recovery_concurrency):
                tg.start_soon(worker)

    async def _query_power(self, inst: Instance) -> PowerState | None:
        """What the driver reports for the instance, or None when it cannot tell in time."""
        if inst.host is None:
            return PowerState.NOSTATE
        try:
            with anyio.fail_after(60):
                return await self.driver.power_state(inst.guest())
        except (DriverError, TimeoutError) as exc:
            log.info("power state of %s unknown: %s", inst.uuid, scrub(str(exc)))
            return None

    # -- the periodic power sync --------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Say that this engine's hosts are served, and arm the next heartbeat."""
        now = self.clock.wall()
        for host in self.config.hosts or ():
            await self._store.heartbeat(host, now)
        self._timers.call_at(
            anyio.current_time() + self.config.report_interval, self._heartbeat_tick
        )

    def _heartbeat_tick(self) -> None:
        if self._tg is not None and self._accepting:
            self._tg.start_soon(self._beat_in_background)

    async def _beat_in_background(self) -> None:
        scope = anyio.CancelScope()
        self._background.add(scope)
        try:
            with scope:
                await self._heartbeat()
        except StoreError as exc:  # the next beat retries; a host stays up for a while
            log.warning("heartbeat failed: %s", exc)
        finally:
            self._background.discard(scope)

    def _arm_sync(self) -> None:
        interval = self.config.sync_power_state_interval
        if interval < 0:
            return
        self._timers.call_at(anyio.current_time() + (interval or 60.0), self._sync_tick)

    def _sync_tick(self) -> None:
        if self._tg is None or not self._accepting:
            return
        if not self._syncing:
            self._tg.start_soon(self._sync_all)
        self._arm_sync()

    async def _sync_all(self) -> None:
        """Nova's ``_sync_power_states``: every idle instance's power state from the driver,
        then the sync table; a bounded pool of workers, never a task per instance."""
        if not self._accepting:
            return  # started just before the engine began to stop
        self._syncing = True
        scope = anyio.CancelScope()
        self._background.add(scope)
        try:

            async def sync(inst: Instance) -> None:
                if not self._accepting:
                    return  # the engine stops: what is left is skipped
                if inst.task_state is not None or inst.vm_state is VmState.DELETED:
                    return
                if not self.serves(inst.host):
                    return
                power = await self._query_power(inst)
                if power is not None:
                    await self.sync_power_state(inst.uuid, power)

            with scope:
                await self._each_bounded(list(self._store.all()), sync)
                self._syncs += 1
        finally:
            self._syncing = False
            self._background.discard(scope)

    async def actions(self, uuid: str) -> list[ActionRecord]:
        """The instance's actions, oldest first, with their steps and outcome (Nova's
        instance-actions API), read from the audit log.

        Raises:
            InstanceNotFound: no instance has that uuid.
        """
        self._store.get(uuid)
        return actions_from_audit(await self._store.read_audit(instance=uuid))

    # -- waiting and watching ------------------------------------------------------------

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no action runs (the clock's seconds).

        Raises:
            WaitTimeout: actions still run after ``timeout``.
        """
        timeout = wait_timeout(timeout)
        with anyio.move_on_after(timeout):
            while self._active:
                await self._idle.wait()
            return
        running = ", ".join(f"{h.name}@{h.uuid}" for h in list(self._running.values())[:10])
        raise WaitTimeout(f"{self._active} actions still run after {timeout:g} s: {running}")

    async def wait_committed(self, timeout: float) -> None:
        """Wait until every change staged so far is durable (its commit done).

        Raises:
            WaitTimeout: commits still pending after ``timeout``.
        """
        timeout = wait_timeout(timeout)
        with anyio.move_on_after(timeout):
            await self._committer.wait_idle()
            return
        raise WaitTimeout(f"commits still pending after {timeout:g} s")

    async def wait_delivered(self, timeout: float) -> None:
        """Wait until every committed notification reached every sink and transport.

        Raises:
            WaitTimeout: some are still undelivered after ``timeout`` (a destination is down).
        """
        timeout = wait_timeout(timeout)
        with anyio.move_on_after(timeout):
            await self._outbox.wait_delivered()
            return
        raise WaitTimeout(
            f"{self._outbox.backlog} notifications still undelivered after {timeout:g} s"
        )

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
