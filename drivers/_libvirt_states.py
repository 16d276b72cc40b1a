"""Libvirt's domain states and lifecycle events, mapped to ism's vocabulary as Nova maps them.

Pure data and functions, importable without libvirt-python: the numbers are libvirt's stable
ABI values (``virDomainState``, ``virDomainEventType`` and its details), mirrored here so the
mapping can be read, tested and documented on any machine; a test checks them against the
installed bindings.

Sources (``reference/nova-lifecycle.md`` §4): ``nova/virt/libvirt/guest.py``
``LIBVIRT_POWER_STATE`` for states, ``nova/virt/libvirt/host.py`` ``_event_lifecycle_callback``
for events.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from .base import LifecycleTransition, PowerState

__all__ = [
    "POWER_STATES",
    "RESYNC_TRANSITIONS",
    "DomainEvent",
    "DomainState",
    "SuspendedDetail",
    "power_state_of",
    "transition_for",
]


class DomainState(enum.IntEnum):
    """``virDomainState``: what ``virDomain.state()`` reports first."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


class DomainEvent(enum.IntEnum):
    """``virDomainEventType``: the ``event`` argument of a lifecycle callback."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8


class SuspendedDetail(enum.IntEnum):
    """``virDomainEventSuspendedDetailType``: the details Nova tells apart."""

    PAUSED = 0
    MIGRATED = 1
    POSTCOPY = 7


#: Nova's LIBVIRT_POWER_STATE. BLOCKED is a Xen vCPU idling, so RUNNING; SHUTDOWN is a guest
#: still shutting down, which Nova already reports as SHUTDOWN; PMSUSPENDED is S3 sleep.
POWER_STATES: Mapping[DomainState, PowerState] = MappingProxyType(
    {
        DomainState.NOSTATE: PowerState.NOSTATE,
        DomainState.RUNNING: PowerState.RUNNING,
        DomainState.BLOCKED: PowerState.RUNNING,
        DomainState.PAUSED: PowerState.PAUSED,
        DomainState.SHUTDOWN: PowerState.SHUTDOWN,
        DomainState.SHUTOFF: PowerState.SHUTDOWN,
        DomainState.CRASHED: PowerState.CRASHED,
        DomainState.PMSUSPENDED: PowerState.SUSPENDED,
    }
)

#: After a reconnect, the event that stands for each domain's current power state: the engine's
#: power sync acts on an event only when the driver reports the event's state, so replaying
#: "what it is now" reconciles whatever happened while the connection was down. A crashed
#: guest is replayed as STOPPED, which the engine matches to CRASHED as well.
RESYNC_TRANSITIONS: Mapping[PowerState, LifecycleTransition] = MappingProxyType(
    {
        PowerState.RUNNING: LifecycleTransition.STARTED,
        PowerState.PAUSED: LifecycleTransition.PAUSED,
        PowerState.SHUTDOWN: LifecycleTransition.STOPPED,
        PowerState.CRASHED: LifecycleTransition.STOPPED,
        PowerState.SUSPENDED: LifecycleTransition.SUSPENDED,
    }
)

_SIMPLE_EVENTS: Mapping[int, LifecycleTransition] = MappingProxyType(
    {
        DomainEvent.STOPPED: LifecycleTransition.STOPPED,
        DomainEvent.STARTED: LifecycleTransition.STARTED,
        DomainEvent.RESUMED: LifecycleTransition.RESUMED,
    }
)


def power_state_of(state: int) -> PowerState:
    """The power state Nova reports for a libvirt domain state (unknown values: NOSTATE)."""
    try:
        return POWER_STATES[DomainState(state)]
    except ValueError:
        return PowerState.NOSTATE


def transition_for(
    event: int, detail: int, *, migration_completed: bool = False
) -> LifecycleTransition | None:
    """Nova's translation of one libvirt lifecycle event, or None when Nova ignores it.

    Args:
        event: The ``virDomainEventType`` value.
        detail: The event's detail value.
        migration_completed: For a SUSPENDED/MIGRATED event, whether the domain's migration
            job actually completed (Nova asks libvirt); otherwise the guest is only paused.

    Returns:
        The transition, or None for events Nova does not forward (DEFINED, UNDEFINED,
        SHUTDOWN, PMSUSPENDED, CRASHED): only forwarded events cancel a delayed STOPPED.
    """
    if event == DomainEvent.SUSPENDED:
        if detail == SuspendedDetail.POSTCOPY:
            return LifecycleTransition.POSTCOPY_STARTED
        if detail == SuspendedDetail.MIGRATED and migration_completed:
            return LifecycleTransition.MIGRATION_COMPLETED
        return LifecycleTransition.PAUSED
    return _SIMPLE_EVENTS.get(event)
