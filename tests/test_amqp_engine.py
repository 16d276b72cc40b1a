"""The engine publishes through its outbox to RabbitMQ: an oslo.messaging listener reads every
committed notification, a broker restart in the middle blocks no state change and loses
nothing (the outbox holds what the broker did not confirm)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from drivers.simulator import LatencyModel, SimulatorDriver
from statemachine.amqp import AmqpTransport
from statemachine.config import Config
from statemachine.engine import Engine
from statemachine.store import SqliteStore
from tests.amqp_support import (
    AMQP_URL,
    OsloListener,
    broker_cleanup,
    ctl,
    only_when_services_required,
    queues_of,
    require_oslo,
    require_rabbitmq,
    unique,
)
from tests.support import OWNER, SMALL


def _committed(db: Path) -> list[tuple[str, int]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("SELECT message_id, sent FROM outbox ORDER BY seq"))
    finally:
        conn.close()


async def _cycle(engine: Engine, uuids: list[str]) -> None:
    async with anyio.create_task_group() as tg:
        for uuid in uuids:
            tg.start_soon(engine.act, OWNER, "stop", uuid)
    async with anyio.create_task_group() as tg:
        for uuid in uuids:
            tg.start_soon(engine.act, OWNER, "start", uuid)


@pytest.fixture
def broker() -> None:
    """RabbitMQ and oslo.messaging are there (skip or fail per tests/amqp_support.py), and
    this test may restart the broker (CI only)."""
    require_rabbitmq()
    require_oslo()
    only_when_services_required("stops and restarts the machine's RabbitMQ")


@pytest.mark.rabbitmq
@pytest.mark.asyncio
async def test_a_broker_restart_blocks_no_change_and_loses_nothing(
    broker: None, tmp_path: Path
) -> None:
    """While RabbitMQ is stopped the engine keeps committing; once it is back every committed
    notification reaches the oslo listener, in order per instance, with Nova's shape."""
    db = tmp_path / "ism.db"
    topic, exchange = unique("versioned_notifications"), unique("ism-engine")
    transport = AmqpTransport(
        AMQP_URL, exchange=exchange, topic=topic, durable=True,
        connect_attempts=2, backoff_initial=0.2, confirm_timeout=5.0,
    )  # fmt: skip
    sim = SimulatorDriver(hosts=["compute1"], latency=LatencyModel(scale=0.0))
    engine = Engine(
        sim,
        store=SqliteStore(db),
        transports=[transport],
        config=Config(notify_on_state_change="vm_and_task_state", service_host="compute1"),
    )
    async with (
        broker_cleanup(queues_of(topic), [exchange]),
        OsloListener(exchange, topic, durable=True) as listener,
        engine,
    ):
        uuids = []
        for i in range(10):
            created = await engine.create(OWNER, name=f"vm{i}", flavor=SMALL, image="cirros")
            uuids.append(created.instance.uuid)
        await _cycle(engine, uuids)
        await ctl("stop_app")
        try:
            with anyio.fail_after(60):  # the broker is down: changes still commit, at once
                await _cycle(engine, uuids)
            assert all(engine.get(u).vm_state.value == "active" for u in uuids)
            assert engine._outbox.backlog > 0  # held, not lost
        finally:
            await ctl("start_app")
            await ctl("await_startup")
        ids = [message_id for message_id, _ in _committed(db)]
        await listener.receive_ids(ids, timeout=120)
        await engine.wait_delivered(timeout=60)
    assert all(sent == 1 for _, sent in _committed(db))  # marked only once confirmed
    first: dict[str, dict[str, Any]] = {}
    for line in listener.received:
        first.setdefault(line["metadata"]["message_id"], line)
    by_instance: dict[str, list[str]] = {}
    for line in first.values():
        data = line["payload"]["ism_object.data"]
        assert line["publisher_id"] == "ism-compute:compute1"
        assert line["event_type"].startswith("instance.")
        assert line["priority"] in ("INFO", "ERROR")
        assert line["payload"]["ism_object.name"].startswith("Instance")
        by_instance.setdefault(data["uuid"], []).append(line["event_type"])
    assert set(by_instance) == set(uuids)
    for events in by_instance.values():  # one queue, one consumer thread: commit order kept
        assert events.index("instance.create.start") < events.index("instance.create.end")
        assert events.index("instance.create.end") < events.index("instance.power_off.start")
        assert events.count("instance.power_off.end") == 2
        assert events.count("instance.power_on.end") == 2
