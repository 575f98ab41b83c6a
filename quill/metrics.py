"""Request metrics for the quill server, rendered in the Prometheus text format.

One :class:`ServerMetrics` per application counts requests per RPC method and HTTP
status, errors, bytes in and out, requests in flight, and keeps a latency histogram per
method. ``GET /metrics`` serves :meth:`ServerMetrics.render`.

>>> m = ServerMetrics()
>>> m.observe("echo.v1.EchoService/Echo", 200, 0.0021, request_bytes=5, response_bytes=5)
>>> 'quill_requests_total{method="echo.v1.EchoService/Echo",code="200"} 1' in m.render()
True
"""

from __future__ import annotations

import bisect
import threading
import time

__all__ = ["ServerMetrics", "LATENCY_BUCKETS", "UNMATCHED_METHOD"]

#: Upper bounds (seconds) of the latency histogram buckets; ``+Inf`` is implied.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: The ``method`` label of requests whose path matches no registered method (one label
#: for all of them, so random paths cannot grow the metric set without bound).
UNMATCHED_METHOD = "<unmatched>"


class _MethodStats:
    __slots__ = ("by_status", "errors", "bucket_counts", "latency_sum", "request_bytes", "response_bytes")

    def __init__(self):
        self.by_status: dict[int, int] = {}
        self.errors = 0
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # last one is +Inf
        self.latency_sum = 0.0
        self.request_bytes = 0
        self.response_bytes = 0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class ServerMetrics:
    """Thread-safe counters and histograms for one server.

    >>> m = ServerMetrics()
    >>> m.request_started(); m.request_finished()
    >>> m.observe("a.B/C", 500, 0.5, error=True)
    >>> 'quill_request_errors_total{method="a.B/C"} 1' in m.render()
    True
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._methods: dict[str, _MethodStats] = {}
        self._in_flight = 0
        self._started_at = time.monotonic()

    def request_started(self) -> None:
        """Count one more request in flight."""
        with self._lock:
            self._in_flight += 1

    def request_finished(self) -> None:
        """Count one request fewer in flight."""
        with self._lock:
            self._in_flight -= 1

    def observe(
        self,
        method: str,
        status: int,
        seconds: float,
        *,
        request_bytes: int = 0,
        response_bytes: int = 0,
        error: bool | None = None,
    ) -> None:
        """Record one finished request.

        ``error`` defaults to ``status >= 400``; a stream that ended with a CANCEL frame
        after a 200 status passes ``error=True``.
        """
        bucket = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            stats = self._methods.get(method)
            if stats is None:
                stats = self._methods[method] = _MethodStats()
            stats.by_status[status] = stats.by_status.get(status, 0) + 1
            if error if error is not None else status >= 400:
                stats.errors += 1
            stats.bucket_counts[bucket] += 1
            stats.latency_sum += seconds
            stats.request_bytes += request_bytes
            stats.response_bytes += response_bytes

    def render(self) -> str:
        """The metrics in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            methods = sorted(self._methods.items())
            lines = [
                "# HELP quill_requests_total RPC requests handled, by method and HTTP status.",
                "# TYPE quill_requests_total counter",
            ]
            for name, stats in methods:
                for status, count in sorted(stats.by_status.items()):
                    lines.append(f'quill_requests_total{{method="{_escape(name)}",code="{status}"}} {count}')
            lines += [
                "# HELP quill_request_errors_total RPC requests that ended in an error (status >= 400 or a cancelled stream).",
                "# TYPE quill_request_errors_total counter",
            ]
            lines += [f'quill_request_errors_total{{method="{_escape(n)}"}} {s.errors}' for n, s in methods]
            lines += [
                "# HELP quill_request_duration_seconds Time from request start to the end of the response.",
                "# TYPE quill_request_duration_seconds histogram",
            ]
            for name, stats in methods:
                label = _escape(name)
                cumulative = 0
                for bound, count in zip(LATENCY_BUCKETS, stats.bucket_counts):
                    cumulative += count
                    lines.append(f'quill_request_duration_seconds_bucket{{method="{label}",le="{bound}"}} {cumulative}')
                total = cumulative + stats.bucket_counts[-1]
                lines.append(f'quill_request_duration_seconds_bucket{{method="{label}",le="+Inf"}} {total}')
                lines.append(f'quill_request_duration_seconds_sum{{method="{label}"}} {_number(stats.latency_sum)}')
                lines.append(f'quill_request_duration_seconds_count{{method="{label}"}} {total}')
            for metric, attribute, text in (
                ("quill_request_bytes_total", "request_bytes", "Request body bytes received (as sent on the wire)."),
                ("quill_response_bytes_total", "response_bytes", "Response body bytes sent (as sent on the wire)."),
            ):
                lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter"]
                lines += [f'{metric}{{method="{_escape(n)}"}} {getattr(s, attribute)}' for n, s in methods]
            lines += [
                "# HELP quill_requests_in_flight RPC requests being handled now.",
                "# TYPE quill_requests_in_flight gauge",
                f"quill_requests_in_flight {self._in_flight}",
                "# HELP quill_uptime_seconds Seconds since the server started.",
                "# TYPE quill_uptime_seconds gauge",
                f"quill_uptime_seconds {time.monotonic() - self._started_at:.3f}",
            ]
        return "\n".join(lines) + "\n"
