"""Domain XML for libvirt, built with ElementTree from validated values only.

No string is ever pasted into XML text. Every value a user controls (the instance's name, its
image, a snapshot's name) is first checked by :func:`validate_guest` / :func:`checked_text`
and refused with :class:`~drivers.base.InvalidGuest` when XML 1.0 cannot carry it faithfully:
control characters, lone surrogates (what ``surrogateescape`` makes of non-UTF-8 bytes),
non-characters, non-``str`` values, or more than :data:`MAX_TEXT` characters. What passes is
handed to ElementTree as element text, which escapes ``<``, ``&`` and quotes, so no value can
open or close an element.

The domain's identity never comes from the user's name: its UUID is the instance's uuid (parsed
and re-printed canonically) and its name is derived from it (``ism-<uuid>``), so a name cannot
collide with or impersonate another domain. The user's name lives in ism's own ``<metadata>``
element, where libvirt treats it as opaque text.
"""

from __future__ import annotations

import unicodedata
import uuid as uuidlib
import xml.etree.ElementTree as ET

import attrs

from .base import GuestFlavor, GuestSpec, InvalidGuest

__all__ = [
    "DOMAIN_PREFIX",
    "MAX_TEXT",
    "METADATA_NS",
    "ValidGuest",
    "checked_text",
    "checked_uuid",
    "domain_name",
    "domain_xml",
    "snapshot_xml",
    "validate_guest",
]

DOMAIN_PREFIX = "ism-"
"""Every domain ism defines is named ``ism-<uuid>``; a reconnect resyncs only those."""

METADATA_NS = "urn:ism:instance:1"
"""The namespace of ism's ``<metadata>`` element (libvirt requires one per application)."""

MAX_TEXT = 255
"""Longest name or image reference accepted, in characters (Nova's display_name limit)."""

MAX_VCPUS = 4096
MAX_MEMORY_MB = 64 * 1024 * 1024  # 64 TiB: anything larger is a typo, not a guest

ET.register_namespace("ism", METADATA_NS)


def checked_text(field: str, value: object, *, limit: int = MAX_TEXT) -> str:
    """Return ``value`` if XML can carry it unchanged; raise InvalidGuest otherwise.

    Args:
        field: What the value is, for the error message.
        value: The candidate text.
        limit: The longest length accepted.

    Returns:
        ``value`` itself.

    Raises:
        InvalidGuest: not a ``str``, empty, too long, not encodable as UTF-8 (lone
            surrogates), or holding a control character or a Unicode non-character.
    """
    if not isinstance(value, str):
        raise InvalidGuest(field, f"must be text, not {type(value).__name__}")
    if not value or value.strip() != value:
        raise InvalidGuest(field, "must be non-empty, without leading or trailing whitespace")
    if len(value) > limit:
        raise InvalidGuest(field, f"is {len(value)} characters long (at most {limit})")
    try:
        value.encode("utf-8", "strict")
    except UnicodeEncodeError:
        raise InvalidGuest(field, "is not valid Unicode (lone surrogate)") from None
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc" or (0xFDD0 <= ord(char) <= 0xFDEF) or (ord(char) & 0xFFFE) == 0xFFFE:
            raise InvalidGuest(field, f"holds the character U+{ord(char):04X}, which XML refuses")
    return value


def checked_uuid(value: object) -> str:
    """The canonical form of a uuid, or InvalidGuest: it becomes the domain's UUID."""
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidGuest("uuid", "must be a uuid string")
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise InvalidGuest("uuid", "is not a uuid") from None


def _checked_int(field: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidGuest(field, f"must be an integer in [{low}, {high}]")
    return value


@attrs.frozen
class ValidGuest:
    """A :class:`~drivers.base.GuestSpec` whose every field has been checked for libvirt."""

    uuid: str
    name: str
    image: str
    vcpus: int
    memory_mb: int

    @property
    def domain_name(self) -> str:
        """The libvirt domain name, derived from the uuid."""
        return domain_name(self.uuid)


def validate_guest(guest: GuestSpec, flavor: GuestFlavor | None = None) -> ValidGuest:
    """Check everything of ``guest`` that reaches the hypervisor, before any call.

    Args:
        guest: The engine's description of the guest.
        flavor: A flavor to build with instead of ``guest.flavor`` (a resize).

    Raises:
        InvalidGuest: which field, and why.
    """
    chosen = guest.flavor if flavor is None else flavor
    if not isinstance(chosen, GuestFlavor):
        raise InvalidGuest("flavor", "must be a GuestFlavor")
    return ValidGuest(
        uuid=checked_uuid(guest.uuid),
        name=checked_text("name", guest.name),
        image=checked_text("image", guest.image),
        vcpus=_checked_int("vcpus", chosen.vcpus, 1, MAX_VCPUS),
        memory_mb=_checked_int("memory_mb", chosen.memory_mb, 1, MAX_MEMORY_MB),
    )


def domain_name(uuid: str) -> str:
    """``ism-<uuid>``: a name that is safe by construction and unique per instance."""
    return f"{DOMAIN_PREFIX}{checked_uuid(uuid)}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    child = ET.SubElement(parent, tag, attrib)
    if text is not None:
        child.text = text
    return child


def domain_xml(guest: ValidGuest, *, domain_type: str) -> str:
    """The persistent definition of a disk-less guest.

    No disk, network or console: ism's libvirt guests are the lifecycle's subject, not a
    workload (the image is recorded in the metadata only). ``on_poweroff`` destroy and
    ``on_reboot`` restart are libvirt's defaults written out, so a reboot from inside the
    guest stays a reboot.

    Args:
        guest: Validated values.
        domain_type: libvirt's ``<domain type>``: ``test``, ``qemu`` (TCG) or ``kvm``.
    """
    domain = ET.Element("domain", {"type": domain_type})
    _sub(domain, "name", guest.domain_name)
    _sub(domain, "uuid", guest.uuid)
    metadata = _sub(domain, "metadata")
    instance = _sub(metadata, f"{{{METADATA_NS}}}instance")
    _sub(instance, f"{{{METADATA_NS}}}name", guest.name)
    _sub(instance, f"{{{METADATA_NS}}}image", guest.image)
    _sub(domain, "memory", str(guest.memory_mb), unit="MiB")
    _sub(domain, "vcpu", str(guest.vcpus))
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm")
    features = _sub(domain, "features")
    _sub(features, "acpi")  # lets a guest that has an OS answer a graceful shutdown
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    _sub(domain, "devices")
    return ET.tostring(domain, encoding="unicode")


def snapshot_xml(name: str, description: str) -> str:
    """A ``<domainsnapshot>``: ``name`` is ism's (a uuid), ``description`` the user's text."""
    snapshot = ET.Element("domainsnapshot")
    _sub(snapshot, "name", name)
    _sub(snapshot, "description", checked_text("snapshot name", description))
    return ET.tostring(snapshot, encoding="unicode")
