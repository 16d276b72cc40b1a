"""What the RabbitMQ tests need: the broker, real notifications, an oslo.messaging listener.

A test needing RabbitMQ (and aio-pika) skips, saying what is missing, on a machine without it,
and fails instead under ``ISM_REQUIRE_SERVICES=1`` (:func:`tests.support.missing`);
``.ci/rabbitmq-service`` starts the broker in CI. The broker is ``ISM_AMQP_URL``
(default ``amqp://guest:guest@127.0.0.1:5672/``).

Every test publishes under a topic (and, where it needs one, an exchange) of its own and
deletes its queues afterwards, so tests never read each other's messages and the shared
broker is left as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import pytest

from drivers.simulator import FaultRule
from statemachine.clock import run_virtual
from statemachine.config import Config
from statemachine.errors import ActionFailed
from statemachine.notify import Notification
from tests.support import OWNER, missing, require_binary, services_required, world

AMQP_URL = os.environ.get("ISM_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ROOT = Path(__file__).parent.parent
#: Bounds on the waits of these tests (real seconds; a healthy broker answers in milliseconds).
READY_TIMEOUT = 60.0
RECEIVE_TIMEOUT = 60.0


@functools.cache
def _broker_problem() -> str | None:
    if importlib.util.find_spec("aio_pika") is None:
        return "aio-pika is not installed (pip install 'ism-engine[amqp]')"

    async def probe() -> None:
        import aio_pika

        connection = await aio_pika.connect(AMQP_URL, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"RabbitMQ does not answer at {AMQP_URL} ({exc!r}); see .ci/rabbitmq-service"
    return None


def require_rabbitmq() -> None:
    """Skip (or fail under ``ISM_REQUIRE_SERVICES=1``) unless aio-pika and the broker are there.

    Call it from a synchronous test or fixture: it runs a loop of its own, once per session.
    """
    problem = _broker_problem()
    if problem is not None:
        missing(problem)


def require_aio_pika() -> None:
    """Skip (or fail) unless aio-pika (the ``amqp`` extra) is installed; no broker needed."""
    if importlib.util.find_spec("aio_pika") is None:
        missing("aio-pika is not installed (pip install 'ism-engine[amqp]')")


def require_oslo() -> None:
    """Skip (or fail) unless oslo.messaging is installed (the ``test`` extra)."""
    if importlib.util.find_spec("oslo_messaging") is None:
        missing("oslo.messaging is not installed (pip install 'ism-engine[test]')")


def require_broker_control() -> str:
    """The path of ``rabbitmqctl``, for tests that cut connections or restart the broker."""
    return require_binary("rabbitmqctl", "the RabbitMQ tests that restart the broker need it")


def unique(prefix: str) -> str:
    """A name no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def engine_notifications(
    namespace: Literal["ism", "nova"], *, instances: int = 1
) -> list[Notification]:
    """Notifications the engine really emitted on the simulator, per instance: create, stop,
    start, a pause that fails (``instance.pause.error``, priority ERROR, with a fault), delete,
    and ``instance.update`` on every state change. Runs on a virtual-time loop of its own: call it
    outside a running loop (in a synchronous fixture)."""

    async def run() -> list[Notification]:
        config = Config(notification_namespace=namespace, notify_on_state_change="vm_state")
        async with world(config=config) as w:
            for i in range(instances):
                uuid_ = await w.create(f"vm{i}")
                await w.engine.act(OWNER, "stop", uuid_)
                await w.engine.act(OWNER, "start", uuid_)
                w.sim.faults.add(FaultRule(action="pause", message="password=hunter2 broke"))
                with contextlib.suppress(ActionFailed):
                    await w.engine.act(OWNER, "pause", uuid_)
                await w.engine.act(OWNER, "delete", uuid_)  # frees the host for the next
            return list(w.capture.notifications)

    return run_virtual(run)


def decode(body: bytes) -> dict[str, Any]:
    """The notifier's message dict inside one AMQP body (the oslo envelope, unwrapped)."""
    envelope = json.loads(body)
    assert set(envelope) == {"oslo.version", "oslo.message"}, envelope
    assert envelope["oslo.version"] == "2.0"
    message = json.loads(envelope["oslo.message"])
    assert isinstance(message, dict)
    return message


def as_listener_sees(notification: Notification) -> dict[str, Any]:
    """What an oslo.messaging endpoint is handed for ``notification`` (JSON round-tripped)."""
    return {
        "priority": notification.priority,
        "publisher_id": notification.publisher_id,
        "event_type": notification.event_type,
        "payload": json.loads(json.dumps(notification.payload)),
        "metadata": {"message_id": notification.message_id, "timestamp": notification.timestamp},
    }


class OsloListener:
    """``tests/oslo_listener.py`` in a subprocess: OpenStack's own consumer API, reading
    ``exchange`` / ``topic`` from the broker; every wait on it is bounded."""

    def __init__(
        self,
        exchange: str,
        topic: str,
        *,
        durable: bool = False,
        quorum: bool = False,
        auto_delete: bool = False,
    ) -> None:
        self.exchange = exchange
        self.topic = topic
        options = (("--durable", durable), ("--quorum", quorum), ("--auto-delete", auto_delete))
        self.flags = [flag for flag, on in options if on]
        self.received: list[dict[str, Any]] = []
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.oslo_listener", AMQP_URL, self.exchange, self.topic,
            *self.flags,
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        line = await self._line(READY_TIMEOUT)
        assert line == {"ready": True}, line
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process = self._process
        assert process is not None
        assert process.stdin is not None
        process.stdin.close()  # the listener stops when its stdin closes
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    async def _line(self, timeout: float) -> dict[str, Any]:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        assert process.stderr is not None
        async with asyncio.timeout(timeout):
            raw = await process.stdout.readline()
        if not raw:
            err = await process.stderr.read()
            raise AssertionError(f"the oslo listener exited: {err.decode(errors='replace')}")
        line = json.loads(raw)
        assert isinstance(line, dict)
        return line

    async def receive(
        self, count: int, *, timeout: float = RECEIVE_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` notifications have arrived in all (within ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.received) < count:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"the oslo listener got {len(self.received)} of {count} within {timeout:g} s"
                )
            try:
                self.received.append(await self._line(left))
            except TimeoutError:
                continue  # the loop reports the count
        return self.received

    async def receive_ids(self, ids: Iterable[str], *, timeout: float = RECEIVE_TIMEOUT) -> None:
        """Wait until every message id in ``ids`` has arrived at least once."""
        wanted = set(ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            seen = {line["metadata"]["message_id"] for line in self.received}
            lacking = wanted - seen
            if not lacking:
                return
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"{len(lacking)} of {len(wanted)} notifications never reached the oslo "
                    f"listener within {timeout:g} s, e.g. {sorted(lacking)[:3]}"
                )
            with contextlib.suppress(TimeoutError):
                self.received.append(await self._line(left))


@contextlib.asynccontextmanager
async def broker_cleanup(
    queues: Iterable[str] = (), exchanges: Iterable[str] = ()
) -> AsyncIterator[None]:
    """Delete the test's queues and exchanges when it ends, whatever happened."""
    try:
        yield
    finally:
        import aio_pika

        connection = await aio_pika.connect(AMQP_URL, timeout=30)
        async with connection:
            channel = await connection.channel()
            for queue in queues:
                await channel.queue_delete(queue, timeout=30)
            for exchange in exchanges:
                await channel.exchange_delete(exchange, timeout=30)


def queues_of(topic: str) -> list[str]:
    """The queues a transport (and oslo's notifier) declares under ``topic``."""
    return [f"{topic}.info", f"{topic}.error"]


async def ctl(*args: str, timeout: float = 120.0) -> str:
    """Run ``rabbitmqctl args`` (bounded); its output, or a failed assertion with it."""
    process = await asyncio.create_subprocess_exec(
        require_broker_control(), *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text = out.decode(errors="replace")
    assert process.returncode == 0, f"rabbitmqctl {' '.join(args)}: {text}"
    return text


async def close_connections_named(name: str) -> int:
    """Close (broker side) every connection whose client called itself ``name``; how many."""
    listing = await ctl("list_connections", "--no-table-headers", "-q", "pid", "client_properties")
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if f'"{name}"' in line]
    for pid in pids:
        await ctl("close_connection", pid, "ism test: connection cut")
    return len(pids)


def only_when_services_required(what: str) -> None:
    """Skip unless ``ISM_REQUIRE_SERVICES=1``: the test disturbs the machine's broker for
    everyone (a restart), which only CI's own machine may do."""
    if not services_required():
        pytest.skip(f"{what}: only under ISM_REQUIRE_SERVICES=1")
