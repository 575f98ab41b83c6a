"""OpenTelemetry server spans, when ``opentelemetry-api`` is installed (``pip install
'quill-rpc[otel]'``); without it, nothing here runs and nothing is imported.

Each RPC gets a SERVER span named ``package.Service/Method``, a child of the caller's
``traceparent``/``tracestate``, current while the handler runs (sync handlers in the thread pool
included). Attributes: ``rpc.system`` (``quill``), ``rpc.service``, ``rpc.method``,
``http.response.status_code``, ``quill.request.bytes``, ``quill.response.bytes`` and, for streams,
``quill.stream.items``. Spans are made once a tracer provider is set (the SDK, or
``opentelemetry-instrument``). A 5xx answer or a stream ended by CANCEL sets the span's status to ERROR.
The ``trace_id`` of a 500 answer (and of its log line) is then the span's trace id.

>>> isinstance(ENABLED, bool)
True
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, Iterator

try:
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # tracing off: call_span is a no-op context manager
    _trace = None

__all__ = ["ENABLED", "active", "call_span", "current_trace_id"]

#: Whether opentelemetry-api is importable.
ENABLED = _trace is not None
_tracer = _trace.get_tracer("quill.server") if ENABLED else None


def active() -> bool:
    """True when spans are recorded: opentelemetry-api is installed and a tracer provider (an
    SDK) has been set. The API alone would make no-op spans at ~10 us a call: skipped."""
    return ENABLED and not isinstance(_trace.get_tracer_provider(), _trace.ProxyTracerProvider)


@contextlib.contextmanager
def call_span(exchange: Any) -> Iterator[None]:
    """A SERVER span around one RPC (``exchange``: :class:`~quill.server.exchange.Exchange`),
    current inside the block; its attributes are set from the exchange when the block ends."""
    context = exchange.context
    parent = _propagate.extract(context.headers)
    with _tracer.start_as_current_span(context.method_path, context=parent, kind=_trace.SpanKind.SERVER,
                                       record_exception=False, set_status_on_exception=False) as span:
        try:
            yield
        finally:
            status = exchange.status or 499
            attributes = {
                "rpc.system": "quill",
                "rpc.service": context.service,
                "rpc.method": context.method,
                "http.response.status_code": status,
                "quill.request.bytes": exchange.bytes_in,
                "quill.response.bytes": exchange.bytes_out,
            }
            if exchange.items_out:
                attributes["quill.stream.items"] = exchange.items_out
            span.set_attributes(attributes)
            if status >= 500 or exchange.stream_failed:
                span.set_status(_trace.Status(_trace.StatusCode.ERROR))


def current_trace_id() -> str:
    """The trace id of the current span (32 hex digits), or a fresh random id without one."""
    if ENABLED:
        span_context = _trace.get_current_span().get_span_context()
        if span_context.is_valid:
            return format(span_context.trace_id, "032x")
    return uuid.uuid4().hex
