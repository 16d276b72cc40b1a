"""The libvirt driver's own behaviour: Nova's mappings, the event relay, safe XML, bounded
offloading, the event thread serving many loops, cancellation, clean shutdown on real QEMU,
and reconnecting after libvirtd restarts.

Pure parts (mappings, relay, XML, offloader) run everywhere; the rest needs libvirt-python
(and, for QEMU, a running libvirtd) and skips or fails per ``tests/libvirt_support.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from drivers import (
    GuestFlavor,
    GuestSpec,
    InvalidGuest,
    LifecycleEvent,
    LifecycleTransition,
    PowerState,
    UnsupportedOperation,
)
from drivers._libvirt_calls import Offloader
from drivers._libvirt_events import EventRelay
from drivers._libvirt_states import (
    POWER_STATES,
    DomainEvent,
    DomainState,
    SuspendedDetail,
    power_state_of,
    transition_for,
)
from drivers._libvirt_xml import METADATA_NS, domain_xml, validate_guest
from drivers.libvirt import LibvirtDriver, LibvirtOptions, LibvirtUnavailable
from statemachine.clock import run_virtual, to_thread
from tests.libvirt_support import (
    FAST,
    QEMU_URI,
    empty_node_uri,
    leftover_domains,
    libvirt_module,
    missing,
    purge,
    require_qemu,
    services_required,
)

TINY = GuestFlavor(vcpus=1, memory_mb=32, root_gb=1)
T = LifecycleTransition


def spec(**overrides: Any) -> GuestSpec:
    """A tiny guest with a fresh uuid, named ``vm`` unless overridden."""
    fields: dict[str, Any] = {
        "uuid": str(uuidlib.uuid4()),
        "name": "vm",
        "host": None,
        "flavor": TINY,
        "image": "none",
    }
    fields.update(overrides)
    return GuestSpec(**fields)


# -- Nova's mappings (reference/nova-lifecycle.md §4) -----------------------------------------


def test_mirrored_constants_are_libvirts() -> None:
    """The states, events and details mirrored for import without libvirt match the bindings."""
    lv = libvirt_module()
    for state in DomainState:
        assert getattr(lv, f"VIR_DOMAIN_{state.name}") == state
    for event in DomainEvent:
        assert getattr(lv, f"VIR_DOMAIN_EVENT_{event.name}") == event
    for detail in SuspendedDetail:
        assert getattr(lv, f"VIR_DOMAIN_EVENT_SUSPENDED_{detail.name}") == detail


def test_domain_states_map_as_novas_libvirt_power_state() -> None:
    """Every libvirt state maps as Nova's LIBVIRT_POWER_STATE; unknown values are NOSTATE."""
    assert dict(POWER_STATES) == {
        DomainState.NOSTATE: PowerState.NOSTATE,
        DomainState.RUNNING: PowerState.RUNNING,
        DomainState.BLOCKED: PowerState.RUNNING,
        DomainState.PAUSED: PowerState.PAUSED,
        DomainState.SHUTDOWN: PowerState.SHUTDOWN,
        DomainState.SHUTOFF: PowerState.SHUTDOWN,
        DomainState.CRASHED: PowerState.CRASHED,
        DomainState.PMSUSPENDED: PowerState.SUSPENDED,
    }
    assert power_state_of(99) is PowerState.NOSTATE


@pytest.mark.parametrize(
    ("event", "detail", "completed", "expected"),
    [
        (DomainEvent.STOPPED, 0, False, T.STOPPED),
        (DomainEvent.STARTED, 0, False, T.STARTED),
        (DomainEvent.RESUMED, 0, False, T.RESUMED),
        (DomainEvent.SUSPENDED, SuspendedDetail.PAUSED, False, T.PAUSED),
        (DomainEvent.SUSPENDED, SuspendedDetail.POSTCOPY, False, T.POSTCOPY_STARTED),
        (DomainEvent.SUSPENDED, SuspendedDetail.MIGRATED, True, T.MIGRATION_COMPLETED),
        (DomainEvent.SUSPENDED, SuspendedDetail.MIGRATED, False, T.PAUSED),
        (DomainEvent.DEFINED, 0, False, None),
        (DomainEvent.UNDEFINED, 0, False, None),
        (DomainEvent.SHUTDOWN, 0, False, None),
        (DomainEvent.PMSUSPENDED, 0, False, None),
        (DomainEvent.CRASHED, 0, False, None),
    ],
)
def test_events_translate_as_novas_host(
    event: int, detail: int, completed: bool, expected: LifecycleTransition | None
) -> None:
    """Each libvirt event becomes the transition Nova's host.py gives it, or nothing."""
    assert transition_for(event, detail, migration_completed=completed) is expected


# -- the relay: Nova's STOPPED delay, on virtual time --------------------------------------------


def test_stopped_is_held_fifteen_seconds() -> None:
    """A lone STOPPED reaches the stream 15 s after libvirt sent it (Nova's delay)."""

    async def main() -> list[tuple[float, T]]:
        relay = EventRelay(stopped_delay=15.0, buffer=10)
        stream = relay.stream()
        relay.receive("a", T.STOPPED)
        assert relay.held == 1
        with anyio.fail_after(60):
            event = await stream.receive()
        relay.close()
        stream.close()
        return [(event.timestamp, event.transition)]

    assert run_virtual(main) == [(15.0, T.STOPPED)]


def test_a_later_event_cancels_the_held_stopped() -> None:
    """A reboot's STOPPED then STARTED reaches the engine as STARTED alone; other guests keep
    their own held STOPPED."""

    async def main() -> list[tuple[str, float, T]]:
        relay = EventRelay(stopped_delay=15.0, buffer=10)
        stream = relay.stream()
        relay.receive("a", T.STOPPED)
        relay.receive("b", T.STOPPED)
        await anyio.sleep(5)
        relay.receive("a", T.STARTED)
        relay.receive("b", None)  # DEFINED and friends do not cancel (Nova never forwards them)
        seen = []
        with anyio.move_on_after(100):
            async for event in stream:
                seen.append((event.uuid, event.timestamp, event.transition))
        relay.close()
        stream.close()
        return seen

    assert run_virtual(main) == [("a", 5.0, T.STARTED), ("b", 15.0, T.STOPPED)]


def test_close_cancels_held_events_and_ends_the_stream() -> None:
    """Closing drops held STOPPED events (Nova cancels them on shutdown) and ends iteration."""

    async def main() -> list[T]:
        relay = EventRelay(stopped_delay=15.0, buffer=10)
        stream = relay.stream()
        relay.receive("a", T.PAUSED)
        relay.receive("b", T.STOPPED)
        relay.close()
        assert relay.held == 0
        await anyio.sleep(60)
        with stream:
            return [event.transition async for event in stream]

    assert run_virtual(main) == [T.PAUSED]


def test_a_full_stream_drops_the_newest_and_counts_it() -> None:
    """Past its bound the relay drops new events and counts them, never growing."""

    async def main() -> tuple[int, int]:
        relay = EventRelay(stopped_delay=0, buffer=2)
        stream = relay.stream()
        for _ in range(5):
            relay.receive("a", T.STARTED)
        relay.close()
        with stream:
            kept = len([e async for e in stream])
        return kept, relay.dropped

    assert run_virtual(main) == (2, 3)


# -- domain XML from validated values only ------------------------------------------------------

HOSTILE_BUT_CARRIED = [
    "</name><devices><disk type='file'><source file='/etc/shadow'/></disk></devices><name>",
    "\"'; <!-- --> ]]> <![CDATA[x]]> &amp; &lt;",
    "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>&x;",
    "ünïcødé ☃ 名前",
]


@pytest.mark.parametrize("name", HOSTILE_BUT_CARRIED, ids=range(len(HOSTILE_BUT_CARRIED)))
def test_hostile_names_are_carried_as_text_only(name: str) -> None:
    """A name full of markup comes back byte for byte as the metadata's text, and the domain
    keeps exactly its own structure: no element, attribute or entity is injected."""
    guest = validate_guest(spec(name=name, image=name))
    root = ET.fromstring(domain_xml(guest, domain_type="test"))
    assert [child.tag for child in root] == [
        "name",
        "uuid",
        "metadata",
        "memory",
        "vcpu",
        "os",
        "features",
        "on_poweroff",
        "on_reboot",
        "on_crash",
        "devices",
    ]
    assert root.findtext("name") == f"ism-{guest.uuid}"
    devices = root.find("devices")
    assert devices is not None
    assert len(devices) == 0
    instance = root.find(f"metadata/{{{METADATA_NS}}}instance")
    assert instance is not None
    assert instance.findtext(f"{{{METADATA_NS}}}name") == name
    assert instance.findtext(f"{{{METADATA_NS}}}image") == name
    ns = f"{{{METADATA_NS}}}"
    assert [element.tag for element in root.iter()] == [
        *("domain", "name", "uuid", "metadata"),
        *(f"{ns}instance", f"{ns}name", f"{ns}image"),
        *("memory", "vcpu", "os", "type", "features", "acpi"),
        *("on_poweroff", "on_reboot", "on_crash", "devices"),
    ]


HOSTILE_REFUSED: list[tuple[str, object]] = [
    ("name", "evil\x00name"),
    ("name", "bell\x07"),
    ("name", "line\nbreak"),
    ("name", "esc\x1b[31m"),
    ("name", "x" * 10_240),
    ("name", "lone \udcff surrogate"),  # what surrogateescape makes of the byte 0xff
    ("name", b"non-utf-8 \xff"),
    ("name", ""),
    ("name", " padded "),
    ("name", "non-character \ufffe"),
    ("image", "img\x00"),
    ("uuid", "not-a-uuid"),
    ("uuid", "'/><devices/>"),
]


@pytest.mark.parametrize(
    ("field", "value"),
    HOSTILE_REFUSED,
    ids=[f"{f}-{i}" for i, (f, _) in enumerate(HOSTILE_REFUSED)],
)
def test_values_xml_cannot_carry_are_refused_with_a_typed_error(field: str, value: object) -> None:
    """Control characters, 10 kB names, lone surrogates, bytes and bad uuids are InvalidGuest."""
    with pytest.raises(InvalidGuest) as caught:
        validate_guest(spec(**{field: value}))
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "flavor",
    [
        GuestFlavor(0, 32, 1),
        GuestFlavor(1, 0, 1),
        GuestFlavor(True, 32, 1),
        GuestFlavor(1, 2**40, 1),
    ],
)
def test_impossible_flavors_are_refused(flavor: GuestFlavor) -> None:
    """A flavor with no vCPU, no memory, a bool, or absurd memory is InvalidGuest."""
    with pytest.raises(InvalidGuest):
        validate_guest(spec(flavor=flavor))


@pytest.mark.libvirt
@pytest.mark.asyncio
async def test_a_refused_guest_defines_nothing_on_the_hypervisor(tmp_path: Path) -> None:
    """Spawning hostile guests raises InvalidGuest and leaves the hypervisor empty."""
    lv = libvirt_module()
    uri = empty_node_uri(tmp_path)
    async with LibvirtDriver(uri, options=FAST) as driver:
        for field, value in HOSTILE_REFUSED:
            with pytest.raises(InvalidGuest):
                await driver.spawn(spec(**{field: value}))
        carried = spec(name=HOSTILE_BUT_CARRIED[0])
        assert await driver.spawn(carried) is PowerState.RUNNING
        conn = driver._connection.conn if driver._connection else None
        assert conn is not None
        domains = conn.listAllDomains(0)
        assert [d.name() for d in domains] == [f"ism-{carried.uuid}"]
        xml = ET.fromstring(domains[0].XMLDesc(0))
        assert (
            xml.findtext(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}name")
            == (HOSTILE_BUT_CARRIED[0])
        )
        assert xml.find("devices/disk") is None
        await driver.destroy(carried)
    assert leftover_domains(lv, uri, {carried.uuid}) == []


# -- bounded offloading ------------------------------------------------------------------------


def test_a_burst_never_runs_more_threads_than_the_pool() -> None:
    """Fifty concurrent blocking calls run at most ``max_workers`` at a time; the rest wait
    on the async side, and all of them finish."""
    lock = threading.Lock()
    running = peak = 0

    def blocking(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)  # a thread standing in for a blocking libvirt call
        with lock:
            running -= 1
        return i

    async def main() -> list[int]:
        calls = Offloader(max_workers=3, grace=10, lock_timeout=10)
        results: list[int] = []

        async def one(i: int) -> None:
            results.append(await calls.run(blocking, i))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
        calls.shutdown()
        return sorted(results)

    assert run_virtual(main) == list(range(50))
    assert peak == 3


def test_a_cancelled_call_keeps_its_domain_until_the_thread_ends() -> None:
    """A call cancelled mid-thread still finishes before the next operation on its domain
    starts, and the virtual clock does not move while the thread works."""
    gate, entered = threading.Event(), threading.Event()
    order: list[str] = []

    def slow() -> None:
        entered.set()
        gate.wait(10)
        order.append("first call ended")

    async def main() -> float:
        calls = Offloader(max_workers=2, grace=30, lock_timeout=60)
        scope = anyio.CancelScope()

        async def first() -> None:
            with scope:
                async with calls.domain("d"):
                    await calls.run(slow)

        async def second() -> None:
            async with calls.domain("d"):
                order.append("second started")

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.to_thread.run_sync(entered.wait, 10)
            scope.cancel()  # the first caller is cancelled while its thread runs
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            assert order == []  # the second waits for the domain, the first for its thread
            gate.set()
        calls.shutdown()
        return anyio.current_time() - started

    loop_seconds = run_virtual(main)
    assert order == ["first call ended", "second started"]
    assert loop_seconds == 0.0  # the virtual clock held still while the thread worked


# -- the event thread serves every loop --------------------------------------------------------


async def _started_event_on_this_loop(uri: str) -> LifecycleTransition:
    """Spawn a guest and return the first event heard on the running loop.

    The wait is a thread waiting (at most 30 real seconds) for the event to arrive, through
    ``statemachine.clock.to_thread``: a virtual clock holds still for it, where a virtual
    deadline would expire at once, before libvirt's thread delivered anything.
    """
    async with LibvirtDriver(uri, options=FAST) as driver:
        guest = spec()
        events = aiter(driver.events())
        heard: list[LifecycleEvent] = []
        arrived = threading.Event()

        async def receive() -> None:
            heard.append(await anext(events))
            arrived.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await driver.spawn(guest)
            assert await to_thread(arrived.wait, 30.0)
        await events.aclose()  # type: ignore[attr-defined]
        await driver.destroy(guest)
        (event,) = heard
        assert event.uuid == guest.uuid
        return event.transition


@pytest.mark.libvirt
def test_events_reach_each_new_event_loop(tmp_path: Path) -> None:
    """Drivers opened on three successive loops (asyncio, virtual time, asyncio again) each
    receive their own events: the one-event-loop limit of libvirtaio does not apply."""
    libvirt_module()
    uri = empty_node_uri(tmp_path)
    assert asyncio.run(_started_event_on_this_loop(uri)) is T.STARTED
    assert run_virtual(_started_event_on_this_loop, uri) is T.STARTED
    assert asyncio.run(_started_event_on_this_loop(uri)) is T.STARTED


@pytest.mark.libvirt
def test_two_loops_at_once_each_hear_their_own_domains(tmp_path: Path) -> None:
    """Two drivers on two loops in two threads, at the same time, each get their events."""
    libvirt_module()
    results: list[LifecycleTransition] = []
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        directory = tmp_path / str(index)
        directory.mkdir()
        try:
            results.append(asyncio.run(_started_event_on_this_loop(empty_node_uri(directory))))
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert results == [T.STARTED, T.STARTED]


# -- cancellation: a preempting delete still destroys the domain --------------------------------


@pytest.mark.libvirt
@pytest.mark.asyncio
async def test_destroy_after_a_cancelled_spawn_waits_for_it_and_removes_the_domain(
    tmp_path: Path,
) -> None:
    """A spawn cancelled while libvirt defines the domain in a thread is followed by the
    destroy only once the definition and start are done, so nothing is left behind."""
    lv = libvirt_module()
    uri = empty_node_uri(tmp_path)
    gate, entered = threading.Event(), threading.Event()
    async with LibvirtDriver(uri, options=FAST) as driver:
        assert driver._connection is not None
        conn = driver._connection.conn
        real_define = conn.defineXML

        def held_define(xml: str) -> Any:
            entered.set()
            gate.wait(10)
            return real_define(xml)

        conn.defineXML = held_define  # the real call, held at its door so it is surely in flight
        guest = spec()
        scope = anyio.CancelScope()
        destroyed: list[PowerState] = []

        async def spawn() -> None:
            with scope:
                await driver.spawn(guest)

        async def delete() -> None:
            destroyed.append(await driver.destroy(guest))

        async with anyio.create_task_group() as tg:
            tg.start_soon(spawn)
            await anyio.to_thread.run_sync(entered.wait, 10)
            scope.cancel()  # a preemption: the spawn's task is cancelled, its thread is not
            tg.start_soon(delete)
            await anyio.wait_all_tasks_blocked()
            assert destroyed == []  # destroy waits for the spawn still in its thread
            gate.set()
        assert destroyed == [PowerState.NOSTATE]
        assert await driver.power_state(guest) is PowerState.NOSTATE
    assert leftover_domains(lv, uri, {guest.uuid}) == []


# -- configuration and absence -----------------------------------------------------------------


def test_uris_of_unknown_hypervisors_are_refused() -> None:
    """A URI for a hypervisor ism builds no domains for is a capability error up front."""
    with pytest.raises(UnsupportedOperation):
        LibvirtDriver("xen:///system")
    with pytest.raises(InvalidGuest):
        LibvirtDriver("test:///default\n")


@pytest.mark.parametrize(
    "options",
    [{"stopped_event_delay": -1}, {"max_workers": 0}, {"call_grace": 0}, {"virt_type": "xen"}],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    """Options out of range are a ValueError when built."""
    with pytest.raises(ValueError):  # noqa: PT011  # attrs validators raise plain ValueError
        LibvirtOptions(**options)


@pytest.mark.asyncio
async def test_without_libvirt_python_opening_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the bindings absent, opening raises LibvirtUnavailable naming the extra."""
    monkeypatch.setitem(sys.modules, "libvirt", None)
    with pytest.raises(LibvirtUnavailable, match=r"ism-engine\[libvirt\]"):
        await LibvirtDriver("test:///default").open()


def test_importing_drivers_does_not_import_libvirt() -> None:
    """``import drivers`` and ``import drivers.libvirt`` leave libvirt unimported."""
    code = "import sys, drivers, drivers.libvirt; print('libvirt' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


# -- real QEMU ---------------------------------------------------------------------------------


@pytest.mark.libvirt
@pytest.mark.qemu
@pytest.mark.asyncio
async def test_qemu_guest_that_ignores_shutdown_is_destroyed_after_the_timeout() -> None:
    """On QEMU a guest with no OS ignores the ACPI request: power_off waits the whole timeout,
    then destroys it (libvirt records the shut-off reason as destroyed)."""
    lv = require_qemu()
    guest = spec()
    try:
        async with LibvirtDriver(QEMU_URI, options=FAST) as driver:
            await driver.spawn(guest)
            started = time.monotonic()
            assert await driver.power_off(guest, timeout=2.0) is PowerState.SHUTDOWN
            elapsed = time.monotonic() - started
            assert driver._connection is not None
            dom = driver._connection.conn.lookupByUUIDString(guest.uuid)
            assert dom.state() == [lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_SHUTOFF_DESTROYED]
            await driver.destroy(guest)
        assert 2.0 <= elapsed < 30.0
    finally:
        purge(lv, QEMU_URI, {guest.uuid})


@pytest.mark.libvirt
@pytest.mark.qemu
@pytest.mark.asyncio
async def test_qemu_suspend_is_a_managed_save_and_resume_restores_it() -> None:
    """Suspend leaves the QEMU domain shut off with a managed-save image; resume restores it."""
    lv = require_qemu()
    guest = spec()
    try:
        async with LibvirtDriver(QEMU_URI, options=FAST) as driver:
            await driver.spawn(guest)
            assert await driver.suspend(guest) is PowerState.SHUTDOWN
            assert driver._connection is not None
            dom = driver._connection.conn.lookupByUUIDString(guest.uuid)
            assert dom.hasManagedSaveImage(0) == 1
            assert dom.state() == [lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_SHUTOFF_SAVED]
            assert await driver.resume(guest) is PowerState.RUNNING
            assert dom.state()[1] == lv.VIR_DOMAIN_RUNNING_RESTORED
            await driver.destroy(guest)
    finally:
        purge(lv, QEMU_URI, {guest.uuid})


@pytest.mark.libvirt
@pytest.mark.qemu
@pytest.mark.asyncio
async def test_qemu_cannot_snapshot_a_diskless_domain() -> None:
    """QEMU's refusal to snapshot a disk-less domain is an UnsupportedOperation, as declared."""
    lv = require_qemu()
    guest = spec()
    try:
        async with LibvirtDriver(QEMU_URI, options=FAST) as driver:
            assert driver.capabilities.snapshot is False
            await driver.spawn(guest)
            with pytest.raises(UnsupportedOperation, match="snapshot"):
                await driver.snapshot(guest, name="nightly")
            assert await driver.power_state(guest) is PowerState.RUNNING
            await driver.destroy(guest)
    finally:
        purge(lv, QEMU_URI, {guest.uuid})


def _libvirtd_pid() -> int | None:
    try:
        return int(Path("/run/libvirtd.pid").read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


@pytest.mark.libvirt
@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.asyncio
async def test_qemu_reconnects_after_libvirtd_restarts_and_resyncs() -> None:
    """When libvirtd restarts, the driver notices (keepalive / EOF), reconnects with back-off,
    reports the host down then up, and replays each domain's current state as an event.

    It restarts the machine's libvirtd, so it runs only where CI owns the machine
    (``ISM_REQUIRE_SERVICES=1``) and libvirtd was started by hand (a pid file, no systemd).
    """
    lv = require_qemu()
    pid = _libvirtd_pid()
    if not services_required():
        pytest.skip("restarts libvirtd: only under ISM_REQUIRE_SERVICES=1 with a hand-run daemon")
    if pid is None:
        missing("no /run/libvirtd.pid: .ci/libvirt-services starts libvirtd by hand and this test "
                "restarts it")  # fmt: skip
    guest = spec()
    options = LibvirtOptions(
        stopped_event_delay=0.2, reconnect_backoff=0.2, reconnect_backoff_max=1.0
    )
    try:
        async with LibvirtDriver(QEMU_URI, options=options) as driver:
            await driver.spawn(guest)
            events = aiter(driver.events())
            await anyio.run_process(["kill", "-TERM", str(pid)])
            with anyio.fail_after(60):
                # the driver's public view; it has no "went down" event to wait on
                while (await driver.hosts())[0].up:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
                while await anyio.Path(f"/proc/{pid}").exists():  # noqa: ASYNC110
                    await anyio.sleep(0.1)  # the old daemon must be gone before the new one
            restarted = asyncio.get_running_loop().time()
            await anyio.run_process(["libvirtd", "-d"])
            with anyio.fail_after(120):
                while True:
                    event = await anext(events)
                    if event.uuid == guest.uuid and event.timestamp >= restarted:
                        break
            assert event.transition is T.STARTED  # the resync: it still runs
            assert (await driver.hosts())[0].up
            assert driver.reconnects == 1
            assert await driver.power_state(guest) is PowerState.RUNNING
            assert await driver.destroy(guest) is PowerState.NOSTATE
            await events.aclose()  # type: ignore[attr-defined]
    finally:
        if not await anyio.Path(f"/proc/{_libvirtd_pid()}").exists():
            await anyio.run_process(["libvirtd", "-d"], check=False)
        purge(lv, QEMU_URI, {guest.uuid})
