"""Restart reconciliation, as data: Nova's ``_init_instance`` rules, first match wins.

An engine that starts on a store may find instances left mid-action by a crash (or by a drain
that ran out of time): their ``task_state`` is set and no action runs. Each rule below matches
on the stored vm_state and task_state and on the power state the driver reports now, and says
what becomes of the interrupted action (it keeps its ``action_id``, so its audit trail and its
notifications get the ending it never had):

* ``NOTHING`` — left as it is (Nova: "survives a restart unchanged"); its step's deadline is
  re-armed from ``task_since`` and, once past, the action takes its error path.
* ``FAIL`` — its error path now, as the table says (``error``, or back to the stable state with
  the step's clean-up call: a resize reverted, a live migration rolled back).
* ``DONE`` — it evidently finished (the guest runs): commit its target.
* ``RESUME`` — run it again from its current step (a stop, start or delete retried).
* ``FAIL_THEN_HARD_REBOOT`` — a soft reboot whose guest is not running: its error path, then a
  hard reboot by the system (Nova turns the retry into a hard one).

Sources: ``reference/nova-lifecycle.md`` §3, rows numbered as there. Rows 2, 13 and 16 have no
counterpart (ism's ``deleted`` is final; it plugs no VIFs; ``resume_guests_state_on_host_boot``
is not supported). After the rules, every idle instance's power state is synced with the driver.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from drivers.base import PowerState

from .lifecycle import REBUILD_STATES
from .states import TaskState as T
from .states import VmState as V

__all__ = ["RECOVERY_RULES", "Recovery", "RecoveryRule", "match_rule", "rules_markdown"]


class Recovery(enum.Enum):
    """What becomes of an action a restart interrupted."""

    NOTHING = "left as it is; its step deadline is re-armed"
    FAIL = "its error path"
    DONE = "its target: it finished"
    RESUME = "run again from its current step"
    FAIL_THEN_HARD_REBOOT = "its error path, then a hard reboot"


@attrs.frozen
class RecoveryRule:
    """One row: where it applies (None means any) and what it does."""

    nova: str
    response: Recovery
    doc: str
    vm_states: frozenset[V] | None = None
    task_states: frozenset[T] | None = None
    power_states: frozenset[PowerState] | None = None
    except_vm_states: frozenset[V] = frozenset()
    except_task_states: frozenset[T] = frozenset()

    def applies(self, vm: V, task: T, power: PowerState) -> bool:
        """Whether the row matches a stored state and the driver's power state."""
        return (
            (self.vm_states is None or vm in self.vm_states)
            and (self.task_states is None or task in self.task_states)
            and (self.power_states is None or power in self.power_states)
            and vm not in self.except_vm_states
            and task not in self.except_task_states
        )


_BUILD = frozenset({T.SCHEDULING, T.BLOCK_DEVICE_MAPPING, T.NETWORKING, T.SPAWNING})
_SNAPSHOT = frozenset(
    {T.IMAGE_SNAPSHOT_PENDING, T.IMAGE_PENDING_UPLOAD, T.IMAGE_UPLOADING, T.IMAGE_SNAPSHOT}
)
_RUNNING = frozenset({PowerState.RUNNING})
_NOT_RUNNING = frozenset(PowerState) - _RUNNING

RECOVERY_RULES: tuple[RecoveryRule, ...] = (
    RecoveryRule(
        "#1", Recovery.NOTHING, "soft-deleted: left alone", vm_states=frozenset({V.SOFT_DELETED})
    ),
    RecoveryRule(
        "#1",
        Recovery.NOTHING,
        "in error, unless a delete or a resize's disk move was interrupted",
        vm_states=frozenset({V.ERROR}),
        except_task_states=frozenset({T.RESIZE_MIGRATING, T.DELETING}),
    ),
    RecoveryRule(
        "#3",
        Recovery.FAIL,
        "a build that was running goes to error",
        vm_states=frozenset({V.BUILDING}),
    ),
    RecoveryRule("#3", Recovery.FAIL, "a spawn that was running goes to error", task_states=_BUILD),
    RecoveryRule(
        "#4",
        Recovery.FAIL,
        "an interrupted rebuild goes to error",
        vm_states=frozenset({V.ACTIVE, V.STOPPED}),
        task_states=REBUILD_STATES,
    ),
    RecoveryRule(
        "#5",
        Recovery.FAIL,
        "an interrupted snapshot is dropped",
        task_states=_SNAPSHOT,
        except_vm_states=frozenset({V.ERROR}),
    ),
    RecoveryRule(
        "#6",
        Recovery.FAIL,
        "a resize that had not started is dropped",
        task_states=frozenset({T.RESIZE_PREP}),
        except_vm_states=frozenset({V.ERROR}),
    ),
    RecoveryRule(
        "#7", Recovery.RESUME, "a half-done delete is finished", task_states=frozenset({T.DELETING})
    ),
    RecoveryRule(
        "#8",
        Recovery.RESUME,
        "a pending soft reboot of a running guest is retried",
        vm_states=frozenset({V.ACTIVE}),
        task_states=frozenset({T.REBOOT_PENDING}),
        power_states=_RUNNING,
    ),
    RecoveryRule(
        "#8",
        Recovery.FAIL_THEN_HARD_REBOOT,
        "a soft reboot whose guest is not running becomes a hard reboot",
        task_states=frozenset({T.REBOOTING, T.REBOOT_PENDING, T.REBOOT_STARTED}),
        power_states=_NOT_RUNNING,
    ),
    RecoveryRule(
        "#8",
        Recovery.RESUME,
        "a pending hard reboot is retried",
        task_states=frozenset({T.REBOOT_PENDING_HARD}),
    ),
    RecoveryRule(
        "#8",
        Recovery.RESUME,
        "a hard reboot whose guest is not running is retried",
        task_states=frozenset({T.REBOOTING_HARD, T.REBOOT_STARTED_HARD}),
        power_states=_NOT_RUNNING,
    ),
    RecoveryRule(
        "#9",
        Recovery.DONE,
        "a reboot or an unpause whose guest runs has finished",
        task_states=frozenset(
            {T.REBOOTING, T.REBOOT_STARTED, T.REBOOTING_HARD, T.REBOOT_STARTED_HARD, T.UNPAUSING}
        ),
        power_states=_RUNNING,
    ),
    RecoveryRule(
        "#9",
        Recovery.FAIL,
        "a pause whose guest still runs did not happen: back to active",
        task_states=frozenset({T.PAUSING}),
        power_states=_RUNNING,
    ),
    RecoveryRule(
        "#10",
        Recovery.RESUME,
        "an unpause of a paused guest is retried",
        task_states=frozenset({T.UNPAUSING}),
        power_states=frozenset({PowerState.PAUSED}),
    ),
    RecoveryRule(
        "#11", Recovery.RESUME, "a stop is retried", task_states=frozenset({T.POWERING_OFF})
    ),
    RecoveryRule(
        "#12", Recovery.RESUME, "a start is retried", task_states=frozenset({T.POWERING_ON})
    ),
    RecoveryRule(
        "#14",
        Recovery.FAIL,
        "a resize moving its disk is reverted",
        task_states=frozenset({T.RESIZE_MIGRATING}),
    ),
    RecoveryRule(
        "#15",
        Recovery.FAIL,
        "a live migration is aborted and rolled back",
        task_states=frozenset({T.MIGRATING}),
    ),
)
"""First match wins; an instance no rule matches is left as it is (its deadline re-armed)."""


def match_rule(
    vm: V, task: T, power: PowerState, rules: Iterable[RecoveryRule] = RECOVERY_RULES
) -> RecoveryRule | None:
    """The first rule that applies, or None (left as it is)."""
    for rule in rules:
        if rule.applies(vm, task, power):
            return rule
    return None


def _names(values: Iterable[enum.Enum] | None) -> str:
    if values is None:
        return "any"
    return ", ".join(sorted(str(getattr(v, "label", None) or v.value) for v in values))


def rules_markdown(rules: Iterable[RecoveryRule] = RECOVERY_RULES) -> str:
    """The rules as a Markdown table, in order (the README embeds it; a test keeps it current)."""
    lines = [
        "| Nova | vm_state | task_state | power state | then |",
        "|---|---|---|---|---|",
    ]
    for rule in rules:
        vm = _names(rule.vm_states)
        if rule.except_vm_states:
            vm += f" except {_names(rule.except_vm_states)}"
        task = _names(rule.task_states)
        if rule.except_task_states:
            task += f" except {_names(rule.except_task_states)}"
        lines.append(
            f"| {rule.nova} | {vm} | {task} | {_names(rule.power_states)} | "
            f"{rule.response.name}: {rule.doc} |"
        )
    return "\n".join(lines) + "\n"
