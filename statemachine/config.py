"""The engine's configuration: one attrs class, with Nova's option names where they exist.

Every option is checked when the configuration is built, by this module's validators: a bad
value raises :class:`~statemachine.errors.InvalidRequest` naming the option (never a bare
``TypeError`` or ``ValueError``), so a configuration read from a file fails cleanly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs

from . import _validate
from .errors import InvalidRequest
from .redact import MAX_SECRET_PATTERNS, SECRET_KEY_PATTERNS

__all__ = ["Config"]

_NOTIFY_MODES = (None, "vm_state", "vm_and_task_state")
_NAMESPACES = ("ism", "nova")
_TEN_YEARS = 10 * 365 * 86400


def _number(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidRequest(f"{attribute.name} must be a number, not {_validate.show(value)}")
    if value < -1 or value > _TEN_YEARS:
        raise InvalidRequest(f"{attribute.name} is out of range: {_validate.show(value)}")


def _duration(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    """A bound on a wait: a number of seconds, 0 to ten years (no 'never' for a deadline)."""
    _number(_, attribute, value)
    if value < 0:
        raise InvalidRequest(f"{attribute.name} must not be negative: it bounds a wait")


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


def _one_of(choices: tuple[object, ...]) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
            raise InvalidRequest(
                f"{attribute.name} must be one of {list(choices)}, not {_validate.show(value)}"
            )

    return check


def _flag(_: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{attribute.name} must be true or false, not {_validate.show(value)}")


def _host(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    _validate.host(value, field=attribute.name)


def _patterns(value: object) -> tuple[str, ...]:
    """Secret key patterns: a list of regular expressions, each compiled to prove it valid."""
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise InvalidRequest("secret_key_patterns must be a list of regular expressions")
    if len(value) > MAX_SECRET_PATTERNS:
        raise InvalidRequest(f"secret_key_patterns holds at most {MAX_SECRET_PATTERNS} patterns")
    for pattern in value:
        if not isinstance(pattern, str) or not 0 < len(pattern) <= 200:
            raise InvalidRequest("each secret key pattern is a string of 1-200 characters")
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise InvalidRequest(
                f"secret key pattern {_validate.show(pattern)} is not a regular expression: "
                f"{getattr(exc, 'msg', exc)}"
            ) from None
    return tuple(value)


@attrs.frozen(kw_only=True)
class Config:
    """How the engine behaves. Every timed option follows Nova's meaning of 0 and -1.

    See ``reference/action-events.md`` ("Nova's option meanings"). ``allow_resize_to_same_host``
    defaults to True (Nova: False) so that a one-host fleet can resize.

    Raises:
        InvalidRequest: an option of the wrong type or out of its range, naming it.
    """

    notify_on_state_change: Literal["vm_state", "vm_and_task_state"] | None = attrs.field(
        default=None, validator=_one_of(_NOTIFY_MODES)
    )
    notification_namespace: Literal["ism", "nova"] = attrs.field(
        default="ism", validator=_one_of(_NAMESPACES)
    )
    include_traceback: bool = attrs.field(default=False, validator=_flag)
    """Whether fault payloads carry the (scrubbed) traceback; off, as Nova's default."""
    resize_confirm_window: float = attrs.field(default=0.0, validator=_number)
    shelved_offload_time: float = attrs.field(default=0.0, validator=_number)
    reclaim_instance_interval: float = attrs.field(default=0.0, validator=_number)
    instance_build_timeout: float = attrs.field(default=0.0, validator=_number)
    shutdown_timeout: float = attrs.field(default=60.0, validator=_duration)
    allow_resize_to_same_host: bool = attrs.field(default=True, validator=_flag)
    handle_virt_lifecycle_events: bool = attrs.field(default=True, validator=_flag)
    service_host: str = attrs.field(default="ism", validator=_host)
    max_actions: int = attrs.field(default=1_000_000, validator=_bounded(1, 10_000_000))
    """Bound on actions in flight at once; past it new actions are refused with ``Busy``."""
    watch_buffer: int = attrs.field(default=10_000, validator=_bounded(1, 10_000_000))
    """Bound on each watcher's buffer of undelivered state changes."""
    hosts: tuple[str, ...] | None = attrs.field(default=None, converter=_host_tuple)
    """The compute hosts this engine serves when several engines share a fleet's store (Nova:
    one compute service per host). None, the default, serves every host its driver reports.
    Actions on other hosts' instances are refused with ``WrongHost``, but an admin's
    ``evacuate`` of a host whose heartbeat expired."""
    report_interval: float = attrs.field(default=10.0, validator=_duration)
    """Nova's option: seconds between an engine's heartbeats (with ``hosts`` set)."""
    service_down_time: float = attrs.field(default=60.0, validator=_duration)
    """Nova's option: a host whose engine has not heartbeat for this long is down."""
    sync_power_state_interval: float = attrs.field(default=600.0, validator=_number)
    """Nova's option: seconds between two syncs of every idle instance's power state with the
    driver (so a lost hypervisor event is corrected); 0 means every 60 s, negative never."""
    recovery_concurrency: int = attrs.field(default=8, validator=_bounded(1, 1024))
    """How many driver queries recovery and the power sync run at once."""
    drain_timeout: float = attrs.field(default=30.0, validator=_duration)
    group_commit: bool = attrs.field(default=True, validator=_flag)
    """Commit concurrent changes in one transaction (one fsync); False commits each alone."""
    commit_batch: int = attrs.field(default=1024, validator=_bounded(1, 1_000_000))
    """The most changes one group commit holds."""
    commit_queue: int = attrs.field(default=10_000, validator=_bounded(1, 10_000_000))
    """Bound on changes waiting to be committed; past it committers wait (back-pressure)."""
    commit_timeout: float = attrs.field(default=60.0, validator=_duration)
    """How long a change may wait for its commit before the store is declared failed."""
    outbox_max_backlog: int = attrs.field(default=100_000, validator=_bounded(1, 100_000_000))
    """Undelivered notifications past which new actions are refused with ``Busy``."""
    """How long leaving the engine waits for running actions before cancelling them."""
    secret_key_patterns: tuple[str, ...] = attrs.field(
        default=SECRET_KEY_PATTERNS, converter=_patterns
    )
    """Regular expressions (case-insensitive, matched anywhere in a key): metadata values under
    matching keys, and ``key=value`` pairs in fault text, are masked wherever they could leave
    (:class:`~statemachine.redact.Redactor`)."""

    def option(self, name: str) -> float:
        """A timed option's value by Nova's name (used by the lifecycle's timed transitions)."""
        value = getattr(self, name)
        if not isinstance(value, int | float):
            raise InvalidRequest(f"{name} is not a timed option")
        return float(value)

    @classmethod
    def from_mapping(cls, data: object) -> Config:
        """Build from a scenario file's ``config`` object; unknown keys are an error.

        Raises:
            InvalidRequest: not an object, an unknown option, or an invalid value.
        """
        if not isinstance(data, Mapping):
            raise InvalidRequest("config must be an object")
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(_validate.show(k) for k in set(data) - known)
        if unknown:
            raise InvalidRequest(f"unknown config options [{', '.join(unknown[:5])}]")
        return cls(**{str(k): v for k, v in data.items()})
