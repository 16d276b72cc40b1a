"""Running blocking libvirt calls off the event loop: bounded, counted, serialized per domain.

Three rules, each for a failure seen in real adapters:

* **A dedicated, fixed pool behind a limiter.** libvirt-python blocks in C. Running it on the
  loop's default executor or anyio's shared thread limiter lets a burst of guest operations
  take every worker the rest of the process needs. ism gives each driver its own
  ``ThreadPoolExecutor`` of ``max_workers`` threads and puts a limiter of the same size in front:
  a burst waits *asynchronously* for a slot (each waiter is a task the engine already bounds by
  ``max_actions``) instead of piling into the executor's unbounded queue.
* **Offload through ``loop.run_in_executor``.** ism's virtual-time loop
  (``statemachine.clock.VirtualTimeLoop``) counts those calls and holds its clock while one is
  running; without that, a timer would fire "early" while a thread still works. ``drivers``
  imports nothing from ``statemachine``: the plain asyncio API is the whole contract.
* **A cancelled call still finishes before the next call on its domain starts.** A thread
  cannot be cancelled. When the awaiting task is cancelled (a preempting delete, a deadline),
  the call keeps running; the caller waits for it, shielded but bounded by ``grace``, before
  giving up its slot and its domain lock. So a delete's ``destroy`` runs *after* a preempted
  ``spawn`` has defined and started its domain, and destroys it, rather than racing it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar, TypeVarTuple

import anyio

from .base import DriverTimeout

__all__ = ["Offloader"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Offloader:
    """A driver's worker threads, the limiter in front of them, and its per-domain locks.

    Create it on the loop that will use it.

    Args:
        max_workers: Threads in the pool, and slots in the limiter.
        grace: How long a cancelled caller waits for its thread call to end before leaving it.
        lock_timeout: How long an operation waits for its domain's lock.
    """

    def __init__(self, *, max_workers: int, grace: float, lock_timeout: float) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="ism-libvirt"
        )
        self._limiter = anyio.CapacityLimiter(max_workers)
        self._grace = grace
        self._lock_timeout = lock_timeout
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}
        self.abandoned = 0

    @property
    def busy(self) -> int:
        """Thread calls holding a slot right now."""
        return int(self._limiter.borrowed_tokens)

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        return int(self._limiter.statistics().tasks_waiting)

    async def run(self, func: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run ``func(*args)`` on the pool and return its result.

        If the caller is cancelled while the thread runs, wait for the thread (at most
        ``grace`` seconds, shielded) and then re-raise the cancellation; the result is dropped.
        """
        loop = asyncio.get_running_loop()
        async with self._limiter:
            future = loop.run_in_executor(self._pool, func, *args)
            try:
                # shield: cancelling us must not cancel the executor future, which would stop
                # the virtual clock's count while the thread still works
                return await asyncio.shield(future)
            except BaseException:
                if not future.done():
                    with anyio.move_on_after(self._grace, shield=True):
                        await asyncio.wait({future})
                if future.done():
                    if not future.cancelled():
                        future.exception()  # consumed: we are leaving with our own error
                else:
                    self.abandoned += 1
                raise

    @asynccontextmanager
    async def domain(self, uuid: str) -> AsyncIterator[None]:
        """Hold ``uuid``'s lock: operations on one domain run one after another.

        Raises:
            DriverTimeout: the lock was not free within ``lock_timeout``.
        """
        lock, users = self._locks.get(uuid, (None, 0))
        if lock is None:
            lock = anyio.Lock()
        self._locks[uuid] = (lock, users + 1)
        try:
            with anyio.move_on_after(self._lock_timeout) as scope:
                await lock.acquire()
            if scope.cancelled_caught:
                raise DriverTimeout(
                    f"guest {uuid}: another operation held it for {self._lock_timeout:g} s"
                )
            try:
                yield
            finally:
                lock.release()
        finally:
            _, users = self._locks[uuid]
            if users <= 1:
                del self._locks[uuid]
            else:
                self._locks[uuid] = (lock, users - 1)

    def shutdown(self) -> None:
        """Stop taking work; calls already running finish on their own threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
