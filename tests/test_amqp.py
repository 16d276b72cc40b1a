"""Notifications on RabbitMQ: the oslo wire format, and the transport against a real broker
read by a real oslo.messaging notification listener.

The format and option checks run everywhere; the rest needs aio-pika and RabbitMQ and skips or
fails per ``tests/amqp_support.py``. Nothing about the broker is mocked. The broker restart
runs only under ``ISM_REQUIRE_SERVICES=1`` (it stops the machine's RabbitMQ for everyone).
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from typing import Any, Literal

import anyio
import attrs
import pytest

from statemachine._amqp_format import encode, oslo_message, routing_key
from statemachine.amqp import AmqpStatistics, AmqpTransport
from statemachine.clock import real_time, run_virtual
from statemachine.errors import InvalidRequest, TransportError
from statemachine.notify import Notification
from tests.amqp_support import (
    AMQP_URL,
    OsloListener,
    as_listener_sees,
    broker_cleanup,
    close_connections_named,
    ctl,
    decode,
    engine_notifications,
    only_when_services_required,
    queues_of,
    require_aio_pika,
    require_broker_control,
    require_oslo,
    require_rabbitmq,
    unique,
)

NAMESPACES: tuple[Literal["ism", "nova"], ...] = ("ism", "nova")


@pytest.fixture(scope="module")
def ism_notifications() -> list[Notification]:
    """What the engine emitted for one instance's create, stop, start and failed pause."""
    return engine_notifications("ism")


@pytest.fixture(scope="module")
def by_namespace() -> dict[str, list[Notification]]:
    """The same run's notifications under each namespace."""
    return {ns: engine_notifications(ns) for ns in NAMESPACES}


@pytest.fixture(scope="module")
def fleet() -> list[Notification]:
    """The same for 150 instances (about 2000 notifications)."""
    return engine_notifications("ism", instances=150)


@pytest.fixture
def rabbitmq() -> None:
    """Skip (or fail under ISM_REQUIRE_SERVICES=1) without aio-pika and a broker."""
    require_rabbitmq()


def _fast(**options: Any) -> dict[str, Any]:
    """Transport options with short back-off, so failing paths finish quickly."""
    return {"backoff_initial": 0.05, "backoff_max": 0.2, "connect_timeout": 10.0} | options


# -- the wire format (no broker) ----------------------------------------------------------


def test_the_body_is_oslos_envelope_around_the_notifiers_message(
    ism_notifications: list[Notification],
) -> None:
    """Each body is ``{"oslo.version": "2.0", "oslo.message": <json>}`` holding the envelope,
    ``sequence`` and a ``_unique_id``, routed by lower-cased priority."""
    for n in ism_notifications:
        wire = encode(n, "versioned_notifications")
        message = decode(wire.body)
        assert message == n.envelope() | {"_unique_id": n.message_id.replace("-", "")}
        assert set(message) == {
            "message_id", "publisher_id", "event_type", "priority", "payload", "timestamp",
            "sequence", "_unique_id",
        }  # fmt: skip
        assert wire.routing_key == f"versioned_notifications.{n.priority.lower()}"
        assert wire.message_id == n.message_id
    priorities = {n.priority for n in ism_notifications}
    assert priorities == {"INFO", "ERROR"}


def test_a_republished_notification_keeps_its_unique_id(
    ism_notifications: list[Notification],
) -> None:
    """Encoding again gives the same bytes, so an oslo listener can drop the redelivery."""
    n = ism_notifications[0]
    assert encode(n, "t").body == encode(n, "t").body
    unique_id = oslo_message(n)["_unique_id"]
    assert len(unique_id) == 32
    assert int(unique_id, 16) >= 0


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"priority": "LOUD"}, "priority 'LOUD'"),
        ({"payload": {"x": object()}}, "is not JSON"),
        ({"payload": {"x": math.nan}}, "is not JSON"),
    ],
)
def test_an_undeliverable_notification_is_refused(
    ism_notifications: list[Notification], change: dict[str, Any], complaint: str
) -> None:
    """A priority oslo's listeners drop, or a payload JSON cannot carry, raises InvalidRequest."""
    bad = attrs.evolve(ism_notifications[0], **change)
    with pytest.raises(InvalidRequest, match=complaint):
        encode(bad, "t")


def test_routing_keys_are_topic_dot_lowercase_priority() -> None:
    """Routing keys are ``<topic>.info`` / ``<topic>.error``, as oslo's notifier builds them."""
    assert routing_key("versioned_notifications", "INFO") == "versioned_notifications.info"
    assert routing_key("notifications", "ERROR") == "notifications.error"


def test_the_exchange_follows_the_namespace_unless_named() -> None:
    """``ism`` by default, ``nova`` under the nova namespace, any valid name when given."""
    assert AmqpTransport(AMQP_URL).exchange == "ism"
    assert AmqpTransport(AMQP_URL, namespace="nova").exchange == "nova"
    assert AmqpTransport(AMQP_URL, namespace="nova", exchange="openstack").exchange == "openstack"
    assert AmqpTransport(AMQP_URL).topic == "versioned_notifications"


@pytest.mark.parametrize(
    "options",
    [
        {"url": "http://127.0.0.1/"},
        {"url": "amqp://"},
        {"url": "amqp://h:port/"},
        {"url": 5},
        {"exchange": "bad name"},
        {"exchange": ""},
        {"topic": "a" * 256},
        {"namespace": "neutron"},
        {"durable": "yes"},
        {"confirm_timeout": 0},
        {"confirm_timeout": math.inf},
        {"connect_attempts": 0},
        {"connect_attempts": True},
        {"backoff_initial": -1},
        {"max_in_flight": 0},
        {"connection_name": "has space"},
    ],
)
def test_malformed_options_are_refused(options: dict[str, Any]) -> None:
    """Every malformed option raises InvalidRequest (a ValueError) before anything connects."""
    url = options.pop("url", AMQP_URL)
    with pytest.raises(InvalidRequest):
        AmqpTransport(url, **options)


def test_the_password_never_shows() -> None:
    """The URL's password is masked in the transport's repr and in its errors."""
    transport = AmqpTransport("amqp://ops:s3cret@127.0.0.1:1/")
    assert "s3cret" not in repr(transport)
    assert transport.safe_url == "amqp://ops:***@127.0.0.1:1/"


def test_importing_the_transport_does_not_import_aio_pika() -> None:
    """``import statemachine`` (and ``.amqp``) never imports aio-pika: it loads on connect."""
    code = "import sys, statemachine, statemachine.amqp; print('aio_pika' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the transport's own rules (aio-pika, no broker needed) --------------------------------


@pytest.mark.asyncio
async def test_an_unreachable_broker_fails_after_bounded_attempts_with_back_off() -> None:
    """Nothing listens on the port: open raises TransportError after the attempts and their
    back-off (0.05 + 0.1 s), without the password, and counts one failure."""
    require_aio_pika()
    transport = AmqpTransport("amqp://ops:s3cret@127.0.0.1:1/", **_fast(connect_attempts=3))
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"3 attempts") as caught:
        await transport.open()
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 10
    assert "s3cret" not in str(caught.value)
    assert caught.value.confirmed == 0
    assert transport.statistics() == AmqpStatistics(
        published=0, confirmed=0, reconnects=0, failures=1, connected=False
    )


@pytest.mark.asyncio
async def test_publishing_needs_an_open_transport(ism_notifications: list[Notification]) -> None:
    """Publishing before ``open`` or after ``close`` raises TransportError; nothing is sent."""
    transport = AmqpTransport(AMQP_URL)
    with pytest.raises(TransportError, match="open it first"):
        await transport.publish(ism_notifications)
    await transport.close()
    with pytest.raises(TransportError, match="is closed"):
        await transport.open()
    with pytest.raises(TransportError, match="is closed"):
        await transport.publish(ism_notifications)
    assert transport.statistics() == AmqpStatistics(
        published=0, confirmed=0, reconnects=0, failures=3, connected=False
    )


# -- against RabbitMQ, read by oslo.messaging ------------------------------------------------


@pytest.mark.rabbitmq
@pytest.mark.asyncio
@pytest.mark.parametrize("namespace", NAMESPACES)
async def test_an_oslo_listener_reads_isms_notifications(
    rabbitmq: None, by_namespace: dict[str, list[Notification]], namespace: Literal["ism", "nova"]
) -> None:
    """An oslo.messaging notification listener, declared first on the namespace's exchange,
    receives every notification with its event type, priority, publisher id, payload and id."""
    require_oslo()
    sent = by_namespace[namespace]
    topic = unique("versioned_notifications")
    async with (
        broker_cleanup(queues_of(topic)),
        OsloListener(namespace, topic) as listener,  # declares the exchange the oslo way
        AmqpTransport(AMQP_URL, namespace=namespace, topic=topic) as transport,
    ):
        await transport.publish(sent)
        got = await listener.receive(len(sent))
    assert transport.exchange == namespace
    received = [{k: v for k, v in line.items() if k != "ctxt"} for line in got]
    # one queue per priority, each read in order by the listener's threads
    for priority in ("INFO", "ERROR"):
        expected = [as_listener_sees(n) for n in sent if n.priority == priority]
        assert [r for r in received if r["priority"] == priority] == expected
    publisher = "nova-compute" if namespace == "nova" else "ism-compute"
    assert {r["publisher_id"].split(":")[0] for r in received} == {publisher}
    assert all(f"{namespace}_object.name" in r["payload"] for r in received)
    errors = [r for r in received if r["priority"] == "ERROR"]
    assert [r["event_type"] for r in errors] == ["instance.pause.error"]
    fault = errors[0]["payload"][f"{namespace}_object.data"]["fault"]
    assert "hunter2" not in json.dumps(fault)  # scrubbed before it ever left the engine
    assert transport.statistics() == AmqpStatistics(
        published=len(sent), confirmed=len(sent), reconnects=0, failures=0, connected=False
    )


@pytest.mark.rabbitmq
@pytest.mark.asyncio
async def test_what_is_published_before_a_listener_starts_waits_for_it(
    rabbitmq: None, ism_notifications: list[Notification]
) -> None:
    """The transport declares the exchange and ``<topic>.<priority>`` queues first, as oslo's
    notifier does; a listener started afterwards accepts them and gets every notification."""
    require_oslo()
    topic = unique("versioned_notifications")
    exchange = unique("ism-first")
    async with broker_cleanup(queues_of(topic), [exchange]):
        async with AmqpTransport(AMQP_URL, exchange=exchange, topic=topic) as transport:
            await transport.publish(ism_notifications)
        async with OsloListener(exchange, topic) as listener:
            await listener.receive_ids(n.message_id for n in ism_notifications)


#: oslo.messaging options of a deployment → the transport options that match them.
DEPLOYMENTS: dict[str, tuple[dict[str, bool], dict[str, Any]]] = {
    "amqp_durable_queues": ({"durable": True}, {"durable": True}),
    "amqp_auto_delete": ({"auto_delete": True}, {"auto_delete": True}),
    "rabbit_quorum_queue": ({"quorum": True}, {"quorum_queues": True}),
}


@pytest.mark.rabbitmq
@pytest.mark.asyncio
@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
async def test_a_deployments_oslo_options_are_matched_when_configured(
    rabbitmq: None, ism_notifications: list[Notification], deployment: str
) -> None:
    """A listener declared with oslo's durable, auto-delete or quorum options first, then the
    transport with the matching option: it opens and the listener gets every notification."""
    require_oslo()
    listener_flags, transport_options = DEPLOYMENTS[deployment]
    topic = unique("versioned_notifications")
    exchange = unique(f"ism-{deployment.replace('_', '-')}")
    async with (
        broker_cleanup(queues_of(topic), [exchange]),
        OsloListener(exchange, topic, **listener_flags) as listener,
        AmqpTransport(AMQP_URL, exchange=exchange, topic=topic, **transport_options) as t,
    ):
        await t.publish(ism_notifications)
        await listener.receive_ids(n.message_id for n in ism_notifications)


@pytest.mark.rabbitmq
@pytest.mark.asyncio
async def test_a_nack_raises_with_the_confirmed_prefix(
    rabbitmq: None, fleet: list[Notification]
) -> None:
    """The broker nacks what overflows a ``reject-publish`` queue of three: publish raises
    TransportError with ``confirmed == 3``, and the next call reconnects and succeeds."""
    import aio_pika

    infos = [n for n in fleet if n.priority == "INFO"][:5]
    topic = unique("versioned_notifications")
    async with broker_cleanup(queues_of(topic)):
        connection = await aio_pika.connect(AMQP_URL, timeout=30)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange("ism", aio_pika.ExchangeType.TOPIC)
            queue = await channel.declare_queue(
                f"{topic}.info", arguments={"x-max-length": 3, "x-overflow": "reject-publish"}
            )
            await queue.bind(exchange, routing_key=f"{topic}.info")
            transport = AmqpTransport(AMQP_URL, topic=topic, declare_queues=False, **_fast())
            async with transport:
                with pytest.raises(TransportError, match="2 of 5 notifications not") as caught:
                    await transport.publish(infos)
                assert caught.value.confirmed == 3
                assert transport.statistics().connected is False  # dropped; next call starts afresh
                await queue.purge()
                await transport.publish(infos[3:])
            assert (await queue.declare()).message_count == 2
    statistics = transport.statistics()
    assert (statistics.published, statistics.confirmed) == (7, 5)
    assert (statistics.reconnects, statistics.failures) == (1, 1)


@pytest.mark.rabbitmq
@pytest.mark.asyncio
async def test_an_exchange_declared_otherwise_is_refused_with_a_typed_error(
    rabbitmq: None,
) -> None:
    """An exchange that exists durable makes ``open`` of a non-durable transport raise
    TransportError naming the option to match, at once (no retries)."""
    import aio_pika

    exchange = unique("ism-durable")
    async with broker_cleanup(exchanges=[exchange]):
        connection = await aio_pika.connect(AMQP_URL, timeout=30)
        async with connection:
            channel = await connection.channel()
            await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        transport = AmqpTransport(AMQP_URL, exchange=exchange, **_fast(connect_attempts=5))
        with pytest.raises(TransportError, match="amqp_durable_queues") as caught:
            await transport.open()
        assert "durable=False" in str(caught.value)
        statistics = transport.statistics()
        assert (statistics.failures, statistics.reconnects, statistics.connected) == (1, 0, False)


@pytest.mark.rabbitmq
@pytest.mark.asyncio
async def test_messages_carry_oslos_properties_and_keep_their_order(
    rabbitmq: None, fleet: list[Notification]
) -> None:
    """Read raw from the queue: JSON, UTF-8, persistent, the notification's id, in publishing
    order across pipelined windows, and confirmed means enqueued."""
    import aio_pika

    sent = [n for n in fleet if n.priority == "INFO"][:500]
    assert len(sent) > 3 * 64
    topic = unique("versioned_notifications")
    async with (
        broker_cleanup(queues_of(topic)),
        AmqpTransport(AMQP_URL, topic=topic, max_in_flight=64) as transport,
    ):
        await transport.publish(sent)
        connection = await aio_pika.connect(AMQP_URL, timeout=30)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"{topic}.info", passive=True)
            assert queue.declaration_result.message_count == len(sent)  # confirmed = enqueued
            received = []
            for _ in sent:
                message = await queue.get(timeout=30)
                assert message is not None
                await message.ack()
                received.append(message)
    assert [m.message_id for m in received] == [n.message_id for n in sent]
    first = received[0]
    assert (first.content_type, first.content_encoding) == ("application/json", "utf-8")
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert decode(first.body)["sequence"] == sent[0].sequence
    assert transport.statistics().confirmed == len(sent)


@pytest.mark.rabbitmq
@pytest.mark.asyncio
async def test_a_cut_connection_is_reopened_by_the_next_publish(
    rabbitmq: None, ism_notifications: list[Notification]
) -> None:
    """When the broker closes the transport's connection, the next publish reconnects (one
    reconnect) and the listener still gets every notification."""
    require_oslo()
    require_broker_control()
    topic = unique("versioned_notifications")
    half = len(ism_notifications) // 2
    async with (
        broker_cleanup(queues_of(topic)),
        OsloListener("ism", topic) as listener,
        AmqpTransport(AMQP_URL, topic=topic, **_fast()) as transport,
    ):
        await transport.publish(ism_notifications[:half])
        assert await close_connections_named(transport.connection_name) == 1
        await _until_disconnected(transport)
        await transport.publish(ism_notifications[half:])
        await listener.receive_ids(n.message_id for n in ism_notifications)
    statistics = transport.statistics()
    assert (statistics.reconnects, statistics.failures) == (1, 0)


async def _until_disconnected(transport: AmqpTransport, timeout: float = 30) -> None:
    """Wait (bounded) until the transport has heard that the broker closed its connection."""
    async with asyncio.timeout(timeout):
        while transport.statistics().connected:  # noqa: ASYNC110  (aio-pika has no public event)
            await asyncio.sleep(0.01)


@attrs.define
class _Outbox:
    """What the outbox does with the transport, for the restart test: hold everything until
    confirmed, drop the confirmed prefix of a failed call, try again."""

    transport: AmqpTransport
    pending: list[Notification] = attrs.Factory(list)
    log: list[tuple[float, str]] = attrs.Factory(list)

    async def flush(self, started: float) -> bool:
        """One publish of everything pending; whether it all went."""
        batch = list(self.pending)
        try:
            await self.transport.publish(batch)
        except TransportError as exc:
            del self.pending[: exc.confirmed]
            self.log.append((time.monotonic() - started, f"TransportError: {exc}"))
            return False
        del self.pending[: len(batch)]
        self.log.append((time.monotonic() - started, f"confirmed {len(batch)}"))
        return True


@pytest.mark.rabbitmq
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_broker_restart_in_the_middle_loses_nothing(
    rabbitmq: None, fleet: list[Notification], capsys: pytest.CaptureFixture[str]
) -> None:
    """RabbitMQ stops mid-stream (``stop_app``): publishes raise TransportError while it is
    down, the caller keeps what was not confirmed, and once it is back (``start_app``) a retry
    succeeds and the oslo listener has every notification at least once.

    Durable exchange and queues (oslo's ``amqp_durable_queues``), so what the broker confirmed
    but nobody had read yet survives the restart.
    """
    require_oslo()
    only_when_services_required("stops and restarts the machine's RabbitMQ")
    everything = fleet
    chunks = [everything[i : i + 25] for i in range(0, len(everything), 25)]
    topic = unique("versioned_notifications")
    exchange = unique("ism-restart")
    options = _fast(connect_attempts=2, backoff_initial=0.2, confirm_timeout=5.0)
    async with (
        broker_cleanup(queues_of(topic), [exchange]),
        OsloListener(exchange, topic, durable=True) as listener,
        AmqpTransport(AMQP_URL, exchange=exchange, topic=topic, durable=True, **options) as t,
    ):
        outbox = _Outbox(t)
        started = time.monotonic()
        outbox.pending.extend(chunks.pop(0))
        assert await outbox.flush(started)  # up
        outbox.log.append((time.monotonic() - started, "rabbitmqctl stop_app"))
        stopping = asyncio.create_task(ctl("stop_app"))
        while not stopping.done() and len(chunks) > 1:
            # a fleet keeps emitting while the broker goes down: a chunk every 50 ms
            outbox.pending.extend(chunks.pop(0))
            await outbox.flush(started)
            await asyncio.sleep(0.05)
        await stopping
        outbox.log.append((time.monotonic() - started, "stop_app returned"))
        for chunk in chunks:
            outbox.pending.extend(chunk)
        assert not await outbox.flush(started), "published while the broker was stopped"
        await ctl("start_app")
        await ctl("await_startup")
        outbox.log.append((time.monotonic() - started, "start_app + await_startup returned"))
        async with asyncio.timeout(60):
            while not await outbox.flush(started):
                pass  # each failed call has waited out its own back-off
        assert not outbox.pending
        await listener.receive_ids((n.message_id for n in everything), timeout=120)
        outbox.log.append((time.monotonic() - started, "the listener has every notification"))
        statistics = t.statistics()
    failures = [entry for entry in outbox.log if entry[1].startswith("TransportError")]
    assert failures
    assert statistics.reconnects >= 1
    assert statistics.confirmed >= len(everything)
    with capsys.disabled():  # for the report: what happened, when
        print(f"\nbroker restart, {len(everything)} notifications:")
        for at, what in outbox.log:
            print(f"  {at:7.2f} s  {what[:160]}")
        print(f"  {statistics}")
        print(f"  listener received {len(listener.received)} for {len(everything)} sent")


@pytest.mark.rabbitmq
@pytest.mark.asyncio
async def test_the_benchmark_counts_what_the_broker_confirmed(
    rabbitmq: None, ism_notifications: list[Notification]
) -> None:
    """``python -m tests.bench_amqp`` measures confirmed notifications over its batches."""
    from tests.bench_amqp import measure

    result = await measure(ism_notifications, batches=3, in_flight=8)
    assert result.confirmed == 3 * len(ism_notifications)
    assert len(result.seconds) == 3
    assert result.per_second > 0


@pytest.mark.rabbitmq
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_broker_that_does_not_confirm_in_time_fails_the_call(
    rabbitmq: None, ism_notifications: list[Notification]
) -> None:
    """Under a memory alarm RabbitMQ stops reading from publishers, so no confirm comes:
    publish raises TransportError after ``confirm_timeout`` (and the bounded close), and once
    the alarm clears the next call reconnects and succeeds."""
    only_when_services_required("raises a memory alarm on the machine's RabbitMQ")
    watermark = (await ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")).strip()
    assert float(watermark) > 0, f"restoring a watermark like {watermark!r} is not written"
    topic = unique("versioned_notifications")
    options = _fast(confirm_timeout=1.0, connect_timeout=2.0)
    async with (
        broker_cleanup(queues_of(topic)),
        AmqpTransport(AMQP_URL, topic=topic, **options) as transport,
    ):
        await transport.publish(ism_notifications[:1])  # connected and declared before the alarm
        await ctl("set_vm_memory_high_watermark", "0")
        try:
            started = time.monotonic()
            with pytest.raises(TransportError, match="TimeoutError"):
                await transport.publish(ism_notifications)
            elapsed = time.monotonic() - started
        finally:
            await ctl("set_vm_memory_high_watermark", watermark)
        assert 1.0 <= elapsed < 1.0 + 2.0 + 1.0  # the confirm timeout, then at most the close
        await transport.publish(ism_notifications)
    statistics = transport.statistics()
    assert (statistics.reconnects, statistics.failures) == (1, 1)
    assert statistics.confirmed == 1 + len(ism_notifications)


@pytest.mark.rabbitmq
def test_a_long_virtual_idle_keeps_the_connection() -> None:
    """On a virtual-time loop an idle hour passes in an instant; AMQP heartbeats, kept on
    the loop's clock, would find the broker silent for that hour and drop the connection.
    The transport turns them off there, so an idle simulated fleet keeps its connection."""
    require_rabbitmq()
    exchange, topic = unique("ism-virtual"), unique("versioned_notifications")
    notifications = engine_notifications("ism")

    async def main() -> AmqpStatistics:
        transport = AmqpTransport(AMQP_URL, exchange=exchange, topic=topic)
        with real_time():  # a network peer is awaited, as the outbox does it
            await transport.open()
        try:
            for _ in range(3):
                await anyio.sleep(3600)  # virtual: no time passes for the broker
                with real_time():
                    await anyio.sleep(0.2)  # the client's own timers get to run
            with real_time():
                await transport.publish(notifications)
            return transport.statistics()
        finally:
            with real_time():
                await transport.close()
                async with broker_cleanup(queues_of(topic), [exchange]):
                    pass

    stats = run_virtual(main)
    assert stats.reconnects == 0
    assert stats.confirmed == stats.published >= 1
