"""The reference server (quill.server) on a real loopback uvicorn, driven by urllib3.

curl drives the same server in test_server_curl.py; QuillClient drives it in the
client-facing tests below (once the client module is importable).
"""

import asyncio
import json
import socket
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
def server():
    app = build_app(max_request_bytes=100_000)
    with serve_in_thread(app) as base_url:
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


def test_auth_hooks():
    app = build_app(auth=[BearerAuth("t0ken"), ApiKeyAuth("k3y")])
    pool = urllib3.PoolManager(retries=False)
    with serve_in_thread(app) as url:
        r = pool.request("POST", f"{url}/{ECHO}", body=b"hi")
        assert r.status == 401 and problem_of(r)["title"] == "Unauthorized"
        assert r.headers["www-authenticate"] == 'Bearer realm="quill"'
        assert pool.request("POST", f"{url}/{ECHO}", body=b"hi", headers={"Authorization": "Bearer wrong"}).status == 401
        assert pool.request("POST", f"{url}/{ECHO}", body=b"hi", headers={"Authorization": "Bearer t0ken"}).data == b"hi"
        assert pool.request("POST", f"{url}/{ECHO}", body=b"hi", headers={"X-API-Key": "k3y"}).data == b"hi"
        # health stays open for load balancers
        assert pool.request("GET", f"{url}/health").status == 200


def test_async_auth_hook_sees_context():
    seen = []

    async def only_ada(context: Context) -> bool:
        seen.append(context.method_path)
        return context.headers.get("x-user") == "ada"

    pool = urllib3.PoolManager(retries=False)
    with serve_in_thread(build_app(auth=only_ada)) as url:
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
    from quill.server import _bind

    listener = _bind("127.0.0.1", 0)
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


def test_retry_after_header_from_rpc_error():
    from quill.errors import ServiceUnavailableError

    app = QuillApp()

    @app.unary("a.v1.S/Busy")
    def busy(request, context):
        raise ServiceUnavailableError(503, ProblemDetails(503, "Service unavailable", detail="warming up"),
                                      retry_after=1.5)

    with serve_in_thread(app) as url:
        r = urllib3.PoolManager(retries=False).request("POST", f"{url}/a.v1.S/Busy", body=b"")
    assert r.status == 503 and r.headers["retry-after"] == "2"
    assert problem_of(r)["detail"] == "warming up"
