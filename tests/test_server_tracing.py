"""OpenTelemetry server spans, recorded by the SDK's in-memory exporter; and the same server with
OpenTelemetry absent (a subprocess where it cannot be imported)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import urllib3
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from quill._core.tokens import Token, TokenBatch
from quill.server import QuillApp, serve_in_thread

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(scope="module")
def exporter():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process; quill's tracer is a proxy that follows it
    yield exporter
    provider.shutdown()  # later tests in this process record nothing
    exporter.clear()


def current_ids() -> dict:
    context = trace.get_current_span().get_span_context()
    return {"trace": format(context.trace_id, "032x"), "span": format(context.span_id, "016x")}


@pytest.fixture(scope="module")
def url(exporter):
    app = QuillApp()

    @app.unary("t.v1.Trace/Sync")
    def sync_handler(request, context):  # runs in the thread pool
        return json.dumps(current_ids()).encode()

    @app.unary("t.v1.Trace/Async")
    async def async_handler(request, context):
        return json.dumps(current_ids()).encode()

    @app.unary("t.v1.Trace/Boom")
    def boom(request, context):
        raise ValueError("secret")

    @app.token_stream("t.v1.Trace/Tokens")
    def tokens(request, context):
        for i in range(5):
            yield TokenBatch.from_tokens([Token(1, i, text="x")])

    with serve_in_thread(app) as base_url:
        yield base_url


def post(url: str, path: str, body: bytes = b"", **headers) -> urllib3.BaseHTTPResponse:
    return urllib3.PoolManager(retries=False).request("POST", f"{url}/{path}", body=body, headers=headers)


def last_span(exporter, name: str):
    """The latest finished span called ``name`` (it ends just after the answer's last byte went
    out, so the client may see the answer first: wait a little)."""
    deadline = time.monotonic() + 5
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.name == name]
        if spans:
            return spans[-1]
        assert time.monotonic() < deadline, f"no span {name}"
        time.sleep(0.01)


@pytest.mark.parametrize("method", ["Sync", "Async"])
def test_span_per_call_child_of_traceparent_and_current_in_the_handler(exporter, url, method):
    seen = json.loads(post(url, f"t.v1.Trace/{method}", b"abc", traceparent=TRACEPARENT).data)
    span = last_span(exporter, f"t.v1.Trace/{method}")
    assert span.kind == trace.SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID and format(span.parent.span_id, "016x") == PARENT_ID
    assert seen == {"trace": TRACE_ID, "span": format(span.context.span_id, "016x")}  # current for the handler
    assert dict(span.attributes) == {
        "rpc.system": "quill", "rpc.service": "t.v1.Trace", "rpc.method": method,
        "http.response.status_code": 200, "quill.request.bytes": 3, "quill.response.bytes": len(json.dumps(seen)),
    }
    assert span.status.status_code == trace.StatusCode.UNSET


def test_stream_span_counts_items(exporter, url):
    assert post(url, "t.v1.Trace/Tokens").status == 200
    span = last_span(exporter, "t.v1.Trace/Tokens")
    assert span.attributes["quill.stream.items"] == 5 and span.parent is None  # no traceparent: a root span


def test_failed_call_carries_the_span_trace_id(exporter, url, caplog):
    r = post(url, "t.v1.Trace/Boom", traceparent=TRACEPARENT)
    assert r.status == 500 and json.loads(r.data)["trace_id"] == TRACE_ID
    assert any(TRACE_ID in record.getMessage() for record in caplog.records)
    span = last_span(exporter, "t.v1.Trace/Boom")
    assert span.status.status_code == trace.StatusCode.ERROR and span.attributes["http.response.status_code"] == 500


def test_without_opentelemetry_nothing_is_imported_and_calls_work():
    code = """if True:
        import sys
        sys.modules["opentelemetry"] = None  # not installed
        import urllib3
        from quill.server import QuillApp, serve_in_thread, tracing
        app = QuillApp()
        app.add_method("a.v1.S/Boom", lambda request, context: 1 / 0)
        app.add_method("a.v1.S/Echo", lambda request, context: request)
        with serve_in_thread(app) as url:
            pool = urllib3.PoolManager(retries=False)
            assert pool.request("POST", url + "/a.v1.S/Echo", body=b"hi").data == b"hi"
            assert len(__import__("json").loads(pool.request("POST", url + "/a.v1.S/Boom").data)["trace_id"]) == 32
        print(tracing.ENABLED, [m for m in sys.modules if m.startswith("opentelemetry")])
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False ['opentelemetry']"  # only the blocked entry itself
