"""Virtual time: the loop jumps to the next timer, but never while a thread works."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import socket
import threading
import time

import anyio
import anyio.from_thread
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


def _loop() -> VirtualTimeLoop:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    return loop


def test_an_hour_passes_at_once() -> None:
    """Sleeping an hour of virtual time takes far less than a real second and lands exactly."""

    async def main() -> float:
        await anyio.sleep(3600)
        return anyio.current_time()

    started = time.perf_counter()
    assert run_virtual(main) == 3600.0
    assert time.perf_counter() - started < 1.0


def test_sleeps_beyond_the_select_cap_land_exactly() -> None:
    """A sleep longer than asyncio's 24 h select cap takes several jumps yet ends on time."""

    async def main() -> float:
        await anyio.sleep(3 * 86400 + 0.5)
        return anyio.current_time()

    assert run_virtual(main, start=10.0) == 10.0 + 3 * 86400 + 0.5


def test_sleepers_wake_in_virtual_order_at_their_instants() -> None:
    """Concurrent sleeps end in order of length, each at exactly its own virtual instant."""
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await anyio.sleep(seconds)
        woke.append((name, anyio.current_time()))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for name, seconds in (("c", 300.0), ("a", 5.0), ("d", 300.25), ("b", 60.0)):
                tg.start_soon(sleeper, name, seconds)

    run_virtual(main)
    assert woke == [("a", 5.0), ("b", 60.0), ("c", 300.0), ("d", 300.25)]


def test_deadlines_fire_on_virtual_time() -> None:
    """move_on_after and fail_after cut waits off at their virtual deadlines."""

    async def main() -> tuple[float, float]:
        with anyio.move_on_after(10) as scope:
            await anyio.sleep_forever()
        assert scope.cancelled_caught
        first = anyio.current_time()
        with pytest.raises(TimeoutError), anyio.fail_after(20):
            await anyio.Event().wait()
        return first, anyio.current_time()

    assert run_virtual(main) == (10.0, 30.0)


def test_clock_holds_still_while_to_thread_works() -> None:
    """While to_thread work runs, a concurrent long sleep cannot complete."""
    order: list[str] = []

    async def long_sleep() -> None:
        await anyio.sleep(1000)
        order.append("sleep")

    def work(seconds: float) -> str:
        time.sleep(seconds)
        order.append("thread")
        return "done"

    async def main() -> tuple[str, float, float]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(long_sleep)
            result = await to_thread(work, 0.2)
            returned_at = anyio.current_time()
        return result, returned_at, anyio.current_time()

    result, returned_at, ended_at = run_virtual(main)
    assert (result, order) == ("done", ["thread", "sleep"])
    assert returned_at < 1000
    assert ended_at == 1000.0


def test_cancelled_to_thread_releases_the_clock_when_the_thread_ends() -> None:
    """A to_thread call cancelled mid-run holds the clock until its thread returns, no longer."""
    finished = threading.Event()

    async def main() -> float:
        started = anyio.Event()

        def work() -> None:
            anyio.from_thread.run_sync(started.set)
            time.sleep(0.1)
            finished.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(to_thread, work)
            await started.wait()
            assert _loop().offloaded == 1
            tg.cancel_scope.cancel()
        assert finished.is_set()
        assert _loop().offloaded == 0
        await anyio.sleep(500)
        return anyio.current_time()

    assert run_virtual(main) == 500.0


def test_run_in_executor_holds_the_clock_too() -> None:
    """Work started with loop.run_in_executor (and so asyncio.to_thread) also holds the clock."""
    done = threading.Event()

    def work() -> None:
        time.sleep(0.1)
        done.set()

    async def main() -> float:
        loop = _loop()
        future = loop.run_in_executor(None, work)
        assert loop.offloaded == 1
        with anyio.move_on_after(500):
            await anyio.sleep(1000)
        assert done.is_set()
        await future
        assert loop.offloaded == 0
        await asyncio.to_thread(time.sleep, 0.05)
        return anyio.current_time()

    assert run_virtual(main) == 500.0


def test_idle_loop_waits_for_real_io() -> None:
    """With no timer and no thread, the loop blocks on real I/O instead of moving the clock."""
    reader, writer = socket.socketpair()

    async def main() -> bytes:
        await anyio.wait_readable(reader)
        return reader.recv(16)

    timer = threading.Timer(0.05, writer.send, (b"ping",))
    with reader, writer:
        timer.start()
        try:
            assert run_virtual(main) == b"ping"
        finally:
            timer.join()


def test_runs_are_deterministic() -> None:
    """Two runs of one seeded program give the same trace of (virtual time, worker)."""

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

    first = trace()
    assert len(first) == 30
    assert first == sorted(first, key=lambda item: item[0])
    assert first == trace()


def test_virtual_clock_wall_is_epoch_plus_loop_seconds() -> None:
    """VirtualClock's wall time is its epoch plus the loop's virtual seconds."""

    async def main() -> tuple[float, dt.datetime]:
        await anyio.sleep(90)
        assert is_virtual()
        clock = VirtualClock()
        return clock.monotonic(), clock.wall()

    assert run_virtual(main) == (90.0, dt.datetime(2026, 1, 1, 0, 1, 30, tzinfo=dt.UTC))


def test_virtual_clock_epoch_must_be_aware_and_becomes_utc() -> None:
    """A naive epoch is refused and an aware one is normalised to UTC."""
    with pytest.raises(ValueError, match="timezone-aware"):
        VirtualClock(dt.datetime(2026, 1, 1))
    plus_two = dt.timezone(dt.timedelta(hours=2))
    epoch = VirtualClock(dt.datetime(2026, 1, 1, 2, tzinfo=plus_two)).epoch
    assert (epoch, epoch.tzinfo) == (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.UTC)


def test_system_clock_is_aware_utc_on_a_real_loop() -> None:
    """SystemClock gives timezone-aware UTC and the real loop's monotonic time."""

    async def main() -> None:
        clock = SystemClock()
        assert clock.wall().tzinfo is dt.UTC
        assert clock.monotonic() == pytest.approx(time.monotonic(), abs=1)
        assert not is_virtual()

    anyio.run(main)
    assert not is_virtual()


def test_loop_factory_works_with_asyncio_runner() -> None:
    """virtual_loop_factory plugs into asyncio.Runner, starting the clock where asked."""

    async def main() -> float:
        await asyncio.sleep(7)
        return asyncio.get_running_loop().time()

    with asyncio.Runner(loop_factory=virtual_loop_factory(start=100.0)) as runner:
        assert runner.run(main()) == 107.0
