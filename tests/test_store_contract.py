"""The store contract: every store, present and future, passes these tests unchanged."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import attrs
import pytest

from statemachine.errors import Conflict, DuplicateRequest, InstanceNotFound
from statemachine.store import RequestRecord, Store, Write
from tests.store_support import (
    KEY,
    STOPPING,
    StoreKit,
    entry,
    instance,
    memory_kit,
    note,
    postgres_kit,
    sqlite_kit,
)
from tests.support import virtual

WRITER = "compute1"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> StoreKit:
    """One store kind per run of each contract test (PostgreSQL: a fresh schema each)."""
    if request.param == "memory":
        return memory_kit()
    if request.param == "postgres":
        return postgres_kit(request.getfixturevalue("pg_url"))
    return sqlite_kit(tmp_path)


async def _opened(kit: StoreKit) -> Store:
    store = kit.make()
    await store.open(writer=WRITER)
    return store


async def _insert(store: Store, **changes: Any) -> None:
    inst = instance(**changes)
    store.stage(None, inst)
    assert await store.persist([Write(instance=inst, audit=(entry("accepted", after=inst),))]) == [
        None
    ]


@virtual
async def test_insert_then_swap_is_read_back(kit: StoreKit) -> None:
    """A staged and persisted insert, then a swap, are what get() returns, durably."""
    store = await _opened(kit)
    await _insert(store)
    old = store.get(instance().uuid)
    new = old.evolve(**STOPPING)
    store.stage(old, new)
    unit = Write(instance=new, expected=old, audit=(entry(before=old, after=new),))
    assert await store.persist([unit]) == [None]
    store = await kit.reopen(store)
    await store.open(writer=WRITER)
    assert store.get(new.uuid) == new
    assert [i.uuid for i in store.all()] == [new.uuid]
    await store.close()


@virtual
async def test_stage_refuses_a_stale_swap_and_changes_nothing(kit: StoreKit) -> None:
    """A swap that expects an old version is a Conflict; the record stays as it was."""
    store = await _opened(kit)
    await _insert(store)
    old = store.get(instance().uuid)
    moved = old.evolve(power_state=old.power_state)
    store.stage(old, moved)
    with pytest.raises(Conflict):
        store.stage(old, old.evolve(**STOPPING))
    assert store.get(old.uuid) is moved
    with pytest.raises(Conflict):
        store.stage(None, instance())  # the uuid exists
    with pytest.raises(InstanceNotFound):
        store.stage(instance(uuid="nope"), instance(uuid="nope"))
    await store.close()


@virtual
async def test_a_lost_unit_rolls_back_alone(kit: StoreKit) -> None:
    """In one batch, a unit whose storage swap fails writes nothing; the others commit."""
    store = await _opened(kit)
    for n in (1, 2, 3):
        await _insert(store, uuid=f"00000000-0000-4000-8000-00000000000{n}")
    units = []
    for n in (1, 2, 3):
        old = store.get(f"00000000-0000-4000-8000-00000000000{n}")
        new = old.evolve(**STOPPING)
        if n == 2:
            old = attrs.evolve(old, version=99)  # not staged, and wrong: loses in storage
        else:
            store.stage(old, new)
        units.append(
            Write(instance=new, expected=old, audit=(entry(after=new),), notifications=(note(new),))
        )
    results = await store.persist(units)
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], Conflict)
    assert store.get("00000000-0000-4000-8000-000000000002").task_state is None
    audit = await store.read_audit()
    assert [r.get("instance")[-1] for r in audit] == ["1", "2", "3", "1", "3"]
    unsent = await store.unsent(10)
    assert [n.instance_uuid[-1] for _, n in unsent] == ["1", "3"]
    assert (await store.verify(key=KEY)).ok
    await store.close()


@virtual
async def test_a_repeated_request_id_rolls_back_its_whole_unit(kit: StoreKit) -> None:
    """A unit carrying a request id already recorded writes nothing, its swap included."""
    store = await _opened(kit)
    await _insert(store)
    request = RequestRecord("req-1", "a1", "stop", instance().uuid)
    old = store.get(instance().uuid)
    new = old.evolve(**STOPPING)
    store.stage(old, new)
    assert await store.persist([Write(instance=new, expected=old, request=request)]) == [None]
    again = new.evolve(task_state=None)
    store.stage(new, again)
    (result,) = await store.persist(
        [Write(instance=again, expected=new, request=attrs.evolve(request, action_id="a2"))]
    )
    assert isinstance(result, DuplicateRequest)
    assert store.get(new.uuid) == new  # the staged change was undone
    assert await store.find_request("req-1") == request
    assert await store.find_request("req-2") is None
    await store.close()


@virtual
async def test_audit_records_are_sealed_in_order_and_verify(kit: StoreKit) -> None:
    """Records come back in seq order, filterable, chained, and the log verifies with its key."""
    store = await _opened(kit)
    await _insert(store)
    await _insert(store, uuid="00000000-0000-4000-8000-000000000002")
    await store.persist([Write(audit=(entry("refused", action_id=None),))])
    records = await store.read_audit()
    assert [r.event for r in records] == ["accepted", "accepted", "refused"]
    assert [r.seq for r in records] == sorted(r.seq for r in records)
    assert [r.wseq for r in records] == [1, 2, 3]
    assert records[1].prev == records[0].hash
    assert len(await store.read_audit(instance=instance().uuid)) == 1
    assert len(await store.read_audit(action_id="a1")) == 2
    assert len(await store.read_audit(after=records[0].seq, limit=1)) == 1
    report = await store.verify(key=KEY)
    assert report.ok
    assert report.count == 3
    assert not (await store.verify(key=b"another key")).ok
    head = report.head
    assert (await store.verify(head=head)).ok
    assert not (await store.verify(head="0" * 64)).ok
    await store.close()


@virtual
async def test_the_chain_continues_across_a_reopen(kit: StoreKit) -> None:
    """A reopened store extends the same writer's chain; the whole log still verifies."""
    store = await _opened(kit)
    await _insert(store)
    head = (await store.verify()).head
    store = await kit.reopen(store)
    await store.open(writer=WRITER)
    assert store.generation == 2
    await store.persist([Write(audit=(entry("refused", action_id=None),))])
    report = await store.verify(head=head, key=KEY)
    assert report.ok
    assert report.count == 2
    await store.close()


@virtual
async def test_outbox_holds_messages_until_marked_sent(kit: StoreKit) -> None:
    """Notifications come back unsent in commit order until a later persist marks them."""
    store = await _opened(kit)
    inst = instance()
    store.stage(None, inst)
    first, second = note(inst), note(inst, "power_off.end")
    await store.persist([Write(instance=inst, notifications=(first, second))])
    rows = await store.unsent(10)
    assert [n.message_id for _, n in rows] == [first.message_id, second.message_id]
    assert rows[0][0] < rows[1][0]  # positions, in commit order
    assert (await store.unsent(1))[0][1] == first
    assert [n for _, n in await store.unsent(10, after=rows[0][0])] == [second]
    await store.persist([], sent=[first.message_id])
    assert [n.message_id for _, n in await store.unsent(10)] == [second.message_id]
    store = await kit.reopen(store)
    await store.open(writer=WRITER)
    assert [n.message_id for _, n in await store.unsent(10)] == [second.message_id]
    assert store.last_sequences()[inst.uuid] == second.sequence
    await store.close()


@virtual
async def test_user_data_is_kept_beside_the_record_and_nowhere_else(kit: StoreKit) -> None:
    """A create's user_data survives a reopen for the driver, outside the record, the audit
    log and the outbox."""
    store = await _opened(kit)
    inst = instance()
    store.stage(None, inst)
    secret = "#cloud-config\npassword: canary-3f9a"
    unit = Write(
        instance=inst,
        audit=(entry("accepted", after=inst),),
        notifications=(note(inst),),
        user_data=secret,
    )
    assert await store.persist([unit]) == [None]
    store = await kit.reopen(store)
    await store.open(writer=WRITER)
    assert store.user_data(inst.uuid) == secret
    assert store.user_data("another") is None
    assert "canary-3f9a" not in repr(store.get(inst.uuid))
    assert "canary-3f9a" not in repr(await store.read_audit())
    assert "canary-3f9a" not in repr(await store.unsent(10))
    await store.close()


@virtual
async def test_heartbeats_and_meta_are_kept_and_survive_a_reopen(kit: StoreKit) -> None:
    """The servicegroup's heartbeats (latest per host) and the store's meta values (the
    lifecycle that wrote it) read back, also after a reopen."""
    store = await _opened(kit)
    first = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    await store.heartbeat("compute1", first)
    await store.heartbeat("compute2", first)
    await store.heartbeat("compute1", first + dt.timedelta(seconds=10))
    assert await store.services() == {
        "compute1": first + dt.timedelta(seconds=10),
        "compute2": first,
    }
    assert await store.get_meta("lifecycle") is None
    await store.set_meta("lifecycle", "1.1")
    await store.set_meta("lifecycle", "1.2")
    assert await store.get_meta("lifecycle") == "1.2"
    store = await kit.reopen(store)
    await store.open(writer=WRITER)
    assert (await store.services())["compute1"] == first + dt.timedelta(seconds=10)
    assert await store.get_meta("lifecycle") == "1.2"
    await store.close()


@virtual
async def test_refresh_reads_storage_and_refuses_an_unknown_instance(kit: StoreKit) -> None:
    """refresh() returns the stored record and puts it in the working set; an unknown uuid
    is InstanceNotFound."""
    store = await _opened(kit)
    await _insert(store)
    uuid = instance().uuid
    assert await store.refresh(uuid) == store.get(uuid)
    with pytest.raises(InstanceNotFound):
        await store.refresh("00000000-0000-4000-8000-00000000dead")
    await store.close()
