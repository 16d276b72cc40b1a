"""The ``transitions`` machine derived from the lifecycle, used on lightweight cursors.

Every state change the engine makes goes through :meth:`LifecycleMachine.apply`: the
``transitions`` machine checks that the trigger is allowed from the instance's current state and
performs the change. No second, hand-written table exists.

Why cursors and not ``add_model``: ``Machine.add_model`` costs O(N) per model and binds trigger
methods onto every instance, so 100,000 instances take over a minute to register; the async
machine also wraps every callback in new tasks and cancels running ones. Instead one synchronous
machine, holding no models, fires ``Event.trigger`` on a two-slot cursor built from the
instance's state for the duration of one change. All awaiting happens in the engine, outside the
machine's callbacks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from transitions import Machine, MachineError
from transitions.core import EventData

from ._schema import Lifecycle, State, Transition, state_name
from .errors import LifecycleError

__all__ = ["LifecycleMachine"]


class _Cursor:
    """The model ``transitions`` reads and writes for one change: just a state name."""

    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


def _dest_is(name: str) -> Callable[[EventData], bool]:
    def check(event: EventData) -> bool:
        return bool(event.kwargs.get("dest") == name)

    return check


class LifecycleMachine:
    """One validated ``transitions.Machine`` for a lifecycle, shared by every instance."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        lifecycle.validate()
        self.lifecycle = lifecycle
        states = lifecycle.states()
        self._by_name: dict[str, State] = {state_name(s): s for s in states}
        self.transitions: list[Transition] = lifecycle.transitions()
        fan_out = Counter((t.trigger, t.source) for t in self.transitions)
        self._machine = Machine(
            model=None,
            states=list(self._by_name),
            initial=state_name(lifecycle.initial),
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=False,
        )
        for t in self.transitions:
            dest = None if t.kind == "internal" else state_name(t.dest)
            conditions: list[str | Callable[..., bool | None]] = (
                [_dest_is(state_name(t.dest))] if fan_out[(t.trigger, t.source)] > 1 else []
            )
            self._machine.add_transition(
                t.trigger, state_name(t.source), dest, conditions=conditions
            )
        self._events = self._machine.events
        self.applied: Counter[tuple[str, str, str]] = Counter()
        """How often each (trigger, source, dest) was applied: the generated paths' coverage."""

    def has(self, trigger: str, source: State) -> bool:
        """Whether ``trigger`` is allowed from ``source``."""
        event = self._events.get(trigger)
        return event is not None and bool(event.transitions.get(state_name(source)))

    def apply(self, trigger: str, source: State, dest: State) -> State:
        """Perform ``trigger`` from ``source`` to ``dest`` through the machine; return the result.

        Raises:
            LifecycleError: the lifecycle has no such change. The engine checks guards first, so
                this means a bug, and nothing is changed.
        """
        cursor = _Cursor(state_name(source))
        wanted = state_name(dest)
        event = self._events.get(trigger)
        if event is None:
            raise LifecycleError(f"no trigger {trigger!r} in the lifecycle")
        try:
            ok = event.trigger(cursor, dest=wanted)
        except MachineError as exc:
            raise LifecycleError(
                f"{trigger!r} is not allowed from {state_name(source)!r}: {exc.value}"
            ) from None
        if not ok or cursor.state != wanted:
            raise LifecycleError(
                f"{trigger!r} cannot lead from {state_name(source)!r} to {state_name(dest)!r}"
            )
        self.applied[(trigger, state_name(source), cursor.state)] += 1
        return self._by_name[cursor.state]
