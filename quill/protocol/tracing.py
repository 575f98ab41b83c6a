"""W3C trace context for outgoing calls: when ``opentelemetry-api`` is installed, the current
span's ``traceparent`` (and ``tracestate``) go out with every request; when it is absent this
costs one flag check per call and imports nothing.

>>> trace_headers()  # no active span (or no OpenTelemetry): nothing to send
()
"""

from __future__ import annotations

__all__ = ["trace_headers"]

_propagate = None
_looked = False


def _propagator():
    global _propagate, _looked
    if not _looked:
        try:
            from opentelemetry import propagate
        except ImportError:
            propagate = None
        # _propagate first: a thread that sees _looked (free-threaded, or during the import
        # above) reads the propagator, never the None before it
        _propagate = propagate
        _looked = True
    return _propagate


def trace_headers() -> tuple:
    """``(name, value)`` pairs of the current trace context, as the global propagator writes them."""
    propagate = _propagate if _looked else _propagator()
    if propagate is None:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())
