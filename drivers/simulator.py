"""A deterministic simulated hypervisor fleet: the driver tests, scenarios and reviews run on.

Reproducible from its ``seed``: latencies, probabilistic faults and snapshot ids all come from
one ``random.Random``, so the same sequence of calls gives the same run. Time passes only through
anyio, so on a virtual-time loop the latencies cost nothing; ``LatencyModel(scale=0)`` skips
sleeping on the real clock.

Every guest operation takes one path (:meth:`SimulatorDriver._operate`): validate (host up,
guest known, capacity) before sleeping, consult the fault plan, sleep the drawn latency, then
validate again and commit. A host lost or a guest destroyed during the latency thus fails the
call; a call cancelled during its latency changes nothing, so a later ``destroy`` can clean up.

Capacity bookkeeping, a physical limit (the engine's placement claims are its own business):
each guest *holds* resources on hosts, derived from its record by :func:`_holdings`:

* its home, ``(host, flavor)``, where it runs;
* in a resize, from ``migrate_disk_and_power_off`` (which refuses a full destination) the
  destination with the new flavor; from ``finish_migration`` on, the home is the destination and
  the source keeps the old flavor, as Nova keeps the source disk. ``confirm_migration`` frees the
  source, ``finish_revert_migration`` the destination (the home returns to ``guest.host``);
* in a live migration, from ``pre_live_migration`` the destination with the current flavor,
  until ``post_live_migration_at_destination`` moves the home there or
  ``rollback_live_migration_at_destination`` frees it.

A change is refused only when a host whose holding grows would overflow; a same-host resize holds
both flavors there, as in Nova. ``spawn`` of a known uuid (rebuild, evacuate) replaces the record,
moving its holdings even off a down host; ``destroy`` frees everything the guest holds.
"""

from __future__ import annotations

import collections
import random
import uuid as uuidlib
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Literal, NamedTuple

import anyio
import attrs

from .base import (
    CURRENT_CALL,
    CallContext,
    Capabilities,
    GuestFlavor,
    GuestNotFound,
    GuestSpec,
    HostInfo,
    HostUnavailable,
    InjectedFault,
    InsufficientResources,
    LifecycleEvent,
    LifecycleTransition,
    PowerState,
    RebootType,
)

__all__ = [
    "DEFAULT_LATENCIES",
    "GUEST_OPERATIONS",
    "FaultPlan",
    "FaultRule",
    "FiredFault",
    "LatencyModel",
    "SimGuest",
    "SimHost",
    "SimResize",
    "SimStatistics",
    "SimulatorDriver",
]

# fmt: off
DEFAULT_LATENCIES: Mapping[str, float] = MappingProxyType({
    "spawn": 5.0, "destroy": 1.0, "power_off": 2.0, "power_on": 2.0, "reboot": 3.0,
    "pause": 0.5, "unpause": 0.5, "suspend": 3.0, "resume": 3.0, "rescue": 4.0, "unrescue": 3.0,
    "snapshot": 10.0, "migrate_disk_and_power_off": 8.0, "finish_migration": 5.0,
    "confirm_migration": 1.0, "finish_revert_migration": 5.0, "pre_live_migration": 1.0,
    "live_migration": 20.0, "live_migration_abort": 1.0, "live_migration_force_complete": 0.5,
    "post_live_migration_at_destination": 1.0, "rollback_live_migration_at_destination": 1.0,
    "trigger_crash_dump": 1.0, "power_state": 0.0, "hosts": 0.0,
})
"""Mean simulated seconds per driver method, roughly what a small libvirt guest takes."""

#: The event a hypervisor emits after an operation, if the guest ends in the event's state.
_OPERATION_EVENTS: Mapping[str, LifecycleTransition] = MappingProxyType({
    **dict.fromkeys(("spawn", "power_on", "reboot", "finish_migration",
                     "finish_revert_migration"), LifecycleTransition.STARTED),
    **dict.fromkeys(("power_off", "migrate_disk_and_power_off"), LifecycleTransition.STOPPED),
    **dict.fromkeys(("unpause", "resume"), LifecycleTransition.RESUMED),
    "pause": LifecycleTransition.PAUSED, "suspend": LifecycleTransition.SUSPENDED,
})
# fmt: on

#: The operations a fault plan can break: every driver call that acts on a guest.
GUEST_OPERATIONS = frozenset(DEFAULT_LATENCIES) - {"power_state", "hosts"}

_NOTHING = GuestFlavor(vcpus=0, memory_mb=0, root_gb=0)


def _merge_means(value: Mapping[str, float]) -> Mapping[str, float]:
    """Overlay the caller's means on the defaults, rejecting typos and negative latencies."""
    unknown = sorted(set(value) - set(DEFAULT_LATENCIES))
    if unknown:
        raise ValueError(f"unknown operations in latency means: {unknown}")
    merged = {**DEFAULT_LATENCIES, **{name: float(mean) for name, mean in value.items()}}
    if any(mean < 0 for mean in merged.values()):
        raise ValueError("latency means must be >= 0")
    return MappingProxyType(merged)


@attrs.frozen(kw_only=True)
class LatencyModel:
    """How long each simulated operation takes: ``mean * scale``, spread by ``jitter``.

    ``means`` overrides only the operations it names; the rest keep :data:`DEFAULT_LATENCIES`.
    Each draw is uniform in ``mean * scale * (1 ± jitter)`` from the driver's seeded RNG, and one
    number is drawn per call even when ``scale`` is 0, so changing the scale never shifts the
    fault plan's or the snapshot ids' draws.
    """

    means: Mapping[str, float] = attrs.field(factory=dict, converter=_merge_means, hash=False)
    jitter: float = attrs.field(
        default=0.2, validator=[attrs.validators.ge(0.0), attrs.validators.lt(1.0)]
    )
    scale: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))

    def draw(self, operation: str, rng: random.Random) -> float:
        """Draw one latency, in seconds, for ``operation``."""
        factor = rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return self.means[operation] * self.scale * factor


def _known_operation(_inst: object, _attr: object, value: str | None) -> None:
    if value is not None and value not in GUEST_OPERATIONS:
        raise ValueError(f"{value!r} is not a guest operation a fault plan can break")


def _positive(_inst: object, _attr: object, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError("times must be None or >= 1")


def _fraction(_inst: object, _attr: object, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError("probability must be within [0, 1]")


@attrs.frozen(kw_only=True)
class FaultRule:
    """Which calls to break and how; ``None`` fields match anything.

    ``action`` and ``step`` match the :data:`~drivers.base.CURRENT_CALL` context the engine sets,
    so a rule naming either never matches a call made outside any action. Each matching call
    counts: the calls numbered ``after`` .. ``after + times - 1`` (from 0) fail, so the Nth call
    is ``after=N-1``; ``times=None`` fails every call from there on. With ``probability`` set,
    ``after`` and ``times`` are ignored and each matching call fails with that probability.
    ``"raise"`` raises :class:`~drivers.base.InjectedFault` after the call's latency (the
    hypervisor worked, then failed); ``"hang"`` never answers until cancelled (a deadline).
    """

    action: str | None = None
    step: str | None = None
    operation: str | None = attrs.field(default=None, validator=_known_operation)
    after: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    times: int | None = attrs.field(default=1, validator=_positive)
    probability: float | None = attrs.field(default=None, validator=_fraction)
    mode: Literal["raise", "hang"] = attrs.field(
        default="raise", validator=attrs.validators.in_(("raise", "hang"))
    )
    message: str = "injected fault"

    def matches(self, operation: str, context: CallContext | None) -> bool:
        """Whether a call of ``operation`` under ``context`` is one this rule counts."""
        if self.operation not in (None, operation):
            return False
        if context is None:
            return self.action is None and self.step is None
        return self.action in (None, context.action) and self.step in (None, context.step)


class FiredFault(NamedTuple):
    """One fault that took effect: the rule, the driver method, and the engine's context."""

    rule: FaultRule
    operation: str
    context: CallContext | None


class FaultPlan:
    """The rules a simulator breaks calls by, with their counters; bounded so a plan stays small.

    A plan belongs to one driver (its counters and its record of fired faults are per plan).
    Rules may be added while the driver runs; the first matching rule that fires wins, but every
    matching rule counts the call, so rules never shift one another's numbering.
    """

    MAX_RULES: ClassVar[int] = 1_000
    MAX_FIRED: ClassVar[int] = 10_000

    def __init__(self, rules: Iterable[FaultRule] = ()) -> None:
        self._rules: list[FaultRule] = []
        self._seen: list[int] = []
        self._fired: collections.deque[FiredFault] = collections.deque(maxlen=self.MAX_FIRED)
        self.fired_count = 0
        for rule in rules:
            self.add(rule)

    def add(self, rule: FaultRule) -> FaultRule:
        """Append a rule (its counter starts at zero); ValueError beyond :attr:`MAX_RULES`."""
        if len(self._rules) >= self.MAX_RULES:
            raise ValueError(f"a fault plan holds at most {self.MAX_RULES} rules")
        self._rules.append(rule)
        self._seen.append(0)
        return rule

    def clear(self) -> None:
        """Drop every rule (the record of fired faults stays)."""
        self._rules.clear()
        self._seen.clear()

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        """The rules, in the order they are consulted."""
        return tuple(self._rules)

    @property
    def fired(self) -> list[FiredFault]:
        """The faults that took effect, oldest first (the latest :attr:`MAX_FIRED` of them)."""
        return list(self._fired)

    def select(
        self, operation: str, context: CallContext | None, rng: random.Random
    ) -> FaultRule | None:
        """Count one call against every matching rule and return the rule that breaks it."""
        chosen: FaultRule | None = None
        for index, rule in enumerate(self._rules):
            if not rule.matches(operation, context):
                continue
            seen = self._seen[index]
            self._seen[index] = seen + 1
            if rule.probability is not None:
                fires = rng.random() < rule.probability
            else:
                fires = seen >= rule.after and (
                    rule.times is None or seen < rule.after + rule.times
                )
            if fires and chosen is None:
                chosen = rule
        return chosen

    def record(self, rule: FaultRule, operation: str, context: CallContext | None) -> None:
        """Note that ``rule`` took effect on a call."""
        self._fired.append(FiredFault(rule, operation, context))
        self.fired_count += 1


@attrs.frozen
class SimHost:
    """One simulated compute host: its capacity and whether it answers."""

    name: str
    vcpus: int = 64
    memory_mb: int = 262_144
    disk_gb: int = 4_096
    up: bool = True


@attrs.frozen
class SimResize:
    """A resize in flight: ``finished`` once ``finish_migration`` moved the guest to ``dest``."""

    source_host: str
    old_flavor: GuestFlavor
    dest_host: str
    new_flavor: GuestFlavor
    finished: bool = False


@attrs.frozen
class SimGuest:
    """What the simulated hypervisor knows about one guest (a snapshot; records are replaced)."""

    uuid: str
    host: str
    flavor: GuestFlavor
    power: PowerState
    rescued: bool = False
    resize: SimResize | None = None
    live_migration_dest: str | None = None
    live_migration_aborted: bool = False
    live_migration_forced: bool = False
    crash_dumps: int = 0


def _holdings(guest: SimGuest | None) -> list[tuple[str, GuestFlavor]]:
    """The ``(host, flavor)`` pairs a guest occupies (see the module's bookkeeping notes)."""
    if guest is None:
        return []
    held = [(guest.host, guest.flavor)]
    if guest.resize is not None:
        r = guest.resize
        held.append((r.source_host, r.old_flavor) if r.finished else (r.dest_host, r.new_flavor))
    if guest.live_migration_dest is not None:
        held.append((guest.live_migration_dest, guest.flavor))
    return held


def _same_holdings(old: SimGuest | None, new: SimGuest | None) -> bool:
    """Whether a change leaves what the guest occupies untouched (a power operation, a flag):
    then capacity cannot overflow and the totals need no arithmetic."""
    return (
        old is not None
        and new is not None
        and old.host == new.host
        and old.flavor == new.flavor
        and old.resize == new.resize
        and old.live_migration_dest == new.live_migration_dest
    )


def _add(a: GuestFlavor, b: GuestFlavor, sign: int = 1) -> GuestFlavor:
    """Resource arithmetic on flavor-shaped triples (``root_gb`` standing for disk)."""
    return GuestFlavor(
        a.vcpus + sign * b.vcpus, a.memory_mb + sign * b.memory_mb, a.root_gb + sign * b.root_gb
    )


def _by_host(held: list[tuple[str, GuestFlavor]]) -> dict[str, GuestFlavor]:
    totals: dict[str, GuestFlavor] = {}
    for host, flavor in held:
        totals[host] = _add(totals.get(host, _NOTHING), flavor)
    return totals


@attrs.frozen
class SimStatistics:
    """A snapshot of what the simulator did, for tests and reports.

    ``latency`` is the total of the latencies drawn per operation (simulated seconds, whether
    slept or not); ``used`` is each host's held resources, as a flavor-shaped triple.
    """

    calls: dict[str, int]
    faults_fired: int
    dropped_events: int
    guests_per_host: dict[str, int]
    latency: dict[str, float]
    used: dict[str, GuestFlavor]


_Plan = tuple[SimGuest | None, SimGuest | None]
_Planner = Callable[[], _Plan]


class SimulatorDriver:
    """A :class:`~drivers.base.Driver` over a simulated fleet; see the module docstring.

    Besides the protocol it offers the test hooks :meth:`host_down`, :meth:`host_up`,
    :meth:`guest_event`, :attr:`faults`, :meth:`guest` and :meth:`statistics`.

    Events go to one bounded stream of ``event_buffer`` items: when it is full the newest event
    is dropped and counted in ``dropped_events`` (a real hypervisor's event queue loses events
    too; a periodic power sync catches up). Several :meth:`events` iterators share that stream,
    each event reaching one of them. ``power_off`` ignores its ``timeout``: a simulated guest
    always answers the graceful shutdown, so the call just takes its latency.
    """

    def __init__(
        self,
        *,
        hosts: Sequence[str | SimHost] = ("compute1",),
        seed: int = 0,
        latency: LatencyModel | None = None,
        faults: FaultPlan | None = None,
        emit_operation_events: bool = False,
        event_buffer: int = 10_000,
    ) -> None:
        if event_buffer < 0:
            raise ValueError("event_buffer must be >= 0")
        self._hosts: dict[str, SimHost] = {}
        for entry in hosts:
            host = SimHost(entry) if isinstance(entry, str) else entry
            if host.name in self._hosts:
                raise ValueError(f"host {host.name!r} is listed twice")
            self._hosts[host.name] = host
        self._rng = random.Random(seed)
        self._latency = latency if latency is not None else LatencyModel()
        self._faults = faults if faults is not None else FaultPlan()
        self._emit_operation_events = emit_operation_events
        self._guests: dict[str, SimGuest] = {}
        self._used: dict[str, GuestFlavor] = dict.fromkeys(self._hosts, _NOTHING)
        self._calls: collections.Counter[str] = collections.Counter()
        self._latency_total: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.dropped_events = 0
        self._send, self._receive = anyio.create_memory_object_stream[LifecycleEvent](event_buffer)
        # aclose() closes the sending side (iterators drain the buffer, then end); both sides
        # close when the driver is collected, so a driver never trips anyio's ResourceWarning
        self._closers = [weakref.finalize(self, s.close) for s in (self._send, self._receive)]

    # -- test hooks ----------------------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan:
        """The fault plan, to which rules may be added while the driver runs."""
        return self._faults

    def host_down(self, name: str) -> None:
        """Make a host stop answering: every operation touching it raises HostUnavailable."""
        self._hosts[name] = attrs.evolve(self._host(name), up=False)

    def host_up(self, name: str) -> None:
        """Bring a host back; its guests are as they were."""
        self._hosts[name] = attrs.evolve(self._host(name), up=True)

    def guest_event(self, uuid: str, kind: Literal["crash", "shutdown"]) -> None:
        """The guest crashed or shut itself down: set its power state and publish STOPPED.

        Works whatever its host's state (a scenario may script it freely); must be called from
        within the event loop, whose clock stamps the event.
        """
        if kind not in ("crash", "shutdown"):
            raise ValueError(f"unknown guest event {kind!r}")
        old = self._guests.get(uuid)
        if old is None:
            raise GuestNotFound(uuid)
        power = PowerState.CRASHED if kind == "crash" else PowerState.SHUTDOWN
        self._guests[uuid] = attrs.evolve(old, power=power)
        self._publish(uuid, LifecycleTransition.STOPPED)

    def guest(self, uuid: str) -> SimGuest | None:
        """The simulator's record of a guest, or None if it holds none."""
        return self._guests.get(uuid)

    async def fault_point(self, operation: str) -> None:
        """Consult the fault plan for an operation of a subclass's own (an extension's driver
        call), as the built-in operations do: raise the rule's fault, or hang.

        Raises:
            InjectedFault: a rule of the plan breaks this call.
        """
        self._calls[operation] += 1
        context = CURRENT_CALL.get()
        rule = self._faults.select(operation, context, self._rng)
        if rule is None:
            return
        self._faults.record(rule, operation, context)
        if rule.mode == "hang":
            await anyio.sleep_forever()
        raise InjectedFault(rule.message)

    def set_power(self, uuid: str, power: PowerState) -> None:
        """The guest's power state changes and no event says so (a lost event): what a
        periodic sync must find by asking.

        Raises:
            GuestNotFound: the simulator holds no such guest.
        """
        old = self._guests.get(uuid)
        if old is None:
            raise GuestNotFound(uuid)
        self._guests[uuid] = attrs.evolve(old, power=power)

    def place(self, guest: SimGuest) -> None:
        """Hold ``guest`` as if it had been running all along: the hypervisor outlives the
        engine, so a resumed fleet (or a recovery test) puts back what the store recorded.

        Raises:
            ValueError: the host is unknown, or the uuid is already held.
        """
        self._host(guest.host)
        if guest.uuid in self._guests:
            raise ValueError(f"guest {guest.uuid} is already held")
        self._guests[guest.uuid] = guest
        for host, flavor in _holdings(guest):
            self._used[host] = _add(self._used[host], flavor)

    def statistics(self) -> SimStatistics:
        """A snapshot of calls, faults, dropped events, placement, latencies and usage."""
        per_host = dict.fromkeys(self._hosts, 0)
        for guest in self._guests.values():
            per_host[guest.host] += 1
        return SimStatistics(
            calls=dict(self._calls),
            faults_fired=self._faults.fired_count,
            dropped_events=self.dropped_events,
            guests_per_host=per_host,
            latency=dict(self._latency_total),
            used=dict(self._used),
        )

    # -- the protocol: queries -----------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        """Everything is supported; a suspended guest reports SUSPENDED."""
        return Capabilities()

    async def hosts(self) -> list[HostInfo]:
        """The fleet's hosts with their capacity and whether they answer."""
        self._calls["hosts"] += 1
        await self._sleep("hosts")
        return [
            HostInfo(name=h.name, up=h.up, vcpus=h.vcpus, memory_mb=h.memory_mb, disk_gb=h.disk_gb)
            for h in self._hosts.values()
        ]

    async def power_state(self, guest: GuestSpec) -> PowerState:
        """The guest's power state; NOSTATE for a guest the hypervisor does not hold."""

        def plan() -> _Plan:
            old = self._guests.get(guest.uuid)
            if old is not None:
                self._require_up(old.host)
            return old, old

        return _power(await self._operate("power_state", plan, faults=False))

    # -- the protocol: guest operations --------------------------------------------------------

    async def spawn(self, guest: GuestSpec, *, power_on: bool = True) -> PowerState:
        """Build the guest on ``guest.host``, replacing any record of it (rebuild, evacuate)."""

        def plan() -> _Plan:
            host = self._require_up(guest.host)
            power = PowerState.RUNNING if power_on else PowerState.SHUTDOWN
            new = SimGuest(uuid=guest.uuid, host=host, flavor=guest.flavor, power=power)
            return self._guests.get(guest.uuid), new

        return _power(await self._operate("spawn", plan))

    async def destroy(self, guest: GuestSpec) -> PowerState:
        """Remove the guest and free all it holds; an unknown guest is already gone (NOSTATE)."""

        def plan() -> _Plan:
            old = self._guests.get(guest.uuid)
            host = old.host if old is not None else guest.host
            if host is not None:
                self._require_up(host)
            return old, None

        await self._operate("destroy", plan)
        return PowerState.NOSTATE

    async def power_off(self, guest: GuestSpec, *, timeout: float) -> PowerState:
        """Shut the guest down; it always answers the graceful request, so ``timeout`` is moot."""
        return await self._update("power_off", guest, power=PowerState.SHUTDOWN)

    async def power_on(self, guest: GuestSpec) -> PowerState:
        """Start the guest."""
        return await self._update("power_on", guest, power=PowerState.RUNNING)

    async def reboot(self, guest: GuestSpec, *, reboot_type: RebootType) -> PowerState:
        """Reboot the guest, soft or hard alike: it ends RUNNING."""
        return await self._update("reboot", guest, power=PowerState.RUNNING)

    async def pause(self, guest: GuestSpec) -> PowerState:
        """Pause the guest's vCPUs."""
        return await self._update("pause", guest, power=PowerState.PAUSED)

    async def unpause(self, guest: GuestSpec) -> PowerState:
        """Let the guest's vCPUs run again."""
        return await self._update("unpause", guest, power=PowerState.RUNNING)

    async def suspend(self, guest: GuestSpec) -> PowerState:
        """Save the guest's memory; the simulator reports SUSPENDED (see capabilities)."""
        return await self._update("suspend", guest, power=PowerState.SUSPENDED)

    async def resume(self, guest: GuestSpec) -> PowerState:
        """Restore a suspended guest."""
        return await self._update("resume", guest, power=PowerState.RUNNING)

    async def rescue(self, guest: GuestSpec, *, rescue_image: str) -> PowerState:
        """Boot the guest from the rescue image: RUNNING, marked rescued."""
        return await self._update("rescue", guest, power=PowerState.RUNNING, rescued=True)

    async def unrescue(self, guest: GuestSpec) -> PowerState:
        """Boot the guest from its own disk again."""
        return await self._update("unrescue", guest, power=PowerState.RUNNING, rescued=False)

    async def snapshot(self, guest: GuestSpec, *, name: str) -> str:
        """Snapshot the disk; the new image id is a uuid drawn from the seeded RNG."""
        await self._update("snapshot", guest)
        return str(uuidlib.UUID(int=self._rng.getrandbits(128), version=4))

    async def migrate_disk_and_power_off(
        self, guest: GuestSpec, *, dest_host: str, flavor: GuestFlavor
    ) -> PowerState:
        """Power off and copy the disk to ``dest_host``, which from now on holds ``flavor``."""

        def plan() -> _Plan:
            old = self._locate(guest)
            resize = SimResize(old.host, old.flavor, self._require_up(dest_host), flavor)
            return old, attrs.evolve(old, power=PowerState.SHUTDOWN, resize=resize)

        return _power(await self._operate("migrate_disk_and_power_off", plan))

    async def finish_migration(
        self, guest: GuestSpec, *, flavor: GuestFlavor, power_on: bool
    ) -> PowerState:
        """Move the guest to ``guest.host`` with ``flavor``; the source keeps the old flavor."""

        def plan() -> _Plan:
            old = self._record(guest.uuid, guest.host)
            host = self._require_up(guest.host)
            r = old.resize
            source, old_flavor = (r.source_host, r.old_flavor) if r else (old.host, old.flavor)
            resize = SimResize(source, old_flavor, host, flavor, finished=True)
            power = PowerState.RUNNING if power_on else PowerState.SHUTDOWN
            new = attrs.evolve(old, host=host, flavor=flavor, power=power, resize=resize)
            return old, attrs.evolve(new, rescued=False)

        return _power(await self._operate("finish_migration", plan))

    async def confirm_migration(self, guest: GuestSpec, *, source_host: str) -> None:
        """Delete the source's copy: the guest stops holding anything on the source."""

        def plan() -> _Plan:
            old = self._record(guest.uuid, source_host)
            self._require_up(source_host)
            return old, attrs.evolve(old, resize=None)

        await self._operate("confirm_migration", plan)

    async def finish_revert_migration(self, guest: GuestSpec, *, power_on: bool) -> PowerState:
        """Bring the guest back on ``guest.host`` with ``guest.flavor``, freeing the destination."""

        def plan() -> _Plan:
            old = self._record(guest.uuid, guest.host)
            host = self._require_up(guest.host)
            power = PowerState.RUNNING if power_on else PowerState.SHUTDOWN
            new = attrs.evolve(old, host=host, flavor=guest.flavor, power=power, resize=None)
            return old, attrs.evolve(new, rescued=False)

        return _power(await self._operate("finish_revert_migration", plan))

    async def pre_live_migration(self, guest: GuestSpec, *, dest_host: str) -> None:
        """Prepare ``dest_host``: it must answer and fit the guest, which it holds from now on."""
        await self._live("pre_live_migration", guest, dest_host, claim=True)

    async def live_migration(self, guest: GuestSpec, *, dest_host: str) -> None:
        """Stream the guest to ``dest_host`` (long: abort and force-complete arrive meanwhile)."""
        await self._live("live_migration", guest, dest_host, claim=True, source=True)

    async def live_migration_abort(self, guest: GuestSpec) -> None:
        """Record the abort; the engine rolls back (and may cancel the migration call)."""
        await self._update("live_migration_abort", guest, live_migration_aborted=True)

    async def live_migration_force_complete(self, guest: GuestSpec) -> None:
        """Record the force-complete request; the migration still takes its latency."""
        await self._update("live_migration_force_complete", guest, live_migration_forced=True)

    async def post_live_migration_at_destination(
        self, guest: GuestSpec, *, dest_host: str
    ) -> PowerState:
        """The guest now runs on ``dest_host``; the source's holding is freed."""

        def plan() -> _Plan:
            old = self._record(guest.uuid, dest_host)
            host = self._require_up(dest_host)
            return old, attrs.evolve(old, host=host, live_migration_dest=None)

        return _power(await self._operate("post_live_migration_at_destination", plan))

    async def rollback_live_migration_at_destination(
        self, guest: GuestSpec, *, dest_host: str
    ) -> None:
        """Free whatever ``dest_host`` held for the migration; the guest stays on its source."""
        await self._live("rollback_live_migration_at_destination", guest, dest_host, claim=False)

    async def trigger_crash_dump(self, guest: GuestSpec) -> None:
        """Inject an NMI; the simulator only counts it in the guest's record."""

        def plan() -> _Plan:
            old = self._locate(guest)
            return old, attrs.evolve(old, crash_dumps=old.crash_dumps + 1)

        await self._operate("trigger_crash_dump", plan)

    # -- the protocol: events and closing --------------------------------------------------------

    async def events(self) -> AsyncIterator[LifecycleEvent]:
        """The lifecycle events, ending (after the buffered ones) once the driver is closed."""
        try:
            stream = self._receive.clone()
        except anyio.ClosedResourceError:
            return
        with stream:
            async for event in stream:
                yield event

    async def aclose(self) -> None:
        """Close the event stream: iterators drain what is buffered, then end. Idempotent."""
        self._closers[0]()

    async def __aenter__(self) -> SimulatorDriver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- machinery -----------------------------------------------------------------------------

    async def _operate(
        self, operation: str, plan: _Planner, *, faults: bool = True
    ) -> SimGuest | None:
        """Plan and check, consult the fault plan, sleep, then plan and check again and commit.

        ``plan`` validates (raising HostUnavailable or GuestNotFound) and returns the guest's
        record before and after; both runs must fit the hosts' capacity. Returns the new record.
        """
        self._calls[operation] += 1
        self._check_capacity(*plan())
        context = CURRENT_CALL.get()
        rule = self._faults.select(operation, context, self._rng) if faults else None
        if rule is not None and rule.mode == "hang":
            self._faults.record(rule, operation, context)
            await anyio.sleep_forever()
        await self._sleep(operation)
        if rule is not None:
            self._faults.record(rule, operation, context)
            raise InjectedFault(rule.message)
        old, new = plan()
        self._check_capacity(old, new)
        if old is not new:
            self._replace(old, new)
        transition = _OPERATION_EVENTS.get(operation)
        if (
            self._emit_operation_events
            and transition is not None
            and new is not None
            and transition.expected_power_state is new.power
        ):
            self._publish(new.uuid, transition)
        return new

    async def _sleep(self, operation: str) -> None:
        delay = self._latency.draw(operation, self._rng)
        self._latency_total[operation] += delay
        if delay > 0:
            await anyio.sleep(delay)

    async def _update(self, operation: str, guest: GuestSpec, **changes: Any) -> PowerState:
        """An operation that changes only the record's own fields (power, flags)."""

        def plan() -> _Plan:
            old = self._locate(guest)
            return old, attrs.evolve(old, **changes)

        return _power(await self._operate(operation, plan))

    async def _live(
        self, operation: str, guest: GuestSpec, dest: str, *, claim: bool, source: bool = False
    ) -> None:
        """Claim ``dest`` for a live migration (a new destination resets the flags) or free it."""

        def plan() -> _Plan:
            old = self._record(guest.uuid, guest.host)
            if source:
                self._require_up(old.host)
            self._require_up(dest)
            if claim and old.live_migration_dest != dest:
                return old, attrs.evolve(
                    old,
                    live_migration_dest=dest,
                    live_migration_aborted=False,
                    live_migration_forced=False,
                )
            if not claim and old.live_migration_dest == dest:
                return old, attrs.evolve(old, live_migration_dest=None)
            return old, old

        await self._operate(operation, plan)

    def _host(self, name: str) -> SimHost:
        if name not in self._hosts:
            raise ValueError(f"unknown host {name!r}")
        return self._hosts[name]

    def _require_up(self, host: str | None) -> str:
        """The host, if it exists and answers; HostUnavailable otherwise."""
        if host is None or host not in self._hosts or not self._hosts[host].up:
            raise HostUnavailable(host)
        return host

    def _record(self, uuid: str, via: str | None) -> SimGuest:
        """The guest's record; if none, HostUnavailable when ``via`` is down, else GuestNotFound."""
        record = self._guests.get(uuid)
        if record is None:
            if via is not None:
                self._require_up(via)
            raise GuestNotFound(uuid)
        return record

    def _locate(self, guest: GuestSpec) -> SimGuest:
        """The guest's record, checking that the host it runs on answers."""
        record = self._record(guest.uuid, guest.host)
        self._require_up(record.host)
        return record

    def _check_capacity(self, old: SimGuest | None, new: SimGuest | None) -> None:
        """Raise InsufficientResources if a host whose holding grows would overflow."""
        if _same_holdings(old, new):
            return
        before = _by_host(_holdings(old))
        for host, total in _by_host(_holdings(new)).items():
            extra = _add(total, before.get(host, _NOTHING), -1)
            if extra.vcpus <= 0 and extra.memory_mb <= 0 and extra.root_gb <= 0:
                continue
            used, cap = _add(self._used[host], extra), self._hosts[host]
            if (
                used.vcpus > cap.vcpus
                or used.memory_mb > cap.memory_mb
                or used.root_gb > cap.disk_gb
            ):
                need = [flavor for h, flavor in _holdings(new) if h == host][-1]
                raise InsufficientResources(host, need)

    def _replace(self, old: SimGuest | None, new: SimGuest | None) -> None:
        if _same_holdings(old, new):
            assert new is not None  # narrowed by _same_holdings
            self._guests[new.uuid] = new
            return
        for host, flavor in _holdings(old):
            self._used[host] = _add(self._used[host], flavor, -1)
        for host, flavor in _holdings(new):
            self._used[host] = _add(self._used[host], flavor)
        if new is not None:
            self._guests[new.uuid] = new
        elif old is not None:
            del self._guests[old.uuid]

    def _publish(self, uuid: str, transition: LifecycleTransition) -> None:
        try:
            self._send.send_nowait(LifecycleEvent(uuid, transition, anyio.current_time()))
        except anyio.WouldBlock:
            self.dropped_events += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # closed: nobody will ever read it


def _power(record: SimGuest | None) -> PowerState:
    return PowerState.NOSTATE if record is None else record.power
