"""The hypervisor's vocabulary and the async ``Driver`` protocol.

``drivers`` is the lower package: it imports nothing from ``statemachine``. It owns what a
hypervisor speaks about (power states, lifecycle events, the guest a driver builds, host
inventory, driver errors) so that the engine can build on it and every driver can be tested
by one contract suite without knowing the engine.

Error tree::

    DriverError
    ├── DriverTimeout (also TimeoutError)
    ├── HostUnavailable
    ├── GuestNotFound (also LookupError)
    ├── InvalidGuest (also ValueError)
    ├── InsufficientResources
    ├── UnsupportedOperation (also NotImplementedError)
    └── InjectedFault            (raised only by the simulator's fault plan)
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

import attrs

__all__ = [
    "CURRENT_CALL",
    "CallContext",
    "Capabilities",
    "Driver",
    "DriverError",
    "DriverTimeout",
    "GuestFlavor",
    "GuestNotFound",
    "GuestSpec",
    "HostInfo",
    "HostUnavailable",
    "InjectedFault",
    "InsufficientResources",
    "InvalidGuest",
    "LifecycleEvent",
    "LifecycleTransition",
    "PowerState",
    "RebootType",
    "UnsupportedOperation",
]


class PowerState(enum.IntEnum):
    """What the hypervisor reports, with Nova's integer values (only ever appended to).

    The notification string of each value is :attr:`label`; 2 and 5 are unused in Nova
    (formerly BLOCKED and SHUTOFF) and are deliberately absent here.
    """

    NOSTATE = 0
    RUNNING = 1
    PAUSED = 3
    SHUTDOWN = 4
    CRASHED = 6
    SUSPENDED = 7

    @property
    def label(self) -> str:
        """The string Nova's notification payloads carry for this state."""
        return _POWER_LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> PowerState:
        """Map a notification string (``"running"``) back to its state."""
        for state, text in _POWER_LABELS.items():
            if text == label:
                return state
        raise ValueError(f"unknown power state label {label!r}")


_POWER_LABELS = {
    PowerState.NOSTATE: "pending",
    PowerState.RUNNING: "running",
    PowerState.PAUSED: "paused",
    PowerState.SHUTDOWN: "shutdown",
    PowerState.CRASHED: "crashed",
    PowerState.SUSPENDED: "suspended",
}


class LifecycleTransition(enum.Enum):
    """Nova's virt lifecycle events (``nova/virt/event.py``), and the power state each implies."""

    STARTED = "Started"
    STOPPED = "Stopped"
    PAUSED = "Paused"
    RESUMED = "Resumed"
    SUSPENDED = "Suspended"
    POSTCOPY_STARTED = "Postcopy started"
    MIGRATION_COMPLETED = "Migration completed"

    @property
    def expected_power_state(self) -> PowerState:
        """The power state a hypervisor must report for the event not to be stale (Nova's map)."""
        return _EXPECTED_POWER[self]


_EXPECTED_POWER = {
    LifecycleTransition.STARTED: PowerState.RUNNING,
    LifecycleTransition.RESUMED: PowerState.RUNNING,
    LifecycleTransition.STOPPED: PowerState.SHUTDOWN,
    LifecycleTransition.PAUSED: PowerState.PAUSED,
    LifecycleTransition.POSTCOPY_STARTED: PowerState.PAUSED,
    LifecycleTransition.MIGRATION_COMPLETED: PowerState.PAUSED,
    LifecycleTransition.SUSPENDED: PowerState.SUSPENDED,
}


class RebootType(enum.StrEnum):
    """Nova's reboot types."""

    SOFT = "SOFT"
    HARD = "HARD"


@attrs.frozen
class LifecycleEvent:
    """A guest's state changed on the hypervisor, by a request of ours or by itself."""

    uuid: str
    transition: LifecycleTransition
    timestamp: float


@attrs.frozen
class GuestFlavor:
    """The resources a guest is built with."""

    vcpus: int
    memory_mb: int
    root_gb: int


@attrs.frozen
class GuestSpec:
    """Everything a driver needs to build or act on one guest: plain data, no engine objects.

    ``user_data`` reaches the driver (a real hypervisor injects it through a config drive) but is
    never part of ``repr`` so that a logged spec cannot leak it.
    """

    uuid: str
    name: str
    host: str | None
    flavor: GuestFlavor
    image: str
    user_data: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class HostInfo:
    """A compute host as the hypervisor layer sees it: its capacity and whether it answers."""

    name: str
    up: bool
    vcpus: int
    memory_mb: int
    disk_gb: int


@attrs.frozen
class Capabilities:
    """What a driver can do and where drivers legitimately differ.

    ``suspended_power_state`` is what :meth:`Driver.power_state` reports after ``suspend``: a
    simulator keeps the guest SUSPENDED, libvirt's managed save leaves it shut off (SHUTDOWN).
    """

    live_migration: bool = True
    snapshot: bool = True
    rescue: bool = True
    crash_dump: bool = True
    suspended_power_state: PowerState = PowerState.SUSPENDED


@attrs.frozen
class CallContext:
    """Which action and task_state step a driver call serves.

    The engine sets :data:`CURRENT_CALL` around each call; real drivers may ignore it, the
    simulator's fault plan matches on it (``the Nth call of reboot's reboot_started_hard step``).
    """

    action: str
    step: str | None


CURRENT_CALL: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "ism_current_call", default=None
)


class DriverError(Exception):
    """Base class of every error a driver raises; the engine records it as a fault."""


class DriverTimeout(DriverError, TimeoutError):
    """The hypervisor did not answer in time."""


class HostUnavailable(DriverError):
    """The host that holds (or should hold) the guest does not answer."""

    def __init__(self, host: str | None) -> None:
        self.host = host
        super().__init__(f"host {host!r} is unavailable")


class GuestNotFound(DriverError, LookupError):
    """The hypervisor has no guest with that uuid."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        super().__init__(f"guest {uuid} not found on the hypervisor")


class InvalidGuest(DriverError, ValueError):
    """The guest's description cannot be given to the hypervisor as it is; nothing was done.

    A real driver turns names, images and flavors into the hypervisor's own language (libvirt:
    domain XML). A value it cannot carry faithfully (control characters, lone surrogates,
    absurd lengths, a malformed uuid) is refused before any hypervisor call, never mangled.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid guest {field}: {reason}")


class InsufficientResources(DriverError):
    """The host has not enough free capacity for the guest."""

    def __init__(self, host: str, need: GuestFlavor) -> None:
        self.host = host
        self.need = need
        super().__init__(
            f"host {host!r} lacks capacity for {need.vcpus} vCPU / {need.memory_mb} MiB / "
            f"{need.root_gb} GiB"
        )


class UnsupportedOperation(DriverError, NotImplementedError):
    """The hypervisor cannot do this operation (for this guest); a capability error, not a crash."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"{operation} is not supported: {reason}")


class InjectedFault(DriverError):
    """A failure injected by a fault plan; carries the plan's message."""


@runtime_checkable
class Driver(Protocol):
    """The async hypervisor interface the engine drives. Data in, data out.

    Every call that changes a guest returns the power state the guest is left in, so the engine
    records what the hypervisor says rather than what it expected. Drivers hold no guards,
    persistence or notifications: those are the engine's. A call may be cancelled (a preempting
    delete, a deadline); a driver must leave the guest in a state a later ``destroy`` can clean.
    """

    @property
    def capabilities(self) -> Capabilities: ...

    async def hosts(self) -> list[HostInfo]: ...

    async def spawn(self, guest: GuestSpec, *, power_on: bool = True) -> PowerState: ...

    async def destroy(self, guest: GuestSpec) -> PowerState: ...

    async def power_off(self, guest: GuestSpec, *, timeout: float) -> PowerState: ...

    async def power_on(self, guest: GuestSpec) -> PowerState: ...

    async def reboot(self, guest: GuestSpec, *, reboot_type: RebootType) -> PowerState: ...

    async def pause(self, guest: GuestSpec) -> PowerState: ...

    async def unpause(self, guest: GuestSpec) -> PowerState: ...

    async def suspend(self, guest: GuestSpec) -> PowerState: ...

    async def resume(self, guest: GuestSpec) -> PowerState: ...

    async def rescue(self, guest: GuestSpec, *, rescue_image: str) -> PowerState: ...

    async def unrescue(self, guest: GuestSpec) -> PowerState: ...

    async def snapshot(self, guest: GuestSpec, *, name: str) -> str:
        """Snapshot the guest's disk and return the new image's id."""
        ...

    async def migrate_disk_and_power_off(
        self, guest: GuestSpec, *, dest_host: str, flavor: GuestFlavor
    ) -> PowerState: ...

    async def finish_migration(
        self, guest: GuestSpec, *, flavor: GuestFlavor, power_on: bool
    ) -> PowerState:
        """Bring the resized guest up on ``guest.host`` (the destination) with ``flavor``."""
        ...

    async def confirm_migration(self, guest: GuestSpec, *, source_host: str) -> None: ...

    async def finish_revert_migration(self, guest: GuestSpec, *, power_on: bool) -> PowerState:
        """Bring the guest back on ``guest.host`` (the source) with ``guest.flavor``."""
        ...

    async def pre_live_migration(self, guest: GuestSpec, *, dest_host: str) -> None: ...

    async def live_migration(self, guest: GuestSpec, *, dest_host: str) -> None: ...

    async def live_migration_abort(self, guest: GuestSpec) -> None: ...

    async def live_migration_force_complete(self, guest: GuestSpec) -> None: ...

    async def post_live_migration_at_destination(
        self, guest: GuestSpec, *, dest_host: str
    ) -> PowerState: ...

    async def rollback_live_migration_at_destination(
        self, guest: GuestSpec, *, dest_host: str
    ) -> None: ...

    async def trigger_crash_dump(self, guest: GuestSpec) -> None: ...

    async def power_state(self, guest: GuestSpec) -> PowerState: ...

    def events(self) -> AsyncIterator[LifecycleEvent]:
        """The guests' lifecycle events, as an async stream that ends when the driver closes."""
        ...

    async def aclose(self) -> None: ...
