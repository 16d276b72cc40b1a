"""An oslo.messaging notification listener, run as its own process by the AMQP tests.

OpenStack's consumers read notifications through exactly this API
(``oslo_messaging.get_notification_listener`` with endpoints named for priorities), so it is
the reference ism's transport must satisfy. It runs in a subprocess because oslo.messaging
wants its own executor threads and imports eventlet (which warns on import, and the test
suite turns warnings into errors).

Usage: ``python -m tests.oslo_listener URL EXCHANGE TOPIC [--durable] [--quorum]
[--auto-delete]``. It
declares its consumers (exchange, ``<topic>.info`` and ``<topic>.error`` queues) as the
deployment's oslo.messaging would, prints ``{"ready": true}``, then one JSON line per received
notification (``priority``, ``publisher_id``, ``event_type``, ``payload``, ``metadata``,
``ctxt``), and stops when its standard input closes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import warnings
from typing import Any

_lock = threading.Lock()


def _say(line: dict[str, Any]) -> None:
    with _lock:  # executor threads print concurrently
        sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
        sys.stdout.flush()


class Endpoint:
    """Receives ``info`` and ``error`` notifications, as a Nova consumer's endpoint does."""

    def _record(
        self,
        priority: str,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> None:
        _say({
            "priority": priority,
            "publisher_id": publisher_id,
            "event_type": event_type,
            "payload": payload,
            "metadata": metadata,
            "ctxt": ctxt,
        })  # fmt: skip

    def info(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> None:
        """An INFO notification."""
        self._record("INFO", ctxt, publisher_id, event_type, payload, metadata)

    def error(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> None:
        """An ERROR notification."""
        self._record("ERROR", ctxt, publisher_id, event_type, payload, metadata)


def main(argv: list[str] | None = None) -> int:
    """Listen until standard input closes; see the module docstring."""
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("exchange")
    parser.add_argument("topic")
    parser.add_argument("--durable", action="store_true", help="amqp_durable_queues = True")
    parser.add_argument("--quorum", action="store_true", help="rabbit_quorum_queue = True")
    parser.add_argument("--auto-delete", action="store_true", help="amqp_auto_delete = True")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    # oslo.service imports eventlet (its default backend; the threading one needs cotyledon,
    # which oslo.messaging does not install). Importing it patches nothing; it only warns.
    warnings.simplefilter("ignore")
    import oslo_messaging
    from oslo_config import cfg

    conf = cfg.ConfigOpts()
    conf([], project="ism-tests")
    url = args.url.replace("amqp://", "rabbit://", 1)
    transport = oslo_messaging.get_notification_transport(conf, url=url)
    group = "oslo_messaging_rabbit"
    conf.set_override("amqp_durable_queues", args.durable, group=group)
    conf.set_override("rabbit_quorum_queue", args.quorum, group=group)
    conf.set_override("amqp_auto_delete", args.auto_delete, group=group)
    conf.set_override("rabbit_retry_interval", 1, group=group)
    conf.set_override("rabbit_retry_backoff", 1, group=group)
    conf.set_override("rabbit_interval_max", 2, group=group)
    targets = [oslo_messaging.Target(exchange=args.exchange, topic=args.topic)]
    listener = oslo_messaging.get_notification_listener(
        transport, targets, [Endpoint()], executor="threading"
    )
    # One executor thread: messages are handled one at a time in the order they arrive, so the
    # lines this prints keep each queue's order (a wider pool may reorder them).
    listener.start(override_pool_size=1)  # declares exchange, queues, bindings, then returns
    _say({"ready": True})
    try:
        sys.stdin.read()  # until the test closes our stdin (or dies)
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
