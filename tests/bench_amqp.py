"""Confirmed notifications per second through :class:`~statemachine.amqp.AmqpTransport`.

``python -m tests.bench_amqp [--batches 10] [--size 1000] [--in-flight 256] [--durable]``
publishes ``batches`` calls of ``size`` notifications each to the broker at ``ISM_AMQP_URL``
and prints how many the broker confirmed per second of wall time. The notifications are what
the engine really emits (create, stop, start, a failed pause, delete, ``instance.update``:
:func:`tests.amqp_support.engine_notifications`), about 2 KB of JSON each. They go to a
queue of their own (as with no listener running), deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import attrs

from statemachine.amqp import AmqpTransport
from statemachine.notify import Notification
from tests.amqp_support import AMQP_URL, broker_cleanup, engine_notifications, queues_of, unique

#: Notifications one instance's create/stop/start/failed pause/delete emits (measured: 25).
PER_INSTANCE = 25


@attrs.frozen
class Measurement:
    """What one benchmark run measured."""

    batches: int
    size: int
    seconds: list[float]
    confirmed: int
    mean_bytes: float

    @property
    def per_second(self) -> float:
        """Confirmed notifications per second of publishing, over all batches."""
        return self.confirmed / sum(self.seconds)


def notifications(size: int) -> list[Notification]:
    """``size`` notifications the engine emitted on the simulator (call outside a loop)."""
    sent = engine_notifications("ism", instances=size // PER_INSTANCE + 1)
    return sent[:size]


async def measure(
    batch: list[Notification], *, batches: int, in_flight: int = 256, durable: bool = False
) -> Measurement:
    """Publish ``batch`` ``batches`` times, timing each confirmed call."""
    topic = unique("bench")
    exchange = unique("ism-bench")
    seconds = []
    async with (
        broker_cleanup(queues_of(topic), [exchange]),
        AmqpTransport(
            AMQP_URL, exchange=exchange, topic=topic, durable=durable, max_in_flight=in_flight
        ) as transport,
    ):
        await transport.publish(batch[:1])  # connect and declare outside the clock
        for _ in range(batches):
            started = time.perf_counter()
            await transport.publish(batch)
            seconds.append(time.perf_counter() - started)
        confirmed = transport.statistics().confirmed - 1
    from statemachine._amqp_format import encode

    mean_bytes = statistics.fmean(len(encode(n, topic).body) for n in batch)
    return Measurement(batches, len(batch), seconds, confirmed, mean_bytes)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--durable", action="store_true")
    args = parser.parse_args(argv)
    batch = notifications(args.size)
    result = asyncio.run(
        measure(batch, batches=args.batches, in_flight=args.in_flight, durable=args.durable)
    )
    per_batch = ", ".join(f"{s * 1000:.0f}" for s in result.seconds)
    print(
        f"{result.confirmed} notifications confirmed in {sum(result.seconds):.2f} s: "
        f"{result.per_second:,.0f}/s (batches of {result.size}, max_in_flight "
        f"{args.in_flight}, {'durable' if args.durable else 'transient'} queue, "
        f"{result.mean_bytes:,.0f} bytes each; ms per batch: {per_batch})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
