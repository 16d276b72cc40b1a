"""Versioned notifications in Nova's names and shapes, built from allow-lists.

Envelope: ``event_type``, ``priority``, ``publisher_id``, ``timestamp``, ``message_id``,
``payload`` (``{<ns>_object.name, .namespace, .version, .data}``) and ism's ``sequence``, a
per-instance counter so consumers can order one instance's events. Every payload field is
named below; nothing else about an instance can be emitted (no admin password, no user_data, no
private key: they are absent by construction, as in Nova). Departing from Nova, the values
create takes from its caller — ``admin_pass``, ``user_data``, ``metadata``, ``key_name`` — are
never emitted either: the fields keep Nova's shape (``metadata`` ``{}``, ``key_name`` null,
``keypairs`` ``[]``) but carry nothing the caller supplied. Fault messages are scrubbed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .model import Fault, Flavor, Instance, RequestContext
from .redact import scrub

if TYPE_CHECKING:
    from .sinks import Sink

__all__ = ["PAYLOAD_CLASSES", "Notification", "Notifier", "NotifySettings", "payload_schemas"]


@attrs.frozen(kw_only=True)
class NotifySettings:
    """How notifications look: ``namespace`` "nova" emits ``nova_object.*`` keys and
    ``nova-compute:<host>`` publishers, for consumers written against Nova."""

    namespace: Literal["ism", "nova"] = "ism"
    notify_on_state_change: Literal["vm_state", "vm_and_task_state"] | None = None
    include_traceback: bool = False


@attrs.frozen
class Notification:
    """One emitted notification."""

    event_type: str
    priority: str
    publisher_id: str
    timestamp: str
    message_id: str
    payload: Mapping[str, Any]
    sequence: int
    instance_uuid: str

    def envelope(self) -> dict[str, Any]:
        """The JSON-serializable envelope, as a consumer receives it."""
        return {
            "event_type": self.event_type,
            "priority": self.priority,
            "publisher_id": self.publisher_id,
            "timestamp": self.timestamp,
            "message_id": self.message_id,
            "payload": self.payload,
            "sequence": self.sequence,
        }

    @classmethod
    def from_envelope(cls, envelope: Mapping[str, Any], instance_uuid: str) -> Notification:
        """The notification an envelope was made from (the outbox stores envelopes)."""
        return cls(
            event_type=envelope["event_type"],
            priority=envelope["priority"],
            publisher_id=envelope["publisher_id"],
            timestamp=envelope["timestamp"],
            message_id=envelope["message_id"],
            payload=envelope["payload"],
            sequence=envelope["sequence"],
            instance_uuid=instance_uuid,
        )


# event (without "instance.") prefix → payload class, version, extra allow-listed fields
PAYLOAD_CLASSES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "create": ("InstanceCreatePayload", "1.13", ("fault",)),
    "resize_prep": ("InstanceActionResizePrepPayload", "1.4", ("fault", "new_flavor")),
    "rescue": ("InstanceActionRescuePayload", "1.4", ("fault", "rescue_image_ref")),
    "rebuild": ("InstanceActionRebuildPayload", "1.10", ("fault",)),
    "snapshot": ("InstanceActionSnapshotPayload", "1.10", ("fault", "snapshot_image_id")),
    "update": ("InstanceUpdatePayload", "2.1", ()),
    "exists": ("InstanceExistsPayload", "2.1", ()),
}
DEFAULT_PAYLOAD = ("InstanceActionPayload", "1.9", ("fault",))
_BUILT_IN_FIELDS = frozenset({"fault", "new_flavor", "rescue_image_ref", "snapshot_image_id"})


def _time(value: dt.datetime | None) -> str | None:
    # isoformat is C-fast where strftime is not; payload times are UTC, to the second
    return None if value is None else value.isoformat(timespec="seconds")[:19] + "Z"


class Notifier:
    """Builds notifications and hands each to every sink, synchronously and in order.

    Sink errors propagate: emission is part of the state change, and a sink that cannot take a
    notification must not be silently skipped.
    """

    def __init__(
        self,
        *,
        settings: NotifySettings,
        sinks: Sequence[Sink],
        wall: Callable[[], dt.datetime],
        new_id: Callable[[], str],
        service_host: str = "ism",
        payload_classes: Mapping[str, tuple[str, str, tuple[str, ...]]] | None = None,
    ) -> None:
        self.settings = settings
        self.sinks = list(sinks)
        self._wall = wall
        self._new_id = new_id
        self._service_host = service_host
        ns = settings.namespace
        self._keys = (f"{ns}_object.name", f"{ns}_object.namespace", f"{ns}_object.version",
                      f"{ns}_object.data")  # fmt: skip
        self._publisher = "nova-compute" if ns == "nova" else "ism-compute"
        self._sequence: dict[str, int] = {}
        self._flavors: dict[Flavor, dict[str, Any]] = {}
        self._classes = {**PAYLOAD_CLASSES, **(payload_classes or {})}

    def _object(self, name: str, version: str, data: dict[str, Any]) -> dict[str, Any]:
        k_name, k_ns, k_version, k_data = self._keys
        return {k_name: name, k_ns: self.settings.namespace, k_version: version, k_data: data}

    def _flavor(self, flavor: Flavor) -> dict[str, Any]:
        cached = self._flavors.get(flavor)
        if cached is None:
            cached = self._object("FlavorPayload", "1.4", {
                "flavorid": flavor.flavorid, "name": flavor.name or flavor.flavorid,
                "memory_mb": flavor.memory_mb, "vcpus": flavor.vcpus, "root_gb": flavor.root_gb,
                "ephemeral_gb": flavor.ephemeral_gb, "swap": flavor.swap, "rxtx_factor": 1.0,
                "vcpu_weight": 0, "disabled": False, "is_public": True, "extra_specs": {},
                "projects": None, "description": None,
            })  # fmt: skip
            if len(self._flavors) < 1024:
                self._flavors[flavor] = cached
        return cached

    def _fault(self, fault: Fault) -> dict[str, Any]:
        return self._object("ExceptionPayload", "1.1", {
            "module_name": fault.module_name,
            "function_name": fault.function_name,
            "exception": fault.exception,
            "exception_message": scrub(fault.message),
            "traceback": fault.traceback if self.settings.include_traceback else None,
        })  # fmt: skip

    def _instance(self, inst: Instance, ctx: RequestContext | None) -> dict[str, Any]:
        human = ctx is not None and not ctx.is_system
        return {
            "uuid": inst.uuid,
            "user_id": inst.user_id,
            "tenant_id": inst.project_id,
            "reservation_id": None,
            "display_name": inst.name,
            "display_description": None,
            "host_name": inst.name,
            "host": inst.host,
            "node": inst.host,
            "os_type": None,
            "architecture": None,
            "availability_zone": None,
            "flavor": self._flavor(inst.flavor),
            "image_uuid": inst.image,
            "key_name": None,  # create's key_name is never emitted (nor metadata, below)
            "kernel_id": "",
            "ramdisk_id": "",
            "created_at": _time(inst.created_at),
            "launched_at": _time(inst.launched_at),
            "terminated_at": _time(inst.terminated_at),
            "deleted_at": _time(inst.deleted_at),
            "updated_at": _time(inst.updated_at),
            "state": inst.vm_state.value,
            "power_state": inst.power_state.label,
            "task_state": inst.task_state.value if inst.task_state is not None else None,
            "progress": 0,
            "ip_addresses": [],
            "block_devices": None,
            "metadata": {},
            "locked": inst.locked,
            "auto_disk_config": "MANUAL",
            "request_id": ctx.request_id if human and ctx is not None else None,
            "action_initiator_user": ctx.user_id if ctx is not None else None,
            "action_initiator_project": ctx.project_id if ctx is not None else None,
            "locked_reason": inst.locked_reason,
            "shares": None,
        }

    def _payload(
        self,
        base: str,
        inst: Instance,
        ctx: RequestContext | None,
        fault: Fault | None,
        extra: Mapping[str, Any],
    ) -> dict[str, Any]:
        name, version, fields = self._classes.get(base, DEFAULT_PAYLOAD)
        data = self._instance(inst, ctx)
        if "fault" in fields:
            data["fault"] = self._fault(fault) if fault is not None else None
        if base == "create":
            data["keypairs"] = []
            data["tags"] = []
            data["trusted_image_certificates"] = None
            data["instance_name"] = f"instance-{inst.uuid[:8]}"
        if "new_flavor" in fields:
            new = extra.get("new_flavor")
            data["new_flavor"] = self._flavor(new) if isinstance(new, Flavor) else None
        if "rescue_image_ref" in fields:
            data["rescue_image_ref"] = extra.get("rescue_image_ref")
        if "snapshot_image_id" in fields:
            data["snapshot_image_id"] = extra.get("snapshot_image_id")
        for field in fields:  # an added event's own fields: what the action was given
            if field not in _BUILT_IN_FIELDS:
                value = extra.get(field)
                data[field] = self._flavor(value) if isinstance(value, Flavor) else value
        if base == "rebuild":
            data["trusted_image_certificates"] = None
        if base in ("update", "exists"):
            data["audit_period"] = self._object("AuditPeriodPayload", "1.0", {
                "audit_period_beginning": _time(inst.created_at),
                "audit_period_ending": _time(inst.updated_at),
            })  # fmt: skip
        return self._object(name, version, data)

    def build(
        self,
        event: str,
        instance: Instance,
        *,
        ctx: RequestContext | None = None,
        fault: Fault | None = None,
        extra: Mapping[str, Any] | None = None,
        state_update: Mapping[str, Any] | None = None,
    ) -> Notification:
        """Build ``instance.<event>`` with the instance's next ``sequence``; send nothing.

        The engine builds a change's notifications only once the change has won its
        compare-and-swap, so sequence numbers have no gaps, and sends them only once the change
        is durable (the outbox).
        """
        base = event.rsplit(".", 1)[0] if event.endswith((".start", ".end", ".error")) else event
        payload = self._payload(base, instance, ctx, fault, extra or {})
        if state_update is not None:
            data = payload[self._keys[3]]
            data["state_update"] = self._object(
                "InstanceStateUpdatePayload", "1.0", dict(state_update)
            )
            data["old_display_name"] = None
            data["tags"] = []
        seq = self._sequence.get(instance.uuid, 0) + 1
        self._sequence[instance.uuid] = seq
        return Notification(
            event_type=f"instance.{event}",
            priority="ERROR" if fault is not None else "INFO",
            publisher_id=f"{self._publisher}:{instance.host or self._service_host}",
            timestamp=self._wall().isoformat(" ", "microseconds")[:26],
            message_id=self._new_id(),
            payload=payload,
            sequence=seq,
            instance_uuid=instance.uuid,
        )

    def restore_sequences(self, last: Mapping[str, int]) -> None:
        """Continue each instance's ``sequence`` after a restart where the outbox left it."""
        for uuid, seq in last.items():
            if seq > self._sequence.get(uuid, 0):
                self._sequence[uuid] = seq

    def send(self, notification: Notification) -> None:
        """Hand one notification to every sink, in order (errors propagate)."""
        for sink in self.sinks:
            sink.send(notification)

    def emit(
        self,
        event: str,
        instance: Instance,
        *,
        ctx: RequestContext | None = None,
        fault: Fault | None = None,
        extra: Mapping[str, Any] | None = None,
        state_update: Mapping[str, Any] | None = None,
    ) -> Notification:
        """Build ``instance.<event>`` and send it to every sink at once (no outbox)."""
        notification = self.build(
            event, instance, ctx=ctx, fault=fault, extra=extra, state_update=state_update
        )
        self.send(notification)
        return notification

    def state_update(self, old: Instance, new: Instance) -> dict[str, Any] | None:
        """The ``state_update`` of ``instance.update`` for a committed change, as Nova's
        ``send_update`` builds it; None when ``notify_on_state_change`` is off.

        Every commit gets one: with the old and new states when the state changed (vm_state;
        or either axis under ``vm_and_task_state``), else with old equal to new (a power-state
        update, a lock, a host assignment), as Nova sends a "regular" update on every save.
        """
        mode = self.settings.notify_on_state_change
        if mode is None:
            return None
        changed = old.vm_state is not new.vm_state or (
            mode == "vm_and_task_state" and old.task_state != new.task_state
        )
        if not changed:
            old = new
        return {
            "old_state": old.vm_state.value,
            "state": new.vm_state.value,
            "old_task_state": old.task_state.value if old.task_state else None,
            "new_task_state": new.task_state.value if new.task_state else None,
        }

    def emit_update(
        self, old: Instance, new: Instance, ctx: RequestContext | None
    ) -> Notification | None:
        """Build and send ``instance.update`` for a change (see :meth:`state_update`)."""
        update = self.state_update(old, new)
        if update is None:
            return None
        return self.emit("update", new, ctx=ctx, state_update=update)


def payload_schemas(
    payload_classes: Mapping[str, tuple[str, str, tuple[str, ...]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every payload class ism emits, nested ones included: its version and its fields, read
    from notifications actually built (one source of truth: the builder itself).

    A test compares this with a committed snapshot and enforces Nova's policy: a payload's
    fields change only with its version, minor for additions, major for removals.
    """
    from drivers.base import PowerState

    from .states import TaskState, VmState

    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    flavor = Flavor(vcpus=1, memory_mb=512, root_gb=1)
    inst = Instance(
        uuid="00000000-0000-4000-8000-000000000000", name="vm", user_id="u", project_id="p",
        flavor=flavor, image="img", vm_state=VmState.ACTIVE, task_state=TaskState.REBOOTING,
        power_state=PowerState.RUNNING, created_at=when, updated_at=when,
    )  # fmt: skip
    notifier = Notifier(
        settings=NotifySettings(notify_on_state_change="vm_and_task_state"),
        sinks=[],
        wall=lambda: when,
        new_id=lambda: "id",
        payload_classes=payload_classes,
    )
    fault = Fault("E", "m", "reboot", None, when)
    ctx = RequestContext(user_id="u", project_id="p")
    extra = {"new_flavor": flavor}
    built = [notifier.build(f"{base}.error", inst, ctx=ctx, fault=fault, extra=extra)
             for base in notifier._classes]  # fmt: skip
    built.append(notifier.build("stop.error", inst, ctx=ctx, fault=fault))
    built.append(
        notifier.build("update", inst, ctx=ctx, state_update=notifier.state_update(inst, inst))
    )
    schemas: dict[str, dict[str, Any]] = {}

    def walk(obj: Any) -> None:
        if isinstance(obj, Mapping):
            name = next((v for k, v in obj.items() if k.endswith("_object.name")), None)
            if name is not None:
                version = next(v for k, v in obj.items() if k.endswith("_object.version"))
                data = next(v for k, v in obj.items() if k.endswith("_object.data"))
                known = schemas.setdefault(name, {"version": version, "fields": set()})
                known["fields"] |= set(data)
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    for n in built:
        walk(n.payload)
    return {
        name: {"version": s["version"], "fields": sorted(s["fields"])}
        for name, s in sorted(schemas.items())
    }
