"""Fixed-bucket histograms: what latencies and durations cost in memory is decided up front.

A :class:`HistogramRecorder` is the live, mutable side (one list of counts, a sum); a
:class:`Histogram` is the frozen snapshot :meth:`Engine.statistics` hands out. The buckets are
Prometheus's: upper bounds, each observation counted in the first bucket whose bound it does
not exceed, and one more bucket (``+Inf``) for the rest, so a snapshot maps onto a Prometheus
histogram without re-binning.
"""

from __future__ import annotations

import bisect
import itertools
import math

import attrs

__all__ = [
    "DURATION_BUCKETS",
    "LATENESS_BUCKETS",
    "RESIDENCY_BUCKETS",
    "Histogram",
    "HistogramRecorder",
]

DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0,
)  # fmt: skip
"""Seconds, for actions and steps: from a simulator's milliseconds to the longest deadlines
of the table (a resize's disk copy, a live migration)."""

RESIDENCY_BUCKETS: tuple[float, ...] = (
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0,
)  # fmt: skip
"""Seconds an instance stayed in a vm_state: from a reboot's instant to a month shelved."""

LATENESS_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
)  # fmt: skip
"""Seconds a timer fired after its due instant: an overloaded loop shows here first."""


def _check_bounds(bounds: tuple[float, ...]) -> tuple[float, ...]:
    if not bounds or any(b >= c for b, c in itertools.pairwise(bounds)):
        raise ValueError("histogram bounds must be a non-empty, strictly increasing tuple")
    if not all(math.isfinite(b) for b in bounds):
        raise ValueError("histogram bounds must be finite (+Inf is implied)")
    return bounds


@attrs.frozen
class Histogram:
    """A frozen histogram: how many observations fell in each bucket, and their sum.

    ``counts`` has one entry per bound plus the last one, for observations above every bound
    (``+Inf``); they are per bucket, not cumulative (:meth:`cumulative` gives Prometheus's).
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        """How many observations there were."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` for every bound, then ``+Inf``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class HistogramRecorder:
    """Counts observations into fixed buckets; memory is the number of buckets, whatever the
    number of observations."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = _check_bounds(bounds)
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (a negative one, a clock step backwards, counts as 0)."""
        value = max(0.0, value)
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> Histogram:
        """The counts so far, frozen."""
        return Histogram(self._bounds, tuple(self._counts), self._sum)
