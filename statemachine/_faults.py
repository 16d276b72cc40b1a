"""Fault rules in the vocabulary of scenario files, checked against the lifecycle.

The simulator's :class:`~drivers.simulator.FaultRule` knows nothing of the lifecycle (drivers
import nothing from ``statemachine``), so a rule naming an action or a step that does not
exist would silently never fire. Scenario files and the test harness both build their rules
here, where the table knows every action and its steps, and count calls from 1 (``nth``) as
people do.
"""

from __future__ import annotations

from typing import Literal

from drivers.simulator import FaultRule

from ._schema import Lifecycle
from .errors import InvalidRequest

__all__ = ["fault_rule", "step_names"]


def step_names(lifecycle: Lifecycle, action: str) -> list[str]:
    """The task_states of ``action``'s steps (of all its variants), which a rule may name.

    Raises:
        InvalidRequest: no action has that API name.
    """
    entries = lifecycle.api_actions().get(action)
    if not entries:
        raise InvalidRequest(f"unknown action {action!r}")
    return sorted(
        {
            step.task_state.value
            for entry in entries
            for step in entry.steps
            if step.task_state is not None
        }
    )


def fault_rule(
    lifecycle: Lifecycle,
    action: str,
    *,
    step: str | None = None,
    mode: Literal["raise", "hang"] = "raise",
    nth: int = 1,
    times: int | None = 1,
    probability: float | None = None,
    message: str = "injected fault",
) -> FaultRule:
    """A rule breaking ``action``'s driver calls (only its ``step``'s, if given).

    Args:
        lifecycle: The table the action and step are checked against.
        action: The action's API name (``reboot``, ``resize``, ``live_migrate``).
        step: A task_state of one of the action's steps (``reboot_started_hard``); ``None``
            matches every step (an action that sets no task_state has only that).
        mode: ``raise`` fails the call after its latency; ``hang`` never answers, so the
            step's deadline ends it.
        nth: The first matching call that breaks, counted from 1.
        times: How many consecutive matching calls break from the ``nth`` on; ``None``: all.
        probability: Instead of ``nth``/``times``, break each matching call with this chance
            (drawn from the simulator's seeded generator).
        message: The injected error's message.

    Returns:
        The rule, ready for ``SimulatorDriver.faults.add``.

    Raises:
        InvalidRequest: an unknown action, a step the action does not have, or an
            out-of-range number.
    """
    steps = step_names(lifecycle, action)
    if step is not None and step not in steps:
        raise InvalidRequest(f"{action!r} has no step {step!r}; its steps are {steps}")
    if isinstance(nth, bool) or not isinstance(nth, int) or nth < 1:
        raise InvalidRequest(f"nth counts calls from 1, not {nth!r}")
    try:
        return FaultRule(
            action=action,
            step=step,
            after=nth - 1,
            times=None if probability is not None else times,
            probability=probability,
            mode=mode,
            message=message,
        )
    except ValueError as exc:  # the rule's own validators: times, probability, mode
        raise InvalidRequest(str(exc)) from None
