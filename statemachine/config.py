"""The engine's configuration: one attrs class, with Nova's option names where they exist."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import attrs

from .errors import InvalidRequest

__all__ = ["Config"]

_NOTIFY_MODES = (None, "vm_state", "vm_and_task_state")


def _number(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidRequest(f"{attribute.name} must be a number, not {value!r}")
    if value < -1 or value > 10 * 365 * 86400:
        raise InvalidRequest(f"{attribute.name} is out of range: {value!r}")


def _bounded(low: int, high: int) -> Callable[[object, attrs.Attribute[int], int], None]:
    def check(_: object, attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRequest(f"{attribute.name} must be an integer in [{low}, {high}]")

    return check


def _host_tuple(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidRequest("hosts must be a list of host names")
    hosts = tuple(value)
    if not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise InvalidRequest("hosts must be a non-empty list of host names")
    return hosts


@attrs.frozen(kw_only=True)
class Config:
    """How the engine behaves. Every timed option follows Nova's meaning of 0 and -1.

    See ``reference/action-events.md`` ("Nova's option meanings"). ``allow_resize_to_same_host``
    defaults to True (Nova: False) so that a one-host fleet can resize.
    """

    notify_on_state_change: Literal["vm_state", "vm_and_task_state"] | None = attrs.field(
        default=None, validator=attrs.validators.in_(_NOTIFY_MODES)
    )
    notification_namespace: Literal["ism", "nova"] = attrs.field(
        default="ism", validator=attrs.validators.in_(("ism", "nova"))
    )
    include_traceback: bool = False
    resize_confirm_window: float = attrs.field(default=0.0, validator=_number)
    shelved_offload_time: float = attrs.field(default=0.0, validator=_number)
    reclaim_instance_interval: float = attrs.field(default=0.0, validator=_number)
    instance_build_timeout: float = attrs.field(default=0.0, validator=_number)
    shutdown_timeout: float = attrs.field(default=60.0, validator=_number)
    allow_resize_to_same_host: bool = True
    handle_virt_lifecycle_events: bool = True
    service_host: str = "ism"
    max_actions: int = attrs.field(default=1_000_000, validator=_bounded(1, 10_000_000))
    """Bound on actions in flight at once; past it new actions are refused with ``Busy``."""
    watch_buffer: int = attrs.field(default=10_000, validator=_bounded(1, 10_000_000))
    """Bound on each watcher's buffer of undelivered state changes."""
    hosts: tuple[str, ...] | None = attrs.field(default=None, converter=_host_tuple)
    """The compute hosts this engine serves when several engines share a fleet's store (Nova:
    one compute service per host). None, the default, serves every host its driver reports.
    Actions on other hosts' instances are refused with ``WrongHost``, but an admin's
    ``evacuate`` of a host whose heartbeat expired."""
    report_interval: float = attrs.field(default=10.0, validator=_number)
    """Nova's option: seconds between an engine's heartbeats (with ``hosts`` set)."""
    service_down_time: float = attrs.field(default=60.0, validator=_number)
    """Nova's option: a host whose engine has not heartbeat for this long is down."""
    sync_power_state_interval: float = attrs.field(default=600.0, validator=_number)
    """Nova's option: seconds between two syncs of every idle instance's power state with the
    driver (so a lost hypervisor event is corrected); 0 means every 60 s, negative never."""
    recovery_concurrency: int = attrs.field(default=8, validator=_bounded(1, 1024))
    """How many driver queries recovery and the power sync run at once."""
    drain_timeout: float = attrs.field(default=30.0, validator=_number)
    group_commit: bool = True
    """Commit concurrent changes in one transaction (one fsync); False commits each alone."""
    commit_batch: int = attrs.field(default=1024, validator=_bounded(1, 1_000_000))
    """The most changes one group commit holds."""
    commit_queue: int = attrs.field(default=10_000, validator=_bounded(1, 10_000_000))
    """Bound on changes waiting to be committed; past it committers wait (back-pressure)."""
    commit_timeout: float = attrs.field(default=60.0, validator=_number)
    """How long a change may wait for its commit before the store is declared failed."""
    outbox_max_backlog: int = attrs.field(default=100_000, validator=_bounded(1, 100_000_000))
    """Undelivered notifications past which new actions are refused with ``Busy``."""
    """How long leaving the engine waits for running actions before cancelling them."""

    def option(self, name: str) -> float:
        """A timed option's value by Nova's name (used by the lifecycle's timed transitions)."""
        value = getattr(self, name)
        if not isinstance(value, int | float):
            raise InvalidRequest(f"{name} is not a timed option")
        return float(value)

    @classmethod
    def from_mapping(cls, data: object) -> Config:
        """Build from a scenario file's ``config`` object; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise InvalidRequest("config must be an object")
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequest(f"unknown config options {unknown}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise InvalidRequest(f"invalid config: {exc}") from None
