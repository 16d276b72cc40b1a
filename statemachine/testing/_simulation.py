"""The simulator as a test drives it: typed fault injection, hosts, guest events.

The words are those of scenario files (``fault``, ``host_down``, ``guest``), checked against
the lifecycle table, so a rule naming a step an action does not have fails at once instead of
never firing.
"""

from __future__ import annotations

from typing import Literal, final

from drivers.simulator import FaultRule, FiredFault, SimGuest, SimulatorDriver

from .._faults import fault_rule
from .._schema import Lifecycle
from ..lifecycle import DEFAULT_LIFECYCLE

__all__ = ["SimulatorHarness"]


@final
class SimulatorHarness:
    """A :class:`~drivers.SimulatorDriver` and the controls a test needs over it.

    It also satisfies :class:`~statemachine.paths.SimulatorControl`, so it can drive generated
    paths. Faults match the engine's calls by action (API name) and step (task_state) and count
    them from 1, as scenario files do.

    Args:
        driver: The simulator an engine runs on.
        lifecycle: The table actions and steps are checked against.
    """

    def __init__(
        self, driver: SimulatorDriver, *, lifecycle: Lifecycle = DEFAULT_LIFECYCLE
    ) -> None:
        self.driver = driver
        self.lifecycle = lifecycle

    # -- faults ------------------------------------------------------------------------------

    def fail(
        self,
        action: str,
        *,
        step: str | None = None,
        nth: int = 1,
        times: int | None = 1,
        message: str = "injected fault",
    ) -> FaultRule:
        """Make the ``nth`` matching driver call of ``action`` (in ``step``) fail, after its
        latency, with :class:`~drivers.InjectedFault` (``times`` calls in a row; None: all).

        Raises:
            InvalidRequest: unknown action or step, or a count out of range.
        """
        return self._add(action, step=step, mode="raise", nth=nth, times=times, message=message)

    def hang(
        self,
        action: str,
        *,
        step: str | None = None,
        nth: int = 1,
        times: int | None = 1,
    ) -> FaultRule:
        """Make the ``nth`` matching driver call of ``action`` (in ``step``) never answer: the
        step's deadline ends it (``StepDeadlineExceeded``, then the error path).

        Raises:
            InvalidRequest: unknown action or step, or a count out of range.
        """
        return self._add(action, step=step, mode="hang", nth=nth, times=times)

    def fail_randomly(
        self,
        action: str,
        probability: float,
        *,
        step: str | None = None,
        mode: Literal["raise", "hang"] = "raise",
        message: str = "injected fault",
    ) -> FaultRule:
        """Break each matching call of ``action`` with ``probability``, drawn from the
        simulator's seeded generator (so a run repeats under its seed).

        Raises:
            InvalidRequest: unknown action or step, or a probability outside [0, 1].
        """
        return self._add(
            action, step=step, mode=mode, probability=probability, times=None, message=message
        )

    def clear_faults(self) -> None:
        """Drop every rule (the record of fired faults stays)."""
        self.driver.faults.clear()

    @property
    def fired(self) -> list[FiredFault]:
        """The faults that took effect, oldest first."""
        return self.driver.faults.fired

    def _add(
        self,
        action: str,
        *,
        step: str | None,
        mode: Literal["raise", "hang"],
        nth: int = 1,
        times: int | None,
        probability: float | None = None,
        message: str = "injected fault",
    ) -> FaultRule:
        rule = fault_rule(
            self.lifecycle,
            action,
            step=step,
            mode=mode,
            nth=nth,
            times=times,
            probability=probability,
            message=message,
        )
        return self.driver.faults.add(rule)

    # -- hosts and guests --------------------------------------------------------------------

    def host_down(self, name: str) -> None:
        """The host stops answering: every call touching it fails (``HostUnavailable``)."""
        self.driver.host_down(name)

    def host_up(self, name: str) -> None:
        """The host answers again; its guests are as they were."""
        self.driver.host_up(name)

    def crash(self, uuid: str) -> None:
        """The guest crashes; the hypervisor reports it stopped, and the engine's power sync
        acts on it (Nova's table: an active instance is stopped)."""
        self.driver.guest_event(uuid, "crash")

    def shutdown(self, uuid: str) -> None:
        """The guest shuts itself down from inside; the power sync acts as for a crash."""
        self.driver.guest_event(uuid, "shutdown")

    def guest_event(self, uuid: str, kind: Literal["crash", "shutdown"]) -> None:
        """:meth:`crash` or :meth:`shutdown` by name (the scenario file's ``guest`` step)."""
        self.driver.guest_event(uuid, kind)

    def guest(self, uuid: str) -> SimGuest | None:
        """What the hypervisor holds for the guest, or None."""
        return self.driver.guest(uuid)
