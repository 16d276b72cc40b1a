"""An engine running in a task of its own, so it can be started and stopped from any task.

An :class:`~statemachine.Engine` is an async context manager holding an anyio task group, and a
task group must be entered and left by the same task. Test runners do not always offer one:
pytest-asyncio runs an async fixture's setup and its teardown as two separate tasks, and a
Hypothesis state machine makes one ``Runner.run`` call per rule. :class:`BackgroundEngine`
enters the engine in a host task it owns and leaves it there when asked, so whoever starts and
stops it may be anything on the same asyncio loop.
"""

from __future__ import annotations

import asyncio
from typing import final

from ..engine import Engine
from ..errors import IsmError

__all__ = ["BackgroundEngine", "EngineNotRunning"]


class EngineNotRunning(IsmError, RuntimeError):
    """A :class:`BackgroundEngine` was used out of order (stopped twice, or started twice)."""


@final
class BackgroundEngine:
    """Runs ``async with engine`` in a host task on the running asyncio loop.

    ::

        host = BackgroundEngine(Engine(SimulatorDriver()))
        engine = await host.start()   # returns once the engine accepts actions
        ...                           # any task on this loop may use it
        await host.stop()             # drains it as leaving ``async with`` does

    Args:
        engine: An engine not yet entered.
        stop_timeout: Loop seconds :meth:`stop` waits for the engine to leave before it
            cancels the host task; by default twice the engine's ``drain_timeout`` (its exit
            drains twice at most) plus a minute.
    """

    def __init__(self, engine: Engine, *, stop_timeout: float | None = None) -> None:
        self.engine = engine
        self._stop_timeout = (
            stop_timeout if stop_timeout is not None else 2 * engine.config.drain_timeout + 60
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        """Whether the host task holds the engine open."""
        return self._task is not None and not self._task.done()

    async def start(self) -> Engine:
        """Enter the engine in a new host task; return it once it accepts actions.

        Raises:
            EngineNotRunning: already started, or not on an asyncio loop (the host task is an
                asyncio task; anyio's trio backend has no detached tasks).
            Exception: whatever entering the engine raised.
        """
        if self._task is not None:
            raise EngineNotRunning("this BackgroundEngine was already started")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise EngineNotRunning("BackgroundEngine needs a running asyncio loop") from None
        started: asyncio.Future[None] = loop.create_future()
        self._stopping = asyncio.Event()
        self._task = loop.create_task(self._host(started), name="ism:background-engine")
        await started
        return self.engine

    async def stop(self) -> None:
        """Leave the engine (it drains running actions) and wait for the host task to end.

        Raises:
            EngineNotRunning: never started.
            TimeoutError: the engine did not leave within ``stop_timeout`` (the host task is
                cancelled then).
            Exception: whatever the engine raised while it ran or left.
        """
        if self._task is None or self._stopping is None:
            raise EngineNotRunning("this BackgroundEngine was never started")
        self._stopping.set()
        async with asyncio.timeout(self._stop_timeout):
            await self._task

    async def _host(self, started: asyncio.Future[None]) -> None:
        assert self._stopping is not None
        try:
            async with self.engine:
                started.set_result(None)
                await self._stopping.wait()
        except Exception as exc:
            if started.done():
                raise
            started.set_exception(exc)  # start() raises it; the host task ends quietly
