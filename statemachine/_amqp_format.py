"""What ism puts on RabbitMQ so that oslo.messaging's notification listeners read it unchanged.

No AMQP client is imported here: this is the wire format alone, read from oslo.messaging
(``notify/notifier.py`` ``Notifier._notify``, ``notify/messaging.py`` ``MessagingV2Driver``,
``_drivers/amqpdriver.py`` ``AMQPDriverBase._send``, ``_drivers/common.py`` ``serialize_msg``,
``_drivers/amqp.py`` ``_add_unique_id``, ``_drivers/impl_rabbit.py`` ``notify_send``) and from
the kombu producer defaults its rabbit driver publishes with:

* **Body**: JSON of the oslo envelope ``{"oslo.version": "2.0", "oslo.message": <str>}``, where
  the string is itself the JSON of the notifier's message dict: ``message_id``,
  ``publisher_id``, ``event_type``, ``priority`` (upper case, as ``Notifier.info`` passes it),
  ``payload``, ``timestamp`` (``str(utcnow())``: ``YYYY-MM-DD HH:MM:SS.ffffff``), plus the
  driver's ``_unique_id`` (32 hex digits, popped by the listener to drop redeliveries).
  oslo also packs the request context as ``_context_*`` keys; ism's notifications carry no
  context, so there are none and listeners receive an empty one.
* **ism's ``sequence``** travels as one more top-level key of the message dict, exactly where
  :meth:`~statemachine.notify.Notification.envelope` has it. oslo's listener reads the keys it
  knows with ``dict.get`` and ignores others, so its endpoints keep working (they do not see
  ``sequence``; consumers reading the queue themselves do). Putting it into the payload would
  change the shape of Nova's versioned payload objects, which consumers deserialize.
* ``_unique_id`` is derived from ``message_id`` (its 32 hex digits), not drawn afresh: a
  notification published again after a lost confirm carries the same one, so an oslo listener
  that already acknowledged it drops the copy (it remembers the last 16).
* **Properties**: ``content_type`` ``application/json``, ``content_encoding`` ``utf-8``,
  ``delivery_mode`` 2 (persistent: kombu's default), and, beyond kombu, the AMQP
  ``message_id`` property set to the notification's (the client would otherwise invent one).
* **Routing**: a topic exchange; routing key ``<topic>.<priority in lower case>``
  (``versioned_notifications.info``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import InvalidRequest
from .notify import Notification

__all__ = [
    "CONTENT_ENCODING",
    "CONTENT_TYPE",
    "OSLO_PRIORITIES",
    "PERSISTENT",
    "WireMessage",
    "check_name",
    "encode",
    "oslo_message",
    "routing_key",
]

#: The envelope version oslo.messaging's MessagingV2Driver writes and its listeners unwrap.
OSLO_VERSION = "2.0"
#: Priorities oslo's notification dispatcher delivers (``notify/dispatcher.py``); any other
#: is logged and dropped by the listener, so ism refuses it before publishing.
OSLO_PRIORITIES = frozenset({"audit", "debug", "info", "warn", "error", "critical", "sample"})
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
#: AMQP delivery mode 2: the broker writes the message to disk in a durable queue.
PERSISTENT = 2

# RabbitMQ's rule for exchange and queue names (short strings, this alphabet).
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,255}")


@attrs.frozen
class WireMessage:
    """One notification as it goes on the wire: where to, the body, and its id."""

    routing_key: str
    body: bytes
    message_id: str


def check_name(what: str, value: object) -> str:
    """``value`` if RabbitMQ accepts it as an exchange name, topic or queue name.

    Raises:
        InvalidRequest: it is not a non-empty string of letters, digits, ``_ . : -`` of at
            most 255 characters (the broker would close the channel on it).
    """
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise InvalidRequest(
            f"{what} must be 1-255 characters of letters, digits, '_', '.', ':' or '-': {value!r}"
        )
    return value


def routing_key(topic: str, priority: str) -> str:
    """``<topic>.<priority>``, lower case, as oslo's ``MessagingDriver.notify`` builds it.

    Raises:
        InvalidRequest: oslo's listeners do not deliver that priority.
    """
    level = priority.lower() if isinstance(priority, str) else priority
    if level not in OSLO_PRIORITIES:
        raise InvalidRequest(
            f"priority {priority!r} is not one oslo.messaging delivers "
            f"({', '.join(sorted(OSLO_PRIORITIES))})"
        )
    return f"{topic}.{level}"


def _unique_id(message_id: str) -> str:
    try:
        return uuid.UUID(message_id).hex
    except ValueError:
        return message_id  # not a UUID: still stable across retries, which is what matters


def oslo_message(notification: Notification) -> dict[str, Any]:
    """The notifier's message dict for ``notification`` (what ``oslo.message`` holds)."""
    message: dict[str, Any] = notification.envelope()
    message["_unique_id"] = _unique_id(notification.message_id)
    return message


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def encode(notification: Notification, topic: str) -> WireMessage:
    """The wire form of ``notification`` published under ``topic``.

    Raises:
        InvalidRequest: the priority is not one oslo delivers, or the payload is not JSON
            (an object JSON cannot carry, NaN or infinity, a tuple as a key). Such a
            notification can never be delivered; retrying would not help.
    """
    key = routing_key(topic, notification.priority)
    try:
        inner = _dumps(oslo_message(notification))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"notification {notification.message_id} ({notification.event_type}) is not JSON: {exc}"
        ) from exc
    body = _dumps({"oslo.version": OSLO_VERSION, "oslo.message": inner})
    return WireMessage(key, body.encode(CONTENT_ENCODING), notification.message_id)
