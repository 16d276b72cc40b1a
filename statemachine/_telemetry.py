"""What the engine tells its operators: latencies, time in state, driver errors, spans, logs.

One :class:`Telemetry` per engine, fed by a handful of calls at the points where the engine
already knows the facts (an action's end, a step's call, a committed change). It keeps only
what the engine does not already count — the engine's own counters (actions by outcome,
instances by state) stay the one source for those — in fixed-bucket histograms keyed by finite
sets (action names, step task_states, vm_states, exception classes), so memory does not grow
with the fleet or with time. :meth:`Engine.statistics` snapshots it; the Prometheus collector
(:mod:`statemachine.metrics`) reads that snapshot at scrape time.

It also opens an OpenTelemetry span per action and per step (:mod:`._tracing`, a no-op without
``opentelemetry-api``) and logs one line per action outcome on ``ism.actions``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs

from drivers.base import DriverError

from . import _tracing
from ._histogram import (
    DURATION_BUCKETS,
    RESIDENCY_BUCKETS,
    Histogram,
    HistogramRecorder,
)
from .clock import Clock
from .errors import ActionRefused, IsmError, StepDeadlineExceeded
from .handles import ActionHandle, Outcome
from .model import Instance, RequestContext
from .redact import scrub

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import TracerProvider

    from ._schema import Call, Step

K = TypeVar("K")

__all__ = [
    "ACTION_LOG",
    "MAX_ERROR_KINDS",
    "NO_STEP",
    "StepOutcome",
    "Telemetry",
    "TelemetrySnapshot",
    "error_kind",
]

ACTION_LOG = "ism.actions"
"""The logger of the one line per action outcome (configure it with :mod:`logging`)."""

log = logging.getLogger(ACTION_LOG)

NO_STEP = "none"
"""The label of a step without a task_state (an action that owns no task: lock), or of a
step that calls nothing (it runs only the step hooks)."""

MAX_ERROR_KINDS = 64
"""Distinct driver error classes counted by name; more (a driver minting classes) are counted
together under ``"other"``, so the label set stays bounded whatever a driver raises."""


class StepOutcome:
    """How a step's call ended: the step span's ``ism.outcome``."""

    OK = "ok"
    FAILED = "failed"
    CANCELLED = "cancelled"
    """Cancelled from outside the step (a preempting delete, the build timeout, a drain)."""


@attrs.frozen
class TelemetrySnapshot:
    """What :class:`Telemetry` measured, frozen (folded into ``EngineStatistics``)."""

    action_seconds: Mapping[str, Histogram]
    step_seconds: Mapping[tuple[str, str, str], Histogram]
    vm_state_seconds: Mapping[str, Histogram]
    driver_errors: Mapping[str, int]


class Telemetry:
    """The engine's measurements, spans and action log; bounded by the lifecycle's size."""

    def __init__(self, clock: Clock, *, tracer_provider: TracerProvider | None = None) -> None:
        self._clock = clock
        self._tracing = _tracing.load(tracer_provider)
        self._actions: dict[str, HistogramRecorder] = {}
        self._steps: dict[tuple[str, str, str], HistogramRecorder] = {}
        self._residency: dict[str, HistogramRecorder] = {}
        self._driver_errors: dict[str, int] = {}
        self._last_commit: dt.datetime | None = None
        # what a handle carries between its acceptance and its end; weak, so a handle whose
        # task never ran (the engine stopped first) leaves nothing behind
        self._parents: weakref.WeakKeyDictionary[ActionHandle, Context] = (
            weakref.WeakKeyDictionary()
        )
        self._spans: weakref.WeakKeyDictionary[ActionHandle, _tracing.OpenSpan] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def tracing(self) -> bool:
        """Whether spans are made now (``opentelemetry-api`` is installed and a provider that
        records is in place)."""
        return self._tracing is not None and self._tracing.enabled()

    # -- the engine's calls -------------------------------------------------------------------

    def accepted(self, handle: ActionHandle) -> None:
        """Called where the action is accepted, in the caller's task: remember the caller's
        trace context, which the action's own task makes its span's parent."""
        if self._tracing is not None and self._tracing.enabled():
            self._parents[handle] = self._tracing.current()

    def action_started(self, handle: ActionHandle) -> None:
        """Called first in the action's task: open its span, current for its steps."""
        if self._tracing is None or not self._tracing.enabled():
            return
        ctx = handle.ctx
        attributes: dict[str, str | bool | int | float] = {
            "ism.action": handle.name,
            "ism.action.id": handle.id,
            "ism.instance.uuid": handle.uuid,
            "ism.user_id": ctx.user_id,
            "ism.project_id": ctx.project_id,
        }
        if handle.action.variant is not None:
            attributes["ism.action.variant"] = handle.action.variant
        if ctx.request_id is not None:
            attributes["ism.request_id"] = ctx.request_id
        self._spans[handle] = self._tracing.start(
            f"ism {handle.name}",
            attributes,
            self._clock.wall(),
            parent=self._parents.pop(handle, None),
        )

    def action_ended(self, handle: ActionHandle) -> None:
        """Called once the action's result is set: its duration, its span's end, its log."""
        result = handle.result
        assert result is not None
        self._recorder(self._actions, handle.name, DURATION_BUCKETS).observe(result.duration)
        kind, message = _describe(result.error)
        step = _step_label(handle.step) if handle.step is not None else None
        opened = self._spans.pop(handle, None)
        if opened is not None and self._tracing is not None:
            closing: dict[str, str | bool | int | float] = {
                "ism.outcome": str(result.outcome),
                "ism.vm_state": result.instance.vm_state.value,
            }
            if step is not None:
                closing["ism.step"] = step
            failed = result.outcome == Outcome.FAILED and kind is not None
            error = (kind or "", message or "") if failed else None
            self._tracing.end(opened, closing, self._clock.wall(), error=error)
        level = logging.WARNING if result.outcome == Outcome.FAILED else logging.INFO
        if log.isEnabledFor(level):
            _log_outcome(
                level,
                action=handle.name,
                outcome=str(result.outcome),
                instance=handle.uuid,
                ctx=handle.ctx,
                action_id=handle.id,
                duration=result.duration,
                step=step,
                error=kind,
                error_message=message,
            )

    def refused(self, ctx: object, action: object, instance: object, exc: ActionRefused) -> None:
        """Called when an action is refused: its log line (the engine counts it)."""
        if not log.isEnabledFor(logging.INFO):
            return
        context = ctx if isinstance(ctx, RequestContext) else None
        _log_outcome(
            logging.INFO,
            action=action[:64] if isinstance(action, str) else "?",
            outcome="refused",
            instance=instance[:64] if isinstance(instance, str) else None,
            ctx=context,
            action_id=None,
            duration=None,
            step=None,
            error=type(exc).__name__,
            error_message=scrub(str(exc)),
        )

    @contextlib.contextmanager
    def step(
        self,
        handle: ActionHandle,
        step: Step,
        deadline: anyio.CancelScope,
        *,
        error_path: Call | str | None = None,
    ) -> Iterator[None]:
        """Around a step's call (inside its ``deadline``): its latency, its span — current
        while the driver is called — and the class of a driver error it raised.
        ``error_path`` names the clean-up call when the step failed and its error path runs."""
        label = _step_label(step)
        call = error_path if error_path is not None else step.call
        call_label = NO_STEP if call is None else call if isinstance(call, str) else call.value
        started = anyio.current_time()
        opened = None
        if self._tracing is not None and handle in self._spans:  # its action is traced
            attributes: dict[str, str | bool | int | float] = {
                "ism.action": handle.name,
                "ism.action.id": handle.id,
                "ism.instance.uuid": handle.uuid,
                "ism.step": label,
                "ism.step.index": handle.step_index,
                "ism.step.call": call_label,
                "ism.step.error_path": error_path is not None,
            }
            if handle.ctx.request_id is not None:
                attributes["ism.request_id"] = handle.ctx.request_id
            opened = self._tracing.start(
                f"ism {handle.name} {label}", attributes, self._clock.wall()
            )
        outcome, error = StepOutcome.OK, None
        try:
            yield
        except anyio.get_cancelled_exc_class():
            if deadline.cancel_called:
                outcome = StepOutcome.FAILED
                why = StepDeadlineExceeded(handle.action.name, label, step.deadline)
                error = (type(why).__name__, str(why))
            else:
                outcome = StepOutcome.CANCELLED
            raise
        except Exception as exc:  # measured and re-raised: the engine translates it
            outcome, error = StepOutcome.FAILED, (error_kind(exc), scrub(str(exc)))
            if isinstance(exc, DriverError):
                self._count_driver_error(error[0])
            raise
        finally:
            key = (handle.name, label, call_label)
            self._recorder(self._steps, key, DURATION_BUCKETS).observe(
                anyio.current_time() - started
            )
            if opened is not None and self._tracing is not None:
                self._tracing.end(opened, {"ism.outcome": outcome}, self._clock.wall(), error=error)

    def committed(self, old: Instance | None, new: Instance) -> None:
        """Called on every committed change: a vm_state left records how long it was held."""
        self._last_commit = new.updated_at or self._last_commit
        if old is None or old.vm_state is new.vm_state or old.state_since is None:
            return
        until = new.state_since or new.updated_at
        if until is None:
            return
        held = (until - old.state_since).total_seconds()
        self._recorder(self._residency, old.vm_state.value, RESIDENCY_BUCKETS).observe(held)

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self) -> TelemetrySnapshot:
        """Everything measured so far, frozen."""
        return TelemetrySnapshot(
            action_seconds={k: r.snapshot() for k, r in self._actions.items()},
            step_seconds={k: r.snapshot() for k, r in self._steps.items()},
            vm_state_seconds={k: r.snapshot() for k, r in self._residency.items()},
            driver_errors=dict(self._driver_errors),
        )

    def outbox_age(self, oldest_timestamp: str | None) -> float:
        """Seconds since the oldest undelivered notification was stamped (0 when none waits).

        ``oldest_timestamp`` is an envelope timestamp (UTC, ``YYYY-MM-DD HH:MM:SS.ffffff``).
        Read outside the engine's loop (after a run on virtual time, whose clock needs the
        loop), the age is as of the engine's last commit.
        """
        if oldest_timestamp is None:
            return 0.0
        stamped = dt.datetime.fromisoformat(oldest_timestamp).replace(tzinfo=dt.UTC)
        try:
            now = self._clock.wall()
        except RuntimeError:  # anyio's NoEventLoopError: no loop runs, no clock to read
            now = self._last_commit or stamped
        return max(0.0, (now - stamped).total_seconds())

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _recorder(
        table: dict[K, HistogramRecorder], key: K, bounds: tuple[float, ...]
    ) -> HistogramRecorder:
        recorder = table.get(key)
        if recorder is None:
            recorder = table[key] = HistogramRecorder(bounds)
        return recorder

    def _count_driver_error(self, kind: str) -> None:
        if kind not in self._driver_errors and len(self._driver_errors) >= MAX_ERROR_KINDS:
            kind = "other"
        self._driver_errors[kind] = self._driver_errors.get(kind, 0) + 1


def error_kind(exc: BaseException) -> str:
    """The class name that labels an error (bounded: classes, never messages)."""
    return type(exc).__name__


def _step_label(step: Step) -> str:
    return step.task_state.value if step.task_state is not None else NO_STEP


def _describe(error: IsmError | None) -> tuple[str | None, str | None]:
    """The error's class and scrubbed message; for an ``ActionFailed`` the class of its
    cause (the driver's ``InjectedFault``, a ``StepDeadlineExceeded``), which says why."""
    if error is None:
        return None, None
    cause = error.__cause__ if isinstance(error.__cause__, Exception) else error
    return error_kind(cause), scrub(str(error))


def _log_outcome(
    level: int,
    *,
    action: str,
    outcome: str,
    instance: str | None,
    ctx: RequestContext | None,
    action_id: str | None,
    duration: float | None,
    step: str | None,
    error: str | None,
    error_message: str | None,
) -> None:
    """One line, ``key=value`` for people and grep, the same fields in ``extra`` for a
    structured formatter (:class:`statemachine.JsonFormatter`)."""
    fields: dict[str, Any] = {
        "action": action,
        "outcome": outcome,
        "instance": instance,
        "request_id": ctx.request_id if ctx is not None else None,
        "user_id": ctx.user_id if ctx is not None else None,
        "project_id": ctx.project_id if ctx is not None else None,
        "action_id": action_id,
        "duration": round(duration, 6) if duration is not None else None,
        "step": step,
        "error": error,
        "error_message": error_message,
    }
    present = {k: v for k, v in fields.items() if v is not None}
    text = " ".join(f"{k}={_value(v)}" for k, v in present.items())
    log.log(level, "%s", text, extra=present)


def _value(value: object) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text
