"""HTTP/2 twins of the important fault cases of the HTTP/1.1 suites built on ScriptedServer
(test_faults.py, test_client_defects.py, test_transport_reuse.py), on the raw h2 server of
tests/h2_hostile.py: silence, a stall mid-body, a body shorter or longer than its content-length,
garbage frames inside a well-formed body, a reset after the request was read (not resent unless
idempotent) or refused (resent), 429/503 with Retry-After, interim 1xx answers, credentials from
the URL. Each ends as over HTTP/1.1: the same exception class, never a hang."""

from __future__ import annotations

import base64
import os
import sys
import time

import pytest

pytest.importorskip("quill._core.h2engine", reason="quill was built without libnghttp2 (HTTP/2 engine)")

sys.path.insert(0, os.path.dirname(__file__))
from h2_hostile import HostileH2Server, answer  # noqa: E402

from quill.errors import (  # noqa: E402
    DecodeError,
    QuillConnectionError,
    QuillTimeoutError,
    RateLimitedError,
    ServiceUnavailableError,
)

SVC = "echo.v1.EchoService"
TIMEOUT_MS = 1000


@pytest.fixture
def client_kind(request):
    """sync or async (tests/conftest.py generates both)."""
    return request.param


def make(kind, url, **options):
    from client_kinds import CLIENTS

    return CLIENTS[kind](url, http2=True, timeout_ms=options.pop("timeout_ms", TIMEOUT_MS), **options)


def head(conn, stream_id, status=b"200", length=None, extra=()):
    fields = [(b":status", status), (b"content-type", b"application/proto"), *extra]
    conn.send_headers(stream_id, fields + ([(b"content-length", b"%d" % length)] if length is not None else []))


def test_a_server_that_never_answers_times_out(client_kind):
    with HostileH2Server(lambda *args: None) as server, make(client_kind, server.url, retries=0) as client:
        started = time.monotonic()
        with pytest.raises(QuillTimeoutError):
            client.call(SVC, "Echo", b"x")
        assert time.monotonic() - started < 10


def test_a_server_that_stalls_mid_body_times_out(client_kind):
    def stall(conn, sock, stream_id, headers, body):
        head(conn, stream_id, length=1000)
        conn.send_data(stream_id, b"x" * 100)  # and nothing more, the stream left open

    with HostileH2Server(stall) as server, make(client_kind, server.url, retries=0) as client:
        with pytest.raises(QuillTimeoutError) as caught:
            client.call(SVC, "Echo", b"x")
        assert isinstance(caught.value, TimeoutError)


@pytest.mark.parametrize("sent, announced", [(100, 1000), (2000, 1000)], ids=["shorter", "longer"])
def test_a_body_other_than_its_content_length_is_a_connection_error(sent, announced, client_kind):
    """RFC 9113 section 8.1.1: DATA that does not add up to content-length makes the response
    malformed; nghttp2 resets the stream. Never a truncated or overlong answer returned."""
    def lie(conn, sock, stream_id, headers, body):
        if body != b"x":
            return answer(conn, stream_id, body)
        head(conn, stream_id, length=announced)
        conn.send_data(stream_id, b"y" * sent, end_stream=True)

    with HostileH2Server(lie) as server, make(client_kind, server.url, retries=0) as client:
        with pytest.raises(QuillConnectionError, match="malformed HTTP/2 response.*the client reset") as caught:
            client.call(SVC, "Echo", b"x")
        assert isinstance(caught.value, ConnectionError) and f"{SVC}/" in str(caught.value)
        assert client.call(SVC, "Echo", b"next") == b"next"  # a stream error: the connection goes on
    assert server.connections == 1


def test_garbage_frames_in_a_well_formed_body_are_a_decode_error(client_kind):
    def garbage(conn, sock, stream_id, headers, body):
        head(conn, stream_id)
        conn.send_data(stream_id, b"\x42" * 64, end_stream=True)

    with HostileH2Server(garbage) as server, make(client_kind, server.url, retries=0) as client:
        with pytest.raises(DecodeError) as caught:
            list(client.stream_tokens(SVC, "Generate", {"prompt": "x"}))
        assert isinstance(caught.value, ValueError) and caught.value.offset is not None


def reset_after_reading(code):
    executed = []

    def script(conn, sock, stream_id, headers, body):
        executed.append(body)
        if len(executed) == 2:
            conn.reset_stream(stream_id, error_code=code)  # before any answer
        else:
            answer(conn, stream_id, body)

    return script, executed


def test_a_post_the_server_has_read_and_reset_is_not_replayed(client_kind):
    script, executed = reset_after_reading(2)  # INTERNAL_ERROR: it may have been processed
    with HostileH2Server(script) as server, make(client_kind, server.url, retries=3) as client:
        assert client.call(SVC, "Echo", b"transfer-1") == b"transfer-1"
        with pytest.raises(QuillConnectionError, match="RST_STREAM INTERNAL_ERROR"):
            client.call(SVC, "Echo", b"transfer-2")
        assert client.call(SVC, "Echo", b"transfer-3") == b"transfer-3"
    assert executed == [b"transfer-1", b"transfer-2", b"transfer-3"]  # executed once, never twice


def test_an_idempotent_call_reset_after_reading_is_resent(client_kind):
    script, executed = reset_after_reading(2)
    with HostileH2Server(script) as server, make(client_kind, server.url, retries=3) as client:
        assert client.call(SVC, "Echo", b"read-1", idempotent=True) == b"read-1"
        assert client.call(SVC, "Echo", b"read-2", idempotent=True) == b"read-2"
    assert executed == [b"read-1", b"read-2", b"read-2"]


def test_a_refused_stream_is_resent_even_when_not_idempotent(client_kind):
    script, executed = reset_after_reading(7)  # REFUSED_STREAM: RFC 9113 says it was not processed
    with HostileH2Server(script) as server, make(client_kind, server.url, retries=3) as client:
        assert client.call(SVC, "Echo", b"post-1") == b"post-1"
        assert client.call(SVC, "Echo", b"post-2") == b"post-2"
    assert executed == [b"post-1", b"post-2", b"post-2"]


@pytest.mark.parametrize("status, error", [(429, RateLimitedError), (503, ServiceUnavailableError)])
def test_429_and_503_raise_with_retry_after_when_not_retrying(status, error, client_kind):
    def busy(conn, sock, stream_id, headers, body):
        answer(conn, stream_id, b"", status=status, headers=[(b"retry-after", b"7")])

    with HostileH2Server(busy) as server, make(client_kind, server.url) as client:
        with pytest.raises(error) as caught:
            client.call(SVC, "Echo", b"x")
        assert caught.value.retry_after == 7


def test_status_retries_wait_as_retry_after_says_then_succeed(client_kind):
    seen = []

    def busy_once(conn, sock, stream_id, headers, body):
        seen.append(time.monotonic())
        if len(seen) == 1:
            answer(conn, stream_id, b"", status=503, headers=[(b"retry-after", b"1")])
        else:
            answer(conn, stream_id, body)

    with HostileH2Server(busy_once) as server, \
            make(client_kind, server.url, status_retries=1, timeout_ms=5000) as client:
        assert client.call(SVC, "Echo", b"after a wait") == b"after a wait"
    assert len(seen) == 2 and seen[1] - seen[0] >= 0.9


@pytest.mark.parametrize("interim", [b"100", b"103"])
def test_an_interim_answer_is_not_taken_for_the_answer(interim, client_kind):
    def early_hints(conn, sock, stream_id, headers, body):
        conn.send_headers(stream_id, [(b":status", interim), (b"link", b"</style.css>; rel=preload")])
        sock.sendall(conn.data_to_send())
        time.sleep(0.05)
        answer(conn, stream_id, body)

    with HostileH2Server(early_hints) as server, make(client_kind, server.url) as client:
        assert [client.call(SVC, "Echo", b"call-%d" % i) for i in range(3)] == [b"call-0", b"call-1", b"call-2"]
    assert server.connections == 1


def test_credentials_in_the_url_are_sent_as_basic_auth(client_kind):
    seen = []

    def record(conn, sock, stream_id, headers, body):
        seen.append(headers.get(b"authorization"))
        answer(conn, stream_id, body)

    with HostileH2Server(record) as server:
        url = server.url.replace("http://", "http://alice:s%3Acret@")
        with make(client_kind, url) as client:
            assert client.call(SVC, "Echo", b"x") == b"x"
            assert "alice" not in client.base_url and "cret" not in repr(client)
    assert seen == [b"Basic " + base64.b64encode(b"alice:s:cret")]
