"""The engine's data: immutable attrs records, replaced (never mutated) on every change.

An :class:`Instance` is a frozen snapshot; each accepted change produces a new one with
``version + 1``. That makes the compare-and-swap a comparison of versions, lets the engine hand
snapshots to callers without copying, and keeps a preempted action's stale view harmless.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from drivers.base import GuestFlavor, GuestSpec, PowerState

from .errors import InvalidRequest
from .states import TaskState, VmState

__all__ = ["SYSTEM_CONTEXT", "Fault", "Flavor", "Instance", "RequestContext"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,254}$")


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest(
            f"flavor {attribute.name} must be a non-negative integer, not {value!r}"
        )


@attrs.frozen
class Flavor:
    """An instance's size, in Nova's words. ``vcpus`` and ``memory_mb`` must be positive."""

    vcpus: int = attrs.field(validator=_positive)
    memory_mb: int = attrs.field(validator=_positive)
    root_gb: int = attrs.field(validator=_positive)
    name: str = ""
    ephemeral_gb: int = 0
    swap: int = 0

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


def _roles(roles: Iterable[str]) -> frozenset[str]:
    return frozenset(roles)


@attrs.frozen
class RequestContext:
    """Who asks: user, project, roles, and the request id that ties notifications to the request."""

    user_id: str
    project_id: str
    roles: frozenset[str] = attrs.field(default=frozenset(), converter=_roles)
    request_id: str | None = None
    is_system: bool = False

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
    """Display names are printable, 1-255 characters, and start with a letter or digit."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidRequest(f"invalid instance name {name!r}")
    return name


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
    metadata: Mapping[str, str] = attrs.field(factory=dict)
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
        return attrs.evolve(self, version=self.version + 1, **changes)

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
