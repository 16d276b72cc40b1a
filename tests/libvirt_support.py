"""What the libvirt tests need from the machine, and the one rule for when it is missing.

A test that needs libvirt-python or a running libvirtd with QEMU skips, saying what is
missing, on a machine without it, and FAILS instead when ``ISM_REQUIRE_SERVICES=1`` (which
``.ci/run`` sets after installing and starting them): in CI a missing service is a broken
setup, never a quietly skipped suite.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from types import ModuleType

from drivers.libvirt import LibvirtOptions

# the skip-or-fail rule lives in tests.support (shared with the RabbitMQ tests); re-exported
from tests.support import missing as missing
from tests.support import services_required as services_required

QEMU_URI = "qemu:///system"

#: Quick to observe, still Nova's behaviour: STOPPED is held, a soft reboot falls back to hard.
FAST = LibvirtOptions(
    stopped_event_delay=0.2,
    soft_reboot_timeout=1.0,
    resize_shutdown_timeout=1.0,
    poll_interval=0.2,
    call_grace=30.0,
    lock_timeout=60.0,
)


@functools.cache
def _import_libvirt() -> ModuleType | None:
    try:
        import importlib

        return importlib.import_module("libvirt")
    except ImportError:
        return None


def libvirt_module() -> ModuleType:
    """The libvirt bindings, or skip/fail saying they are not installed."""
    module = _import_libvirt()
    if module is None:
        missing("libvirt-python is not installed (pip install 'ism-engine[libvirt]')")
    return module


@functools.cache
def _qemu_problem() -> str | None:
    lv = _import_libvirt()
    if lv is None:
        return "libvirt-python is not installed (pip install 'ism-engine[libvirt]')"
    lv.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = lv.open(QEMU_URI)
    except lv.libvirtError as exc:
        return f"libvirtd with QEMU does not answer at {QEMU_URI} ({exc}); see .ci/libvirt-services"
    try:
        conn.getVersion()
    finally:
        conn.close()
    return None


def require_qemu() -> ModuleType:
    """The bindings, once ``qemu:///system`` answers; skip/fail otherwise."""
    problem = _qemu_problem()
    if problem is not None:
        missing(problem)
    return libvirt_module()


def empty_node_uri(directory: Path) -> str:
    """A ``test://`` URI of a node file holding ``<node></node>``: an empty hypervisor of its
    own for each connection, so tests never see each other's domains."""
    node = directory / "empty-node.xml"
    node.write_text("<node></node>\n", encoding="utf-8")
    return f"test://{node}"


def leftover_domains(lv: ModuleType, uri: str, uuids: set[str]) -> list[str]:
    """Which of ``uuids`` the hypervisor at ``uri`` still holds (through a fresh connection)."""
    conn = lv.open(uri)
    try:
        return [d.UUIDString() for d in conn.listAllDomains(0) if d.UUIDString() in uuids]
    finally:
        conn.close()


def purge(lv: ModuleType, uri: str, uuids: set[str]) -> None:
    """Destroy and undefine what a test left behind, so a rerun starts clean."""
    conn = lv.open(uri)
    try:
        for dom in conn.listAllDomains(0):
            if dom.UUIDString() not in uuids:
                continue
            if dom.isActive():
                with contextlib.suppress(lv.libvirtError):  # it may stop meanwhile
                    dom.destroy()
            dom.undefineFlags(
                lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            )
    finally:
        conn.close()
