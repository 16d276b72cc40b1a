"""The libvirt driver: ism's :class:`~drivers.base.Driver` over libvirt-python.

Needs the optional extra (``pip install 'ism-engine[libvirt]'``, which builds libvirt-python
against the system's ``libvirt-dev``). libvirt is imported when a driver is opened, never at
import time, so ism runs without it.

How it is built (each piece in a private module, with its reasons):

* ``_libvirt_calls``: blocking calls run on the driver's own bounded pool through
  ``loop.run_in_executor`` (virtual time holds still for them); operations on one domain are
  serialized, and a cancelled call finishes before the next one on its domain starts, so a
  preempting delete destroys what a preempted spawn created.
* ``_libvirt_events``: libvirt's default event loop on one daemon thread per process, relaying
  each connection's events to the loop its driver was opened on; Nova's STOPPED delay.
* ``_libvirt_states``: libvirt's states and events mapped as Nova maps them.
* ``_libvirt_xml``: domain XML built with ElementTree from validated values only.
* ``_libvirt_errors``: ``libvirtError`` translated into the driver error tree.

What the driver does, against Nova's libvirt driver:

* ``spawn`` defines a *persistent* domain named ``ism-<uuid>`` with the instance's uuid (a
  managed save needs a persistent domain) and starts it; ``destroy`` destroys and undefines it
  with its managed-save image and snapshot metadata.
* ``power_off(timeout=...)`` is Nova's clean shutdown: ask the guest (ACPI), wait up to
  ``timeout`` (woken by the domain's events, checking at least every ``poll_interval`` and
  asking again every ``shutdown_retry_interval``), then destroy.
* ``reboot`` SOFT is Nova's soft reboot: a clean shutdown within ``soft_reboot_timeout`` and a
  start; a guest that does not go down is hard-rebooted instead. HARD destroys and starts.
* ``suspend`` is Nova's managed save (the domain is then shut off, so
  ``capabilities.suspended_power_state`` is SHUTDOWN); ``resume`` starts from the saved image.
* Resize stays on this node (one libvirt connection is one host): the guest is powered off,
  redefined with the new (or, on revert, the old) flavor and started.
* What one disk-less node cannot do raises :class:`~drivers.base.UnsupportedOperation`: rescue
  (no rescue image), live migration (no second host), and snapshot where the hypervisor has no
  disk to snapshot (QEMU). ``capabilities`` says so in advance.
* Keepalive on remote connections; when the connection drops (the daemon restarted), it is
  reopened with bounded retries and back-off, then every ``ism-`` domain's current state is
  replayed as the matching lifecycle event, so the engine's power sync reconciles what changed
  while nobody was listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import attrs

from ._libvirt_calls import Offloader
from ._libvirt_errors import HypervisorError, LibvirtUnavailable, translate
from ._libvirt_events import EventRelay, ensure_event_thread, thread_transition
from ._libvirt_options import LibvirtOptions
from ._libvirt_states import RESYNC_TRANSITIONS, power_state_of
from ._libvirt_xml import (
    DOMAIN_PREFIX,
    ValidGuest,
    checked_text,
    checked_uuid,
    domain_xml,
    snapshot_xml,
    validate_guest,
)
from .base import (
    Capabilities,
    DriverError,
    GuestFlavor,
    GuestNotFound,
    GuestSpec,
    HostInfo,
    HostUnavailable,
    InsufficientResources,
    LifecycleEvent,
    PowerState,
    RebootType,
    UnsupportedOperation,
)

__all__ = [
    "HypervisorError",
    "LibvirtDriver",
    "LibvirtOptions",
    "LibvirtUnavailable",
]

log = logging.getLogger("ism.drivers.libvirt")

T = TypeVar("T")

#: URI schemes (before any ``+transport``) and the ``<domain type>`` each defines.
_DOMAIN_TYPES = {"test": "test", "qemu": "qemu"}


def _load_libvirt() -> ModuleType:
    """Import libvirt-python, or say how to get it."""
    try:
        return importlib.import_module("libvirt")
    except ImportError as exc:
        raise LibvirtUnavailable(
            "libvirt-python is not installed: pip install 'ism-engine[libvirt]' "
            "(it builds against libvirt-dev and pkg-config)"
        ) from exc


def _domain_type(uri: str, options: LibvirtOptions) -> str:
    scheme = urlsplit(uri).scheme.split("+", 1)[0]
    if scheme not in _DOMAIN_TYPES:
        raise UnsupportedOperation(
            "connect", f"URI scheme {scheme!r} (supported: {', '.join(sorted(_DOMAIN_TYPES))})"
        )
    return options.virt_type if scheme == "qemu" else _DOMAIN_TYPES[scheme]


class _Connection:
    """One open libvirt connection and everything registered on it (so all can be undone)."""

    def __init__(self, conn: Any, lifecycle_id: int, generation: int) -> None:
        self.conn = conn
        self.lifecycle_id = lifecycle_id
        self.generation = generation


class LibvirtDriver:
    """A :class:`~drivers.base.Driver` on one libvirt node (see the module docstring).

    Use ``async with LibvirtDriver(uri) as driver`` (or ``await driver.open()`` and
    ``await driver.aclose()``) on the loop that will consume its events.

    Args:
        uri: A libvirt URI: ``test:///path/node.xml`` (libvirt's test hypervisor, in process),
            ``qemu:///system`` (a local libvirtd), ``qemu+ssh://host/system`` ….
        options: Delays, bounds and retries.

    Raises:
        UnsupportedOperation: the URI's hypervisor is not one ism builds domains for.
        InvalidGuest: the URI holds characters no URI may.
    """

    def __init__(self, uri: str, *, options: LibvirtOptions | None = None) -> None:
        self.uri = checked_text("uri", uri, limit=4096)
        self.options = options or LibvirtOptions()
        self._domain_type = _domain_type(uri, self.options)
        self._lv: ModuleType | None = None
        self._calls: Offloader | None = None
        self._relay: EventRelay | None = None
        self._connection: _Connection | None = None
        self._generation = 0
        self._host: HostInfo | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False
        self.reconnects = 0

    # -- opening and closing --------------------------------------------------------------------

    async def open(self) -> LibvirtDriver:
        """Connect (libvirt's event thread first), then learn the node. Returns ``self``.

        Raises:
            LibvirtUnavailable: libvirt-python is missing.
            HostUnavailable: the hypervisor did not accept the connection.
        """
        if self._calls is not None:
            return self
        lv = _load_libvirt()
        ensure_event_thread(lv)  # must exist before the first connection is opened
        self._lv = lv
        opts = self.options
        self._calls = Offloader(
            max_workers=opts.max_workers, grace=opts.call_grace, lock_timeout=opts.lock_timeout
        )
        self._relay = EventRelay(stopped_delay=opts.stopped_event_delay, buffer=opts.event_buffer)
        try:
            await self._connect()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aenter__(self) -> LibvirtDriver:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel held events, stop reconnecting, deregister callbacks, close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._relay is not None:
            self._relay.close()
        task, self._reconnecting = self._reconnecting, None
        if task is not None:
            task.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task}, timeout=self.options.call_grace)
        connection, self._connection = self._connection, None
        if connection is not None and self._calls is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.options.call_grace):
                await self._calls.run(self._release, connection)
        if self._calls is not None:
            self._calls.shutdown()

    # -- the connection ---------------------------------------------------------------------------

    def _open_connection(self, generation: int) -> tuple[_Connection, HostInfo]:
        """On a worker thread: open, register the callbacks, enable keepalive, learn the node.

        On failure half-way, whatever was registered is deregistered before the close.
        """
        lv, relay, opts = self._libvirt, self._events, self.options
        conn = lv.open(self.uri)
        connection = _Connection(conn, -1, generation)
        try:

            def lifecycle(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
                relay.from_thread(dom.UUIDString(), thread_transition(lv, dom, event, detail))

            connection.lifecycle_id = conn.domainEventRegisterAny(
                None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None
            )
            conn.registerCloseCallback(self._closed_from_thread, generation)
            try:
                conn.setKeepAlive(opts.keepalive_interval, opts.keepalive_count)
            except lv.libvirtError as exc:
                if exc.get_error_code() != lv.VIR_ERR_NO_SUPPORT:
                    raise  # local drivers (test://) have no keepalive: nothing can drop
            info = conn.getInfo()
            host = HostInfo(
                name=conn.getHostname(),
                up=True,
                vcpus=int(int(info[2]) * opts.cpu_allocation_ratio),
                memory_mb=int(int(info[1]) * opts.ram_allocation_ratio),
                disk_gb=opts.disk_gb,
            )
            return connection, host
        except BaseException:
            self._release(connection)
            raise

    def _release(self, connection: _Connection) -> None:
        """On a worker thread: deregister every callback, then close (libvirt's required order)."""
        lv, conn = self._libvirt, connection.conn
        undo: list[Callable[[], object]] = []
        if connection.lifecycle_id >= 0:
            undo.append(lambda: conn.domainEventDeregisterAny(connection.lifecycle_id))
        undo += [conn.unregisterCloseCallback, conn.close]
        for step in undo:
            try:
                step()
            except lv.libvirtError as exc:  # a dead connection refuses; closing still frees it
                log.debug("releasing a libvirt connection: %s", exc)

    async def _connect(self) -> None:
        self._generation += 1
        try:
            connection, host = await self._pool.run(self._open_connection, self._generation)
        except self._libvirt.libvirtError as exc:
            raise HostUnavailable(self.uri) from exc
        if self._closed:
            await self._pool.run(self._release, connection)
            return
        self._connection = connection
        self._host = host

    def _closed_from_thread(self, _conn: Any, reason: int, generation: int) -> None:
        """libvirt's close callback (event thread): the daemon went away or stopped answering."""
        if self._relay is not None:
            self._relay.call_from_thread(self._lost, generation, reason)

    def _lost(self, generation: int, reason: int) -> None:
        """On the loop: forget the dead connection and start reconnecting (once)."""
        connection = self._connection
        if self._closed or connection is None or connection.generation != generation:
            return
        log.warning("libvirt connection to %s lost (reason %d); reconnecting", self.uri, reason)
        self._connection = None
        self._set_up(False)
        self._start_reconnect(dead=connection)

    def _start_reconnect(self, dead: _Connection | None = None) -> None:
        if self._closed or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        self._reconnecting = asyncio.get_running_loop().create_task(
            self._reconnect(dead), name=f"ism-libvirt-reconnect:{self.uri}"
        )

    async def _reconnect(self, dead: _Connection | None) -> None:
        """Reopen with bounded retries and back-off, then replay every domain's state."""
        if dead is not None:
            with anyio.move_on_after(self.options.call_grace):
                await self._pool.run(self._release, dead)
        pause = self.options.reconnect_backoff
        for attempt in range(1, self.options.reconnect_attempts + 1):
            try:
                await self._connect()
            except DriverError as exc:
                log.info("reconnect %d to %s failed: %s", attempt, self.uri, exc)
                await anyio.sleep(pause)
                pause = min(pause * 2, self.options.reconnect_backoff_max)
                continue
            self.reconnects += 1
            try:
                await self.resync()
            except DriverError as exc:  # lost again: its close callback starts a new round
                log.warning("resync after reconnecting to %s failed: %s", self.uri, exc)
            return
        log.error(
            "libvirt at %s unreachable after %d attempts; the next operation retries",
            self.uri,
            self.options.reconnect_attempts,
        )

    def _set_up(self, up: bool) -> None:
        if self._host is not None:
            self._host = attrs.evolve(self._host, up=up)

    async def resync(self) -> int:
        """Replay each ``ism-`` domain's current power state as its lifecycle event.

        Used after a reconnect: events sent while the connection was down are lost, and the
        engine acts only on events whose state the driver reports now, so "what it is now" is
        exactly what reconciles it. Returns how many events were published.
        """

        def states(conn: Any) -> list[tuple[str, int]]:
            return [
                (dom.UUIDString(), dom.state()[0])
                for dom in conn.listAllDomains(0)
                if dom.name().startswith(DOMAIN_PREFIX)
            ]

        current = await self._run("resync", None, states)
        published = 0
        for uuid, state in current:
            transition = RESYNC_TRANSITIONS.get(power_state_of(state))
            if transition is not None:
                self._events.publish(uuid, transition)
                published += 1
        return published

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def _libvirt(self) -> ModuleType:
        if self._lv is None:
            raise HostUnavailable(self.uri)
        return self._lv

    @property
    def _pool(self) -> Offloader:
        if self._calls is None:
            raise HostUnavailable(self.uri)
        return self._calls

    @property
    def _events(self) -> EventRelay:
        if self._relay is None:
            raise HostUnavailable(self.uri)
        return self._relay

    @property
    def _host_name(self) -> str | None:
        return self._host.name if self._host is not None else None

    async def _run(self, operation: str, uuid: str | None, func: Callable[[Any], T]) -> T:
        """Run ``func(conn)`` on a worker thread, translating libvirt's errors.

        Raises:
            HostUnavailable: no live connection (a reconnect is started) or it broke meanwhile.
        """
        connection = self._connection
        if self._closed or connection is None:
            self._start_reconnect()
            raise HostUnavailable(self._host_name or self.uri)
        lv = self._libvirt
        try:
            return await self._pool.run(func, connection.conn)
        except lv.libvirtError as exc:
            raise translate(lv, exc, operation=operation, uuid=uuid, host=self._host_name) from exc

    def _lookup(self, conn: Any, uuid: str) -> Any | None:
        """The domain with this uuid, or None (on a worker thread)."""
        lv = self._libvirt
        try:
            return conn.lookupByUUIDString(uuid)
        except lv.libvirtError as exc:
            if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _require(self, conn: Any, uuid: str) -> Any:
        dom = self._lookup(conn, uuid)
        if dom is None:
            raise GuestNotFound(uuid)
        return dom

    def _check_host(self, guest: GuestSpec) -> None:
        if guest.host is not None and self._host is not None and guest.host != self._host.name:
            raise HostUnavailable(guest.host)

    def _state(self, dom: Any) -> PowerState:
        return power_state_of(dom.state()[0])

    def _ignore_invalid(self, call: Callable[[], Any]) -> None:
        """Run a call whose only failure of interest is "already in that state"."""
        lv = self._libvirt
        try:
            call()
        except lv.libvirtError as exc:
            if exc.get_error_code() != lv.VIR_ERR_OPERATION_INVALID:
                raise

    async def _simple(
        self, operation: str, guest: GuestSpec, act: Callable[[Any], object]
    ) -> PowerState:
        """Look the domain up, act on it, report its state; all in one thread call."""
        uuid = checked_uuid(guest.uuid)

        def work(conn: Any) -> PowerState:
            dom = self._require(conn, uuid)
            act(dom)
            return self._state(dom)

        async with self._pool.domain(uuid):
            return await self._run(operation, uuid, work)

    # -- the protocol: inventory -------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        """One disk-less node: no rescue, no live migration; snapshots only on ``test://``."""
        return Capabilities(
            live_migration=False,
            snapshot=self._domain_type == "test",
            rescue=False,
            crash_dump=True,
            suspended_power_state=PowerState.SHUTDOWN,
        )

    async def hosts(self) -> list[HostInfo]:
        """The node, up while its connection is alive (capacity learnt when it connected)."""
        return [] if self._host is None else [self._host]

    async def power_state(self, guest: GuestSpec) -> PowerState:
        """What libvirt reports for the guest now; NOSTATE when it holds no such domain.

        Takes no domain lock: a read never waits behind a long operation (a clean shutdown).
        """
        uuid = checked_uuid(guest.uuid)

        def work(conn: Any) -> PowerState:
            dom = self._lookup(conn, uuid)
            return PowerState.NOSTATE if dom is None else self._state(dom)

        return await self._run("power_state", uuid, work)

    # -- the protocol: building and destroying -------------------------------------------------

    async def spawn(self, guest: GuestSpec, *, power_on: bool = True) -> PowerState:
        """Define the domain (replacing an older definition of the uuid) and start it.

        Raises:
            InvalidGuest: a field cannot be given to libvirt; nothing was defined.
            InsufficientResources: the node lacks the free memory to start it.
        """
        valid = validate_guest(guest)
        self._check_host(guest)
        xml = domain_xml(valid, domain_type=self._domain_type)
        lv = self._libvirt

        def work(conn: Any) -> PowerState:
            old = self._lookup(conn, valid.uuid)
            if old is not None:
                if old.isActive():
                    self._ignore_invalid(old.destroy)
                if old.hasManagedSaveImage(0):
                    old.managedSaveRemove(0)
            if power_on:
                self._check_memory(conn, valid)
            dom = conn.defineXML(xml)
            if power_on:
                try:
                    dom.create()
                except lv.libvirtError:
                    # a domain that cannot start is not left defined behind the error
                    with contextlib.suppress(lv.libvirtError):
                        dom.undefineFlags(self._undefine_flags)
                    raise
            return self._state(dom)

        async with self._pool.domain(valid.uuid):
            return await self._run("spawn", valid.uuid, work)

    def _check_memory(self, conn: Any, valid: ValidGuest) -> None:
        """Refuse to start a guest the node's free memory cannot hold (QEMU would fail later,
        less clearly). The test hypervisor's free-memory figure is not meaningful: skipped."""
        if self._domain_type == "test":
            return
        free_mb = int(conn.getFreeMemory()) // (1024 * 1024)
        if free_mb and valid.memory_mb > free_mb:
            name = self._host_name or self.uri
            raise InsufficientResources(name, GuestFlavor(valid.vcpus, valid.memory_mb, 0))

    @property
    def _undefine_flags(self) -> int:
        lv = self._libvirt
        return int(lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)

    async def destroy(self, guest: GuestSpec) -> PowerState:
        """Power off hard and undefine (with managed save and snapshots); gone already is fine."""
        uuid = checked_uuid(guest.uuid)

        def work(conn: Any) -> PowerState:
            dom = self._lookup(conn, uuid)
            if dom is None:
                return PowerState.NOSTATE
            if dom.isActive():
                self._ignore_invalid(dom.destroy)
            dom.undefineFlags(self._undefine_flags)
            return PowerState.NOSTATE

        async with self._pool.domain(uuid):
            return await self._run("destroy", uuid, work)

    # -- the protocol: power ------------------------------------------------------------------

    async def power_off(self, guest: GuestSpec, *, timeout: float) -> PowerState:
        """Nova's clean shutdown: ask the guest, wait up to ``timeout`` s, then destroy."""
        uuid = checked_uuid(guest.uuid)
        async with self._pool.domain(uuid):
            if not await self._clean_shutdown(uuid, timeout):
                await self._run("power_off", uuid, lambda c: self._hard_off(self._require(c, uuid)))
            return await self._run("power_off", uuid, lambda c: self._state(self._require(c, uuid)))

    def _hard_off(self, dom: Any) -> None:
        if dom.isActive():
            self._ignore_invalid(dom.destroy)

    async def _clean_shutdown(self, uuid: str, timeout: float) -> bool:
        """Ask the guest to shut down and wait for it; True once it is off.

        Woken by any libvirt event for the domain, checking at least every ``poll_interval``
        and asking again every ``shutdown_retry_interval`` (a guest may miss the first ACPI
        request while it boots). Returns False when the guest is still on after ``timeout``.
        """
        lv = self._libvirt

        def off_now(conn: Any) -> bool:
            state = self._require(conn, uuid).state()[0]
            return state in (lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_CRASHED)

        def ask(conn: Any) -> bool:
            dom = self._require(conn, uuid)
            if dom.state()[0] in (lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_CRASHED):
                return True
            try:
                dom.shutdown()
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_OPERATION_INVALID:
                    return False  # e.g. paused: it cannot answer; the caller destroys it
                raise
            return False

        if await self._run("power_off", uuid, ask):
            return True
        if timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_ask = loop.time() + self.options.shutdown_retry_interval
        while True:
            if await self._run("power_off", uuid, off_now):
                return True
            now = loop.time()
            if now >= deadline:
                return False
            if now >= next_ask:
                await self._run("power_off", uuid, ask)
                next_ask = now + self.options.shutdown_retry_interval
            with anyio.move_on_after(min(self.options.poll_interval, deadline - now)):
                await self._events.changed(uuid).wait()

    async def power_on(self, guest: GuestSpec) -> PowerState:
        """Start the domain; one that already runs is left alone."""
        return await self._simple("power_on", guest, self._start)

    def _start(self, dom: Any) -> None:
        if not dom.isActive():
            dom.create()

    async def reboot(self, guest: GuestSpec, *, reboot_type: RebootType) -> PowerState:
        """SOFT: clean shutdown within ``soft_reboot_timeout`` and start, else HARD. HARD:
        destroy and start (Nova's ``_soft_reboot`` falling back to ``_hard_reboot``)."""
        uuid = checked_uuid(guest.uuid)
        async with self._pool.domain(uuid):
            await self._run("reboot", uuid, lambda c: self._require(c, uuid))
            if reboot_type is RebootType.SOFT:
                await self._clean_shutdown(uuid, self.options.soft_reboot_timeout)

            def restart(conn: Any) -> PowerState:
                dom = self._require(conn, uuid)
                self._hard_off(dom)
                if dom.hasManagedSaveImage(0):
                    dom.managedSaveRemove(0)  # a reboot boots afresh (Nova undefines the save)
                dom.create()
                return self._state(dom)

            return await self._run("reboot", uuid, restart)

    async def pause(self, guest: GuestSpec) -> PowerState:
        """Freeze the vCPUs (``virDomainSuspend``)."""
        return await self._simple("pause", guest, lambda dom: dom.suspend())

    async def unpause(self, guest: GuestSpec) -> PowerState:
        """Let the vCPUs run (``virDomainResume``)."""
        return await self._simple("unpause", guest, lambda dom: dom.resume())

    async def suspend(self, guest: GuestSpec) -> PowerState:
        """Nova's suspend: a managed save; the domain is then shut off (SHUTDOWN)."""
        return await self._simple("suspend", guest, lambda dom: dom.managedSave(0))

    async def resume(self, guest: GuestSpec) -> PowerState:
        """Start the domain, which restores it from its managed save."""
        return await self._simple("resume", guest, self._start)

    # -- the protocol: what one disk-less node cannot do ---------------------------------------

    async def rescue(self, guest: GuestSpec, *, rescue_image: str) -> PowerState:
        """Unsupported: ism's libvirt guests are disk-less, there is no rescue image to boot."""
        raise UnsupportedOperation("rescue", "the libvirt driver builds disk-less guests")

    async def unrescue(self, guest: GuestSpec) -> PowerState:
        """Unsupported, like :meth:`rescue`."""
        raise UnsupportedOperation("unrescue", "the libvirt driver builds disk-less guests")

    async def snapshot(self, guest: GuestSpec, *, name: str) -> str:
        """A libvirt snapshot named by a new uuid (returned), described by ``name``.

        Raises:
            UnsupportedOperation: the hypervisor cannot snapshot the guest (QEMU: a disk-less
                domain has nothing to snapshot).
        """
        uuid = checked_uuid(guest.uuid)
        snapshot_id = str(uuidlib.uuid4())
        xml = snapshot_xml(snapshot_id, name)

        def work(conn: Any) -> str:
            self._require(conn, uuid).snapshotCreateXML(xml, 0)
            return snapshot_id

        async with self._pool.domain(uuid):
            return await self._run("snapshot", uuid, work)

    async def trigger_crash_dump(self, guest: GuestSpec) -> None:
        """Inject an NMI (``virDomainInjectNMI``)."""
        await self._simple("trigger_crash_dump", guest, lambda dom: dom.injectNMI(0))

    # -- resize, on this node ----------------------------------------------------------------

    def _same_node(self, operation: str, host: str | None) -> None:
        if host is not None and self._host is not None and host != self._host.name:
            raise UnsupportedOperation(
                operation, f"one libvirt connection is one host ({self._host.name}), not {host}"
            )

    async def migrate_disk_and_power_off(
        self, guest: GuestSpec, *, dest_host: str, flavor: GuestFlavor
    ) -> PowerState:
        """Resize on this node: check the new flavor, then a clean power-off."""
        self._same_node("resize", dest_host)
        validate_guest(guest, flavor)
        return await self.power_off(guest, timeout=self.options.resize_shutdown_timeout)

    async def _redefine(
        self, operation: str, guest: GuestSpec, flavor: GuestFlavor, *, power_on: bool
    ) -> PowerState:
        valid = validate_guest(guest, flavor)
        self._same_node(operation, guest.host)
        xml = domain_xml(valid, domain_type=self._domain_type)

        def work(conn: Any) -> PowerState:
            self._hard_off(self._require(conn, valid.uuid))
            dom = conn.defineXML(xml)
            if power_on:
                dom.create()
            return self._state(dom)

        async with self._pool.domain(valid.uuid):
            return await self._run(operation, valid.uuid, work)

    async def finish_migration(
        self, guest: GuestSpec, *, flavor: GuestFlavor, power_on: bool
    ) -> PowerState:
        """Redefine the domain with ``flavor`` and start it if asked."""
        return await self._redefine("finish_migration", guest, flavor, power_on=power_on)

    async def confirm_migration(self, guest: GuestSpec, *, source_host: str) -> None:
        """Nothing to free: the resize happened in place."""
        self._same_node("confirm_migration", source_host)

    async def finish_revert_migration(self, guest: GuestSpec, *, power_on: bool) -> PowerState:
        """Redefine the domain with its old flavor (``guest.flavor``), start it if asked."""
        return await self._redefine(
            "finish_revert_migration", guest, guest.flavor, power_on=power_on
        )

    # -- live migration: one node has no destination -----------------------------------------

    def _no_live_migration(self, operation: str) -> UnsupportedOperation:
        return UnsupportedOperation(operation, "one libvirt connection has no second host")

    async def pre_live_migration(self, guest: GuestSpec, *, dest_host: str) -> None:
        """Unsupported: there is no destination node."""
        raise self._no_live_migration("live migration")

    async def live_migration(self, guest: GuestSpec, *, dest_host: str) -> None:
        """Unsupported: there is no destination node."""
        raise self._no_live_migration("live migration")

    async def live_migration_abort(self, guest: GuestSpec) -> None:
        """Unsupported: no live migration ever runs."""
        raise self._no_live_migration("live migration abort")

    async def live_migration_force_complete(self, guest: GuestSpec) -> None:
        """Unsupported: no live migration ever runs."""
        raise self._no_live_migration("live migration force-complete")

    async def post_live_migration_at_destination(
        self, guest: GuestSpec, *, dest_host: str
    ) -> PowerState:
        """Unsupported: no live migration ever runs."""
        raise self._no_live_migration("live migration")

    async def rollback_live_migration_at_destination(
        self, guest: GuestSpec, *, dest_host: str
    ) -> None:
        """Nothing was prepared anywhere, so nothing to roll back (the engine's error path)."""

    # -- the protocol: events --------------------------------------------------------------------

    async def events(self) -> AsyncIterator[LifecycleEvent]:
        """The lifecycle events of this connection, ending once the driver is closed."""
        relay = self._relay
        if relay is None or relay.closed:
            return
        try:
            stream = relay.stream()
        except anyio.ClosedResourceError:
            return
        with stream:
            async for event in stream:
                yield event

    def statistics(self) -> dict[str, int]:
        """Counters for tests and operators: events held and dropped, calls busy, reconnects."""
        relay, calls = self._relay, self._calls
        return {
            "events_held": relay.held if relay else 0,
            "events_dropped": relay.dropped if relay else 0,
            "calls_busy": calls.busy if calls else 0,
            "calls_waiting": calls.waiting if calls else 0,
            "calls_abandoned": calls.abandoned if calls else 0,
            "reconnects": self.reconnects,
        }
