"""Notifications on RabbitMQ, in the format OpenStack's oslo.messaging listeners read.

:class:`AmqpTransport` publishes ism's notifications to a topic exchange (``ism``, or ``nova``
under the nova namespace) with routing keys ``<topic>.info`` / ``<topic>.error``, wrapped in
oslo.messaging's ``oslo.version`` / ``oslo.message`` envelope (see ``_amqp_format`` for every
byte and where it was read). It is the transport the outbox delivers through after commit:

* **Publisher confirms.** :meth:`AmqpTransport.publish` returns only once the broker
  confirmed every notification of the call; otherwise it raises
  :class:`~statemachine.errors.TransportError` and the caller keeps them to publish again
  (at least once per ``message_id``). Nothing waits unboundedly: connecting, declaring and
  each confirm have deadlines.
* **Declared as oslo.messaging declares.** The exchange is a topic exchange with oslo's
  ``durable`` / ``auto_delete`` (``amqp_durable_queues``, ``amqp_auto_delete``, both False by
  default; ``rabbit_quorum_queue`` makes it durable), because RabbitMQ refuses a second
  declaration that differs from the first, and a listener may have declared it first. Like
  oslo's notifier, ism also declares the queue ``<topic>.<priority>`` bound to it, so
  notifications published before any listener starts wait for it instead of being dropped.
* **Reconnects** with bounded attempts and exponential back-off whenever a call finds the
  connection lost; a call that fails leaves the transport ready for the next one.
* **In order.** One channel; each window of up to ``max_in_flight`` messages is pipelined
  (published without waiting for each confirm): the publishing tasks are created in order
  and each takes the channel's FIFO publish lock in its first step, so the frames leave in
  order. Windows go one after another.

aio-pika is an optional extra (``pip install 'ism-engine[amqp]'``), imported only when a
transport connects. The transport needs an asyncio loop on real time: under
:class:`~statemachine.clock.VirtualTimeLoop` its deadlines would expire while it waits for
the network.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self, final
from urllib.parse import urlsplit, urlunsplit

import anyio
import attrs

from ._amqp_format import CONTENT_ENCODING, CONTENT_TYPE, PERSISTENT, WireMessage, check_name
from ._amqp_format import encode as encode_notification
from .clock import is_virtual
from .errors import InvalidRequest, TransportError
from .notify import Notification

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
    from pamqp.common import FieldTable

__all__ = ["AmqpStatistics", "AmqpTransport"]

log = logging.getLogger("ism.amqp")

#: The exchange each notification namespace publishes to: Nova's own under "nova", so
#: consumers configured for Nova (``Target(exchange="nova")``) read ism unchanged.
EXCHANGES: dict[str, str] = {"ism": "ism", "nova": "nova"}
#: Nova's ``[notifications] versioned_notifications_topics`` default.
DEFAULT_TOPIC = "versioned_notifications"


@final
@attrs.frozen(kw_only=True)
class AmqpStatistics:
    """A snapshot of what a transport did since it was created.

    Attributes:
        published: Messages sent to the broker (a notification published again counts again).
        confirmed: Messages the broker confirmed.
        reconnects: Connections made after the first one (each follows a lost connection).
        failures: Calls (``open``, ``publish``) that raised :class:`TransportError`.
        connected: Whether a connection is open now.
    """

    published: int
    confirmed: int
    reconnects: int
    failures: int
    connected: bool


class _Refused(Exception):
    """The broker refused a declaration: retrying the same declaration cannot succeed."""


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
        raise InvalidRequest(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _count(name: str, value: object, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InvalidRequest(f"{name} must be an integer in [1, {high}], not {value!r}")
    return value


def _safe_url(url: object) -> str:
    """``url`` without its password (it goes into messages and logs), after checking it."""
    if not isinstance(url, str):
        raise InvalidRequest(f"url must be a string, not {url!r}")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a port that is not a number
    except ValueError as exc:
        raise InvalidRequest(f"invalid AMQP URL: {exc}") from None
    if parts.scheme not in ("amqp", "amqps") or not host:
        raise InvalidRequest("url must be amqp://[user[:password]@]host[:port][/vhost] (or amqps)")
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:***@{netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@final
class AmqpTransport:
    """Publishes notifications to RabbitMQ for oslo.messaging consumers (module docstring).

    Use ``async with AmqpTransport(url) as transport`` (or :meth:`open` and :meth:`close`),
    then ``await transport.publish(notifications)``. Calls from several tasks take turns (each
    call's notifications stay together and in order); each turn is bounded, so is the wait.

    Args:
        url: ``amqp://user:password@host:5672/vhost`` (``amqps://`` for TLS); URL query
            options such as ``heartbeat`` pass to the client.
        exchange: The topic exchange; by default ``ism``, or ``nova`` for ``namespace="nova"``.
        topic: Routing keys are ``<topic>.info`` and ``<topic>.error`` (Nova's
            ``versioned_notifications_topics`` default).
        namespace: The engine's ``Config.notification_namespace``; picks the default exchange.
        durable: oslo.messaging's ``amqp_durable_queues`` of the deployment: the exchange and
            queues survive a broker restart (and persistent messages in them).
        auto_delete: oslo.messaging's ``amqp_auto_delete`` of the deployment.
        quorum_queues: oslo.messaging's ``rabbit_quorum_queue``: queues are quorum queues,
            and the exchange and queues are durable.
        declare_queues: Declare and bind ``<topic>.<priority>`` as oslo's notifier does, so
            nothing published before a listener starts is dropped.
        confirm_timeout: Seconds the broker has to confirm each message.
        connect_timeout: Seconds for one connection attempt, and for each declaration.
        connect_attempts: Connection attempts per call before it raises.
        backoff_initial: Pause after the first failed attempt; doubled after each one.
        backoff_max: Longest pause between attempts.
        max_in_flight: Messages sent before waiting for their confirms (one window).
        connection_name: Shown by ``rabbitmqctl list_connections client_properties``.

    Raises:
        InvalidRequest: an option is malformed (nothing is connected).
    """

    def __init__(
        self,
        url: str,
        *,
        exchange: str | None = None,
        topic: str = DEFAULT_TOPIC,
        namespace: Literal["ism", "nova"] = "ism",
        durable: bool = False,
        auto_delete: bool = False,
        quorum_queues: bool = False,
        declare_queues: bool = True,
        confirm_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        connect_attempts: int = 3,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        max_in_flight: int = 256,
        connection_name: str | None = None,
    ) -> None:
        self.safe_url = _safe_url(url)
        self._url = url
        if namespace not in EXCHANGES:
            raise InvalidRequest(f"namespace must be 'ism' or 'nova', not {namespace!r}")
        self.exchange = check_name(
            "exchange", EXCHANGES[namespace] if exchange is None else exchange
        )
        self.topic = check_name("topic", topic)
        for name, flag in (
            ("durable", durable),
            ("auto_delete", auto_delete),
            ("quorum_queues", quorum_queues),
            ("declare_queues", declare_queues),
        ):
            if not isinstance(flag, bool):
                raise InvalidRequest(f"{name} must be True or False, not {flag!r}")
        # oslo: ``durable = amqp_durable_queues or rabbit_quorum_queue``
        self.durable = durable or quorum_queues
        self.auto_delete = auto_delete
        self.quorum_queues = quorum_queues
        self.declare_queues = declare_queues
        self.confirm_timeout = _positive("confirm_timeout", confirm_timeout)
        self.connect_timeout = _positive("connect_timeout", connect_timeout)
        self.connect_attempts = _count("connect_attempts", connect_attempts, 100)
        self.backoff_initial = _positive("backoff_initial", backoff_initial)
        self.backoff_max = _positive("backoff_max", backoff_max)
        self.max_in_flight = _count("max_in_flight", max_in_flight, 65_535)
        self.connection_name = (
            f"ism:{os.getpid()}:{uuid.uuid4().hex[:12]}"
            if connection_name is None
            else check_name("connection_name", connection_name)
        )
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queues: set[str] = set()  # declared on the current connection
        self._lock = asyncio.Lock()
        self._state: Literal["new", "open", "closed"] = "new"
        self._connections = 0
        self._published = 0
        self._confirmed = 0
        self._failures = 0

    def __repr__(self) -> str:
        return f"<AmqpTransport {self.safe_url} exchange={self.exchange!r} topic={self.topic!r}>"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def statistics(self) -> AmqpStatistics:
        """What the transport did so far (a frozen snapshot)."""
        return AmqpStatistics(
            published=self._published,
            confirmed=self._confirmed,
            reconnects=max(0, self._connections - 1),
            failures=self._failures,
            connected=self._usable(),
        )

    async def open(self) -> None:
        """Connect and declare the exchange (as oslo.messaging declares it).

        Raises:
            TransportError: no connection within ``connect_attempts``, the broker refused the
                declaration (an exchange of that name exists with other properties: the
                message says which option to match), aio-pika is not installed, or the
                transport was closed.
        """
        async with self._lock:
            if self._state == "closed":
                self._failures += 1
                raise TransportError(f"{self!r} is closed")
            if self._state == "open":
                return
            try:
                await self._connect()
            except TransportError:
                self._failures += 1
                raise
            self._state = "open"

    async def publish(self, notifications: Sequence[Notification]) -> None:
        """Publish ``notifications`` in order; return once the broker confirmed every one.

        Reconnects first (bounded, with back-off) if the connection was lost.

        Args:
            notifications: In the order consumers should receive them.

        Raises:
            InvalidRequest: a notification can never be delivered (a priority oslo does not
                deliver, a payload that is not JSON); nothing was sent.
            TransportError: not every notification was confirmed (the broker is down, nacked,
                or did not confirm within ``confirm_timeout``); ``confirmed`` says how many
                leading ones were. The caller keeps the rest and publishes again later.
        """
        wires = [encode_notification(n, self.topic) for n in notifications]
        async with self._lock:
            if self._state != "open":
                self._failures += 1
                raise TransportError(
                    f"{self!r} is closed" if self._state == "closed" else f"{self!r}: open it first"
                )
            if not wires:
                return
            try:
                if not self._usable():
                    await self._drop()
                    await self._connect()
                await self._publish(wires)
            except TransportError:
                self._failures += 1
                raise

    async def close(self) -> None:
        """Close the connection (bounded by ``connect_timeout``); later calls raise."""
        async with self._lock:
            self._state = "closed"
            await self._drop()

    # -- connection ------------------------------------------------------------------------

    def _usable(self) -> bool:
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def _connect(self) -> None:
        """Connect and declare, with bounded attempts and exponential back-off."""
        try:
            import aio_pika  # noqa: F401  (lazy: ism runs without the extra)
        except ImportError as exc:
            raise TransportError(
                "aio-pika is not installed: pip install 'ism-engine[amqp]'"
            ) from exc
        delay = self.backoff_initial
        last: Exception | None = None
        for attempt in range(self.connect_attempts):
            if attempt:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
            try:
                await self._connect_once()
            except _Refused as exc:
                await self._drop()
                raise TransportError(str(exc)) from exc.__cause__
            except Exception as exc:  # the client's errors, OSError, TimeoutError: try again
                await self._drop()
                last = exc
                log.info("AMQP connect attempt %d to %s failed: %s", attempt + 1,
                         self.safe_url, _reason(exc))  # fmt: skip
            else:
                return
        assert last is not None, "connect_attempts >= 1"
        raise TransportError(
            f"cannot connect to {self.safe_url} ({self.connect_attempts} attempts): {_reason(last)}"
        ) from last

    async def _connect_once(self) -> None:
        import aio_pika
        import aiormq
        import yarl

        url = yarl.URL(self._url)
        if is_virtual() and "heartbeat" not in url.query:
            # the client's heartbeat watchdog runs on the loop's clock: a virtual jump over an
            # idle stretch would look like a silent broker and drop a healthy connection
            url = url.update_query(heartbeat=0)
        with anyio.fail_after(self.connect_timeout):
            self._connection = await aio_pika.connect(
                url,
                timeout=self.connect_timeout,
                client_properties={"connection_name": self.connection_name},
            )
        self._connections += 1
        self._queues.clear()
        self._channel = await self._connection.channel(publisher_confirms=True)
        try:
            self._exchange = await self._channel.declare_exchange(
                self.exchange,
                aio_pika.ExchangeType.TOPIC,
                durable=self.durable,
                auto_delete=self.auto_delete,
                timeout=self.connect_timeout,
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _Refused(
                f"RabbitMQ refused to declare exchange {self.exchange!r} as a topic exchange "
                f"with durable={self.durable}, auto_delete={self.auto_delete} ({exc}): it "
                "exists with other properties; set durable / auto_delete / quorum_queues as "
                "the deployment's oslo.messaging has amqp_durable_queues / amqp_auto_delete "
                "/ rabbit_quorum_queue"
            ) from exc

    async def _drop(self) -> None:
        """Forget the connection, closing it within ``connect_timeout`` whatever happens."""
        connection, self._connection = self._connection, None
        self._channel = self._exchange = None
        self._queues.clear()
        if connection is None or connection.is_closed:
            return
        with anyio.move_on_after(self.connect_timeout, shield=True):
            try:
                await connection.close()
            except Exception as exc:  # closing a broken connection: nothing left to save
                log.debug("closing the AMQP connection failed: %s", _reason(exc))

    # -- publishing ------------------------------------------------------------------------

    async def _declare_queue(self, key: str) -> None:
        """Declare ``key`` as a queue bound to the exchange, as oslo's notifier does
        (``_publish_and_creates_default_queue``): named for the routing key, with the
        exchange's durability and auto-delete."""
        import aiormq

        assert self._channel is not None
        assert self._exchange is not None
        arguments: FieldTable | None = {"x-queue-type": "quorum"} if self.quorum_queues else None
        try:
            queue = await self._channel.declare_queue(
                key,
                durable=self.durable,
                auto_delete=self.auto_delete,
                arguments=arguments,
                timeout=self.connect_timeout,
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _Refused(
                f"RabbitMQ refused to declare queue {key!r} with durable={self.durable}, "
                f"auto_delete={self.auto_delete}, quorum={self.quorum_queues} ({exc}); match "
                "the deployment's oslo.messaging options"
            ) from exc
        await queue.bind(self._exchange, routing_key=key, timeout=self.connect_timeout)
        self._queues.add(key)

    async def _send(self, wire: WireMessage) -> None:
        import aio_pika
        import aiormq

        assert self._exchange is not None
        message = aio_pika.Message(
            wire.body,
            content_type=CONTENT_TYPE,
            content_encoding=CONTENT_ENCODING,
            delivery_mode=PERSISTENT,
            message_id=wire.message_id,
        )
        result = await self._exchange.publish(
            message, routing_key=wire.routing_key, mandatory=False, timeout=self.confirm_timeout
        )
        if not isinstance(result, aiormq.spec.Basic.Ack):
            raise TransportError(f"the broker answered {result!r} instead of a confirm")

    async def _publish(self, wires: list[WireMessage]) -> None:
        confirmed = 0
        for start in range(0, len(wires), self.max_in_flight):
            window = wires[start : start + self.max_in_flight]
            try:
                if self.declare_queues:
                    for key in sorted({w.routing_key for w in window} - self._queues):
                        await self._declare_queue(key)
            except Exception as exc:
                await self._drop()
                message = str(exc) if isinstance(exc, _Refused) else _reason(exc)
                raise TransportError(
                    f"declaring queues on {self.safe_url} failed: {message}", confirmed=confirmed
                ) from exc
            results = await self._send_window(window)
            for result in results:
                if result is not None:
                    break
                confirmed += 1
            failures = [r for r in results if r is not None]
            if failures:
                first = failures[0]
                await self._drop()  # a nack, a timeout or a lost channel: start afresh next time
                raise TransportError(
                    f"{len(failures)} of {len(wires)} notifications not confirmed by "
                    f"{self.safe_url}: {_reason(first)}",
                    confirmed=confirmed,
                ) from first

    async def _send_window(self, window: list[WireMessage]) -> list[BaseException | None]:
        """Send ``window`` pipelined, in order; each entry: None (confirmed) or the error."""
        self._published += len(window)
        # Created in order, each task takes the channel's FIFO publish lock in its first step.
        tasks = [asyncio.ensure_future(self._send(wire)) for wire in window]
        try:
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # gather has cancelled the sends; the channel has confirms nobody will read
            await self._drop()
            raise
        results: list[BaseException | None] = [
            o if isinstance(o, BaseException) else None for o in outcomes
        ]
        self._confirmed += sum(1 for r in results if r is None)
        return results
