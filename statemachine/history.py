"""An instance's actions, as Nova's instance-actions API shows them, derived from the audit log.

The audit log already holds every accepted action, every step it entered and how it ended; a
second table of actions would be a second source of truth that could disagree with it. So the
history is a view: records grouped by ``action_id``, each step (task_state) an event that starts
when the action entered it and finishes at the next record, ``Error`` when that next record is
the action's failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .audit import AuditRecord

__all__ = ["ActionEvent", "ActionRecord", "actions_from_audit"]


@attrs.frozen
class ActionEvent:
    """One step of an action: the task_state it was in, from when, until when, how it ended."""

    event: str
    start_time: str
    finish_time: str | None
    result: str | None
    """``Success``, ``Error``, or None while the step runs (Nova's words)."""


@attrs.frozen
class ActionRecord:
    """One action on an instance: who asked, when, its outcome and its steps."""

    action: str
    action_id: str
    request_id: str | None
    user_id: str | None
    project_id: str | None
    start_time: str
    finish_time: str | None
    outcome: str | None
    """``ok``, ``failed``, ``preempted``, or None while it runs (or when a restart cut it)."""
    message: str | None
    events: tuple[ActionEvent, ...]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``ism actions --json``)."""
        return attrs.asdict(self)


_ENDS = {"completed": "ok", "failed": "failed", "preempted": "preempted"}


def actions_from_audit(records: Iterable[AuditRecord]) -> list[ActionRecord]:
    """Group one instance's audit records (in ``seq`` order) into its actions, oldest first.

    Refusals are not actions (nothing was accepted) and records without an action (power-state
    updates by the sync) belong to none.
    """
    grouped: dict[str, list[AuditRecord]] = {}
    for record in records:
        action_id = record.get("action_id")
        if action_id is None or record.event == "refused":
            continue
        grouped.setdefault(str(action_id), []).append(record)
    return [_action(action_id, trail) for action_id, trail in grouped.items()]


def _action(action_id: str, trail: list[AuditRecord]) -> ActionRecord:
    first, last = trail[0], trail[-1]
    actor: Mapping[str, Any] = first.get("actor") or {}
    outcome = _ENDS.get(last.event)
    message = None
    if last.event == "failed":
        fault = last.get("fault") or {}
        message = f"{fault.get('exception', '')}: {fault.get('message', '')}"
    elif last.event == "preempted":
        message = f"preempted by {last.get('message')}"
    return ActionRecord(
        action=str(first.get("action")),
        action_id=action_id,
        request_id=first.get("request_id"),
        user_id=actor.get("user_id"),
        project_id=actor.get("project_id"),
        start_time=str(first.get("time")),
        finish_time=str(last.get("time")) if outcome is not None else None,
        outcome=outcome,
        message=message,
        events=_steps(trail, ended=outcome is not None),
    )


def _steps(trail: list[AuditRecord], *, ended: bool) -> tuple[ActionEvent, ...]:
    """The steps, from the task_state each record left the instance in."""
    events: list[ActionEvent] = []
    current: tuple[str, str] | None = None  # (task_state, since)
    for record in trail:
        after = record.get("after") or {}
        task = after.get("task_state")
        when = str(record.get("time"))
        failed = record.event in ("failed", "preempted")
        if current is not None and (task != current[0] or failed or record.event == "completed"):
            result = "Error" if failed else "Success"
            events.append(ActionEvent(current[0], current[1], when, result))
            current = None
        if task is not None and current is None and not failed:
            current = (task, when)
    if current is not None:
        events.append(ActionEvent(current[0], current[1], None, None if not ended else "Error"))
    return tuple(events)
