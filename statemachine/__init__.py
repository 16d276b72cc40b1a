"""ism: an event-driven, async state-machine engine for the lifecycle of virtual server instances.

The import name ``statemachine`` collides with the unrelated ``python-statemachine`` package:
the two cannot share an environment.

Public surface, re-exported here (implementation lives in the submodules)::

    async with Engine(SimulatorDriver(), config=Config(...), sinks=[MemoryCapture()]) as engine:
        result = await engine.create(ctx, name="vm1", flavor=..., image="cirros")
        await engine.act(ctx, "stop", result.instance.uuid)
"""

import contextlib

from drivers.base import PowerState

from ._schema import Action, Concurrency, ErrorPath, ErrorTo, Lifecycle, Rule, Step, Target
from .clock import Clock, SystemClock, VirtualClock, VirtualTimeLoop, run_virtual, to_thread
from .config import Config
from .engine import (
    ActionHandle,
    ActionResult,
    Engine,
    EngineStatistics,
    Outcome,
    StateChange,
    StepHook,
    StepInfo,
)
from .errors import (
    ActionFailed,
    ActionPreempted,
    ActionRefused,
    BuildTimeout,
    Busy,
    Conflict,
    DiagramError,
    EngineClosed,
    Forbidden,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    IsmError,
    LifecycleError,
    Locked,
    NoValidHost,
    PolicyError,
    ScenarioError,
    StepDeadlineExceeded,
    UnexpectedDeletingTaskState,
    WaitTimeout,
    WatchOverflow,
)
from .lifecycle import DEFAULT_LIFECYCLE
from .machine import LifecycleMachine
from .model import SYSTEM_CONTEXT, Fault, Flavor, Instance, RequestContext
from .notify import Notification, Notifier, NotifySettings
from .policy import Policy
from .redact import Redactor, Secret
from .scenario import Scenario, ScenarioOutcome, load_scenario, run_scenario
from .sinks import JsonlSink, LoggingSink, MemoryCapture, Sink
from .states import TaskState, VmState

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIFECYCLE",
    "SYSTEM_CONTEXT",
    "Action",
    "ActionFailed",
    "ActionHandle",
    "ActionPreempted",
    "ActionRefused",
    "ActionResult",
    "BuildTimeout",
    "Busy",
    "Clock",
    "Concurrency",
    "Config",
    "Conflict",
    "DiagramError",
    "Engine",
    "EngineClosed",
    "EngineStatistics",
    "ErrorPath",
    "ErrorTo",
    "Fault",
    "Flavor",
    "Forbidden",
    "Instance",
    "InstanceNotFound",
    "InvalidRequest",
    "InvalidState",
    "IsmError",
    "JsonlSink",
    "Lifecycle",
    "LifecycleError",
    "LifecycleMachine",
    "Locked",
    "LoggingSink",
    "MemoryCapture",
    "NoValidHost",
    "Notification",
    "Notifier",
    "NotifySettings",
    "Outcome",
    "Policy",
    "PolicyError",
    "PowerState",
    "Redactor",
    "RequestContext",
    "Rule",
    "Scenario",
    "ScenarioError",
    "ScenarioOutcome",
    "Secret",
    "Sink",
    "StateChange",
    "Step",
    "StepDeadlineExceeded",
    "StepHook",
    "StepInfo",
    "SystemClock",
    "Target",
    "TaskState",
    "UnexpectedDeletingTaskState",
    "VirtualClock",
    "VirtualTimeLoop",
    "VmState",
    "WaitTimeout",
    "WatchOverflow",
    "load_scenario",
    "run_scenario",
    "run_virtual",
    "to_thread",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("statemachine."):
        with contextlib.suppress(AttributeError, TypeError):  # some types refuse
            _obj.__module__ = "statemachine"
del _name, _obj
