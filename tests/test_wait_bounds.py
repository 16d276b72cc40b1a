"""Every wait ends: a timeout that could not (infinite, NaN, negative, not a number) is a bad
request, refused before anything waits or runs."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from statemachine import InvalidRequest
from statemachine.sinks import MemoryCapture
from tests.support import OWNER, virtual, world

BAD = [math.inf, -math.inf, math.nan, -1.0, "10", None, True]


@pytest.mark.parametrize("timeout", BAD, ids=repr)
def test_every_wait_refuses_an_unbounded_timeout(timeout: object) -> None:
    @virtual
    async def body() -> None:
        capture = MemoryCapture()
        async with world(sinks=[capture]) as w:
            uuid = await w.create()
            handle = await w.engine.submit(OWNER, "stop", uuid)
            t: Any = timeout  # deliberately ill-typed input
            waits: list[Callable[[], Awaitable[object]]] = [
                lambda: w.engine.wait_idle(t),
                lambda: w.engine.wait_committed(t),
                lambda: w.engine.wait_delivered(t),
                lambda: w.engine.wait_for_state(uuid, timeout=t, vm_state="stopped"),
                lambda: capture.wait_for("instance.power_off.end", timeout=t),
            ]
            if timeout is not None:  # None means "the action's own budget" for these two
                waits.append(lambda: handle.wait(t))
                waits.append(lambda: w.engine.act(OWNER, "start", uuid, timeout=t))
            for wait in waits:
                with pytest.raises(InvalidRequest, match="timeout must be"):
                    await wait()
            # nothing was started by the refused act, and the stop still ends normally
            result = await handle.wait(60)
            assert result.instance.vm_state.value == "stopped"

    body()


def test_zero_is_a_bound_that_checks_now() -> None:
    @virtual
    async def body() -> None:
        async with world() as w:
            await w.create()
            await w.engine.wait_idle(0)

    body()
