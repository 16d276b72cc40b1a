"""ism's errors: one tree under :class:`IsmError`.

::

    IsmError
    ├── ActionRefused               the action was not accepted; nothing changed
    │   ├── InvalidState            vm_state / task_state do not allow it (Nova: 409)
    │   │   └── Locked              the instance is locked and the caller is not an admin
    │   ├── Forbidden               policy denies the caller (also PermissionError)
    │   ├── Conflict                lost a compare-and-swap to another action
    │   │   ├── UnexpectedDeletingTaskState
    │   │   └── DuplicateRequest    the request id was already accepted (idempotency)
    │   ├── InstanceNotFound        no such instance (also LookupError)
    │   ├── InvalidRequest          malformed parameters (also ValueError)
    │   ├── WrongHost               the instance is another engine's (route it there)
    │   ├── EngineClosed            the engine is not running or is draining
    │   └── Busy                    a bound was reached (actions in flight); try again later
    ├── ActionFailed                accepted, then failed; ``__cause__`` is the driver's error
    ├── ActionPreempted             accepted, then preempted by another action (delete, take-over)
    ├── NoValidHost                 placement found no live host with capacity
    ├── BuildTimeout                building outlasted ``instance_build_timeout``
    ├── StepDeadlineExceeded        a step overran its deadline (also TimeoutError)
    ├── WaitTimeout                 a wait ran out of time (also TimeoutError, AssertionError)
    ├── WatchOverflow               a state watcher fell behind its bounded buffer
    ├── LifecycleError              the lifecycle definition is invalid (names the culprit)
    ├── DiagramError                a diagram cannot be drawn (bad export, unknown name, no dot)
    ├── StoreError                  storage failed or cannot be opened (locked, schema, I/O)
    ├── PolicyError                 a policy (file or rules) is invalid (also ValueError)
    ├── ScenarioError               a scenario file is invalid (also ValueError)
    ├── TransportError              notifications were not confirmed by the broker; retry later
    └── MissingExtra                an optional extra is not installed (also ImportError)

Driver errors (:mod:`drivers.base`) form their own tree; the engine records them as the cause
of an :class:`ActionFailed` and as the instance's fault.
"""

from __future__ import annotations

from drivers.base import (
    DriverError,
    DriverTimeout,
    GuestNotFound,
    HostUnavailable,
    InjectedFault,
    InsufficientResources,
    InvalidGuest,
    UnsupportedOperation,
)

__all__ = [
    "ActionFailed",
    "ActionPreempted",
    "ActionRefused",
    "BuildTimeout",
    "Busy",
    "Conflict",
    "DiagramError",
    "DriverError",
    "DriverTimeout",
    "DuplicateRequest",
    "EngineClosed",
    "Forbidden",
    "GuestNotFound",
    "HostUnavailable",
    "InjectedFault",
    "InstanceNotFound",
    "InsufficientResources",
    "InvalidGuest",
    "InvalidRequest",
    "InvalidState",
    "IsmError",
    "LifecycleError",
    "Locked",
    "MissingExtra",
    "NoValidHost",
    "PolicyError",
    "ScenarioError",
    "StepDeadlineExceeded",
    "StoreError",
    "TransportError",
    "UnexpectedDeletingTaskState",
    "UnsupportedOperation",
    "WaitTimeout",
    "WatchOverflow",
    "WrongHost",
]


class IsmError(Exception):
    """Root of every error ism raises itself."""


class ActionRefused(IsmError):
    """The action was not accepted. Nothing changed except the refusal's own record."""

    def __init__(self, message: str, *, action: str | None = None, instance: str | None = None):
        self.action = action
        self.instance = instance
        super().__init__(message)


class InvalidState(ActionRefused):
    """The instance's vm_state or task_state does not allow the action."""

    def __init__(self, action: str, instance: str, attr: str, state: object) -> None:
        self.attr = attr
        self.state = state
        super().__init__(
            f"Cannot '{action}' instance {instance} while it is in {attr} {state}",
            action=action,
            instance=instance,
        )


class Locked(InvalidState):
    """The instance is locked and the caller is not an admin."""

    def __init__(self, action: str, instance: str) -> None:
        super().__init__(action, instance, "locked", True)
        self.args = (f"Instance {instance} is locked; '{action}' needs an admin",)


class Forbidden(ActionRefused, PermissionError):
    """The policy does not let this caller perform the action."""

    def __init__(self, action: str, instance: str | None, rule: str) -> None:
        self.rule = rule
        super().__init__(
            f"Policy doesn't allow '{action}' to be performed (rule {rule!r})",
            action=action,
            instance=instance,
        )


class Conflict(ActionRefused):
    """A compare-and-swap found the instance changed since it was read: another action won."""

    def __init__(
        self, instance: str, expected: dict[str, object], actual: dict[str, object]
    ) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"Conflict updating instance {instance}. Expected: {expected}. Actual: {actual}",
            instance=instance,
        )


class UnexpectedDeletingTaskState(Conflict):
    """The compare-and-swap lost to a delete (Nova's UnexpectedDeletingTaskStateError)."""


class DuplicateRequest(Conflict):
    """A store already holds this request id: another engine (or an earlier run) accepted it."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(request_id, {"request_id": "new"}, {"request_id": "accepted"})


class InstanceNotFound(ActionRefused, LookupError):
    """No instance has that uuid or name."""

    def __init__(self, instance: str) -> None:
        super().__init__(f"Instance {instance} could not be found.", instance=instance)


class InvalidRequest(ActionRefused, ValueError):
    """The action's parameters are malformed or unknown."""


class WrongHost(ActionRefused):
    """The instance lives on a host another engine serves: send the request to that engine.

    Attributes:
        host: The host whose engine serves the instance.
    """

    def __init__(self, action: str, instance: str, host: str | None) -> None:
        self.host = host
        super().__init__(
            f"Instance {instance} is on host {host!r}, which another engine serves: send "
            f"'{action}' to that host's engine",
            action=action,
            instance=instance,
        )


class EngineClosed(ActionRefused):
    """The engine is not running (not entered, or draining)."""


class Busy(ActionRefused):
    """A bound was reached (too many actions in flight); nothing was accepted."""


class ActionFailed(IsmError):
    """An accepted action failed; the instance went down the action's error path."""

    def __init__(self, action: str, instance: str, step: str | None, reason: str) -> None:
        self.action = action
        self.instance = instance
        self.step = step
        self.reason = reason
        where = f" in step {step}" if step else ""
        super().__init__(f"'{action}' failed on instance {instance}{where}: {reason}")


class ActionPreempted(IsmError):
    """An accepted action was ended by another that took the instance over."""

    def __init__(self, action: str, instance: str, by: str) -> None:
        self.action = action
        self.instance = instance
        self.by = by
        super().__init__(f"'{action}' on instance {instance} was preempted by '{by}'")


class NoValidHost(IsmError):
    """Placement found no live host with enough free capacity."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"No valid host was found. {reason}")


class BuildTimeout(IsmError, TimeoutError):
    """The instance stayed in building longer than ``instance_build_timeout``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"Instance failed to build within {seconds:g} seconds")


class StepDeadlineExceeded(IsmError, TimeoutError):
    """A task_state step overran its deadline."""

    def __init__(self, action: str, step: str | None, seconds: float) -> None:
        self.action = action
        self.step = step
        self.seconds = seconds
        super().__init__(f"step {step} of '{action}' overran its deadline of {seconds:g} s")


class WaitTimeout(IsmError, TimeoutError, AssertionError):
    """A wait ran out of time; the message says what was observed.

    Also an :class:`AssertionError`: in a test, a wait that never ends is a failed expectation,
    and test runners report it as one (a failure, not an error). The layout allows it: neither
    ``IsmError`` nor ``AssertionError`` adds fields to ``BaseException``, so only
    ``TimeoutError`` (``OSError``) shapes the instance.
    """


class WatchOverflow(IsmError):
    """A state watcher did not keep up with its bounded buffer and was dropped."""


class LifecycleError(IsmError):
    """The lifecycle definition is invalid; the message names the culprit."""


class DiagramError(IsmError):
    """A diagram or lifecycle export cannot be produced or read; nothing was written.

    An unreadable or unknown export, an action or state the lifecycle does not have, a git
    revision without ``diagrams/lifecycle.json``, or Graphviz's ``dot`` missing or failing.
    """


class StoreError(IsmError):
    """Storage failed or cannot be opened. Nothing of the failed transaction was written.

    Fatal to an engine: what it had accepted but not made durable is gone with it, and a restart
    recovers from what the store holds (fail-stop, never half-written).
    """


class PolicyError(IsmError, ValueError):
    """A policy is invalid (unreadable file, unknown name, bad rule, cycle); the message names
    the rule and the problem. Nothing was loaded: the engine keeps the policy it had."""


class ScenarioError(IsmError, ValueError):
    """A scenario file is invalid; the message names the step."""


class TransportError(IsmError):
    """A notification transport did not get every notification confirmed by its broker.

    The broker was unreachable, refused a declaration, nacked a message, or did not confirm
    in time. Nothing the caller holds is lost: it keeps the notifications and publishes them
    again later (at least once per ``message_id``; consumers may see a duplicate).

    Attributes:
        confirmed: How many of the leading notifications of the failed call the broker did
            confirm (the caller may drop those); 0 when the call failed before publishing.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, confirmed: int = 0) -> None:
        self.confirmed = confirmed
        super().__init__(message)


class MissingExtra(IsmError, ImportError):
    """A feature needs an optional extra that is not installed; the message names the
    ``pip install`` that adds it.

    Attributes:
        extra: The extra's name (``metrics``).
        module: The module that could not be imported (``prometheus_client``).

    .. versionadded:: 0.1
    """

    def __init__(self, extra: str, module: str, feature: str) -> None:
        self.extra = extra
        self.module = module
        super().__init__(
            f"{feature} needs {module}, which is not installed: pip install 'ism-engine[{extra}]'"
        )
