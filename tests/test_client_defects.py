"""Regression tests for the client defects an outside review found (issue 9), over both clients:
a POST the server read is never replayed unless the call is idempotent; every zstd frame of a
body is decoded and a truncated one is an error; names and headers with a trailing newline or
dot segments are refused."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_servers import LAST_CHUNK, ScriptedServer, chunk, chunked_head, echo, response, zstd  # noqa: E402

from quill.client import QuillClient  # noqa: E402
from quill.errors import DecodeError, IncompleteStreamError, QuillConnectionError  # noqa: E402
from quill.frames import encode_end_stream, encode_stream_frame  # noqa: E402

SERVICE, METHOD = "bank.v1.Ledger", "Transfer"


@pytest.fixture(autouse=True)
def client_kind(request, monkeypatch):
    from client_kinds import CLIENTS

    monkeypatch.setattr(request.module, "QuillClient", CLIENTS[request.param])
    return request.param


def read_then_hang_up_on_the_second_call():
    """Answers the first request; reads all of the second one, then closes without answering."""
    executed = []

    def handler(req, sock):
        executed.append(req.body)
        if len(executed) == 2:
            return False  # closed after reading the whole request: it may have been acted on
        echo(req, sock)

    return ScriptedServer(handler), executed


def test_a_post_the_server_has_read_is_not_replayed():
    server, executed = read_then_hang_up_on_the_second_call()
    with server:
        client = QuillClient(server.url, retries=3)
        assert client.call(SERVICE, METHOD, b"transfer-1") == b"transfer-1"
        with pytest.raises(QuillConnectionError):
            client.call(SERVICE, METHOD, b"transfer-2")
        assert executed == [b"transfer-1", b"transfer-2"]  # executed once, never twice
        assert client.call(SERVICE, METHOD, b"transfer-3") == b"transfer-3"


@pytest.mark.parametrize("how", ["per call", "per method"])
def test_an_idempotent_call_is_resent(how):
    server, executed = read_then_hang_up_on_the_second_call()
    with server:
        if how == "per call":
            client, extra = QuillClient(server.url, retries=3), {"idempotent": True}
        else:
            client, extra = QuillClient(server.url, retries=3, idempotent_methods=[f"{SERVICE}/{METHOD}"]), {}
        assert client.call(SERVICE, METHOD, b"read-1", **extra) == b"read-1"
        assert client.call(SERVICE, METHOD, b"read-2", **extra) == b"read-2"
        assert executed == [b"read-1", b"read-2", b"read-2"]


def two_frames(first: bytes, second: bytes) -> bytes:
    return zstd.compress(first) + zstd.compress(second)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_every_zstd_frame_of_a_body_is_decoded(framing):
    body = two_frames(b"first-frame|", b"second-frame")

    def handler(req, sock):
        if framing == "chunked":
            sock.sendall(chunked_head(headers={"Content-Encoding": "zstd"}) + chunk(body) + LAST_CHUNK)
        else:
            sock.sendall(response(200, body, headers={"Content-Encoding": "zstd"}))

    with ScriptedServer(handler) as server:
        assert QuillClient(server.url).call(SERVICE, METHOD, b"") == b"first-frame|second-frame"


def test_a_truncated_second_zstd_frame_is_an_error():
    body = two_frames(b"first-frame|", b"second-frame" * 100)[:-5]

    def handler(req, sock):
        sock.sendall(response(200, body, headers={"Content-Encoding": "zstd"}))

    with ScriptedServer(handler) as server:
        with pytest.raises((DecodeError, IncompleteStreamError), match="zstd"):
            QuillClient(server.url).call(SERVICE, METHOD, b"")


def test_a_message_stream_in_two_zstd_frames_is_read_whole():
    frames = [encode_stream_frame(b"m%d" % i) for i in range(4)]
    body = two_frames(b"".join(frames[:2]), b"".join(frames[2:]) + encode_end_stream())

    def handler(req, sock):
        sock.sendall(chunked_head(headers={"Content-Encoding": "zstd"}) + chunk(body) + LAST_CHUNK)

    with ScriptedServer(handler) as server:
        assert list(QuillClient(server.url).call_stream(SERVICE, METHOD, b"")) == [b"m0", b"m1", b"m2", b"m3"]


@pytest.mark.parametrize("service,method", [
    (SERVICE, "Transfer\n"), ("bank.v1.Ledger\n", METHOD), ("..", ".."), (".", METHOD), (SERVICE, ".."),
])
def test_names_with_a_trailing_newline_or_dot_segments_are_refused(service, method):
    with ScriptedServer(echo) as server:
        with pytest.raises(ValueError, match="invalid (service|method) name"):
            QuillClient(server.url).call(service, method, b"x")
        assert server.requests == []


@pytest.mark.parametrize("name", ["Transfer-Encoding\n", "X-Trace\n", "X-Trace\r\nX-Evil"])
def test_header_names_with_a_newline_are_refused(name):
    with ScriptedServer(echo) as server:
        client = QuillClient(server.url)
        with pytest.raises(ValueError, match="invalid HTTP header name"):
            client.set_header(name, "chunked")
        with pytest.raises(ValueError, match="invalid HTTP header name"):
            client.call(SERVICE, METHOD, b"x", headers={name: "1"})
        assert server.requests == []


def test_the_current_trace_context_goes_out_with_every_call():
    trace = pytest.importorskip("opentelemetry.trace")
    from opentelemetry import context

    span = trace.NonRecordingSpan(trace.SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=False,
                                                    trace_flags=trace.TraceFlags(1)))
    with ScriptedServer(echo) as server:
        client = QuillClient(server.url)
        client.call(SERVICE, METHOD, b"untraced")
        token = context.attach(trace.set_span_in_context(span))
        try:
            client.call(SERVICE, METHOD, b"traced")
        finally:
            context.detach(token)
        client.call(SERVICE, METHOD, b"untraced again")
    untraced, traced, after = server.requests
    assert "traceparent" not in untraced.headers and "traceparent" not in after.headers
    assert traced.headers["traceparent"] == f"00-{0xABC:032x}-{0xDEF:016x}-01"
