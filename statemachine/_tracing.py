"""OpenTelemetry glue: spans for actions and steps, a no-op without ``opentelemetry-api``.

ism depends on the API only (``pip install 'ism-engine[tracing]'``); the embedding service
chooses the SDK, the sampler and the exporter, and ism's spans land in its traces. The API is
imported when an engine is built, never when ``statemachine`` is: without it, :func:`load`
returns None and the engine traces nothing.

Spans are stamped with the engine's clock (``Clock.wall``), like its notifications and audit
records, so a run on virtual time gives a trace on the same time line as its events.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from contextvars import Token
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["OpenSpan", "Tracing", "load"]

INSTRUMENTATION = "ism"
"""The instrumentation scope's name: the tracer every ism span comes from."""

Attributes = Mapping[str, str | bool | int | float]


class OpenSpan:
    """A started span and the context token that made it current (detached when it ends)."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: Token[Context]) -> None:
        self.span = span
        self.token = token


class Tracing:
    """Starts and ends ism's spans through the OpenTelemetry API."""

    def __init__(self, tracer: Tracer, provider: TracerProvider | None = None) -> None:
        from opentelemetry import context, trace

        self._tracer = tracer
        self._provider = provider
        self._context = context
        self._trace = trace
        self._silent = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

    def enabled(self) -> bool:
        """Whether a provider that records is in place: with the API alone (no SDK installed
        as the global provider) every span would be a no-op, and making them still costs
        (some 5-10 % of the CPU time of ``ism bench``'s engine run), so none is made."""
        provider = self._provider or self._trace.get_tracer_provider()
        return not isinstance(provider, self._silent)

    def current(self) -> Context:
        """The caller's context (its current span): captured when an action is accepted, so
        the action's span is a child of whatever span submitted it."""
        return self._context.get_current()

    def start(
        self,
        name: str,
        attributes: Attributes,
        when: dt.datetime,
        *,
        parent: Context | None = None,
    ) -> OpenSpan:
        """Start a span under ``parent`` (default: the current context) and make it current,
        so spans started below it — a step's, a driver's own — are its children."""
        base = parent if parent is not None else self._context.get_current()
        span = self._tracer.start_span(
            name,
            context=base,
            kind=self._trace.SpanKind.INTERNAL,
            attributes=dict(attributes),
            start_time=_nanos(when),
        )
        token = self._context.attach(self._trace.set_span_in_context(span, base))
        return OpenSpan(span, token)

    def end(
        self,
        opened: OpenSpan,
        attributes: Attributes,
        when: dt.datetime,
        *,
        error: tuple[str, str] | None = None,
    ) -> None:
        """Set the closing attributes, mark a failure (class and scrubbed message, never a
        traceback: it could hold what the message scrubbing removed), end, detach."""
        span = opened.span
        span.set_attributes(dict(attributes))
        if error is not None:
            kind, message = error
            span.set_attribute("error.type", kind)
            span.add_event(
                "exception",
                {"exception.type": kind, "exception.message": message},
                timestamp=_nanos(when),
            )
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, message[:256]))
        span.end(end_time=_nanos(when))
        self._context.detach(opened.token)


def load(provider: TracerProvider | None = None) -> Tracing | None:
    """ism's tracer from ``provider`` (default: the global one), or None without
    opentelemetry-api.

    A global provider the service installs later still receives the spans: the API's proxy
    tracer forwards to it.
    """
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    from . import __version__

    tracer = trace.get_tracer(INSTRUMENTATION, __version__, tracer_provider=provider)
    return Tracing(tracer, provider)


def _nanos(when: dt.datetime) -> int:
    return int(when.timestamp() * 1_000_000_000)
