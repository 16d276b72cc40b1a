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

from ._calls import StepCall, StepRun
from ._histogram import Histogram
from ._schema import (
    Action,
    Concurrency,
    ErrorPath,
    ErrorTo,
    Lifecycle,
    PayloadClass,
    Rule,
    Step,
    Target,
)
from .amqp import AmqpStatistics, AmqpTransport
from .audit import AuditEntry, AuditRecord, VerifyReport
from .clock import (
    Clock,
    SystemClock,
    VirtualClock,
    VirtualTimeLoop,
    run_virtual,
    to_thread,
)
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
    DuplicateRequest,
    EngineClosed,
    Forbidden,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    IsmError,
    LifecycleError,
    Locked,
    MissingExtra,
    NoValidHost,
    PolicyError,
    ScenarioError,
    StepDeadlineExceeded,
    StoreError,
    TransportError,
    UnexpectedDeletingTaskState,
    WaitTimeout,
    WatchOverflow,
    WrongHost,
)
from .history import ActionEvent, ActionRecord
from .lifecycle import DEFAULT_LIFECYCLE
from .logs import JsonFormatter
from .machine import LifecycleMachine
from .metrics import EngineCollector
from .model import SYSTEM_CONTEXT, Fault, Flavor, Instance, RequestContext
from .notify import Notification, Notifier, NotifySettings
from .outbox import Transport
from .policy import Policy
from .redact import Redactor, Secret
from .scenario import Scenario, ScenarioOutcome, load_scenario, run_scenario
from .sinks import JsonlSink, LoggingSink, MemoryCapture, Sink
from .states import TaskState, VmState
from .store import (
    MemoryStore,
    PostgresStore,
    RequestRecord,
    SqliteStore,
    Store,
    Write,
    open_store,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIFECYCLE",
    "SYSTEM_CONTEXT",
    "Action",
    "ActionEvent",
    "ActionFailed",
    "ActionHandle",
    "ActionPreempted",
    "ActionRecord",
    "ActionRefused",
    "ActionResult",
    "AmqpStatistics",
    "AmqpTransport",
    "AuditEntry",
    "AuditRecord",
    "BuildTimeout",
    "Busy",
    "Clock",
    "Concurrency",
    "Config",
    "Conflict",
    "DiagramError",
    "DuplicateRequest",
    "Engine",
    "EngineClosed",
    "EngineCollector",
    "EngineStatistics",
    "ErrorPath",
    "ErrorTo",
    "Fault",
    "Flavor",
    "Forbidden",
    "Histogram",
    "Instance",
    "InstanceNotFound",
    "InvalidRequest",
    "InvalidState",
    "IsmError",
    "JsonFormatter",
    "JsonlSink",
    "Lifecycle",
    "LifecycleError",
    "LifecycleMachine",
    "Locked",
    "LoggingSink",
    "MemoryCapture",
    "MemoryStore",
    "MissingExtra",
    "NoValidHost",
    "Notification",
    "Notifier",
    "NotifySettings",
    "Outcome",
    "PayloadClass",
    "Policy",
    "PolicyError",
    "PostgresStore",
    "PowerState",
    "Redactor",
    "RequestContext",
    "RequestRecord",
    "Rule",
    "Scenario",
    "ScenarioError",
    "ScenarioOutcome",
    "Secret",
    "Sink",
    "SqliteStore",
    "StateChange",
    "Step",
    "StepCall",
    "StepDeadlineExceeded",
    "StepHook",
    "StepInfo",
    "StepRun",
    "Store",
    "StoreError",
    "SystemClock",
    "Target",
    "TaskState",
    "Transport",
    "TransportError",
    "UnexpectedDeletingTaskState",
    "VerifyReport",
    "VirtualClock",
    "VirtualTimeLoop",
    "VmState",
    "WaitTimeout",
    "WatchOverflow",
    "Write",
    "WrongHost",
    "load_scenario",
    "open_store",
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
