"""The reference server (quill.server) on a real loopback uvicorn, driven by urllib3.

curl drives the same server in test_server_curl.py; QuillClient drives it in the
client-facing tests below (once the client module is importable).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading

import pytest
import urllib3

from quill.errors import LimitExceededError, ProblemDetails, RpcError
from quill.server import ApiKeyAuth, BearerAuth, Context, QuillApp, serve_in_thread

try:
    from compression import zstd
except ImportError:
    from backports import zstd

ECHO = "echo.v1.EchoService/Echo"


def build_app(**options) -> QuillApp:
    app = QuillApp(**options)

    @app.unary(ECHO)
    def echo(request, context):
        return request

    @app.unary("echo.v1.EchoService/AsyncEcho")
    async def async_echo(request, context):
        return request

    @app.unary("test.v1.Errors/Boom")
    def boom(request, context):
        raise KeyError("database password is hunter2")

    @app.unary("test.v1.Errors/Problem")
    def problem(request, context):
        return ProblemDetails(409, "Conflict", detail="the model is busy", extensions={"retry_after": 3})

    @app.unary("test.v1.Errors/Raise")
    def raise_rpc(request, context):
        raise RpcError(403, ProblemDetails(403, "Forbidden", detail="no access to model x"))

    @app.unary("test.v1.Errors/Limit")
    def limit(request, context):
        raise LimitExceededError("prompt of 9000 tokens exceeds 4096")

    @app.unary("test.v1.Meta/Headers")
    def headers(request, context):
        return json.dumps({"path": context.method_path, "service": context.service,
                           "method": context.method, "x-user": context.headers.get("x-user")}).encode()

    return app


@pytest.fixture(scope="module")
def server(engine):
    app = build_app(max_request_bytes=100_000)
    with serve_in_thread(app, engine=engine) as base_url:
        yield app, base_url


@pytest.fixture(scope="module")
def http():
    pool = urllib3.PoolManager(retries=False)
    yield pool
    pool.clear()


def problem_of(response) -> dict:
    assert response.headers["content-type"] == "application/problem+json"
    body = json.loads(response.data)
    ProblemDetails.from_dict(body)  # the required members are there and typed right
    assert body["status"] == response.status
    return body


def test_unary_sync_and_async(server, http):
    _, url = server
    for path in (ECHO, "echo.v1.EchoService/AsyncEcho"):
        r = http.request("POST", f"{url}/{path}", body=b"\x00\x01hello\xff",
                         headers={"Content-Type": "application/proto"})
        assert r.status == 200
        assert r.data == b"\x00\x01hello\xff"
        assert r.headers["content-type"] == "application/proto"


def test_empty_body_and_context(server, http):
    _, url = server
    assert http.request("POST", f"{url}/{ECHO}", body=b"").data == b""
    r = http.request("POST", f"{url}/test.v1.Meta/Headers", body=b"", headers={"X-User": "ada"})
    assert json.loads(r.data) == {"path": "test.v1.Meta/Headers", "service": "test.v1.Meta",
                                  "method": "Headers", "x-user": "ada"}


def test_unknown_path_is_404_method_not_found(server, http):
    _, url = server
    r = http.request("POST", f"{url}/nope.v1.Missing/Call", body=b"abc")
    body = problem_of(r)
    assert r.status == 404 and body["title"] == "Method not found"
    assert body["detail"] == "No handler registered for path: /nope.v1.Missing/Call"


@pytest.mark.parametrize("verb", ["GET", "PUT", "DELETE"])
def test_non_post_is_405(server, http, verb):
    _, url = server
    r = http.request(verb, f"{url}/{ECHO}")
    body = problem_of(r)
    assert r.status == 405 and body["title"] == "Method not allowed"
    assert r.headers["allow"] == "POST"
    assert "connection" not in r.headers  # nothing left unread: the connection stays open


def test_unexpected_exception_is_500_without_leak(server, http, caplog):
    _, url = server
    with caplog.at_level("ERROR", logger="quill.server"):
        r = http.request("POST", f"{url}/test.v1.Errors/Boom", body=b"")
    body = problem_of(r)
    assert r.status == 500 and body["title"] == "Internal server error"
    assert "hunter2" not in r.data.decode() and "Traceback" not in r.data.decode()
    assert "KeyError" not in r.data.decode()
    # the server log has the traceback under the trace id the client got
    assert any(body["trace_id"] in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_returned_and_raised_problem_details(server, http):
    _, url = server
    r = http.request("POST", f"{url}/test.v1.Errors/Problem", body=b"")
    body = problem_of(r)
    assert (r.status, body["title"], body["detail"], body["retry_after"]) == (409, "Conflict", "the model is busy", 3)
    r = http.request("POST", f"{url}/test.v1.Errors/Raise", body=b"")
    assert r.status == 403 and problem_of(r)["detail"] == "no access to model x"
    r = http.request("POST", f"{url}/test.v1.Errors/Limit", body=b"")
    assert r.status == 413 and "9000 tokens" in problem_of(r)["detail"]


def test_oversized_body_is_413(server, http):
    _, url = server
    r = http.request("POST", f"{url}/{ECHO}", body=b"x" * 100_001)
    body = problem_of(r)
    assert r.status == 413 and "100000" in body["detail"]
    # exactly at the limit is fine
    assert http.request("POST", f"{url}/{ECHO}", body=b"x" * 100_000).status == 200


def test_oversized_chunked_body_is_413(server, http):
    _, url = server
    chunks = (b"y" * 10_000 for _ in range(20))  # no Content-Length: the server counts as it reads
    r = http.request("POST", f"{url}/{ECHO}", body=chunks, chunked=True)
    assert r.status == 413 and problem_of(r)["title"] == "Payload too large"


def test_zstd_both_ways(server, http):
    _, url = server
    payload = b"quill " * 5000
    r = http.request("POST", f"{url}/{ECHO}", body=zstd.compress(payload),
                     headers={"Content-Encoding": "zstd", "Accept-Encoding": "zstd"}, decode_content=False)
    assert r.status == 200 and r.headers["content-encoding"] == "zstd"
    assert zstd.decompress(r.data) == payload
    # small answers are not compressed, and nothing is compressed unless asked
    r = http.request("POST", f"{url}/{ECHO}", body=b"tiny", headers={"Accept-Encoding": "zstd"})
    assert "content-encoding" not in r.headers and r.data == b"tiny"
    r = http.request("POST", f"{url}/{ECHO}", body=payload)
    assert "content-encoding" not in r.headers and r.data == payload


def test_zstd_bomb_is_413_and_garbage_is_400(server, http):
    _, url = server
    bomb = zstd.compress(bytes(50_000_000))  # tiny on the wire, 50 MB decompressed
    assert len(bomb) < 100_000
    r = http.request("POST", f"{url}/{ECHO}", body=bomb, headers={"Content-Encoding": "zstd"})
    assert r.status == 413 and "decompressed" in problem_of(r)["detail"]
    r = http.request("POST", f"{url}/{ECHO}", body=b"not zstd at all", headers={"Content-Encoding": "zstd"})
    assert r.status == 400 and "zstd" in problem_of(r)["detail"]
    truncated = zstd.compress(b"abc" * 1000)[:-3]
    r = http.request("POST", f"{url}/{ECHO}", body=truncated, headers={"Content-Encoding": "zstd"})
    assert r.status == 400
    r = http.request("POST", f"{url}/{ECHO}", body=b"x", headers={"Content-Encoding": "br"})
    assert r.status == 415


def test_concatenated_zstd_frames(server, http):
    _, url = server
    body = zstd.compress(b"first,") + zstd.compress(b"second")
    r = http.request("POST", f"{url}/{ECHO}", body=body, headers={"Content-Encoding": "zstd"})
    assert r.data == b"first,second"


def test_health_ready(server, http):
    app, url = server
    r = http.request("GET", f"{url}/health")
    assert r.status == 200 and json.loads(r.data)["healthy"] is True
    assert http.request("GET", f"{url}/ready").status == 200
    app.healthy = False
    try:
        r = http.request("GET", f"{url}/health")
        assert r.status == 503 and json.loads(r.data)["healthy"] is False
    finally:
        app.healthy = True
    r = http.request("POST", f"{url}/health", body=b"")
    assert r.status == 405 and r.headers["allow"] == "GET, HEAD"


def test_auth_hooks(engine):
    app = build_app(auth=[BearerAuth("t0ken"), ApiKeyAuth("k3y")])
    pool = urllib3.PoolManager(retries=False)
    with serve_in_thread(app, engine=engine) as url:
        r = pool.request("POST", f"{url}/{ECHO}", body=b"hi")
        assert r.status == 401 and problem_of(r)["title"] == "Unauthorized"
        assert r.headers["www-authenticate"] == 'Bearer realm="quill"'
        assert pool.request("POST", f"{url}/{ECHO}", body=b"hi", headers={"Authorization": "Bearer wrong"}).status == 401
        assert pool.request("POST", f"{url}/{ECHO}", body=b"hi", headers={"Authorization": "Bearer t0ken"}).data == b"hi"
        assert pool.request("POST", f"{url}/{ECHO}", body=b"hi", headers={"X-API-Key": "k3y"}).data == b"hi"
        # health stays open for load balancers
        assert pool.request("GET", f"{url}/health").status == 200


@pytest.mark.parametrize("public_paths, open_paths", [
    (None, {"/health", "/ready"}),  # the default: the probes are open, /metrics is not
    (("/health", "/ready", "/metrics"), {"/health", "/ready", "/metrics"}),
    ((), set()),
    (("/" + ECHO,), {"/" + ECHO}),  # an RPC can be opened too
])
def test_auth_public_paths(engine, public_paths, open_paths):
    options = {} if public_paths is None else {"public_paths": public_paths}
    app = build_app(auth=BearerAuth("t0ken"), **options)
    pool = urllib3.PoolManager(retries=False)
    token = {"Authorization": "Bearer t0ken"}
    with serve_in_thread(app, engine=engine) as url:
        for path in ("/health", "/ready", "/metrics", "/" + ECHO):
            verb = "POST" if path == "/" + ECHO else "GET"
            anonymous = pool.request(verb, url + path, body=b"")
            assert anonymous.status == (200 if path in open_paths else 401), path
            if anonymous.status == 401:
                assert anonymous.headers["www-authenticate"] == 'Bearer realm="quill"'
            assert pool.request(verb, url + path, body=b"", headers=token).status == 200, path
        # without auth configured every path is open, whatever public_paths says
    with serve_in_thread(build_app(public_paths=()), engine=engine) as url:
        assert pool.request("GET", url + "/metrics").status == 200
    with pytest.raises(ValueError, match="starting with '/'"):
        QuillApp(public_paths=("metrics",))


def test_async_auth_hook_sees_context(engine):
    seen = []

    async def only_ada(context: Context) -> bool:
        seen.append(context.method_path)
        return context.headers.get("x-user") == "ada"

    pool = urllib3.PoolManager(retries=False)
    with serve_in_thread(build_app(auth=only_ada), engine=engine) as url:
        assert pool.request("POST", f"{url}/{ECHO}", body=b"", headers={"X-User": "bob"}).status == 401
        assert pool.request("POST", f"{url}/{ECHO}", body=b"ok", headers={"X-User": "ada"}).data == b"ok"
    assert seen == [ECHO, ECHO]


def test_registration_errors():
    app = QuillApp()
    app.add_method("a.v1.S/M", lambda request, context: request)
    with pytest.raises(ValueError, match="already registered"):
        app.add_method("a.v1.S/M", lambda request, context: request)
    for bad in ("noslash", "a.v1.S/", "/M", "a/b/c"):
        with pytest.raises(ValueError, match="package.Service/Method"):
            app.add_method(bad, lambda request, context: request)
    with pytest.raises(ValueError, match="unknown handler kind"):
        app.add_method("a.v1.S/N", lambda request, context: request, kind="bidi")
    with pytest.raises(TypeError, match="async def"):
        app.add_method("a.v1.S/C", lambda messages, context: b"", kind="client_stream")
    with pytest.raises(ValueError):
        BearerAuth()


def test_listening_socket_gets_tcp_nodelay():
    """Small responses must not wait for the peer's delayed ACK (Nagle): the sockets
    the server accepts on its listening socket carry TCP_NODELAY."""
    from quill.server.sockets import bind_tcp

    listener = bind_tcp("127.0.0.1", 0)
    seen = []

    async def main():
        accepted = asyncio.Event()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                accepted.set()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        client = socket.create_connection(listener.getsockname())
        await asyncio.wait_for(accepted.wait(), 5)
        client.close()
        server.close()

    asyncio.run(main())
    assert seen and seen[0] != 0


def accepted_socket_of(client: socket.socket) -> socket.socket:
    """The server side of ``client``'s connection (the server runs in this process)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from proc_sockets import socket_connected_to

    accepted = socket_connected_to(client.getsockname())
    assert accepted is not None, f"no server socket connected to {client.getsockname()}"
    return accepted


def test_every_engine_sets_tcp_nodelay_on_accepted_connections(server, engine):
    _, url = server
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200")  # accepted and answered
        with accepted_socket_of(client) as accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, engine


def test_retry_after_header_from_rpc_error(engine):
    from quill.errors import ServiceUnavailableError

    app = QuillApp()

    @app.unary("a.v1.S/Busy")
    def busy(request, context):
        raise ServiceUnavailableError(503, ProblemDetails(503, "Service unavailable", detail="warming up"),
                                      retry_after=1.5)

    with serve_in_thread(app, engine=engine) as url:
        r = urllib3.PoolManager(retries=False).request("POST", f"{url}/a.v1.S/Busy", body=b"")
    assert r.status == 503 and r.headers["retry-after"] == "2"
    assert problem_of(r)["detail"] == "warming up"


# ----------------------------------------------------------------------------------------
# Streaming kinds: frames checked with the frame codecs of quill.frames
# ----------------------------------------------------------------------------------------
from quill._core.tokens import Token, TokenBatch  # noqa: E402
from quill.errors import BadRequestError, StreamCancelledError  # noqa: E402
from quill.frames import (  # noqa: E402
    MessageStreamDecoder,
    TokenStreamDecoder,
    encode_end_stream,
    encode_stream_frame,
)

finished = {}  # stream name -> threading.Event set by the handler's finally block


def finally_event(name: str) -> threading.Event:
    return finished.setdefault(name, threading.Event())


def build_stream_app(**options) -> QuillApp:
    app = QuillApp(**options)

    @app.server_stream("s.v1.Stream/Count")
    def count(request, context):
        try:
            for i in range(int(request)):
                yield b"%d" % i
        finally:
            finally_event("sync").set()

    @app.server_stream("s.v1.Stream/AsyncCount")
    async def async_count(request, context):
        try:
            for i in range(int(request)):
                await asyncio.sleep(0.001)
                yield b"%d" % i
        finally:
            finally_event("async").set()

    @app.server_stream("s.v1.Stream/List")
    def as_list(request, context):
        return [b"a", b"", b"c"]

    @app.server_stream("s.v1.Stream/FailLater")
    def fail_later(request, context):
        yield b"first"
        raise RuntimeError("secret detail that must not leak")

    @app.server_stream("s.v1.Stream/FailFirst")
    async def fail_first(request, context):
        raise BadRequestError(400, ProblemDetails(400, "Invalid request", detail="n must be positive"))
        yield b"never"

    @app.server_stream("s.v1.Stream/BadItem")
    def bad_item(request, context):
        yield b"ok"
        yield "a str is not bytes"

    @app.client_stream("s.v1.Stream/Sum")
    async def total(messages, context):
        n = 0
        async for message in messages:
            n += int(message)
        return b"%d" % n

    @app.token_stream("s.v1.Stream/Tokens")
    async def tokens(request, context):
        for b in range(3):
            batch = TokenBatch(sequence_id=9)
            for i in range(b * 4, b * 4 + 4):
                batch.add(Token(i, i, text=f"w{i}", logprob=-0.25 * i))
            batch.is_final = b == 2
            yield batch

    @app.token_stream("s.v1.Stream/SyncTokens")
    def sync_tokens(request, context):
        yield TokenBatch.from_tokens([Token(7, 0, text="x")])

    return app


@pytest.fixture(scope="module")
def stream_server(engine):
    app = build_stream_app(max_request_bytes=50_000)
    with serve_in_thread(app, engine=engine) as base_url:
        yield app, base_url


def messages_of(data: bytes) -> list[bytes]:
    decoder = MessageStreamDecoder()
    out = decoder.feed(data)
    decoder.finish()  # raises unless END_STREAM arrived
    return out


@pytest.mark.parametrize("method", ["Count", "AsyncCount"])
def test_server_stream(stream_server, http, method):
    _, url = stream_server
    r = http.request("POST", f"{url}/s.v1.Stream/{method}", body=b"25")
    assert r.status == 200 and r.headers["content-type"] == "application/proto"
    assert r.headers["transfer-encoding"] == "chunked"
    assert messages_of(r.data) == [b"%d" % i for i in range(25)]
    assert messages_of(http.request("POST", f"{url}/s.v1.Stream/{method}", body=b"0").data) == []


def test_server_stream_from_list(stream_server, http):
    _, url = stream_server
    assert messages_of(http.request("POST", f"{url}/s.v1.Stream/List", body=b"").data) == [b"a", b"", b"c"]


def test_server_stream_failure_mid_stream_is_cancel(stream_server, http):
    _, url = stream_server
    r = http.request("POST", f"{url}/s.v1.Stream/FailLater", body=b"")
    assert r.status == 200  # the status went out with the first message
    assert b"secret detail" not in r.data and b"Traceback" not in r.data
    decoder = MessageStreamDecoder()
    with pytest.raises(StreamCancelledError) as info:
        assert decoder.feed(r.data) == [b"first"]
        decoder.feed(b"")
    assert info.value.reason.startswith("500 Internal server error") and "trace_id" in info.value.reason
    r = http.request("POST", f"{url}/s.v1.Stream/BadItem", body=b"")
    decoder = MessageStreamDecoder()
    with pytest.raises(StreamCancelledError, match="500"):
        decoder.feed(r.data)
        decoder.finish()


def test_server_stream_failure_before_first_message_is_problem(stream_server, http):
    _, url = stream_server
    r = http.request("POST", f"{url}/s.v1.Stream/FailFirst", body=b"")
    assert r.status == 400 and problem_of(r)["detail"] == "n must be positive"


def test_client_stream(stream_server, http):
    _, url = stream_server
    frames = [encode_stream_frame(b"%d" % i) for i in range(100)] + [encode_end_stream()]
    r = http.request("POST", f"{url}/s.v1.Stream/Sum", body=iter(frames), chunked=True)
    assert (r.status, r.data) == (200, b"4950")
    # the same stream, zstd-compressed
    r = http.request("POST", f"{url}/s.v1.Stream/Sum", body=zstd.compress(b"".join(frames)),
                     headers={"Content-Encoding": "zstd"})
    assert (r.status, r.data) == (200, b"4950")


def test_client_stream_errors(stream_server, http):
    _, url = stream_server
    truncated = encode_stream_frame(b"1") + encode_stream_frame(b"2")  # no END_STREAM
    r = http.request("POST", f"{url}/s.v1.Stream/Sum", body=truncated)
    assert r.status == 400 and "END_STREAM" in problem_of(r)["detail"]
    r = http.request("POST", f"{url}/s.v1.Stream/Sum", body=b"\xff" * 11)  # an 11-byte varint
    assert r.status == 400
    big = [encode_stream_frame(b"1" * 1000) for _ in range(60)] + [encode_end_stream()]  # 60 kB > 50 kB
    r = http.request("POST", f"{url}/s.v1.Stream/Sum", body=iter(big), chunked=True)
    assert r.status == 413


def test_token_stream_frames(stream_server, http):
    _, url = stream_server
    r = http.request("POST", f"{url}/s.v1.Stream/Tokens", body=b"")
    decoder = TokenStreamDecoder()
    batches = decoder.feed(r.data)
    decoder.finish()
    assert [b.token_ids() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert [b.is_final for b in batches] == [False, False, True]
    assert all(b.sequence_id == 9 for b in batches)
    assert [t.logprob for t in batches[2]] == [-2.0, -2.25, -2.5, -2.75]
    assert "".join(b.text() for b in batches) == "".join(f"w{i}" for i in range(12))
    r = http.request("POST", f"{url}/s.v1.Stream/SyncTokens", body=b"")
    assert [b.token_ids() for b in TokenStreamDecoder().feed(r.data)] == [[7]]


def test_token_stream_as_json_when_asked(stream_server, http):
    _, url = stream_server
    r = http.request("POST", f"{url}/s.v1.Stream/Tokens", body=b"", headers={"Accept": "application/json"})
    assert r.headers["content-type"] == "application/json"
    answer = json.loads(r.data)
    assert answer["text"] == "".join(f"w{i}" for i in range(12))
    assert [t["id"] for t in answer["tokens"]] == list(range(12))
    assert answer["tokens"][4] == {"id": 4, "text": "w4", "logprob": -1.0, "position": 4, "is_special": False}


@pytest.mark.parametrize("method, name", [("Count", "sync"), ("AsyncCount", "async")])
def test_client_disconnect_stops_the_generator(stream_server, method, name):
    """A client that leaves mid-stream makes the server close the handler's generator."""
    _, url = stream_server
    event = finally_event(name)
    event.clear()
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /s.v1.Stream/{method} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n1000000000".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # the stream is flowing
    assert event.wait(10), "the generator was not closed after the client left"


def test_metrics_after_known_traffic(engine):
    app = build_stream_app()
    pool = urllib3.PoolManager(retries=False)
    with serve_in_thread(app, engine=engine) as url:
        for _ in range(3):
            pool.request("POST", f"{url}/s.v1.Stream/Count", body=b"4")
        pool.request("POST", f"{url}/s.v1.Stream/FailLater", body=b"")
        pool.request("POST", f"{url}/s.v1.Stream/FailFirst", body=b"")
        pool.request("POST", f"{url}/no.v1.Such/Thing", body=b"")
        r = pool.request("GET", f"{url}/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in r.data.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    count = 's.v1.Stream/Count'
    assert samples[f'quill_requests_total{{method="{count}",code="200"}}'] == 3
    assert samples[f'quill_request_errors_total{{method="{count}"}}'] == 0
    assert samples[f'quill_request_duration_seconds_count{{method="{count}"}}'] == 3
    assert samples[f'quill_request_duration_seconds_bucket{{method="{count}",le="+Inf"}}'] == 3
    assert 0 < samples[f'quill_request_duration_seconds_sum{{method="{count}"}}'] < 30
    assert samples[f'quill_request_bytes_total{{method="{count}"}}'] == 3
    # four messages of one byte plus END_STREAM, each frame with a 2-byte header: 3 x 14 bytes
    assert samples[f'quill_response_bytes_total{{method="{count}"}}'] == 3 * (4 * 3 + 2)
    # a stream cut by a CANCEL frame is an error even though its status was 200
    assert samples['quill_requests_total{method="s.v1.Stream/FailLater",code="200"}'] == 1
    assert samples['quill_request_errors_total{method="s.v1.Stream/FailLater"}'] == 1
    assert samples['quill_requests_total{method="s.v1.Stream/FailFirst",code="400"}'] == 1
    assert samples['quill_requests_total{method="<unmatched>",code="404"}'] == 1
    assert samples["quill_requests_in_flight"] == 0
    buckets = [v for k, v in samples.items() if k.startswith(f'quill_request_duration_seconds_bucket{{method="{count}"')]
    assert buckets == sorted(buckets)  # cumulative


# ----------------------------------------------------------------------------------------
# The same server driven by QuillClient (and the demo service)
# ----------------------------------------------------------------------------------------
import numpy as np  # noqa: E402

from quill.client import QuillClient  # noqa: E402
from quill.demo import SERVICE, create_demo_app, embed_texts  # noqa: E402
from quill.errors import NotFoundError  # noqa: E402
from quill.tensor import Tensor  # noqa: E402


@pytest.fixture(scope="module")
def combined_server(engine):
    """The stream test methods and the demo service on one app."""
    app = build_stream_app()
    demo = create_demo_app()
    for path, kind in demo.methods().items():
        app.add_method(path, demo._routes[path].function, kind)

    @app.tensor("t.v1.Tensors/Double")
    def double(request, context):
        return Tensor.from_numpy(request.to_numpy() * 2, name=request.name)

    with serve_in_thread(app, engine=engine) as base_url:
        yield app, base_url


@pytest.fixture
def client(combined_server):
    with QuillClient(combined_server[1]) as c:
        yield c


def test_client_unary_and_json(client):
    assert client.call(SERVICE, "Echo", b"\x00bytes\xff") == b"\x00bytes\xff"
    answer = client.call_json(SERVICE, "Generate", {"prompt": "Hello", "max_tokens": 100})
    assert len(answer["tokens"]) == 100 and answer["text"] == "".join(t["text"] for t in answer["tokens"])
    assert client.health_check()


def test_client_sees_404_as_not_found(client):
    with pytest.raises(NotFoundError) as info:
        client.call("nope.v1.Missing", "Call", b"")
    assert info.value.problem.title == "Method not found"


def test_client_token_stream_matches_json_answer(client):
    request = b'{"prompt": "Hello", "max_tokens": 37, "batch_size": 5, "sequence_id": 3}'
    batches = list(client.stream_tokens(SERVICE, "Generate", request))
    assert [len(b) for b in batches] == [5] * 7 + [2]
    assert [b.is_final for b in batches] == [False] * 7 + [True]
    assert all(b.sequence_id == 3 for b in batches)
    as_json = client.call_json(SERVICE, "Generate", {"prompt": "Hello", "max_tokens": 37})
    tokens = [t for b in batches for t in b]
    assert [t.id for t in tokens] == [t["id"] for t in as_json["tokens"]]
    assert [t.position for t in tokens] == list(range(37))
    assert np.allclose([t.logprob for t in tokens], [t["logprob"] for t in as_json["tokens"]])
    assert all(t.logprob < 0 for t in tokens)


def test_client_tensor_calls(client):
    embedding = client.call_tensor(SERVICE, "Embed", b'{"input": ["a", "bc"], "dim": 96}')
    assert embedding.shape == (2, 96) and embedding.name == "embedding"
    assert np.array_equal(embedding.to_numpy(), embed_texts([b"a", b"bc"], 96))
    half = client.call_tensor(SERVICE, "Embed", b'{"input": ["a", "bc"], "dim": 96, "dtype": "bfloat16"}')
    assert half.dtype.name == "bfloat16"
    assert np.abs(half.to_numpy(dtype="float32") - embedding.to_numpy()).max() < 1e-2
    big = Tensor.from_numpy(np.arange(300_000, dtype=np.float32).reshape(600, 500), name="x")
    assert client.call_tensor(SERVICE, "Echo", big) == big  # several 64 KiB payload frames each way
    doubled = client.call_tensor("t.v1.Tensors", "Double", big)
    assert np.array_equal(doubled.to_numpy(), big.to_numpy() * 2) and doubled.name == "x"
    empty = Tensor.from_numpy(np.zeros((0, 3), dtype=np.int64))
    assert client.call_tensor(SERVICE, "Echo", empty) == empty


def test_client_streams(client):
    assert list(client.call_stream("s.v1.Stream", "Count", b"7")) == [b"%d" % i for i in range(7)]
    assert client.call_client_stream("s.v1.Stream", "Sum", (b"%d" % i for i in range(1000))) == b"499500"
    with pytest.raises(StreamCancelledError, match="500 Internal server error"):
        list(client.call_stream("s.v1.Stream", "FailLater", b""))


def test_client_with_compression(combined_server):
    with QuillClient(combined_server[1], enable_compression=True) as c:
        payload = b"compressible " * 10_000
        assert c.call(SERVICE, "Echo", payload) == payload
        answer = c.call_json(SERVICE, "Generate", {"prompt": "Hello", "max_tokens": 500})
        assert len(answer["tokens"]) == 500
        assert c.call_client_stream("s.v1.Stream", "Sum", (b"1" for _ in range(5000))) == b"5000"


def test_client_cancelling_a_stream_stops_the_generator(combined_server):
    app, url = combined_server
    event = finally_event("async")
    event.clear()
    with QuillClient(url) as c:
        stream = c.call_stream("s.v1.Stream", "AsyncCount", b"100000000")
        assert next(iter(stream)) == b"0"
        stream.cancel()
    assert event.wait(10), "the generator was not closed after the client cancelled"


def test_lifespan_hooks_and_readiness(engine):
    app = build_app()
    events = []

    @app.on_startup
    async def load_model():
        events.append("startup")

    @app.on_shutdown
    def release_model():
        events.append("shutdown")

    pool = urllib3.PoolManager(retries=False)
    with serve_in_thread(app, engine=engine) as url:
        assert events == ["startup"]
        assert pool.request("GET", f"{url}/ready").status == 200
        app.ready = False  # e.g. while a model reloads
        r = pool.request("GET", f"{url}/ready")
        assert r.status == 503 and json.loads(r.data) == {"ready": False}
        app.ready = True
    assert events == ["startup", "shutdown"] and app.ready is False


# ----------------------------------------------------------------------------------------
# zstd request decoding as the server does it (quill.protocol's ContentDecoder, in bounded
# pieces) on random splits and random garbage
# ----------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from quill.errors import DecodeError  # noqa: E402
from quill.protocol.responses import ContentDecoder  # noqa: E402


def decode_body(pieces: list[bytes], limit: int | None) -> bytes:
    decoder = ContentDecoder({"content-encoding": "zstd"}, limit, "request body")
    out = []
    for piece in pieces:
        for decoded in decoder.decode(piece):
            assert 0 < len(decoded) <= 1 << 20
            out.append(decoded)
    decoder.finish()
    return b"".join(out)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=4), st.data())
def test_zstd_request_decoding_any_split(frames, data):
    wire = b"".join(zstd.compress(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    assert decode_body(pieces, limit=None) == b"".join(frames)


def test_zstd_request_decoding_hands_out_a_bomb_piece_by_piece():
    wire = zstd.compress(bytes(5 << 20))
    assert decode_body([wire], limit=None) == bytes(5 << 20)
    with pytest.raises(LimitExceededError):
        decode_body([wire], limit=3 << 20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 5000))
def test_zstd_request_decoding_garbage_and_limits(garbage, limit):
    try:
        out = decode_body([garbage], limit=limit)
    except DecodeError:  # includes LimitExceededError and IncompleteStreamError
        return
    assert len(out) <= limit


def test_client_leaving_before_the_first_message_stops_the_generator(engine):
    app = QuillApp()
    started, closed = threading.Event(), threading.Event()

    @app.server_stream("s.v1.Slow/Start")
    async def slow_start(request, context):
        try:
            started.set()
            await asyncio.sleep(60)  # a long warm-up before the first message
            yield b"late"
        finally:
            closed.set()

    with serve_in_thread(app, engine=engine) as url:
        host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /s.v1.Slow/Start HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert started.wait(10)
        assert closed.wait(10), "the generator was not closed after the client left"


def test_shared_problem_details_is_not_modified_and_bad_status_is_500(engine):
    app = QuillApp()
    busy = ProblemDetails(409, "Conflict", detail="busy")

    @app.unary("a.v1.S/One")
    def one(request, context):
        return busy

    @app.unary("a.v1.S/Two")
    def two(request, context):
        return busy

    @app.unary("a.v1.S/NotAnError")
    def not_an_error(request, context):
        return ProblemDetails(200, "OK")

    pool = urllib3.PoolManager(retries=False)
    with serve_in_thread(app, engine=engine) as url:
        assert problem_of(pool.request("POST", f"{url}/a.v1.S/One", body=b""))["instance"] == "/a.v1.S/One"
        assert problem_of(pool.request("POST", f"{url}/a.v1.S/Two", body=b""))["instance"] == "/a.v1.S/Two"
        r = pool.request("POST", f"{url}/a.v1.S/NotAnError", body=b"")
        assert r.status == 500 and problem_of(r)["status"] == 500
    assert busy.instance is None
