"""Extension points: an embedding service adds its own action, call, hooks and sink."""

from __future__ import annotations

from typing import Any

import anyio
import attrs
import pytest

from drivers.base import GuestSpec
from drivers.simulator import FaultRule, SimulatorDriver
from statemachine import (
    DEFAULT_LIFECYCLE,
    Action,
    Concurrency,
    ErrorPath,
    ErrorTo,
    Step,
    StepInfo,
    StepRun,
    Target,
    VmState,
)
from statemachine.clock import VirtualClock, run_virtual
from statemachine.config import Config
from statemachine.diagrams import export_lifecycle, render, states_markdown
from statemachine.engine import Engine
from statemachine.errors import ActionFailed, InvalidRequest, LifecycleError
from statemachine.paths import covering_paths, run_path, transitions_of
from statemachine.sinks import MemoryCapture, Notification
from tests.support import OWNER, SMALL


class VolumeDriver(SimulatorDriver):
    """The simulator, plus the one call the new action needs."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.volumes: dict[str, list[str]] = {}

    async def attach_volume(self, guest: GuestSpec, *, volume_id: str) -> None:
        await self.fault_point("attach_volume")  # the fault plan applies to it too
        await anyio.sleep(0.2)
        self.volumes.setdefault(guest.uuid, []).append(volume_id)


ATTACH = Action(
    name="attach_volume",
    doc="Attach a block device; the instance's state is unchanged (Nova's attach_volume).",
    event="volume_attach",
    steps=(
        Step(
            None,
            "attach_volume",
            300.0,
            before=("volume_attach.start",),
            after=("volume_attach.end",),
        ),
    ),
    target=Target(same=True),
    on_error=ErrorPath(ErrorTo.REVERT_TASK),
    vm_states=frozenset({VmState.ACTIVE, VmState.PAUSED, VmState.STOPPED}),
    concurrency=Concurrency.FREE,
    params=frozenset({"volume_id"}),
    required=frozenset({"volume_id"}),
)
LIFECYCLE = DEFAULT_LIFECYCLE.extend(
    actions=[ATTACH],
    payload_classes={
        "volume_attach": ("InstanceActionVolumePayload", "1.7", ("fault", "volume_id"))
    },
)


async def attach(run: StepRun) -> dict[str, Any]:
    driver = run.driver
    assert isinstance(driver, VolumeDriver)
    await driver.attach_volume(run.guest(), volume_id=run.params["volume_id"])
    return {}


class Recorder:
    """A sink of the service's own: keeps event types."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def send(self, notification: Notification) -> None:
        self.events.append(notification.event_type)

    def close(self) -> None:
        pass


def test_an_added_action_runs_with_its_events_hooks_and_payload() -> None:
    """The action runs through the engine like a built-in one: guards, before and after
    hooks, Nova-shaped events with its payload class and field, the service's own sink."""
    seen: list[tuple[str, str, bool]] = []

    async def before(info: StepInfo) -> None:
        seen.append((info.action, "before", info.changes is None))

    async def after(info: StepInfo) -> None:
        seen.append((info.action, "after", info.changes == {}))

    async def main() -> None:
        driver, capture, recorder = VolumeDriver(hosts=["c1"]), MemoryCapture(), Recorder()
        engine = Engine(
            driver, lifecycle=LIFECYCLE, calls={"attach_volume": attach}, clock=VirtualClock(),
            sinks=[capture, recorder], hooks=[before], after_hooks=[after],
        )  # fmt: skip
        async with engine:
            result = await engine.create(OWNER, name="vm1", flavor=SMALL, image="cirros")
            uuid = result.instance.uuid
            await engine.act(OWNER, "attach_volume", uuid, {"volume_id": "vol-1"})
            assert driver.volumes == {uuid: ["vol-1"]}
            end = [n for n in capture.notifications if n.event_type.endswith("volume_attach.end")]
            payload = end[0].payload
            assert payload["ism_object.name"] == "InstanceActionVolumePayload"
            assert payload["ism_object.version"] == "1.7"
            assert payload["ism_object.data"]["volume_id"] == "vol-1"
            assert recorder.events[-2:] == [
                "instance.volume_attach.start",
                "instance.volume_attach.end",
            ]
            with pytest.raises(InvalidRequest, match="needs parameters"):
                await engine.act(OWNER, "attach_volume", uuid)
            with pytest.raises(InvalidRequest, match="volume_id must be"):
                await engine.act(OWNER, "attach_volume", uuid, {"volume_id": ""})
            driver.faults.add(FaultRule(action="attach_volume", message="no such volume"))
            with pytest.raises(ActionFailed, match="no such volume"):
                await engine.act(OWNER, "attach_volume", uuid, {"volume_id": "vol-2"})
            assert recorder.events[-1] == "instance.volume_attach.error"
            history = await engine.actions(uuid)
            assert [(a.action, a.outcome) for a in history][-2:] == [
                ("attach_volume", "ok"),
                ("attach_volume", "failed"),
            ]

    run_virtual(main)
    assert ("attach_volume", "before", True) in seen
    assert ("attach_volume", "after", True) in seen


def test_the_table_derives_diagrams_docs_and_paths_for_it() -> None:
    """Validation, the state tables, the action's diagram and the generated paths all
    include the added action without a line of their own."""
    assert "attach_volume" in states_markdown(export_lifecycle(LIFECYCLE))
    assert "attach_volume" in render(LIFECYCLE, "mermaid", action="attach_volume")
    assert LIFECYCLE.version == "1.1+attach_volume"
    paths = [
        p for p in covering_paths(LIFECYCLE) if any(s.action == "attach_volume" for s in p.steps)
    ]
    wanted = {t for t in transitions_of(paths) if t[0].startswith("attach_volume")}
    assert wanted

    async def main() -> None:
        applied: set[tuple[str, str, str]] = set()
        for path in paths:  # the added action's paths; the built-in ones test_paths.py runs
            driver = VolumeDriver(hosts=["c1", "c2"])
            fired = await run_path(
                path,
                driver=driver,
                control=driver,
                lifecycle=LIFECYCLE,
                calls={"attach_volume": attach},
                params={"attach_volume": {"volume_id": "vol-path"}},
                config=Config(shelved_offload_time=-1),
            )
            applied |= set(fired)
        assert wanted <= applied

    run_virtual(main)


def test_a_broken_extension_is_refused_naming_the_culprit() -> None:
    """A duplicate name, an unbound call, a step with no deadline: typed errors, at once."""
    with pytest.raises(LifecycleError, match="declared twice"):
        DEFAULT_LIFECYCLE.extend(actions=[attrs.evolve(ATTACH, name="stop")])
    with pytest.raises(LifecycleError, match="not bound"):
        Engine(VolumeDriver(), lifecycle=LIFECYCLE)
    bad = attrs.evolve(ATTACH, steps=(attrs.evolve(ATTACH.steps[0], deadline=0.0),))
    with pytest.raises(LifecycleError, match="deadline"):
        DEFAULT_LIFECYCLE.extend(actions=[bad])
