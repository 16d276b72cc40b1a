"""Prometheus metrics of an engine, read from :meth:`Engine.statistics` at scrape time.

The engine counts and measures once (:class:`~statemachine.EngineStatistics`);
:class:`EngineCollector` only translates a snapshot into metric families when Prometheus
scrapes, so there is no second set of counters to drift from the first. ``prometheus_client``
is an optional extra (``pip install 'ism-engine[metrics]'``), imported when a collector is
made, never when ``statemachine`` is.

Every label takes its values from a finite set — action names, outcomes, step task_states,
vm_states, exception classes — never an instance's uuid, so the number of series is bounded by
the lifecycle, not by the fleet::

    from prometheus_client import REGISTRY, start_http_server
    REGISTRY.register(EngineCollector(engine))
    start_http_server(9100)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ._histogram import Histogram
from .errors import MissingExtra
from .handles import EngineStatistics
from .states import VmState

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["METRIC_NAMES", "EngineCollector", "exposition", "require_client", "write_metrics"]

METRIC_NAMES: tuple[str, ...] = (
    "ism_actions",
    "ism_actions_running",
    "ism_action_duration_seconds",
    "ism_step_duration_seconds",
    "ism_vm_state_duration_seconds",
    "ism_instances",
    "ism_state_changes",
    "ism_notifications",
    "ism_outbox_backlog",
    "ism_outbox_oldest_age_seconds",
    "ism_timers_armed",
    "ism_timer_lateness_seconds",
    "ism_driver_errors",
)
"""The metric families a collector yields (counters without their ``_total`` suffix, as
Prometheus's parser names families)."""


class StatisticsSource(Protocol):
    """What a collector reads: an :class:`~statemachine.Engine`, or anything as it."""

    def statistics(self) -> EngineStatistics: ...


def require_client() -> None:
    """Check that ``prometheus_client`` can be imported (before a long run that ends by
    writing metrics, say).

    Raises:
        MissingExtra: it is not installed.
    """
    _client()


def _client() -> Any:
    try:
        import prometheus_client.core
    except ImportError as exc:
        raise MissingExtra("metrics", "prometheus_client", "Prometheus metrics") from exc
    return prometheus_client.core


class EngineCollector:
    """A Prometheus collector of one engine's statistics (register it with a registry).

    Raises:
        MissingExtra: ``prometheus_client`` is not installed.
    """

    def __init__(self, engine: StatisticsSource) -> None:
        self._core = _client()
        self._engine = engine

    def describe(self) -> Iterator[Metric]:
        """The families without samples: a registry checks names without reading the engine."""
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        """Every family, from one fresh snapshot of the engine."""
        return self._families(self._engine.statistics())

    def _families(self, stats: EngineStatistics | None) -> Iterator[Metric]:
        core = self._core
        counter, gauge = core.CounterMetricFamily, core.GaugeMetricFamily

        actions = counter(
            "ism_actions",
            "Actions ended or refused, by action and outcome (ok, failed, preempted, refused).",
            labels=["action", "outcome"],
        )
        running = gauge("ism_actions_running", "Actions running now.")
        action_seconds = core.HistogramMetricFamily(
            "ism_action_duration_seconds",
            "Seconds from an action's acceptance to its end, by action.",
            labels=["action"],
        )
        step_seconds = core.HistogramMetricFamily(
            "ism_step_duration_seconds",
            "Seconds of a step's call under its deadline (hooks and driver call), by action, "
            "step (task_state) and call.",
            labels=["action", "step", "call"],
        )
        held = core.HistogramMetricFamily(
            "ism_vm_state_duration_seconds",
            "Seconds instances stayed in a vm_state, observed when they leave it.",
            labels=["vm_state"],
        )
        instances = gauge("ism_instances", "Instances by vm_state.", labels=["vm_state"])
        changes = counter("ism_state_changes", "Committed state changes.")
        notifications = counter("ism_notifications", "Notifications committed to the outbox.")
        backlog = gauge(
            "ism_outbox_backlog", "Committed notifications not yet taken by every destination."
        )
        age = gauge(
            "ism_outbox_oldest_age_seconds",
            "Age of the oldest undelivered notification (0 when none waits).",
        )
        armed = gauge("ism_timers_armed", "Timers armed (deadlines and timed transitions).")
        lateness = core.HistogramMetricFamily(
            "ism_timer_lateness_seconds", "Seconds timers fired after they were due."
        )
        errors = counter(
            "ism_driver_errors",
            "Failed driver calls in steps, by exception class.",
            labels=["kind"],
        )
        families = (
            actions, running, action_seconds, step_seconds, held, instances, changes,
            notifications, backlog, age, armed, lateness, errors,
        )  # fmt: skip
        if stats is not None:
            for action, row in sorted(stats.by_action.items()):
                for outcome, count in sorted(row.items()):
                    actions.add_metric([action, str(outcome)], count)
            running.add_metric([], stats.running_actions)
            for action, histogram in sorted(stats.action_seconds.items()):
                _histogram(action_seconds, [action], histogram)
            for (action, step, call), histogram in sorted(stats.step_seconds.items()):
                _histogram(step_seconds, [action, step, call], histogram)
            for state, histogram in sorted(stats.vm_state_seconds.items()):
                _histogram(held, [state], histogram)
            for state in VmState:  # every state, 0 included: a series does not vanish
                instances.add_metric([state.value], stats.by_vm_state.get(state.value, 0))
            changes.add_metric([], stats.state_changes)
            notifications.add_metric([], stats.notifications)
            backlog.add_metric([], stats.outbox_backlog)
            age.add_metric([], stats.outbox_oldest_age)
            armed.add_metric([], stats.timers_armed)
            if stats.timer_lateness is not None:
                _histogram(lateness, [], stats.timer_lateness)
            for kind, count in sorted(stats.driver_errors.items()):
                errors.add_metric([kind], count)
        yield from families


def _histogram(family: Any, labels: list[str], histogram: Histogram) -> None:
    from prometheus_client.utils import floatToGoString

    buckets = [
        # the client's own spelling of bounds (untyped there), so ism's series match its own
        ("+Inf" if math.isinf(bound) else floatToGoString(bound), float(count))  # type: ignore[no-untyped-call]
        for bound, count in histogram.cumulative()
    ]
    family.add_metric(labels, buckets, histogram.sum)


def exposition(engine: StatisticsSource) -> str:
    """The engine's metrics in Prometheus's text format (what a scrape returns).

    Raises:
        MissingExtra: ``prometheus_client`` is not installed.
    """
    collector = EngineCollector(engine)
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    text: bytes = generate_latest(registry)
    return text.decode("utf-8")


def write_metrics(engine: StatisticsSource, path: str | os.PathLike[str]) -> None:
    """Write :func:`exposition` to ``path`` (a node exporter's textfile collector reads it).

    Written to a temporary file then renamed, so a reader never sees half a scrape.

    Raises:
        MissingExtra: ``prometheus_client`` is not installed.
    """
    text = exposition(engine)
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(target)
