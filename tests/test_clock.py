"""Virtual time: the loop jumps to the next timer, never while a thread works."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import threading
import time

import anyio
import pytest

from statemachine.clock import (
    SystemClock,
    VirtualClock,
    VirtualTimeLoop,
    is_virtual,
    run_virtual,
    to_thread,
    virtual_loop_factory,
)


def test_an_hour_passes_at_once() -> None:
    """Sleeping an hour of virtual time takes (far) less than a real second."""

    async def main() -> float:
        await anyio.sleep(3600)
        return anyio.current_time()

    started = time.perf_counter()
    assert run_virtual(main) == 3600.0
    assert time.perf_counter() - started < 1.0


def test_sleepers_wake_in_virtual_order_at_their_instants() -> None:
    """Concurrent sleeps end in order, each at exactly its own virtual instant."""
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await anyio.sleep(seconds)
        woke.append((name, anyio.current_time()))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for name, seconds in (("c", 300.0), ("a", 5.0), ("b", 60.0)):
                tg.start_soon(sleeper, name, seconds)

    run_virtual(main)
    assert woke == [("a", 5.0), ("b", 60.0), ("c", 300.0)]


def test_deadlines_fire_on_virtual_time() -> None:
    """fail_after and move_on_after cut waits at their virtual deadline."""

    async def main() -> tuple[float, float]:
        with anyio.move_on_after(10):
            await anyio.sleep_forever()
        first = anyio.current_time()
        with pytest.raises(TimeoutError), anyio.fail_after(20):
            await anyio.Event().wait()
        return first, anyio.current_time()

    assert run_virtual(main) == (10.0, 30.0)


def test_clock_holds_still_while_a_thread_works() -> None:
    """While to_thread work runs, a concurrent long sleep does not complete early."""
    order: list[str] = []

    async def long_sleep() -> None:
        await anyio.sleep(1000)
        order.append("sleep")

    def work() -> float:
        time.sleep(0.2)
        order.append("thread")
        return 1.0

    seen: list[float] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(long_sleep)
            await to_thread(work)
            seen.append(anyio.current_time())

    run_virtual(main)
    assert seen[0] < 1000
    assert order == ["thread", "sleep"]


def test_run_in_executor_is_counted_too() -> None:
    """Work started with loop.run_in_executor also holds the clock."""
    done = threading.Event()

    def work() -> None:
        time.sleep(0.1)
        done.set()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        future = loop.run_in_executor(None, work)
        assert loop.threads_busy == 1
        with anyio.move_on_after(500):
            await anyio.sleep(1000)
        assert done.is_set()
        await future
        assert loop.threads_busy == 0
        return anyio.current_time()

    assert run_virtual(main) == 500.0


def test_runs_are_deterministic() -> None:
    """Two runs of one seeded program give the same trace of (virtual time, name)."""

    def trace() -> list[tuple[float, int]]:
        rng = random.Random(42)
        out: list[tuple[float, int]] = []

        async def worker(i: int) -> None:
            for _ in range(3):
                await anyio.sleep(rng.uniform(0, 100))
                out.append((anyio.current_time(), i))

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(worker, i)

        run_virtual(main)
        return out

    assert trace() == trace()


def test_virtual_clock_wall_is_epoch_plus_loop_seconds() -> None:
    """VirtualClock's wall time is its epoch plus the loop's virtual seconds."""

    async def main() -> dt.datetime:
        await anyio.sleep(90)
        assert is_virtual()
        return VirtualClock().wall()

    assert run_virtual(main) == dt.datetime(2026, 1, 1, 0, 1, 30, tzinfo=dt.UTC)


def test_system_clock_is_aware_utc() -> None:
    """SystemClock gives timezone-aware UTC and the loop's monotonic time."""

    async def main() -> None:
        clock = SystemClock()
        assert clock.wall().tzinfo is dt.UTC
        assert clock.monotonic() == pytest.approx(anyio.current_time(), abs=1)
        assert not is_virtual()

    anyio.run(main)


def test_loop_factory_works_with_asyncio_runner() -> None:
    """virtual_loop_factory plugs into asyncio.Runner as well as anyio."""

    async def main() -> float:
        await asyncio.sleep(7)
        return asyncio.get_running_loop().time()

    with asyncio.Runner(loop_factory=virtual_loop_factory(start=100.0)) as runner:
        assert runner.run(main()) == 107.0
