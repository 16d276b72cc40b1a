"""``ism simulate``: a fleet on the simulator, every action in a realistic mix, faults injected.

Each instance walks a seeded random path through the lifecycle: create, then actions chosen
among those the table allows in its current state (the guards are the table's, not a copy),
sometimes two at once (a conflict), sometimes a delete that preempts a running action; guests
crash; a host fails and its instances are evacuated. Virtual time makes hours pass in seconds.
"""

from __future__ import annotations

import contextlib
import random
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TextIO

import anyio
import attrs
from anyio.abc import TaskStatus

from drivers.base import Driver
from drivers.simulator import (
    FaultRule,
    LatencyModel,
    SimGuest,
    SimHost,
    SimResize,
    SimulatorDriver,
)

from ._schema import Action, Concurrency, Precondition, Rule
from ._simulate_libvirt import LIBVIRT_FLAVORS, supported
from .clock import SystemClock, VirtualClock, run_virtual
from .config import Config
from .engine import ActionHandle, Engine
from .errors import ActionRefused, InvalidRequest
from .lifecycle import DEFAULT_LIFECYCLE
from .model import RequestContext
from .outbox import Transport
from .sinks import Notification, Sink
from .states import VmState
from .store import Store

__all__ = ["FleetReport", "simulate"]

FLAVORS: tuple[dict[str, int], ...] = (
    {"vcpus": 1, "memory_mb": 512, "root_gb": 1},
    {"vcpus": 2, "memory_mb": 2048, "root_gb": 20},
    {"vcpus": 4, "memory_mb": 8192, "root_gb": 40},
)
ADMIN = RequestContext(user_id="ops", project_id="ops", roles=frozenset({"admin"}))
ACTIONS_PER_INSTANCE = 10


@attrs.frozen
class FleetReport:
    """What a simulation did, for the closing summary."""

    instances: int
    hosts: int
    seed: int
    outcomes: dict[str, Counter[str]]
    notifications: Counter[str]
    final_states: Counter[str]
    latencies: list[float]
    virtual_seconds: float
    stuck: int
    recovered: int = 0
    """Instances an earlier run left mid-action, taken up by recovery at the start."""
    recovery_wall: float = 0.0
    """Wall-clock seconds from opening the engine to accepting actions (recovery included)."""
    signal: int | None = None
    """The signal (SIGTERM, SIGINT) that stopped the run, which then drained."""
    evacuated: int = 0
    """Instances of a down host this engine rebuilt (``--evacuate``)."""

    def render(self) -> str:
        """The closing summary, as plain text."""
        lines = [
            f"ism simulate: {self.instances} instances on {self.hosts} hosts, seed {self.seed}, "
            f"{self.virtual_seconds / 3600:.1f} virtual hours",
            "",
            "actions by outcome:",
        ]
        kinds = ("ok", "failed", "preempted", "refused")
        lines.append(f"  {'action':<30}" + "".join(f"{k:>10}" for k in kinds))
        for name in sorted(self.outcomes):
            row = self.outcomes[name]
            lines.append(f"  {name:<30}" + "".join(f"{row.get(k, 0):>10}" for k in kinds))
        total = Counter[str]()
        for row in self.outcomes.values():
            total.update(row)
        lines.append(f"  {'total':<30}" + "".join(f"{total.get(k, 0):>10}" for k in kinds))
        lines += ["", f"notifications by type ({sum(self.notifications.values())}):"]
        for event, count in sorted(self.notifications.items()):
            lines.append(f"  {event:<50}{count:>8}")
        lines += ["", "instances by final state:"]
        for state, count in sorted(self.final_states.items()):
            lines.append(f"  {state:<30}{count:>8}")
        if self.latencies:
            ordered = sorted(self.latencies)
            p50 = statistics.median(ordered)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            lines += [
                "",
                f"action latency (virtual s): p50 {p50:.2f}  p99 {p99:.2f}  "
                f"max {ordered[-1]:.2f}  over {len(ordered)} actions",
            ]
        lines.append(f"instances left in a transient state: {self.stuck}")
        lines.append(
            f"recovery at start: {self.recovered} interrupted instances, engine ready in "
            f"{self.recovery_wall:.3f} s (wall)"
        )
        if self.evacuated:
            lines.append(f"evacuated here: {self.evacuated} instances of a host that went down")
        if self.signal is not None:
            lines.append(
                f"stopped by {signal.Signals(self.signal).name}: drained; what could not finish "
                "is left for recovery (continue with --resume)"
            )
        return "\n".join(lines)


class _Counting:
    """A sink that only counts event types: a fleet's notifications are not kept in memory."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def send(self, notification: Notification) -> None:
        self.counts[notification.event_type] += 1

    def close(self) -> None:
        pass


class _Progress:
    """A bar redrawn in place on a terminal; on a pipe or file, a line every 25 %."""

    WIDTH = 40

    def __init__(self, total: int, out: TextIO | None) -> None:
        self.total, self.done, self.out = total, 0, out
        self.tty = out is not None and out.isatty()
        self.shown = -1

    def step(self) -> None:
        self.done += 1
        if self.out is None:
            return
        filled = self.WIDTH * self.done // self.total
        quarter = 4 * self.done // self.total
        if self.tty and filled != self.shown:
            self.shown = filled
            bar = "#" * filled + "." * (self.WIDTH - filled)
            end = "\n" if self.done == self.total else ""
            self.out.write(f"\r[{bar}] {self.done}/{self.total} instances{end}")
        elif not self.tty and quarter != self.shown:
            self.shown = quarter
            self.out.write(f"progress: {self.done}/{self.total} instances ({25 * quarter} %)\n")
        else:
            return
        self.out.flush()


def _user_actions() -> list[Action]:
    return [
        a
        for a in DEFAULT_LIFECYCLE.actions
        if not a.internal
        and not a.creates
        and a.concurrency is not Concurrency.JOINS
        and Precondition.HOST_DOWN not in a.preconditions
    ]


class _Fleet:
    def __init__(
        self,
        instances: int,
        seed: int,
        progress: _Progress,
        driver: Driver | None = None,
        *,
        store: Store | None = None,
        sinks: Sequence[Sink] = (),
        group_commit: bool = True,
        resume: bool = False,
        on_ready: Callable[[int, float], None] | None = None,
        transports: Sequence[Transport] = (),
        host: str | None = None,
        evacuate: str | None = None,
        service_down_time: float = 60.0,
    ) -> None:
        self.resume = resume
        # -- one engine for one host of a shared fleet (--host): real time, scaled down
        self.host = host
        self.evacuate_host = evacuate
        self.evacuated = 0
        self.pause = 0.001 if host is not None else 1.0
        self.on_ready = on_ready
        self.signal: int | None = None
        self.recovery_wall = 0.0
        self.recovered = 0
        self.rng = random.Random(f"{seed}:resumed" if resume else seed)
        self.n = instances
        self.hosts = (
            [host]
            if host is not None
            else [f"compute{i + 1}" for i in range(max(2, instances // 25))]
        )
        # -- another driver (libvirt): no fault plan, no host failure, tiny guests, cleanup
        self.external = driver
        self.flavors = FLAVORS if driver is None else LIBVIRT_FLAVORS
        self.final: Counter[str] | None = None
        self.driver = SimulatorDriver(
            hosts=[
                SimHost(name, vcpus=128, memory_mb=262_144, disk_gb=8192) for name in self.hosts
            ],
            seed=seed,
            latency=LatencyModel(scale=self.pause) if host is not None else None,
        )
        for rule in (
            FaultRule(probability=0.02, message="simulated hypervisor error"),
            FaultRule(action="reboot", probability=0.05, message="guest did not come back"),
            FaultRule(
                action="resize",
                step="resize_migrating",
                probability=0.05,
                message="disk copy failed",
            ),
            FaultRule(action="live_migrate", step="migrating", probability=0.03, mode="hang"),
        ):
            if host is None or rule.mode != "hang":  # on real time a hang waits its deadline
                self.driver.faults.add(rule)
        self.counter = _Counting()
        self.config = Config(
            notify_on_state_change="vm_and_task_state",
            resize_confirm_window=600,
            shelved_offload_time=3600,
            reclaim_instance_interval=1800,
            instance_build_timeout=1800,
            group_commit=group_commit,
            hosts=(host,) if host is not None else None,
            service_host=host or "ism",
            report_interval=1.0 if host is not None else 10.0,
            service_down_time=service_down_time,
        )
        self.engine = Engine(
            driver or self.driver,
            config=self.config,
            sinks=[self.counter, *sinks],
            clock=SystemClock() if host is not None else VirtualClock(),
            seed=seed,
            store=store,
            transports=transports,
        )
        self.latencies: list[float] = []
        self.uuids: list[str] = []
        self.progress = progress
        self.actions = _user_actions()
        if driver is not None:
            self.actions = [a for a in self.actions if supported(a, driver.capabilities)]

    async def _submit(
        self, ctx: RequestContext, name: str, uuid: str | None, params: dict[str, Any]
    ) -> ActionHandle | None:
        try:
            return await self.engine.submit(ctx, name, uuid, params)
        except ActionRefused:
            return None

    async def _settle(self, handle: ActionHandle | None) -> None:
        if handle is None:
            return
        result = await handle.wait()
        self.latencies.append(result.duration)

    def _params(self, action: Action, uuid: str) -> dict[str, Any]:
        rng = self.rng
        inst = self.engine.get(uuid)
        if action.name == "resize":
            others = [f for f in self.flavors if f != inst.flavor.as_dict()]
            return {"flavor": rng.choice(others)}
        if action.public_name == "reboot":
            return {"type": action.variant or "SOFT"}
        if action.name == "live_migrate":
            hosts = [h for h in self.hosts if h != inst.host]
            return {"host": rng.choice(hosts)} if hosts and rng.random() < 0.5 else {}
        if action.name == "lock":
            return {"reason": "maintenance"}
        return {}

    async def walk(
        self, index: int, owner: RequestContext, resumed: tuple[str, int] | None = None
    ) -> None:
        """One instance's life: created, then ACTIONS_PER_INSTANCE random actions; a resumed
        run continues an existing instance with the actions it has left."""
        rng = self.rng
        if resumed is not None:
            uuid, remaining = resumed
            self.uuids.append(uuid)
            await self._wander(uuid, owner, remaining)
            return
        await anyio.sleep(rng.uniform(0, 600) * self.pause)
        handle = await self._submit(
            owner,
            "create",
            None,
            {
                "name": self._name(index),
                "flavor": rng.choice(self.flavors),
                "image": "cirros",
                "admin_pass": f"secret-{index}",
                "metadata": {"role": "web"},
            },
        )
        if handle is None:
            self.progress.step()
            return
        uuid = handle.uuid
        self.uuids.append(uuid)
        await self._settle(handle)
        await self._wander(uuid, owner, ACTIONS_PER_INSTANCE)

    async def _wander(self, uuid: str, owner: RequestContext, actions: int) -> None:
        rng = self.rng
        for _ in range(actions):
            await anyio.sleep(rng.expovariate(1 / 300) * self.pause)
            inst = self.engine.get(uuid)
            if inst.vm_state is VmState.DELETED:
                break
            choices = [
                a
                for a in self.actions
                if a.name not in ("delete", "force_delete")
                and not a.immediate  # an operator's reset, not a user's action
                and inst.vm_state in a.allowed_vm_states()
                and a.allows_task(inst.task_state)
            ]
            if not choices:
                continue
            weights = [0.2 if a.name in ("lock", "unlock") else 1.0 for a in choices]
            action = rng.choices(choices, weights)[0]
            ctx = ADMIN if action.rule is Rule.ADMIN else owner
            first = await self._submit(ctx, action.public_name, uuid, self._params(action, uuid))
            roll = rng.random()
            if first is not None and roll < 0.05:
                # a second, conflicting request while the first runs: refused, never queued
                await self._settle(await self._submit(owner, "stop", uuid, {}))
            elif first is not None and roll < 0.08:
                await anyio.sleep(0.5 * self.pause)
                await self._settle(await self._submit(owner, "delete", uuid, {}))
            await self._settle(first)
        if rng.random() < 0.3:
            await self._settle(await self._submit(owner, "delete", uuid, {}))
        self.progress.step()

    async def chaos(self) -> None:
        """Guest crashes and one host failure, evacuated by an admin."""
        rng = self.rng
        for _ in range(max(1, self.n // 20)):
            await anyio.sleep(rng.uniform(300, 2400))
            live = [u for u in self.uuids if self.engine.get(u).vm_state is VmState.ACTIVE]
            if live:
                self.driver.guest_event(rng.choice(live), rng.choice(("crash", "shutdown")))
        victim = self.hosts[-1]
        self.driver.host_down(victim)
        await anyio.sleep(60)
        for inst in self.engine.instances(host=victim):
            if inst.vm_state in (VmState.ACTIVE, VmState.STOPPED, VmState.ERROR):
                await self._settle(await self._submit(ADMIN, "evacuate", inst.uuid, {}))
        self.driver.host_up(victim)

    async def run(self) -> float:
        start = anyio.current_time()
        async with contextlib.AsyncExitStack() as stack:
            if self.external is not None:
                await stack.enter_async_context(_opened(self.external))
                self.hosts = [h.name for h in await self.external.hosts()]
            if self.resume:
                await self.engine.store.open(writer=self.config.service_host)
                self._restore_guests()
            wall = time.perf_counter()
            async with self.engine:
                self.recovery_wall = time.perf_counter() - wall
                self.recovered = len(self.engine.recovered)
                async with anyio.create_task_group() as outer:
                    # signals are ours before the run says it is ready: a SIGTERM from then on
                    # drains, it never kills
                    await outer.start(self._until_signalled, outer.cancel_scope)
                    if self.on_ready is not None:
                        self.on_ready(self.recovered, self.recovery_wall)
                    resumed = await self._resumed() if self.resume else {}
                    if self.evacuate_host is not None:
                        await self._evacuate(self.evacuate_host)
                    async with anyio.create_task_group() as tg:
                        for i in range(self.n):
                            owner = RequestContext(
                                user_id=f"user{i % 7}",
                                project_id=f"project{i % 5}",
                                roles=frozenset({"member"}),
                            )
                            if i in resumed:
                                if resumed[i] is None:
                                    self.progress.step()  # deleted, or done: nothing left
                                else:
                                    tg.start_soon(self.walk, i, owner, resumed[i])
                            else:
                                tg.start_soon(self.walk, i, owner)
                        if self.external is None and not self.resume and self.host is None:
                            tg.start_soon(self.chaos)
                    outer.cancel_scope.cancel()  # the walks ended: stop listening for signals
                if self.external is not None and self.signal is None:
                    await self._clean_up()
        return anyio.current_time() - start

    async def _until_signalled(
        self, scope: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """SIGTERM or SIGINT: stop the walks; leaving the engine then drains it (running steps
        finish within the bound, the rest is left for recovery)."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            task_status.started()
            async for signum in received:
                self.signal = signum
                scope.cancel()
                return

    def _name(self, index: int) -> str:
        return f"{self.host}-vm{index}" if self.host is not None else f"vm{index}"

    async def _evacuate(self, host: str) -> None:
        """Nova's evacuate by an admin: once ``host``'s engine stopped heartbeating (bounded
        wait), rebuild each of its instances here."""
        with anyio.fail_after(2 * self.config.service_down_time + 10):
            # another process's heartbeat ages in the store: nothing signals it here, so a
            # bounded poll at the heartbeat's own rhythm
            while await self.engine.host_up(host):  # noqa: ASYNC110
                await anyio.sleep(self.config.report_interval)
        for inst in self.engine.instances(host=host):
            if inst.vm_state in (VmState.ACTIVE, VmState.STOPPED, VmState.ERROR):
                handle = await self._submit(ADMIN, "evacuate", inst.uuid, {})
                await self._settle(handle)
                if handle is not None and handle.result is not None and handle.result.ok:
                    self.evacuated += 1

    def _restore_guests(self) -> None:
        """The hypervisor outlives the engine: put back the guests the store says exist."""
        store = self.engine.store
        for inst in store.all():
            if inst.host is None or inst.vm_state is VmState.DELETED:
                continue
            resize = None
            if inst.source_host is not None and inst.old_flavor is not None:
                resize = SimResize(
                    inst.source_host, inst.old_flavor.as_guest(), inst.host,
                    inst.flavor.as_guest(), finished=True,
                )  # fmt: skip
            self.driver.place(
                SimGuest(inst.uuid, inst.host, inst.flavor.as_guest(), inst.power_state,
                         rescued=inst.vm_state is VmState.RESCUED, resize=resize)
            )  # fmt: skip

    async def _resumed(self) -> dict[int, tuple[str, int] | None]:
        """Each instance a previous run created (by its name, vm<i>): the actions its walk
        has left, or None when it is deleted or done."""
        out: dict[int, tuple[str, int] | None] = {}
        prefix = f"{self.host}-vm" if self.host is not None else "vm"
        for inst in self.engine.instances():
            number = inst.name.removeprefix(prefix)
            if number == inst.name or not number.isdigit():
                continue  # another host's instance, or not the fleet's
            index = int(number)
            if inst.vm_state is VmState.DELETED:
                out[index] = None
                continue
            done = len(await self.engine.actions(inst.uuid)) - 1  # its create
            left = ACTIONS_PER_INSTANCE - done
            out[index] = (inst.uuid, left) if left > 0 else None
        return out

    async def _clean_up(self) -> None:
        """On a real hypervisor: note the final states, then delete what is left."""
        await self.engine.wait_idle(timeout=3600)
        self.final = Counter(i.vm_state.value for i in self.engine.instances())
        for inst in self.engine.instances(include_deleted=False):
            handle = await self._submit(ADMIN, "force_delete", inst.uuid, {})
            if handle is not None:
                await handle.wait()


def simulate(
    *,
    instances: int = 200,
    seed: int = 0,
    progress: TextIO | None = sys.stderr,
    on_engine: Callable[[Engine], None] | None = None,
    driver: Driver | None = None,
    store: Store | None = None,
    sinks: Sequence[Sink] = (),
    group_commit: bool = True,
    resume: bool = False,
    on_ready: Callable[[int, float], None] | None = None,
    transports: Sequence[Transport] = (),
    host: str | None = None,
    evacuate: str | None = None,
    service_down_time: float = 60.0,
) -> FleetReport:
    """Run a fleet on virtual time and return what happened.

    ``driver`` replaces the simulated fleet with a real hypervisor's driver (an async context
    manager, opened on the run's loop): only actions its capabilities allow are chosen, no fault
    or host failure is injected, and every instance left is deleted at the end. ``store`` keeps
    the fleet (``ism simulate --db``); ``sinks`` receive every notification too. ``resume``
    continues an interrupted run on ``store``: recovery takes up what it left mid-action, the
    simulated hypervisor gets back the guests the store records, the virtual clock continues
    from the last commit, and each instance continues its walk. ``on_ready(recovered,
    seconds)`` is told as soon as the engine accepts actions; ``transports`` publish every
    notification too (``--notify amqp://…``). ``host`` runs one engine of a shared fleet: it
    serves that host only, on real time with latencies and pauses scaled down (engines in
    several processes compare heartbeats on the wall clock), and ``evacuate`` rebuilds a host's
    instances here once its engine has stopped heartbeating.
    """
    start = 0.0
    if resume:
        if store is None:
            raise InvalidRequest("resume needs a store (--db)")
        start = anyio.run(_last_instant, store)
    fleet = _Fleet(
        instances,
        seed,
        _Progress(instances, progress),
        driver,
        store=store,
        sinks=sinks,
        group_commit=group_commit,
        resume=resume,
        on_ready=on_ready,
        transports=transports,
        host=host,
        evacuate=evacuate,
        service_down_time=service_down_time,
    )
    if on_engine is not None:
        on_engine(fleet.engine)
    # one host of a shared fleet runs on real time: heartbeats compare clocks across processes
    elapsed = run_virtual(fleet.run, start=start) if host is None else anyio.run(fleet.run)
    final = fleet.final or Counter(i.vm_state.value for i in fleet.engine.instances())
    stuck = sum(1 for i in fleet.engine.instances() if i.task_state is not None)
    return FleetReport(
        instances=instances,
        hosts=len(fleet.hosts),
        seed=seed,
        outcomes={name: Counter(row) for name, row in fleet.engine.statistics().by_action.items()},
        notifications=fleet.counter.counts,
        final_states=final,
        latencies=fleet.latencies,
        virtual_seconds=elapsed,
        stuck=stuck,
        recovered=fleet.recovered,
        recovery_wall=fleet.recovery_wall,
        signal=fleet.signal,
        evacuated=fleet.evacuated,
    )


async def _last_instant(store: Store) -> float:
    """The virtual seconds of the store's last commit: a resumed run's clock starts there, so
    wall-clock deadlines keep their meaning across the restart."""
    await store.open(writer="ism-resume")
    try:
        last = max((i.updated_at for i in store.all()), default=None)
    finally:
        await store.close()
    return 0.0 if last is None else max(0.0, (last - VirtualClock().epoch).total_seconds())


@contextlib.asynccontextmanager
async def _opened(driver: Driver) -> AsyncIterator[Driver]:
    """Enter a driver that is an async context manager (libvirt's opens its connection)."""
    if isinstance(driver, contextlib.AbstractAsyncContextManager):
        async with driver:
            yield driver
    else:
        yield driver
