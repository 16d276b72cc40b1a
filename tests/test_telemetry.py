"""What the engine measures for operators (``Engine.statistics()``) and its action log."""

from __future__ import annotations

import datetime as dt
import json
import logging

import anyio
import pytest

from drivers.simulator import FaultRule
from statemachine import JsonFormatter, RequestContext
from statemachine._histogram import Histogram, HistogramRecorder
from statemachine.config import Config
from statemachine.errors import ActionFailed, InvalidState
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from statemachine.notify import Notification
from statemachine.states import VmState
from tests.support import LARGE, OWNER, virtual, world

CANARIES = ("CANARY-fault-7f3a", "CANARY-adminpass-91c2", "CANARY-userdata-5d0e")
REQUEST = RequestContext(
    user_id="u1", project_id="p1", roles=frozenset({"member"}), request_id="req-stop-1"
)


def _deadline(action: str, task_state: str) -> float:
    entry = DEFAULT_LIFECYCLE.action(action)
    return next(s.deadline for s in entry.steps if s.task_state == task_state)


@virtual
async def test_statistics_count_a_scripted_run_exactly() -> None:
    """Two stops (one failing on an injected fault) and a start give exact counts."""
    async with world() as w:
        uuid = await w.create()
        ok = await w.engine.act(REQUEST, "stop", uuid)
        started = await w.engine.act(OWNER, "start", uuid)
        w.sim.faults.add(FaultRule(action="stop", message="hypervisor said no"))
        handle = await w.engine.submit(OWNER, "stop", uuid)
        failed = await handle.wait()
        stats = w.engine.statistics()
    assert failed.outcome == "failed"
    assert stats.by_action == {
        "create": {"ok": 1},
        "stop": {"ok": 1, "failed": 1},
        "start": {"ok": 1},
    }
    assert stats.driver_errors == {"InjectedFault": 1}
    assert set(stats.step_seconds) == {
        ("create", "scheduling", "schedule"),
        ("create", "spawning", "spawn"),
        ("stop", "powering-off", "power_off"),
        ("start", "powering-on", "power_on"),
    }
    assert stats.step_seconds["stop", "powering-off", "power_off"].count == 2
    assert stats.step_seconds["start", "powering-on", "power_on"].count == 1
    assert {k: h.count for k, h in stats.action_seconds.items()} == {
        "create": 1,
        "stop": 2,
        "start": 1,
    }
    assert stats.action_seconds["stop"].sum == pytest.approx(ok.duration + failed.duration)
    assert stats.action_seconds["start"].sum == pytest.approx(started.duration)
    # a step is part of its action: never longer than it
    step = stats.step_seconds["start", "powering-on", "power_on"].sum
    assert 0 < step <= started.duration
    # building → active, active → stopped, stopped → active; the failed stop stayed active
    assert {k: h.count for k, h in stats.vm_state_seconds.items()} == {
        "building": 1,
        "active": 1,
        "stopped": 1,
    }
    assert stats.outbox_backlog == 0
    assert stats.outbox_oldest_age == 0.0


@virtual
async def test_time_in_state_is_measured_from_state_since() -> None:
    """The seconds recorded for leaving ``active`` are the record's own ``state_since`` span."""
    async with world() as w:
        uuid = await w.create()
        active = w.engine.get(uuid)
        await anyio.sleep(3600)  # virtual: an hour passes at once
        await w.engine.act(OWNER, "stop", uuid)
        stopped = w.engine.get(uuid)
        held = w.engine.statistics().vm_state_seconds["active"]
    assert active.state_since is not None
    assert stopped.state_since is not None
    assert held.count == 1
    assert held.sum == pytest.approx((stopped.state_since - active.state_since).total_seconds())
    assert held.sum > 3600
    # 3600 < held <= 14400: counted in the 4-hour bucket, not below
    assert dict(held.cumulative())[3600.0] == 0
    assert dict(held.cumulative())[4 * 3600.0] == 1


@virtual
async def test_error_path_call_is_measured_under_its_own_call() -> None:
    """A resize failing in its disk copy records that call and the rollback it ran instead."""
    async with world() as w:
        uuid = await w.create()
        w.sim.faults.add(FaultRule(action="resize", step="resize_migrating", message="disk"))
        with pytest.raises(ActionFailed):
            await w.engine.act(OWNER, "resize", uuid, {"flavor": LARGE})
        stats = w.engine.statistics()
    assert stats.step_seconds["resize", "resize_migrating", "migrate_disk_and_power_off"].count == 1
    assert stats.step_seconds["resize", "resize_migrating", "rollback_resize"].count == 1
    assert stats.driver_errors == {"InjectedFault": 1}
    assert stats.by_action["resize"] == {"failed": 1}


@virtual
async def test_deadline_is_a_failed_step_not_a_driver_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hung power-off overruns its deadline: the step took exactly the deadline, no driver
    error is counted, and the action's log line names StepDeadlineExceeded."""
    caplog.set_level(logging.INFO, logger="ism.actions")
    async with world() as w:
        uuid = await w.create()
        w.sim.faults.add(FaultRule(action="stop", mode="hang"))
        with pytest.raises(ActionFailed, match="deadline"):
            await w.engine.act(OWNER, "stop", uuid)
        stats = w.engine.statistics()
    step = stats.step_seconds["stop", "powering-off", "power_off"]
    assert step.count == 1
    assert step.sum == pytest.approx(_deadline("stop", "powering-off"))
    assert stats.driver_errors == {}
    [line] = [r for r in caplog.records if getattr(r, "action", None) == "stop"]
    assert line.levelno == logging.WARNING
    assert (line.outcome, line.error) == ("failed", "StepDeadlineExceeded")  # type: ignore[attr-defined]


class _FlakySink:
    """A sink that refuses every notification while ``down``, recording what it refused."""

    def __init__(self) -> None:
        self.down = False
        self.refused: list[Notification] = []
        self.taken = 0

    def send(self, notification: Notification) -> None:
        if self.down:
            self.refused.append(notification)
            raise OSError("disk full")
        self.taken += 1

    def close(self) -> None:
        pass


@virtual
async def test_outbox_backlog_and_age_of_the_oldest_undelivered() -> None:
    """While a sink refuses, the backlog grows and its oldest message ages with the clock;
    once the sink recovers, both return to zero."""
    sink = _FlakySink()
    async with world(sinks=[sink]) as w:
        uuid = await w.create()
        sink.down = True
        await w.engine.act(OWNER, "stop", uuid)
        await anyio.sleep(100)
        stats = w.engine.statistics()
        first = sink.refused[0]
        stamped = dt.datetime.fromisoformat(first.timestamp).replace(tzinfo=dt.UTC)
        expected = (w.engine.clock.wall() - stamped).total_seconds()
        sink.down = False
        await w.engine.wait_delivered(timeout=120)
        after = w.engine.statistics()
    assert stats.outbox_backlog > 0
    assert expected > 100
    assert stats.outbox_oldest_age == pytest.approx(expected, abs=1e-5)
    assert (after.outbox_backlog, after.outbox_oldest_age) == (0, 0.0)


@virtual
async def test_timer_lateness_counts_every_firing() -> None:
    """A resize's confirm window fires a timer: each firing is in the lateness histogram."""
    async with world(config=Config(resize_confirm_window=60)) as w:
        uuid = await w.create()
        await w.engine.act(OWNER, "resize", uuid, {"flavor": LARGE})
        await anyio.sleep(120)
        await w.engine.wait_idle(timeout=60)
        assert w.engine.get(uuid).vm_state is VmState.ACTIVE  # auto-confirmed
        stats = w.engine.statistics()
    assert stats.timers_fired >= 1
    assert stats.timer_lateness is not None
    assert stats.timer_lateness.count == stats.timers_fired


@virtual
async def test_action_log_line_has_the_fields_and_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One line per action outcome on ``ism.actions``, with request id, instance, outcome and
    duration; no canary secret (fault message, admin_pass, user_data) reaches any log."""
    caplog.set_level(logging.DEBUG)
    async with world() as w:
        uuid = await w.create(admin_pass=CANARIES[1], user_data=CANARIES[2])
        w.sim.faults.add(FaultRule(action="stop", message=f"password={CANARIES[0]} rejected"))
        with pytest.raises(ActionFailed):
            await w.engine.act(REQUEST, "stop", uuid)
    lines = [r for r in caplog.records if r.name == "ism.actions"]
    assert [(r.action, r.outcome) for r in lines] == [  # type: ignore[attr-defined]
        ("create", "ok"),
        ("stop", "failed"),
    ]
    stop = lines[1]
    fields = vars(stop)
    assert fields["request_id"] == "req-stop-1"
    assert fields["instance"] == uuid
    assert fields["error"] == "InjectedFault"
    assert fields["step"] == "powering-off"
    assert fields["duration"] > 0
    assert "password=***" in fields["error_message"]
    message = stop.getMessage()
    for part in (f"action=stop outcome=failed instance={uuid}", "request_id=req-stop-1"):
        assert part in message
    assert "error=InjectedFault" in message
    formatter = JsonFormatter()
    for record in caplog.records:
        text = formatter.format(record) + record.getMessage() + repr(vars(record))
        for canary in CANARIES:
            assert canary not in text, record.name


@virtual
async def test_refusal_is_logged_with_its_class(caplog: pytest.LogCaptureFixture) -> None:
    """A refused action is an outcome too: one INFO line naming the refusal's class."""
    caplog.set_level(logging.INFO, logger="ism.actions")
    async with world() as w:
        uuid = await w.create()
        await w.engine.act(OWNER, "stop", uuid)
        caplog.clear()
        with pytest.raises(InvalidState):
            await w.engine.act(REQUEST, "stop", uuid)
    [line] = caplog.records
    assert line.levelno == logging.INFO
    assert vars(line)["outcome"] == "refused"
    assert vars(line)["error"] == "InvalidState"
    assert vars(line)["request_id"] == "req-stop-1"
    assert line.getMessage().startswith(f"action=stop outcome=refused instance={uuid}")


def test_json_formatter_writes_the_extra_fields() -> None:
    """The JSON formatter writes the message and every ``extra`` field, time optional."""
    record = logging.LogRecord("ism.actions", logging.INFO, __file__, 1, "%s", ("a=b",), None)
    record.outcome, record.duration = "ok", 1.5
    data = json.loads(JsonFormatter(time_field=None).format(record))
    assert data == {
        "level": "INFO",
        "logger": "ism.actions",
        "message": "a=b",
        "outcome": "ok",
        "duration": 1.5,
    }
    stamped = json.loads(JsonFormatter().format(record))
    assert dt.datetime.fromisoformat(stamped["time"]).tzinfo is not None


def test_json_formatter_scrubs_the_message() -> None:
    """A secret in a message that escaped scrubbing is masked on the way out."""
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "token=%s", ("abc123",), None)
    assert json.loads(JsonFormatter().format(record))["message"] == "token=***"


def test_histogram_buckets_are_upper_bounds() -> None:
    """An observation equal to a bound counts in that bound's bucket; above all, in +Inf."""
    recorder = HistogramRecorder((1.0, 10.0))
    for value in (0.5, 1.0, 3.0, 10.0, 11.0, -2.0):
        recorder.observe(value)
    snap = recorder.snapshot()
    assert snap == Histogram((1.0, 10.0), (3, 2, 1), 25.5)
    assert snap.count == 6
    assert snap.cumulative() == [(1.0, 3), (10.0, 5), (float("inf"), 6)]


@pytest.mark.parametrize("bounds", [(), (1.0, 1.0), (2.0, 1.0), (1.0, float("inf"))])
def test_histogram_refuses_bad_bounds(bounds: tuple[float, ...]) -> None:
    """Bounds must be finite and strictly increasing."""
    with pytest.raises(ValueError, match="bounds"):
        HistogramRecorder(bounds)
