"""Placement: which host has room, derived from the instances' own records.

Allocations are a function of an instance record (its host and flavor, plus the destination or
source of a resize or migration in progress), so they can never drift from the state: every
commit re-derives the instance's allocations. A host picked for a new instance is claimed at
once, so concurrent builds cannot over-commit it before their records say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from drivers.base import HostInfo

from .errors import NoValidHost
from .model import Flavor, Instance
from .states import VmState

__all__ = ["Placement"]

Allocation = tuple[str, Flavor]


def allocations(inst: Instance) -> tuple[Allocation, ...]:
    """What ``inst`` holds on which host."""
    if inst.vm_state is VmState.DELETED or inst.host is None:
        return ()
    held: list[Allocation] = [(inst.host, inst.flavor)]
    if inst.dest_host is not None:
        held.append((inst.dest_host, inst.new_flavor or inst.flavor))
    if inst.source_host is not None and inst.old_flavor is not None:
        held.append((inst.source_host, inst.old_flavor))
    return tuple(held)


class Placement:
    """Per-host usage, kept in step with every committed record."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[Allocation, ...]] = {}
        self._used: dict[str, list[int]] = {}

    def _apply(self, held: Iterable[Allocation], sign: int) -> None:
        for host, flavor in held:
            used = self._used.setdefault(host, [0, 0, 0])
            used[0] += sign * flavor.vcpus
            used[1] += sign * flavor.memory_mb
            used[2] += sign * flavor.root_gb

    def update(self, inst: Instance) -> None:
        """Replace ``inst``'s allocations (and any claim) with those its record implies."""
        new = allocations(inst)
        old = self._held.get(inst.uuid, ())
        if new == old:
            return
        self._apply(old, -1)
        self._apply(new, +1)
        if new:
            self._held[inst.uuid] = new
        else:
            self._held.pop(inst.uuid, None)

    def claim(self, uuid: str, extra: Allocation) -> None:
        """Hold ``extra`` for ``uuid`` until its next commit re-derives its allocations."""
        self._held[uuid] = (*self._held.get(uuid, ()), extra)
        self._apply((extra,), +1)

    def release(self, uuid: str) -> None:
        """Drop everything ``uuid`` holds (a build that failed before its record had a host)."""
        self._apply(self._held.pop(uuid, ()), -1)

    def used(self, host: str) -> tuple[int, int, int]:
        """vCPUs, MiB and GiB in use on ``host``."""
        u = self._used.get(host, [0, 0, 0])
        return u[0], u[1], u[2]

    def fits(self, host: HostInfo, flavor: Flavor) -> bool:
        """Whether ``flavor`` fits in what is left of ``host``."""
        vcpus, mem, disk = self.used(host.name)
        return (
            vcpus + flavor.vcpus <= host.vcpus
            and mem + flavor.memory_mb <= host.memory_mb
            and disk + flavor.root_gb <= host.disk_gb
        )

    def pick(
        self,
        hosts: Sequence[HostInfo],
        flavor: Flavor,
        *,
        force: str | None = None,
        exclude: Iterable[str] = (),
    ) -> str:
        """The live host with room and the most free memory (Nova's default RAM weigher).

        Raises:
            NoValidHost: nothing fits, or the forced host is unknown, down or full.
        """
        excluded = set(exclude)
        if force is not None:
            match = [h for h in hosts if h.name == force]
            if not match:
                raise NoValidHost(f"host {force!r} is unknown")
            if not match[0].up:
                raise NoValidHost(f"host {force!r} is down")
            if force in excluded:
                raise NoValidHost(f"host {force!r} is not allowed for this request")
            if not self.fits(match[0], flavor):
                raise NoValidHost(f"host {force!r} has not enough free capacity")
            return force
        best: tuple[int, str] | None = None
        for host in hosts:
            if not host.up or host.name in excluded or not self.fits(host, flavor):
                continue
            free = host.memory_mb - self.used(host.name)[1]
            key = (-free, host.name)
            if best is None or key < best:
                best = key
        if best is None:
            raise NoValidHost("no live host has enough free capacity")
        return best[1]
