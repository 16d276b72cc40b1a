"""The engine's data: immutable attrs records, replaced (never mutated) on every change.

An :class:`Instance` is a frozen snapshot; each accepted change produces a new one with
``version + 1``. That makes the compare-and-swap a comparison of versions, lets the engine hand
snapshots to callers without copying, and keeps a preempted action's stale view harmless.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from drivers.base import GuestFlavor, GuestSpec, PowerState

from . import _validate
from .errors import InvalidRequest
from .states import TaskState, VmState

__all__ = [
    "SYSTEM_CONTEXT",
    "Fault",
    "Flavor",
    "Instance",
    "RequestContext",
    "validate_host",
    "validate_name",
    "validate_uuid",
]


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest(
            f"flavor {attribute.name} must be a non-negative integer, not {_validate.show(value)}"
        )
    if value > _validate.INT_MAX:  # Nova's flavor columns are 32-bit
        raise InvalidRequest(f"flavor {attribute.name} must be at most {_validate.INT_MAX}")


def _flavor_name(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value != "":  # unnamed: the id is derived from the size
        _validate.text("flavor name", value)


@attrs.frozen
class Flavor:
    """An instance's size, in Nova's words. ``vcpus`` and ``memory_mb`` must be positive;
    every size is at most ``2**31 - 1`` (Nova's bound)."""

    vcpus: int = attrs.field(validator=_positive)
    memory_mb: int = attrs.field(validator=_positive)
    root_gb: int = attrs.field(validator=_positive)
    name: str = attrs.field(default="", validator=_flavor_name)
    ephemeral_gb: int = attrs.field(default=0, validator=_positive)
    swap: int = attrs.field(default=0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.vcpus < 1 or self.memory_mb < 1:
            raise InvalidRequest("flavor needs at least 1 vCPU and 1 MiB of memory")

    @property
    def flavorid(self) -> str:
        """A stable id derived from the size, so equal sizes share an id."""
        return self.name or f"{self.vcpus}c{self.memory_mb}m{self.root_gb}g"

    @classmethod
    def from_mapping(cls, data: object) -> Flavor:
        """Build from ``{"vcpus", "memory_mb", "root_gb"}``; a typed error on anything else."""
        if not isinstance(data, Mapping):
            raise InvalidRequest(f"flavor must be an object, not {type(data).__name__}")
        unknown = set(data) - {"vcpus", "memory_mb", "root_gb", "name"}
        missing = {"vcpus", "memory_mb", "root_gb"} - set(data)
        if unknown or missing:
            raise InvalidRequest(
                f"flavor needs vcpus, memory_mb, root_gb (missing {sorted(missing)}, "
                f"unknown {sorted(unknown)})"
            )
        name = data.get("name", "")
        if not isinstance(name, str):
            raise InvalidRequest("flavor name must be a string")
        return cls(
            vcpus=data["vcpus"], memory_mb=data["memory_mb"], root_gb=data["root_gb"], name=name
        )

    def as_guest(self) -> GuestFlavor:
        """The hypervisor's view of this flavor."""
        return GuestFlavor(vcpus=self.vcpus, memory_mb=self.memory_mb, root_gb=self.root_gb)

    def as_dict(self) -> dict[str, int]:
        """The scenario runner's and the state file's form."""
        return {"vcpus": self.vcpus, "memory_mb": self.memory_mb, "root_gb": self.root_gb}


MAX_ROLES = 64
"""Most roles one request context may carry."""


def _roles(roles: Iterable[str]) -> frozenset[str]:
    if isinstance(roles, str | bytes) or not isinstance(roles, Iterable):
        # frozenset("admin") would be five one-letter roles: refuse rather than guess
        raise InvalidRequest(
            f"roles must be a collection of role names, not {type(roles).__name__}"
        )
    try:
        out = frozenset(roles)
    except TypeError:  # unhashable members
        raise InvalidRequest("roles must be strings") from None
    if len(out) > MAX_ROLES:
        raise InvalidRequest(f"a request context carries at most {MAX_ROLES} roles")
    for role in out:
        _validate.text("role", role)
    return out


def _ident(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    _validate.text(attribute.name, value)


def _request_id(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        _validate.text("request_id", value)


def _flag(_: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{attribute.name} must be true or false")


@attrs.frozen
class RequestContext:
    """Who asks: user, project, roles, and the request id that ties notifications to the request.

    The embedding service authenticates the caller and builds this; ism trusts it (see the
    README, "Security"). Every field is checked when it is built: ids and roles are printable
    strings of at most 255 characters, at most 64 roles. There is deliberately no token field:
    ism never needs a credential, so none can leak from it.
    """

    user_id: str = attrs.field(validator=_ident)
    project_id: str = attrs.field(validator=_ident)
    roles: frozenset[str] = attrs.field(default=frozenset(), converter=_roles)
    request_id: str | None = attrs.field(default=None, validator=_request_id)
    is_system: bool = attrs.field(default=False, validator=_flag)

    @property
    def is_admin(self) -> bool:
        """Admins (and the engine's own periodic work) bypass locks and admin-only rules."""
        return self.is_system or "admin" in self.roles

    @classmethod
    def from_mapping(cls, data: object) -> RequestContext:
        """Build a context from ``{"user_id", "project_id", "roles"}``; typed error otherwise."""
        if not isinstance(data, Mapping):
            raise InvalidRequest("a request context must be an object")
        user, project = data.get("user_id"), data.get("project_id")
        roles = data.get("roles", [])
        if not isinstance(user, str) or not isinstance(project, str) or not user or not project:
            raise InvalidRequest("a request context needs non-empty user_id and project_id strings")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidRequest("roles must be a list of strings")
        unknown = set(data) - {"user_id", "project_id", "roles", "request_id"}
        if unknown:
            raise InvalidRequest(f"unknown request context keys {sorted(unknown)}")
        rid = data.get("request_id")
        if rid is not None and not isinstance(rid, str):
            raise InvalidRequest("request_id must be a string")
        return cls(user_id=user, project_id=project, roles=frozenset(roles), request_id=rid)


SYSTEM_CONTEXT = RequestContext(user_id="ism", project_id="ism", is_system=True)
"""The context of work the engine starts itself: timed transitions, power sync, recovery."""


@attrs.frozen
class Fault:
    """The last failure of an instance, as Nova's instance fault: class, message, when."""

    exception: str
    message: str
    action: str
    step: str | None
    created_at: dt.datetime
    module_name: str = ""
    function_name: str = ""
    traceback: str | None = attrs.field(default=None, repr=False)


def validate_name(name: object) -> str:
    """Display names are printable, 1-255 characters, and start with a letter or digit.

    Raises:
        InvalidRequest: anything else (the message shows the name, truncated).
    """
    return _validate.name(name)


def validate_host(host: object) -> str:
    """Host names: letters, digits, ``.``, ``_``, ``-``, 1-255 characters, starting and ending
    with a letter or digit.

    Raises:
        InvalidRequest: anything else.
    """
    return _validate.host(host)


def _masked(metadata: Mapping[str, str]) -> dict[str, str]:
    """Metadata as a repr may show it: values of secret-looking keys masked (a failing test or
    a logged result must not print a password)."""
    from .redact import Redactor

    return Redactor().metadata(metadata)


def validate_uuid(uuid: object) -> str:
    """An instance uuid, canonical (``8-4-4-4-12`` hex digits), returned lower-cased.

    Raises:
        InvalidRequest: not a uuid: a malformed id is a bad request, not a missing instance.
    """
    return _validate.uuid(uuid)


@attrs.frozen
class Instance:
    """One instance's state at one version. Never mutated: see :meth:`evolve`.

    ``old_vm_state``, ``old_flavor``, ``new_flavor``, ``source_host`` and ``dest_host`` hold the
    bookkeeping of a resize or migration in progress (Nova keeps these in system_metadata and
    the migration record). ``action_id`` names the action that owns ``task_state``: a step's
    compare-and-swap expects both, so an action taken over within the same task_state (a live
    migration's abort) cannot commit a stale step.
    """

    uuid: str
    name: str
    user_id: str
    project_id: str
    flavor: Flavor
    image: str
    vm_state: VmState
    task_state: TaskState | None
    power_state: PowerState
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int = 0
    host: str | None = None
    locked: bool = False
    locked_by: str | None = None
    locked_reason: str | None = None
    key_name: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, repr=lambda md: repr(_masked(md)))
    launched_at: dt.datetime | None = None
    terminated_at: dt.datetime | None = None
    deleted_at: dt.datetime | None = None
    old_vm_state: VmState | None = None
    old_flavor: Flavor | None = None
    new_flavor: Flavor | None = None
    source_host: str | None = None
    dest_host: str | None = None
    fault: Fault | None = None
    request_id: str | None = None
    action_id: str | None = None
    snapshot_image: str | None = None
    state_since: dt.datetime | None = None
    """When ``vm_state`` was last entered: timed transitions are due this long after it."""
    task_since: dt.datetime | None = None
    """When ``task_state`` was last entered: the step's deadline runs from it."""

    @property
    def state(self) -> tuple[VmState, TaskState | None]:
        """The lifecycle position: stable state and step."""
        return self.vm_state, self.task_state

    def evolve(self, **changes: Any) -> Instance:
        """A new snapshot with ``changes`` applied and the version bumped.

        A change stamped with ``updated_at`` that enters another vm_state or task_state also
        records when (``state_since``, ``task_since``): deadlines derive from those instants,
        so they survive a restart with the record.
        """
        when = changes.get("updated_at")
        if when is not None:
            if "vm_state" in changes and changes["vm_state"] is not self.vm_state:
                changes.setdefault("state_since", when)
            if "task_state" in changes and changes["task_state"] != self.task_state:
                changes.setdefault("task_since", when)
        values = {name: getattr(self, name) for name in _INSTANCE_FIELDS}
        values.update(changes)
        values["version"] = self.version + 1
        return Instance(**values)

    def guest(self, *, user_data: str | None = None) -> GuestSpec:
        """What the driver is told about this instance."""
        return GuestSpec(
            uuid=self.uuid,
            name=self.name,
            host=self.host,
            flavor=self.flavor.as_guest(),
            image=self.image,
            user_data=user_data,
        )


_INSTANCE_FIELDS = tuple(a.name for a in attrs.fields(Instance))
"""Every field in order: :meth:`Instance.evolve` copies them itself, as attrs.evolve would but
without its per-call field lookups (an evolve per state change adds up over a fleet)."""
