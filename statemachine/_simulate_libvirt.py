"""What ``ism simulate --driver libvirt`` changes in the fleet simulation, kept apart.

The simulation walks every action the table allows; on a real hypervisor it must also leave
out what the driver declares it cannot do (its :class:`~drivers.base.Capabilities`), has no
fault plan or host failure to inject, builds tiny guests (QEMU really starts them), and removes
every domain it made at the end so a run leaves the hypervisor as it found it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from drivers.base import Capabilities

from ._schema import Action, Call

__all__ = ["CALL_CAPABILITY", "LIBVIRT_FLAVORS", "supported"]

LIBVIRT_FLAVORS: tuple[dict[str, int], ...] = (
    {"vcpus": 1, "memory_mb": 32, "root_gb": 1},
    {"vcpus": 1, "memory_mb": 48, "root_gb": 1},
    {"vcpus": 2, "memory_mb": 64, "root_gb": 1},
)
"""Guests small enough that a real QEMU node runs a fleet of them (TCG, no disk)."""

CALL_CAPABILITY: Mapping[Call, str] = MappingProxyType(
    {
        Call.SNAPSHOT: "snapshot",
        Call.RESCUE: "rescue",
        Call.UNRESCUE: "rescue",
        Call.PRE_LIVE_MIGRATION: "live_migration",
        Call.LIVE_MIGRATION: "live_migration",
        Call.LIVE_MIGRATION_ABORT: "live_migration",
        Call.LIVE_MIGRATION_FORCE_COMPLETE: "live_migration",
        Call.POST_LIVE_MIGRATION: "live_migration",
        Call.TRIGGER_CRASH_DUMP: "crash_dump",
    }
)
"""The capability flag each driver call needs; calls not listed need none."""


def supported(action: Action, capabilities: Capabilities) -> bool:
    """Whether every driver call of ``action``'s steps is one the driver says it can do."""
    for step in action.steps:
        flag = CALL_CAPABILITY.get(Call(step.call)) if step.call in set(Call) else None
        if flag is not None and not getattr(capabilities, flag):
            return False
    return True
