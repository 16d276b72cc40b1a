"""What the engine hands back: action handles and results, state changes, statistics.

These are plain attrs records so callers can keep, compare and log them; only
:class:`ActionHandle` is live (it completes when its action ends).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import attrs

from ._histogram import Histogram
from ._schema import Action, Step
from ._validate import wait_timeout
from .audit import AuditEntry
from .errors import IsmError, WaitTimeout
from .model import Fault, Instance, RequestContext
from .states import TaskState
from .store import RequestRecord

__all__ = [
    "ActionHandle",
    "ActionResult",
    "EngineStatistics",
    "Outcome",
    "StateChange",
    "StepHook",
    "StepInfo",
    "action_budget",
]


class Outcome(enum.StrEnum):
    """How an accepted action ended."""

    OK = "ok"
    FAILED = "failed"
    PREEMPTED = "preempted"


@attrs.frozen
class ActionResult:
    """How an accepted action ended, and the instance as it left it."""

    action: str
    instance: Instance
    outcome: str
    error: IsmError | None
    request_id: str | None
    started_at: float
    ended_at: float

    @property
    def ok(self) -> bool:
        """Whether the action succeeded."""
        return self.outcome == Outcome.OK

    @property
    def duration(self) -> float:
        """Seconds from acceptance to end, on the engine's clock."""
        return self.ended_at - self.started_at


@attrs.frozen
class StateChange:
    """One committed change of one instance, as watchers see it."""

    old: Instance | None
    new: Instance
    action: str | None


@attrs.frozen
class StepInfo:
    """What a step hook is told: which action, which step, and the instance at that moment."""

    action: str
    variant: str | None
    index: int
    task_state: TaskState | None
    instance: Instance
    error_path: bool = False
    """True when the hook runs before a failed step's clean-up call (its error path)."""
    changes: Mapping[str, Any] | None = None
    """For an after-step hook: the record fields the step's call returned (to be committed);
    None before the call."""


StepHook = Callable[[StepInfo], Awaitable[None]]
"""An async callable run at the start of every step (``hooks``) or after its call returned
(``after_hooks``), inside the step's deadline. Raising fails the step (down its error path,
like a driver error); waiting holds the action at that step."""


@attrs.frozen
class EngineStatistics:
    """A frozen snapshot of the engine (anyio's ``statistics()`` style)."""

    instances: int
    by_vm_state: Mapping[str, int]
    running_actions: int
    accepted: int
    refused: int
    outcomes: Mapping[str, int]
    by_action: Mapping[str, Mapping[str, int]]
    """Outcomes (``ok``, ``failed``, ``preempted``, ``refused``) per action, the engine's own
    (timed transitions, power sync) included."""
    state_changes: int
    notifications: int
    timers_armed: int
    # -- for operators (issue 12): read by statemachine.metrics at scrape time; every
    # mapping is keyed by a finite set (actions, steps, vm_states, error classes)
    action_seconds: Mapping[str, Histogram] = attrs.field(factory=dict)
    """Seconds from acceptance to end, per action (every outcome)."""
    step_seconds: Mapping[tuple[str, str, str], Histogram] = attrs.field(factory=dict)
    """Seconds of each step's call (its hooks and driver call, under its deadline), per
    ``(action, step, call)``: the step is its task_state (several steps may share one: a
    delete's destroy and release), the call what it ran (an error path's clean-up call
    included); ``"none"`` for either when there is none."""
    vm_state_seconds: Mapping[str, Histogram] = attrs.field(factory=dict)
    """How long instances stayed in each vm_state, counted when they leave it."""
    driver_errors: Mapping[str, int] = attrs.field(factory=dict)
    """Failed driver calls in steps, by exception class (``InjectedFault``, ``DriverTimeout``)."""
    timers_fired: int = 0
    timer_lateness: Histogram | None = None
    """Seconds each timer (deadline, timed transition) fired after it was due."""
    outbox_backlog: int = 0
    """Committed notifications not yet taken by every sink and transport."""
    outbox_oldest_age: float = 0.0
    """Seconds since the oldest of those was stamped (0 when none waits)."""
    power_syncs: int = 0
    """Full power-state syncs completed (the one at start, then each periodic one)."""


@attrs.frozen
class NoteSpec:
    """A notification to build when its write happens: which event, about which snapshot, on
    whose behalf (a preempted action's ``.error`` travels in its preemptor's write)."""

    event: str
    instance: Instance
    ctx: RequestContext | None
    fault: Fault | None = None
    extra: Mapping[str, Any] | None = None
    state_update: Mapping[str, Any] | None = None


@attrs.define(eq=False)
class ActionHandle:
    """An accepted action in flight. :meth:`wait` for its :class:`ActionResult`."""

    id: str
    """Unique across engines and restarts: the audit log groups an action's records by it."""
    action: Action
    uuid: str
    ctx: RequestContext
    params: Mapping[str, Any]
    started_at: float
    inst: Instance
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    done: anyio.Event = attrs.field(factory=anyio.Event)
    result: ActionResult | None = None
    step: Step | None = None
    step_index: int = -1
    open_phases: set[str] = attrs.field(factory=set)
    opened_any: bool = False
    """Whether any phase was ever opened: an ``.error`` is sent only to close open phases, or
    for an action that failed before opening any (create failing to schedule)."""
    pending: list[NoteSpec] = attrs.field(factory=list)
    """Notifications noted but not yet written: they go with the action's next commit, or are
    flushed before its next driver call, so whatever the hypervisor is asked to do next is
    preceded by durable notifications of what led to it."""
    pending_audit: list[AuditEntry] = attrs.field(factory=list)
    request: RequestRecord | None = None
    """The request id to record with the action's first write (idempotency)."""
    user_data: str | None = attrs.field(default=None, repr=False)
    """A create's user_data, stored with the new record (never emitted, never audited)."""
    ended: bool = False
    """Set once the action's last commit (its target or its error path) is made."""
    preempted_by: str | None = None
    interrupt: IsmError | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)

    def snapshot_notes(self) -> tuple[Any, ...]:
        """What a write attempt may change of the handle, to restore if the write is lost."""
        return (
            list(self.pending),
            list(self.pending_audit),
            self.request,
            set(self.open_phases),
            self.opened_any,
            self.step,
            self.step_index,
        )

    def restore_notes(self, saved: tuple[Any, ...]) -> None:
        """Undo what a lost write attempt changed (see :meth:`snapshot_notes`)."""
        (self.pending, self.pending_audit, self.request, self.open_phases, self.opened_any,
         self.step, self.step_index) = saved  # fmt: skip

    @property
    def name(self) -> str:
        """The action's public name."""
        return self.action.public_name

    async def wait(self, timeout: float | None = None) -> ActionResult:
        """The result, once the action has ended.

        Raises:
            WaitTimeout: ``timeout`` (engine-clock seconds) passed first.
        """
        limit = wait_timeout(timeout) if timeout is not None else action_budget(self.action) + 60
        if self.result is None:
            with anyio.move_on_after(limit):
                await self.done.wait()
        if self.result is None:
            raise WaitTimeout(
                f"'{self.name}' on {self.uuid} still runs after {limit:g} s "
                f"(step {self.step.task_state if self.step else None})"
            )
        return self.result


def action_budget(action: Action) -> float:
    return sum(step.deadline for step in action.steps) + 60
