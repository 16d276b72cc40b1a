"""Libvirt's event loop on one thread per process, and the relay into each consumer's loop.

Why not ``libvirtaio``: libvirt accepts one event implementation per process, registered once,
and ``libvirtaio`` binds it to the asyncio loop that registered it. Every other loop (each of
pytest-asyncio's per-test loops, a second engine's loop, a fresh ``asyncio.run``) then hears
nothing, and registering again raises. ism instead registers libvirt's *default* event
implementation (``virEventRegisterDefaultImpl``) once, before the first connection is opened
(libvirt needs it to exist then, for events and keepalive), and runs
``virEventRunDefaultImpl`` forever on one daemon thread. That thread belongs to no asyncio loop:
each driver records the loop it was opened on, and the callbacks that fire on the thread hand
their data to that loop with ``loop.call_soon_threadsafe``. Any number of drivers, on any
number of loops, one after another or at once, all receive their own connection's events.

On the consumer's loop, :class:`EventRelay` applies Nova's rules (``reference/nova-lifecycle.md``
§4): translate the event (:func:`~drivers._libvirt_states.transition_for`), hold STOPPED for a
delay because a reboot is STOPPED then STARTED, cancel a held STOPPED when any later forwarded
event for the same domain arrives, cancel all held ones on close, and publish into a bounded
stream (when full, the newest event is dropped and counted: a lost event is corrected by the
next resync or action, and memory stays bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVarTuple

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._libvirt_errors import LibvirtUnavailable
from ._libvirt_states import transition_for
from .base import LifecycleEvent, LifecycleTransition

__all__ = ["EventRelay", "ensure_event_thread", "thread_transition"]

log = logging.getLogger("ism.drivers.libvirt")

Ts = TypeVarTuple("Ts")

_guard = threading.Lock()
_thread: threading.Thread | None = None

#: Pause after a failed iteration of libvirt's loop, so a persistent failure cannot spin a core.
_ERROR_PAUSE = 0.1


def _run_forever(lv: ModuleType) -> None:
    """The event thread: dispatch libvirt's timers and sockets for the life of the process."""
    while True:
        try:
            lv.virEventRunDefaultImpl()
        except Exception:  # never let the one event thread die
            log.exception("libvirt event loop iteration failed")
            time.sleep(_ERROR_PAUSE)  # a plain thread, outside any event loop


def ensure_event_thread(lv: ModuleType) -> None:
    """Register libvirt's default event implementation and start its thread, once per process.

    Also silences libvirt's habit of printing every error to stderr: the driver translates each
    error into an exception, so the print would only repeat it.

    Raises:
        LibvirtUnavailable: another event implementation (e.g. ``libvirtaio``) was registered
            first, so libvirt refuses ours.
    """
    global _thread
    with _guard:
        if _thread is not None:
            return
        lv.registerErrorHandler(lambda _ctx, _err: None, None)
        try:
            lv.virEventRegisterDefaultImpl()
        except Exception as exc:
            raise LibvirtUnavailable(
                f"cannot register libvirt's default event implementation: {exc}"
            ) from exc
        thread = threading.Thread(
            target=_run_forever, args=(lv,), name="ism-libvirt-events", daemon=True
        )
        thread.start()
        _thread = thread


class EventRelay:
    """One driver's events, from libvirt's thread into the driver's loop and out of ``events()``.

    Created on the consumer's loop. :meth:`from_thread` is the only method called from
    libvirt's thread; everything else runs on the loop, so no lock is needed.

    Args:
        stopped_delay: Seconds a STOPPED event is held (Nova: 15).
        buffer: Bound of the stream of events not yet consumed.
    """

    def __init__(self, *, stopped_delay: float, buffer: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped_delay = stopped_delay
        self._send: MemoryObjectSendStream[LifecycleEvent]
        self._receive: MemoryObjectReceiveStream[LifecycleEvent]
        self._send, self._receive = anyio.create_memory_object_stream[LifecycleEvent](buffer)
        self._held: dict[str, asyncio.TimerHandle] = {}
        self._changed: dict[str, anyio.Event] = {}
        self.dropped = 0
        self.closed = False

    # -- libvirt's thread ----------------------------------------------------------------

    def from_thread(self, uuid: str, transition: LifecycleTransition | None) -> None:
        """Hand one raw event to the loop (called on libvirt's thread); dropped once closed."""
        self.call_from_thread(self.receive, uuid, transition)

    def call_from_thread(self, callback: Callable[[*Ts], object], *args: *Ts) -> None:
        """Run ``callback(*args)`` on the consumer's loop, from any thread; dropped if it closed."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(callback, *args)

    # -- the loop ------------------------------------------------------------------------------

    def receive(self, uuid: str, transition: LifecycleTransition | None) -> None:
        """Apply Nova's delay and cancellation rules to one event for the domain ``uuid``.

        ``transition`` None is an event Nova does not forward: it wakes waiters (something
        changed) but neither cancels a held STOPPED nor reaches the engine.
        """
        if self.closed:
            return
        changed = self._changed.pop(uuid, None)
        if changed is not None:
            changed.set()
        if transition is None:
            return
        held = self._held.pop(uuid, None)
        if held is not None:
            held.cancel()
        if transition is LifecycleTransition.STOPPED and self._stopped_delay > 0:
            self._held[uuid] = self._loop.call_later(
                self._stopped_delay, self.publish, uuid, transition
            )
        else:
            self.publish(uuid, transition)

    def publish(self, uuid: str, transition: LifecycleTransition) -> None:
        """Deliver an event now, past any delay (a resync's current state); drop if full."""
        held = self._held.pop(uuid, None)
        if held is not None:
            held.cancel()
        if self.closed:
            return
        try:
            self._send.send_nowait(LifecycleEvent(uuid, transition, self._loop.time()))
        except anyio.WouldBlock:
            self.dropped += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # every reader is gone

    def changed(self, uuid: str) -> anyio.Event:
        """An event set at the next libvirt event for ``uuid``, forwarded or not."""
        event = self._changed.get(uuid)
        if event is None:
            event = self._changed[uuid] = anyio.Event()
        return event

    @property
    def held(self) -> int:
        """STOPPED events waiting out their delay."""
        return len(self._held)

    def stream(self) -> MemoryObjectReceiveStream[LifecycleEvent]:
        """A new receiver on the stream (raises ClosedResourceError once closed)."""
        return self._receive.clone()

    def close(self) -> None:
        """Cancel held events, wake waiters, end the stream after what is buffered. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for handle in self._held.values():
            handle.cancel()
        self._held.clear()
        for event in self._changed.values():
            event.set()
        self._changed.clear()
        self._send.close()
        self._receive.close()


def thread_transition(
    lv: ModuleType, dom: Any, event: int, detail: int
) -> LifecycleTransition | None:
    """Translate on libvirt's thread, asking libvirt whether a migration really completed.

    Nova does the same job query in its callback (``host.py``): a SUSPENDED/MIGRATED event is
    MIGRATION_COMPLETED only if the domain's migration job completed, else a plain pause.
    """
    completed = False
    if event == lv.VIR_DOMAIN_EVENT_SUSPENDED and detail == lv.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED:
        try:
            stats = dom.jobStats()
            completed = stats.get("type") == lv.VIR_DOMAIN_JOB_COMPLETED
        except Exception:  # a failed query means "not known to be complete": a pause
            completed = False
    return transition_for(event, detail, migration_completed=completed)
