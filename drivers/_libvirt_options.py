"""The libvirt driver's options: every delay, bound and retry it uses, in one frozen class."""

from __future__ import annotations

import attrs

__all__ = ["LibvirtOptions"]


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number")


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{attribute.name} must be a number >= 0")


def _count(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValueError(f"{attribute.name} must be an integer in [1, 1000]")


@attrs.frozen(kw_only=True)
class LibvirtOptions:
    """How the libvirt driver behaves; every wait and retry is bounded here.

    Attributes:
        stopped_event_delay: Seconds a STOPPED event is held before it reaches the engine
            (Nova: 15), since a reboot is STOPPED then STARTED; any later event cancels it.
        max_workers: Threads for blocking libvirt calls, and calls in flight at once.
        event_buffer: Events buffered for ``events()`` before new ones are dropped.
        keepalive_interval: Seconds between keepalive probes on a remote connection.
        keepalive_count: Unanswered probes before the connection is declared dead.
        reconnect_attempts: Attempts to reopen a lost connection before giving up (the next
            operation starts another round).
        reconnect_backoff: First pause between attempts, doubled each time.
        reconnect_backoff_max: Longest pause between attempts.
        call_grace: How long a cancelled operation waits for its running libvirt call.
        lock_timeout: How long an operation waits for another on the same domain.
        poll_interval: Longest pause between state checks while waiting for a guest.
        shutdown_retry_interval: Seconds between repeated shutdown requests (Nova: 10).
        soft_reboot_timeout: How long a soft reboot waits for the guest to go down before
            hard-rebooting it (Nova's ``wait_soft_reboot_seconds``: 120).
        resize_shutdown_timeout: The clean-shutdown wait of a resize's power-off.
        virt_type: ``<domain type>`` on ``qemu://`` URIs: ``qemu`` (TCG) or ``kvm``.
        disk_gb: The disk capacity reported for the node; ism's guests are disk-less, so it
            only feeds placement.
        cpu_allocation_ratio: vCPUs reported per host CPU (Nova's
            ``initial_cpu_allocation_ratio``: 4.0), as Nova's virt driver reports inventory.
        ram_allocation_ratio: Memory reported per MiB of host memory (Nova's
            ``initial_ram_allocation_ratio``: 1.0).
    """

    stopped_event_delay: float = attrs.field(default=15.0, validator=_non_negative)
    max_workers: int = attrs.field(default=8, validator=_count)
    event_buffer: int = attrs.field(
        default=10_000, validator=[attrs.validators.ge(1), attrs.validators.le(10_000_000)]
    )
    keepalive_interval: int = attrs.field(default=5, validator=_count)
    keepalive_count: int = attrs.field(default=5, validator=_count)
    reconnect_attempts: int = attrs.field(default=10, validator=_count)
    reconnect_backoff: float = attrs.field(default=0.5, validator=_positive)
    reconnect_backoff_max: float = attrs.field(default=10.0, validator=_positive)
    call_grace: float = attrs.field(default=60.0, validator=_positive)
    lock_timeout: float = attrs.field(default=300.0, validator=_positive)
    poll_interval: float = attrs.field(default=1.0, validator=_positive)
    shutdown_retry_interval: float = attrs.field(default=10.0, validator=_positive)
    soft_reboot_timeout: float = attrs.field(default=120.0, validator=_non_negative)
    resize_shutdown_timeout: float = attrs.field(default=60.0, validator=_non_negative)
    virt_type: str = attrs.field(default="qemu", validator=attrs.validators.in_(("qemu", "kvm")))
    disk_gb: int = attrs.field(default=1024, validator=attrs.validators.ge(0))
    cpu_allocation_ratio: float = attrs.field(default=4.0, validator=_positive)
    ram_allocation_ratio: float = attrs.field(default=1.0, validator=_positive)
