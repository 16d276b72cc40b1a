"""Shared helpers for the engine's tests: a world on virtual time, contexts, flavors."""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn, ParamSpec

import attrs
import pytest

from drivers.simulator import LatencyModel, SimulatorDriver
from statemachine.clock import VirtualClock, run_virtual
from statemachine.config import Config
from statemachine.engine import ActionResult, Engine, StepHook
from statemachine.model import RequestContext
from statemachine.policy import Policy
from statemachine.sinks import MemoryCapture, Sink
from statemachine.store import Store

P = ParamSpec("P")

OWNER = RequestContext(user_id="u1", project_id="p1", roles=frozenset({"member"}))
OTHER = RequestContext(user_id="u2", project_id="p2", roles=frozenset({"member"}))
ADMIN = RequestContext(user_id="ops", project_id="p0", roles=frozenset({"admin"}))
SMALL = {"vcpus": 1, "memory_mb": 512, "root_gb": 1}
LARGE = {"vcpus": 2, "memory_mb": 1024, "root_gb": 2}


def action_params(action: str, flip: bool) -> dict[str, Any]:
    """Parameters random runs give an action: a resize alternates flavors, a reboot its type."""
    if action == "resize":
        return {"flavor": LARGE if flip else SMALL}
    if action == "reboot":
        return {"type": "HARD" if flip else "SOFT"}
    return {}


def virtual(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on a fresh virtual-time loop (no plugin needed, deterministic)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        run_virtual(functools.partial(fn, *args, **kwargs))

    return wrapper


@attrs.define
class World:
    """An engine on the simulator with every notification captured."""

    engine: Engine
    sim: SimulatorDriver
    capture: MemoryCapture

    async def create(self, name: str = "vm1", ctx: RequestContext = OWNER, **params: Any) -> str:
        """Create an instance (SMALL, cirros unless given) and return its uuid."""
        params.setdefault("flavor", SMALL)
        params.setdefault("image", "cirros")
        result = await self.engine.create(ctx, name=name, **params)
        assert isinstance(result, ActionResult)
        return result.instance.uuid

    def events(self, uuid: str | None = None, *, updates: bool = False) -> list[str]:
        """Event types (without ``instance.``), optionally of one instance, in emission order."""
        out = []
        for n in self.capture.notifications:
            if uuid is not None and n.instance_uuid != uuid:
                continue
            if not updates and n.event_type == "instance.update":
                continue
            out.append(n.event_type.removeprefix("instance."))
        return out

    def clear(self) -> None:
        """Forget the notifications captured so far."""
        self.capture.clear()


@asynccontextmanager
async def world(
    *,
    hosts: Sequence[str] = ("compute1", "compute2"),
    config: Config | None = None,
    hooks: Sequence[StepHook] = (),
    seed: int = 0,
    latency: LatencyModel | None = None,
    store: Store | None = None,
    sim: SimulatorDriver | None = None,
    sinks: Sequence[Sink] = (),
    policy: Policy | None = None,
) -> AsyncIterator[World]:
    """A running engine on a simulated fleet (or ``sim``, to keep one across engines) and
    ``store`` (memory by default); leaves it cleanly."""
    sim = sim or SimulatorDriver(hosts=hosts, seed=seed, latency=latency)
    capture = MemoryCapture(maxlen=None)
    engine = Engine(
        sim,
        config=config or Config(),
        sinks=[capture, *sinks],
        clock=VirtualClock(),
        seed=seed,
        hooks=hooks,
        store=store,
        policy=policy,
    )
    async with engine:
        yield World(engine, sim, capture)


def run_with_store(store: Store, body: Callable[[World], Awaitable[None]], **options: Any) -> None:
    """Run ``body`` against a world on ``store``, on a fresh virtual-time loop."""

    async def main() -> None:
        async with world(store=store, **options) as w:
            await body(w)

    run_virtual(main)


def services_required() -> bool:
    """Whether a missing service or program fails the test (``ISM_REQUIRE_SERVICES=1``, which
    ``.ci/run`` exports after installing and starting them) instead of skipping it."""
    return os.environ.get("ISM_REQUIRE_SERVICES") == "1"


def missing(reason: str) -> NoReturn:
    """Skip with ``reason`` on a machine without what the test needs, or fail with it when
    services are required: in CI a missing service is a broken setup, never a quiet skip."""
    if services_required():
        pytest.fail(f"ISM_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def require_binary(name: str, why: str) -> str:
    """The path of an external program a test needs (skip or fail as :func:`missing`)."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed ({why})")
    return path
