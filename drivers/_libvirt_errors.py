"""Translating ``libvirtError`` into the driver error tree, at the adapter's edge.

Nothing libvirt-specific leaves the driver: each ``libvirtError`` becomes the most specific
:class:`~drivers.base.DriverError` its code names, raised ``from`` the original so the cause
stays visible in a traceback (httpx's ``map_httpcore_exceptions``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .base import (
    DriverError,
    DriverTimeout,
    GuestNotFound,
    HostUnavailable,
    UnsupportedOperation,
)

__all__ = ["HypervisorError", "LibvirtUnavailable", "translate"]


class HypervisorError(DriverError):
    """libvirt refused or failed an operation for a reason no other driver error names.

    Attributes:
        operation: What the driver was doing (``"power_on"``).
        code: libvirt's ``virErrorNumber``.
        message: libvirt's message.
    """

    def __init__(self, operation: str, code: int, message: str) -> None:
        self.operation = operation
        self.code = code
        self.message = message
        super().__init__(f"{operation} failed (libvirt error {code}): {message}")


class LibvirtUnavailable(DriverError):
    """libvirt-python is not installed, or the process's event loop cannot be set up."""


def _codes(lv: ModuleType, *names: str) -> frozenset[int]:
    """libvirt error numbers by name; names an older libvirt lacks are skipped."""
    return frozenset(getattr(lv, name) for name in names if hasattr(lv, name))


def translate(
    lv: ModuleType,
    exc: Any,
    *,
    operation: str,
    uuid: str | None,
    host: str | None,
) -> DriverError:
    """The driver error for one ``libvirtError``.

    Args:
        lv: The ``libvirt`` module.
        exc: The ``libvirtError`` raised.
        operation: The driver operation, for messages.
        uuid: The guest concerned, if any.
        host: The libvirt node's name.

    Returns:
        The error to raise (the caller raises it ``from exc``).
    """
    code = int(exc.get_error_code() or 0)
    message = str(exc.get_error_message() or exc)
    if code in _codes(lv, "VIR_ERR_NO_DOMAIN", "VIR_ERR_NO_DOMAIN_SNAPSHOT") and uuid:
        return GuestNotFound(uuid)
    if code in _codes(
        lv,
        "VIR_ERR_NO_SUPPORT",
        "VIR_ERR_OPERATION_UNSUPPORTED",
        "VIR_ERR_CONFIG_UNSUPPORTED",
        "VIR_ERR_ARGUMENT_UNSUPPORTED",
    ):
        return UnsupportedOperation(operation, message)
    if code in _codes(lv, "VIR_ERR_OPERATION_TIMEOUT", "VIR_ERR_AGENT_UNRESPONSIVE"):
        return DriverTimeout(f"{operation}: {message}")
    if code in _codes(
        lv, "VIR_ERR_NO_CONNECT", "VIR_ERR_INVALID_CONN", "VIR_ERR_RPC", "VIR_ERR_AUTH_FAILED"
    ) or (code == getattr(lv, "VIR_ERR_SYSTEM_ERROR", -1) and _is_rpc(lv, exc)):
        return HostUnavailable(host)
    return HypervisorError(operation, code, message)


def _is_rpc(lv: ModuleType, exc: Any) -> bool:
    """A system error raised by the RPC layer: the daemon's socket went away."""
    return bool(exc.get_error_domain() == getattr(lv, "VIR_FROM_RPC", -1))
