"""What the engine hands back: action handles and results, state changes, statistics.

These are plain attrs records so callers can keep, compare and log them; only
:class:`ActionHandle` is live (it completes when its action ends).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import attrs

from ._schema import Action, Step
from .errors import IsmError, WaitTimeout
from .model import Instance, RequestContext
from .states import TaskState

__all__ = [
    "ActionHandle",
    "ActionResult",
    "EngineStatistics",
    "Outcome",
    "StateChange",
    "StepHook",
    "StepInfo",
    "action_budget",
    "next_action_id",
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


StepHook = Callable[[StepInfo], Awaitable[None]]
"""An async callable run at the start of every step, inside the step's deadline. Raising fails
the step (down its error path, like a driver error); waiting holds the action at that step."""


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


_ids = itertools.count(1)


def next_action_id() -> int:
    """A process-wide unique id for an accepted action (it owns the task_state by it)."""
    return next(_ids)


@attrs.define(eq=False)
class ActionHandle:
    """An accepted action in flight. :meth:`wait` for its :class:`ActionResult`."""

    id: int
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
    ended: bool = False
    """Set once the action's last commit (its target or its error path) is made."""
    preempted_by: str | None = None
    interrupt: IsmError | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)

    @property
    def name(self) -> str:
        """The action's public name."""
        return self.action.public_name

    async def wait(self, timeout: float | None = None) -> ActionResult:
        """The result, once the action has ended.

        Raises:
            WaitTimeout: ``timeout`` (engine-clock seconds) passed first.
        """
        if self.result is None:
            limit = timeout if timeout is not None else action_budget(self.action) + 60
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
