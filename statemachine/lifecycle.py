"""The lifecycle of an instance, as data: Nova's states, actions, guards, steps and timers.

This table is the one source of truth. The ``transitions`` machine, the guard checks, the step
deadlines, the timed transitions, the power-sync rules, the diagrams, the docs and the generated
test paths are all derived from it; adding an action means adding one entry here.

Sources: ``reference/nova-lifecycle.md`` (guards §2, power sync §3.1, API status §1.4) and
``reference/action-events.md`` (steps, notifications, error paths, concurrency). Where ism
departs from Nova the entry's ``doc`` says so.
"""

from __future__ import annotations

from drivers.base import PowerState

from ._schema import (
    Action,
    Call,
    Concurrency,
    ErrorPath,
    ErrorTo,
    Lifecycle,
    PowerSyncRule,
    Precondition,
    Rule,
    Step,
    SyncResponse,
    Target,
    TimedTransition,
)
from .states import TaskState as T
from .states import VmState as V

__all__ = [
    "ALLOW_HARD_REBOOT",
    "ALLOW_REBOOT",
    "ALLOW_SOFT_REBOOT",
    "ALLOW_TRIGGER_CRASH_DUMP",
    "DEFAULT_LIFECYCLE",
    "REBUILD_STATES",
    "RESIZING_STATES",
]

# -- Nova's named state sets (nova/compute/vm_states.py, task_states.py) --------------------
ALLOW_SOFT_REBOOT = frozenset({V.ACTIVE})
ALLOW_HARD_REBOOT = frozenset({V.ACTIVE, V.STOPPED, V.PAUSED, V.SUSPENDED, V.ERROR})
ALLOW_TRIGGER_CRASH_DUMP = frozenset({V.ACTIVE, V.PAUSED, V.RESCUED, V.RESIZED, V.ERROR})
ALLOW_REBOOT: frozenset[T | None] = frozenset(
    {
        None,
        T.REBOOTING,
        T.REBOOT_PENDING,
        T.REBOOT_STARTED,
        T.RESUMING,
        T.REBOOTING_HARD,
        T.UNPAUSING,
        T.PAUSING,
        T.SUSPENDING,
    }
)
RESIZING_STATES = frozenset({T.RESIZE_PREP, T.RESIZE_MIGRATING, T.RESIZE_MIGRATED, T.RESIZE_FINISH})
REBUILD_STATES = frozenset({T.REBUILDING, T.REBUILD_BLOCK_DEVICE_MAPPING, T.REBUILD_SPAWNING})
IDLE: frozenset[T | None] = frozenset({None})
NOT_DELETING: frozenset[T | None] = frozenset({None, *T}) - {T.DELETING, T.SOFT_DELETING}
"""A delete is accepted in any task_state but its own: Nova ignores a delete of an instance
already deleting or soft-deleting; ism refuses it (InvalidState), which says so to the caller."""

# -- deadlines (seconds) --------------------------------------------------------------------
# A step's deadline bounds its driver call. Power-off waits up to shutdown_timeout (60 s) for
# the guest, so its deadline must exceed that; the engine checks it against the configuration.
QUICK = 60.0
GUEST_OP = 300.0
POWER_OFF = 180.0
SPAWN = 600.0
IMAGE = 1800.0
MIGRATION = 3600.0

REVERT = ErrorPath(ErrorTo.REVERT_TASK, doc="Nova's reverts_task_state")
TO_ERROR = ErrorPath(ErrorTo.ERROR)
RESIZE_ROLLBACK = ErrorPath(
    ErrorTo.ROLLBACK, call=Call.ROLLBACK_RESIZE, doc="the disk has not moved: undo the claim"
)
LM_ROLLBACK = ErrorPath(
    ErrorTo.ROLLBACK,
    call=Call.ROLLBACK_LIVE_MIGRATION,
    events=("live_migration_rollback.start", "live_migration_rollback.end"),
    doc="stay on the source host, state unchanged",
)

_LM_POST = Step(
    T.MIGRATING,
    Call.POST_LIVE_MIGRATION,
    QUICK,
    before=("live_migration_post.start", "live_migration_post_dest.start"),
    after=("live_migration_post_dest.end", "live_migration_post.end"),
    on_error=TO_ERROR,
    error_event="live_migration_post",
    doc="switch the guest to the destination host",
)

_DELETE_STEPS = (
    Step(T.DELETING, None, QUICK, before=("delete.start",), doc="accept the delete"),
    Step(
        T.DELETING,
        Call.DESTROY,
        GUEST_OP,
        before=("shutdown.start",),
        after=("shutdown.end",),
        needs_host=True,
        doc="destroy the guest (skipped when it never got a host)",
    ),
    Step(T.DELETING, Call.RELEASE, QUICK, after=("delete.end",), doc="free the allocation"),
)


def _simple(
    name: str,
    event: str,
    task: T,
    call: Call,
    *,
    vm_states: frozenset[V],
    to: V | None,
    doc: str,
    deadline: float = GUEST_OP,
    before_extra: tuple[str, ...] = (),
    after_extra: tuple[str, ...] = (),
    **kw: object,
) -> Action:
    """One-step actions: ``<event>.start``, the call, the new state, ``<event>.end``."""
    return Action(
        name=name,
        doc=doc,
        event=event,
        steps=(
            Step(
                task,
                call,
                deadline,
                before=(f"{event}.start", *before_extra),
                after=(*after_extra, f"{event}.end"),
            ),
        ),
        target=Target(to=to) if to is not None else Target(same=True),
        vm_states=vm_states,
        **{"on_error": REVERT, **kw},  # type: ignore[arg-type]
    )


ACTIONS: tuple[Action, ...] = (
    Action(
        name="create",
        doc="Schedule, build and boot a new instance (Nova's build_and_run_instance).",
        event="create",
        steps=(
            Step(T.SCHEDULING, Call.SCHEDULE, QUICK, doc="pick a live host with capacity"),
            Step(T.NETWORKING, None, QUICK, before=("create.start",)),
            Step(T.BLOCK_DEVICE_MAPPING, None, QUICK),
            Step(T.SPAWNING, Call.SPAWN, SPAWN, after=("create.end",)),
        ),
        target=Target(to=V.ACTIVE),
        on_error=TO_ERROR,
        vm_states=frozenset(),
        task_states=frozenset(),
        lock_check=False,
        must_have_launched=False,
        params=frozenset(
            {"flavor", "image", "host", "admin_pass", "user_data", "metadata", "key_name", "name"}
        ),
        required=frozenset({"flavor", "image"}),
        power_after=PowerState.RUNNING,
    ),
    Action(
        name="delete",
        doc="Destroy the guest and free its resources; preempts any running action.",
        event="delete",
        steps=_DELETE_STEPS,
        target=Target(to=V.DELETED),
        on_error=TO_ERROR,
        vm_states=None,
        task_states=NOT_DELETING,
        concurrency=Concurrency.PREEMPTS,
        must_have_launched=False,
        power_after=PowerState.NOSTATE,
    ),
    Action(
        name="force_delete",
        doc="Delete without the soft-delete grace period; admin only in ism's default policy.",
        event="delete",
        steps=_DELETE_STEPS,
        target=Target(to=V.DELETED),
        on_error=TO_ERROR,
        vm_states=None,
        task_states=NOT_DELETING,
        rule=Rule.ADMIN,
        concurrency=Concurrency.PREEMPTS,
        must_have_launched=False,
        power_after=PowerState.NOSTATE,
    ),
    _simple(
        "soft_delete",
        "soft_delete",
        T.SOFT_DELETING,
        Call.POWER_OFF,
        vm_states=frozenset(
            {V.ACTIVE, V.STOPPED, V.PAUSED, V.SUSPENDED, V.RESCUED, V.RESIZED, V.ERROR, V.SHELVED}
        ),
        to=V.SOFT_DELETED,
        deadline=POWER_OFF,
        task_states=NOT_DELETING,
        concurrency=Concurrency.PREEMPTS,
        doc="Power off and keep the instance for reclaim_instance_interval; restore brings it "
        "back. ism departs from Nova by refusing it on shelved_offloaded and building "
        "instances, which have no guest to keep.",
    ),
    _simple(
        "restore",
        "restore",
        T.RESTORING,
        Call.POWER_ON,
        vm_states=frozenset({V.SOFT_DELETED}),
        to=V.ACTIVE,
        doc="Bring a soft-deleted instance back.",
        on_error=TO_ERROR,
    ),
    _simple(
        "stop",
        "power_off",
        T.POWERING_OFF,
        Call.POWER_OFF,
        vm_states=frozenset({V.ACTIVE, V.ERROR}),
        to=V.STOPPED,
        deadline=POWER_OFF,
        preconditions=frozenset({Precondition.HAS_HOST}),
        doc="Ask the guest to shut down, wait shutdown_timeout, then power off.",
    ),
    _simple(
        "force_stop",
        "power_off",
        T.POWERING_OFF,
        Call.POWER_OFF,
        vm_states=frozenset({V.ACTIVE, V.STOPPED, V.PAUSED, V.ERROR}),
        to=V.STOPPED,
        deadline=POWER_OFF,
        rule=Rule.SYSTEM,
        lock_check=False,
        internal=True,
        preconditions=frozenset({Precondition.HAS_HOST}),
        doc="The power sync's unguarded stop (Nova's force_stop).",
    ),
    _simple(
        "start",
        "power_on",
        T.POWERING_ON,
        Call.POWER_ON,
        vm_states=frozenset({V.STOPPED}),
        to=V.ACTIVE,
        preconditions=frozenset({Precondition.HAS_HOST}),
        doc="Power the guest on.",
    ),
    Action(
        name="reboot",
        doc="A soft reboot: ask the guest to restart.",
        event="reboot",
        api_name="reboot",
        variant="SOFT",
        steps=(
            Step(T.REBOOTING, None, QUICK, before=("reboot.start",)),
            Step(T.REBOOT_PENDING, None, QUICK),
            Step(T.REBOOT_STARTED, Call.REBOOT, GUEST_OP, after=("reboot.end",)),
        ),
        target=Target(to=V.ACTIVE),
        on_error=ErrorPath(ErrorTo.ACTIVE_IF_RUNNING),
        vm_states=ALLOW_SOFT_REBOOT,
        params=frozenset({"type"}),
    ),
    Action(
        name="reboot_hard",
        doc="A hard reboot: power-cycle the guest. Takes over a running soft reboot, pause, "
        "unpause, suspend or resume (Nova's ALLOW_REBOOT).",
        event="reboot",
        api_name="reboot",
        variant="HARD",
        steps=(
            Step(T.REBOOTING_HARD, None, QUICK, before=("reboot.start",)),
            Step(T.REBOOT_PENDING_HARD, None, QUICK),
            Step(T.REBOOT_STARTED_HARD, Call.REBOOT, GUEST_OP, after=("reboot.end",)),
        ),
        target=Target(to=V.ACTIVE),
        on_error=ErrorPath(ErrorTo.ACTIVE_IF_RUNNING),
        vm_states=ALLOW_HARD_REBOOT,
        task_states=ALLOW_REBOOT,
        concurrency=Concurrency.TAKES_OVER,
        params=frozenset({"type"}),
    ),
    _simple(
        "pause",
        "pause",
        T.PAUSING,
        Call.PAUSE,
        vm_states=frozenset({V.ACTIVE}),
        to=V.PAUSED,
        doc="Freeze the guest in memory.",
    ),
    _simple(
        "unpause",
        "unpause",
        T.UNPAUSING,
        Call.UNPAUSE,
        vm_states=frozenset({V.PAUSED}),
        to=V.ACTIVE,
        doc="Resume a paused guest.",
    ),
    _simple(
        "suspend",
        "suspend",
        T.SUSPENDING,
        Call.SUSPEND,
        vm_states=frozenset({V.ACTIVE}),
        to=V.SUSPENDED,
        doc="Save the guest's memory to disk (libvirt: a managed save).",
    ),
    _simple(
        "resume",
        "resume",
        T.RESUMING,
        Call.RESUME,
        vm_states=frozenset({V.SUSPENDED}),
        to=V.ACTIVE,
        doc="Restore a suspended guest.",
    ),
    Action(
        name="shelve",
        doc="Power off and snapshot; offloaded at once when shelved_offload_time is 0.",
        event="shelve",
        steps=(
            Step(T.SHELVING, Call.POWER_OFF, POWER_OFF, before=("exists", "shelve.start")),
            Step(T.SHELVING_IMAGE_PENDING_UPLOAD, None, QUICK),
            Step(T.SHELVING_IMAGE_UPLOADING, Call.SNAPSHOT, IMAGE, after=("shelve.end",)),
        ),
        target=Target(to=V.SHELVED),
        on_error=REVERT,
        vm_states=frozenset({V.ACTIVE, V.STOPPED, V.PAUSED, V.SUSPENDED}),
        power_after=PowerState.SHUTDOWN,
    ),
    _simple(
        "shelve_offload",
        "shelve_offload",
        T.SHELVING_OFFLOADING,
        Call.SHELVE_OFFLOAD,
        vm_states=frozenset({V.SHELVED}),
        to=V.SHELVED_OFFLOADED,
        doc="Destroy the shelved guest and free its host.",
    ),
    Action(
        name="unshelve",
        doc="Bring a shelved instance back: power on, or schedule and spawn when offloaded.",
        event="unshelve",
        steps=(
            Step(
                T.UNSHELVING,
                Call.SCHEDULE,
                QUICK,
                before=("unshelve.start",),
                doc="pick a host when offloaded",
            ),
            Step(T.SPAWNING, Call.UNSHELVE_SPAWN, SPAWN, after=("unshelve.end",)),
        ),
        target=Target(to=V.ACTIVE),
        on_error=TO_ERROR,
        vm_states=frozenset({V.SHELVED, V.SHELVED_OFFLOADED}),
        params=frozenset({"host"}),
    ),
    _simple(
        "rescue",
        "rescue",
        T.RESCUING,
        Call.RESCUE,
        vm_states=frozenset({V.ACTIVE, V.STOPPED, V.ERROR}),
        to=V.RESCUED,
        before_extra=("exists",),
        params=frozenset({"rescue_image"}),
        doc="Boot the guest from a rescue image.",
    ),
    _simple(
        "unrescue",
        "unrescue",
        T.UNRESCUING,
        Call.UNRESCUE,
        vm_states=frozenset({V.RESCUED}),
        to=V.ACTIVE,
        doc="Return from the rescue image to the guest's own disk.",
    ),
    Action(
        name="resize",
        doc="Move to a new flavor (same host allowed by allow_resize_to_same_host); ends in "
        "resized until confirmed or reverted.",
        event="resize",
        steps=(
            Step(
                T.RESIZE_PREP,
                Call.PREP_RESIZE,
                QUICK,
                before=("exists", "resize_prep.start"),
                after=("resize_prep.end",),
                on_error=RESIZE_ROLLBACK,
                doc="choose the destination and claim the new flavor",
            ),
            Step(
                T.RESIZE_MIGRATING,
                Call.MIGRATE_DISK,
                MIGRATION,
                before=("resize.start",),
                after=("resize.end",),
                on_error=RESIZE_ROLLBACK,
            ),
            Step(T.RESIZE_MIGRATED, None, QUICK, on_error=TO_ERROR),
            Step(
                T.RESIZE_FINISH,
                Call.FINISH_MIGRATION,
                SPAWN,
                before=("resize_finish.start",),
                after=("resize_finish.end",),
                on_error=TO_ERROR,
            ),
        ),
        target=Target(to=V.RESIZED),
        on_error=TO_ERROR,
        vm_states=frozenset({V.ACTIVE, V.STOPPED}),
        params=frozenset({"flavor"}),
        required=frozenset({"flavor"}),
        preconditions=frozenset({Precondition.HAS_HOST}),
    ),
    Action(
        name="confirm_resize",
        doc="Keep the new flavor and free the source. Nova defines resize_confirming but its "
        "API sets none; ism uses it so the confirm is a task like any other.",
        event="resize_confirm",
        steps=(
            Step(
                T.RESIZE_CONFIRMING,
                Call.CONFIRM_MIGRATION,
                GUEST_OP,
                before=("resize_confirm.start",),
                after=("resize_confirm.end",),
            ),
        ),
        target=Target(prior=(V.ACTIVE, V.STOPPED)),
        on_error=REVERT,
        vm_states=frozenset({V.RESIZED}),
    ),
    Action(
        name="revert_resize",
        doc="Go back to the old flavor on the source host.",
        event="resize_revert",
        steps=(
            Step(
                T.RESIZE_REVERTING,
                Call.FINISH_REVERT_MIGRATION,
                SPAWN,
                before=("exists", "resize_revert.start"),
                after=("resize_revert.end",),
            ),
        ),
        target=Target(prior=(V.ACTIVE, V.STOPPED)),
        on_error=REVERT,
        vm_states=frozenset({V.RESIZED}),
    ),
    Action(
        name="rebuild",
        doc="Re-create the guest from an image; a stopped instance stays stopped.",
        event="rebuild",
        steps=(
            Step(T.REBUILDING, None, QUICK, before=("exists", "rebuild.start")),
            Step(T.REBUILD_BLOCK_DEVICE_MAPPING, None, QUICK),
            Step(T.REBUILD_SPAWNING, Call.REBUILD, SPAWN, after=("rebuild.end",)),
        ),
        target=Target(by_source={V.ACTIVE: V.ACTIVE, V.STOPPED: V.STOPPED, V.ERROR: V.ACTIVE}),
        on_error=TO_ERROR,
        vm_states=frozenset({V.ACTIVE, V.STOPPED, V.ERROR}),
        params=frozenset({"image"}),
    ),
    Action(
        name="evacuate",
        doc="Rebuild on another host when the instance's host is down; takes over any task.",
        event="rebuild",
        steps=(
            Step(
                T.REBUILDING,
                Call.EVACUATE_SCHEDULE,
                QUICK,
                before=("evacuate",),
                doc="pick a live host other than the failed one",
            ),
            Step(
                T.REBUILDING,
                Call.SPAWN_IMAGE,
                SPAWN,
                before=("rebuild.start",),
                after=("rebuild.end",),
            ),
        ),
        target=Target(by_source={V.ACTIVE: V.ACTIVE, V.STOPPED: V.STOPPED, V.ERROR: V.ACTIVE}),
        on_error=TO_ERROR,
        vm_states=frozenset({V.ACTIVE, V.STOPPED, V.ERROR}),
        task_states=None,
        lock_check=False,
        rule=Rule.ADMIN,
        concurrency=Concurrency.TAKES_OVER,
        preconditions=frozenset({Precondition.HOST_DOWN, Precondition.OTHER_HOST}),
        params=frozenset({"host"}),
    ),
    Action(
        name="snapshot",
        doc="Snapshot the guest's disk to a new image; the instance's state is unchanged.",
        event="snapshot",
        steps=(
            Step(T.IMAGE_SNAPSHOT_PENDING, None, QUICK, before=("snapshot.start",)),
            Step(T.IMAGE_SNAPSHOT, Call.SNAPSHOT, IMAGE),
            Step(T.IMAGE_PENDING_UPLOAD, None, QUICK),
            Step(T.IMAGE_UPLOADING, None, IMAGE, after=("snapshot.end",)),
        ),
        target=Target(same=True),
        on_error=REVERT,
        vm_states=frozenset({V.ACTIVE, V.STOPPED, V.PAUSED, V.SUSPENDED}),
        lock_check=False,
        params=frozenset({"name"}),
    ),
    Action(
        name="live_migrate",
        doc="Move a running guest to another host without stopping it.",
        event="live_migration_pre",
        steps=(
            Step(
                T.MIGRATING,
                Call.PRE_LIVE_MIGRATION,
                QUICK,
                before=("live_migration_pre.start",),
                after=("live_migration_pre.end",),
                on_error=LM_ROLLBACK,
                doc="check and claim the destination",
            ),
            Step(
                T.MIGRATING,
                Call.LIVE_MIGRATION,
                MIGRATION,
                on_error=LM_ROLLBACK,
                accepts=frozenset({"live_migrate_abort", "live_migrate_force_complete"}),
                doc="copy memory; abort and force-complete act here",
            ),
            _LM_POST,
        ),
        target=Target(same=True),
        on_error=LM_ROLLBACK,
        vm_states=frozenset({V.ACTIVE, V.PAUSED}),
        rule=Rule.ADMIN,
        params=frozenset({"host"}),
        preconditions=frozenset({Precondition.HAS_HOST, Precondition.OTHER_HOST}),
    ),
    Action(
        name="live_migrate_abort",
        doc="Stop a live migration once its pre phase has ended; the guest stays on the source.",
        event="live_migration_abort",
        steps=(
            Step(
                T.MIGRATING,
                Call.LIVE_MIGRATION_ABORT,
                QUICK,
                before=("live_migration_abort.start",),
                after=("live_migration_abort.end",),
            ),
            Step(
                T.MIGRATING,
                Call.ROLLBACK_LIVE_MIGRATION,
                QUICK,
                before=("live_migration_rollback.start",),
                after=("live_migration_rollback.end",),
            ),
        ),
        target=Target(same=True),
        on_error=REVERT,
        vm_states=None,
        task_states=frozenset({T.MIGRATING}),
        rule=Rule.ADMIN,
        concurrency=Concurrency.JOINS,
    ),
    Action(
        name="live_migrate_force_complete",
        doc="Finish a live migration now (libvirt: pause the guest or switch to post-copy).",
        event="live_migration_force_complete",
        steps=(
            Step(
                T.MIGRATING,
                Call.LIVE_MIGRATION_FORCE_COMPLETE,
                QUICK,
                before=("live_migration_force_complete.start",),
                after=("live_migration_force_complete.end",),
                on_error=TO_ERROR,
            ),
            _LM_POST,
        ),
        target=Target(same=True),
        on_error=TO_ERROR,
        vm_states=frozenset({V.ACTIVE}),
        task_states=frozenset({T.MIGRATING}),
        rule=Rule.ADMIN,
        concurrency=Concurrency.JOINS,
    ),
    Action(
        name="trigger_crash_dump",
        doc="Inject an NMI so the guest writes a crash dump; sets no task_state.",
        event="trigger_crash_dump",
        steps=(
            Step(
                None,
                Call.TRIGGER_CRASH_DUMP,
                QUICK,
                before=("trigger_crash_dump.start",),
                after=("trigger_crash_dump.end",),
            ),
        ),
        target=Target(same=True),
        on_error=REVERT,
        vm_states=ALLOW_TRIGGER_CRASH_DUMP,
        concurrency=Concurrency.FREE,
        preconditions=frozenset({Precondition.HAS_HOST}),
    ),
    Action(
        name="lock",
        doc="Lock the instance: only admins may act on it until unlocked.",
        event="lock",
        steps=(Step(None, Call.LOCK, QUICK, after=("lock",)),),
        target=Target(same=True),
        on_error=REVERT,
        vm_states=None,
        task_states=None,
        lock_check=False,
        concurrency=Concurrency.FREE,
        must_have_launched=False,
        params=frozenset({"reason"}),
    ),
    Action(
        name="unlock",
        doc="Unlock the instance; only the locker's kind (owner or admin) or an admin may.",
        event="unlock",
        steps=(Step(None, Call.UNLOCK, QUICK, after=("unlock",)),),
        target=Target(same=True),
        on_error=REVERT,
        vm_states=None,
        task_states=None,
        lock_check=False,
        rule=Rule.UNLOCK_OVERRIDE,
        concurrency=Concurrency.FREE,
        must_have_launched=False,
    ),
    *(
        Action(
            name="reset_state" if state is V.ACTIVE else f"reset_state_{state.value}",
            doc=f"Set vm_state to {state.value} and clear task_state: the operator's way out of "
            "a state nothing else leaves (Nova's os-resetState, admin only). The running "
            "action, if any, is preempted; like Nova, nothing else is touched (a resize's "
            "bookkeeping, the guest) and no action notification is sent: only instance.update, "
            "when notify_on_state_change asks for it.",
            event="reset_state",
            steps=(Step(None, deadline=QUICK),),
            target=Target(to=state),
            on_error=REVERT,
            vm_states=None,
            task_states=None,
            lock_check=False,
            rule=Rule.ADMIN,
            concurrency=Concurrency.PREEMPTS,
            must_have_launched=False,
            api_name="reset_state",
            variant=state.value,
            variant_param="state",
            params=frozenset({"state"}),
            required=frozenset({"state"}),
        )
        for state in (V.ACTIVE, V.ERROR)
    ),
)

TIMED: tuple[TimedTransition, ...] = (
    TimedTransition(
        "auto_confirm",
        V.RESIZED,
        "resize_confirm_window",
        "confirm_resize",
        doc="Nova's _poll_unconfirmed_resizes: confirm a resize left unconfirmed.",
    ),
    TimedTransition(
        "auto_offload",
        V.SHELVED,
        "shelved_offload_time",
        "shelve_offload",
        zero="now",
        doc="Nova's _poll_shelved_instances: offload a shelved instance.",
    ),
    TimedTransition(
        "reclaim",
        V.SOFT_DELETED,
        "reclaim_instance_interval",
        "delete",
        doc="Nova's _reclaim_queued_deletes: delete a soft-deleted instance for good.",
    ),
    TimedTransition(
        "build_timeout",
        V.BUILDING,
        "instance_build_timeout",
        None,
        any_task=True,
        doc="Nova's _check_instance_build_time: a build that takes too long goes to error.",
    ),
)

_OFF = frozenset({PowerState.SHUTDOWN, PowerState.CRASHED})
POWER_SYNC: tuple[PowerSyncRule, ...] = (
    PowerSyncRule(
        frozenset({V.BUILDING, V.RESCUED, V.RESIZED, V.SUSPENDED, V.ERROR}),
        None,
        SyncResponse.NOTHING,
        doc="never fight these states",
    ),
    PowerSyncRule(
        frozenset({V.ACTIVE}),
        _OFF,
        SyncResponse.STOP,
        doc="the guest went down by itself: record it as stopped",
    ),
    PowerSyncRule(frozenset({V.ACTIVE}), frozenset({PowerState.SUSPENDED}), SyncResponse.STOP),
    PowerSyncRule(
        frozenset({V.ACTIVE}),
        frozenset({PowerState.PAUSED, PowerState.NOSTATE}),
        SyncResponse.NOTHING,
        doc="an external pause is tolerated",
    ),
    PowerSyncRule(
        frozenset({V.STOPPED}),
        frozenset(PowerState) - {PowerState.NOSTATE, PowerState.SHUTDOWN, PowerState.CRASHED},
        SyncResponse.FORCE_STOP,
        doc="a stopped instance must stay off",
    ),
    PowerSyncRule(frozenset({V.PAUSED}), _OFF, SyncResponse.FORCE_STOP),
    PowerSyncRule(
        frozenset({V.SOFT_DELETED, V.DELETED}),
        frozenset(PowerState) - {PowerState.NOSTATE, PowerState.SHUTDOWN},
        SyncResponse.LOG,
    ),
)

_REBUILD_STATUS = dict.fromkeys(REBUILD_STATES, "REBUILD")
_RESIZE_STATUS = dict.fromkeys(RESIZING_STATES, "RESIZE")
API_STATUS: dict[V, tuple[str, dict[T, str]]] = {
    V.ACTIVE: (
        "ACTIVE",
        {
            T.REBOOTING: "REBOOT",
            T.REBOOT_PENDING: "REBOOT",
            T.REBOOT_STARTED: "REBOOT",
            T.REBOOTING_HARD: "HARD_REBOOT",
            T.REBOOT_PENDING_HARD: "HARD_REBOOT",
            T.REBOOT_STARTED_HARD: "HARD_REBOOT",
            T.MIGRATING: "MIGRATING",
            **_REBUILD_STATUS,
            **_RESIZE_STATUS,
        },
    ),
    V.BUILDING: ("BUILD", {}),
    V.STOPPED: ("SHUTOFF", {**_RESIZE_STATUS, **_REBUILD_STATUS}),
    V.RESIZED: ("VERIFY_RESIZE", {T.RESIZE_REVERTING: "REVERT_RESIZE"}),
    V.PAUSED: ("PAUSED", {T.MIGRATING: "MIGRATING"}),
    V.SUSPENDED: ("SUSPENDED", {}),
    V.RESCUED: ("RESCUE", {}),
    V.ERROR: ("ERROR", dict(_REBUILD_STATUS)),
    V.DELETED: ("DELETED", {}),
    V.SOFT_DELETED: ("SOFT_DELETED", {}),
    V.SHELVED: ("SHELVED", {}),
    V.SHELVED_OFFLOADED: ("SHELVED_OFFLOADED", {}),
}

DEFAULT_LIFECYCLE = Lifecycle(
    actions=ACTIONS,
    initial=(V.BUILDING, T.SCHEDULING),
    final=frozenset({V.DELETED}),
    timed=TIMED,
    power_sync=POWER_SYNC,
    api_status=API_STATUS,
    version="1.1",  # 1.1: reset_state (see README, Versions)
)
"""Nova's lifecycle as ism runs it."""

DEFAULT_LIFECYCLE.validate()  # when loaded: a broken table fails the import, naming the culprit
