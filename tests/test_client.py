"""QuillClient transport against real servers on loopback: headers, unary and JSON calls,
compression, errors, retries, timeouts, TLS, threads, pickling, fork and health checks."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_servers import (  # noqa: E402
    call_from_child,
    ScriptedServer,
    echo,
    free_port,
    response,
    zstd,
)
from waiting import wait_until  # noqa: E402

from quill.client import QuillClient  # noqa: E402


@pytest.fixture(autouse=True)
def client_kind(request, monkeypatch):
    """Every test here runs over both clients: ``QuillClient`` in this module is the sync client or
    the async one behind a blocking facade (tests/client_kinds.py)."""
    from client_kinds import CLIENTS

    monkeypatch.setattr(request.module, "QuillClient", CLIENTS[request.param])
    return request.param
from quill.errors import (  # noqa: E402
    BadRequestError,
    ConflictError,
    DecodeError,
    EncodeError,
    NotFoundError,
    PermissionDeniedError,
    ProblemDetails,
    QuillConnectionError,
    QuillError,
    QuillTimeoutError,
    RateLimitedError,
    RpcError,
    ServerError,
    ServiceUnavailableError,
    UnauthorizedError,
)

SERVICE, METHOD = "echo.v1.EchoService", "Echo"


@pytest.fixture
def echo_server():
    with ScriptedServer(echo) as server:
        yield server


# ---------------------------------------------------------------- the request on the wire

def test_unary_request_follows_protocol_section_6(echo_server):
    client = QuillClient(echo_server.url + "/", timeout_ms=5000)
    assert client.call(SERVICE, METHOD, b"\x00\x01payload") == b"\x00\x01payload"
    req = echo_server.requests[-1]
    assert (req.method, req.path) == ("POST", "/echo.v1.EchoService/Echo")
    assert req.headers["content-type"] == "application/proto"
    assert req.headers["accept"] == "application/proto; frames=none"  # one message (protocol.md, "Call kinds")
    assert req.headers["prefer"] == "prism=classic"
    assert req.headers["content-length"] == str(len(b"\x00\x01payload"))
    assert req.headers["host"] == f"127.0.0.1:{echo_server.port}"
    assert "content-encoding" not in req.headers and "accept-encoding" not in req.headers


def test_headers_are_sent_and_can_be_changed(echo_server):
    client = QuillClient(echo_server.url)
    client.set_bearer_token("tok-1")
    client.set_api_key("key-1")
    client.set_api_key("key-2", header_name="X-Other-Key")
    client.set_header("X-Trace", "abc")
    assert client.get_headers() == {
        "Authorization": "Bearer tok-1", "X-API-Key": "key-1", "X-Other-Key": "key-2", "X-Trace": "abc",
    }
    client.call(SERVICE, METHOD, b"1")
    sent = echo_server.requests[-1].headers
    assert sent["authorization"] == "Bearer tok-1"
    assert sent["x-api-key"] == "key-1" and sent["x-other-key"] == "key-2" and sent["x-trace"] == "abc"

    client.remove_header("x-trace")
    client.call(SERVICE, METHOD, b"2", headers={"X-Per-Call": "yes", "Authorization": "Bearer other"})
    sent = echo_server.requests[-1].headers
    assert "x-trace" not in sent
    assert sent["x-per-call"] == "yes" and sent["authorization"] == "Bearer other"
    client.call(SERVICE, METHOD, b"3")
    assert "x-per-call" not in echo_server.requests[-1].headers
    assert echo_server.requests[-1].headers["authorization"] == "Bearer tok-1"


@pytest.mark.parametrize("name,value", [("Bad Name", "v"), ("X-A", "line\r\nInjected: 1"), ("Content-Length", "1")])
def test_invalid_headers_are_refused(name, value):
    client = QuillClient("http://127.0.0.1:9")
    with pytest.raises(ValueError):
        client.set_header(name, value)


def test_seed_properties_and_base_url_prefix(echo_server):
    client = QuillClient(echo_server.url + "/api/", timeout_ms=1234, enable_compression=True)
    assert (client.base_url, client.timeout_ms, client.compression_enabled) == (echo_server.url + "/api", 1234, True)
    client.call(SERVICE, METHOD, b"x")
    assert echo_server.requests[-1].path == "/api/echo.v1.EchoService/Echo"
    with pytest.raises(ValueError):
        client.call("bad/service", METHOD, b"")
    with pytest.raises(ValueError):
        QuillClient("ftp://example")


def test_call_json_sends_and_parses_json(echo_server):
    client = QuillClient(echo_server.url)
    obj = {"prompt": "Hello ✓", "max_tokens": 100, "stop": ["\n"]}
    assert client.call_json("inference.v1.LLMService", "Generate", obj) == obj
    req = echo_server.requests[-1]
    assert req.headers["content-type"] == "application/json" and req.headers["accept"] == "application/json"
    assert json.loads(req.body) == obj
    with pytest.raises(ValueError):
        client.call_json("inference.v1.LLMService", "Generate", {"x": object()})


def test_call_json_refuses_json_text_and_bytes_and_sends_other_strs_as_json_strings(echo_server):
    """JSON text in a str (or bytes) is JSON encoded already: refused before anything is sent, with
    the way out in the message. Any other str is a JSON string, sent as one."""
    client = QuillClient(echo_server.url)
    nested = []
    for _ in range(100_000):
        nested = [nested]
    for request, message in [('{"prompt": "Hi", "max_tokens": 4}', "not a str of JSON text: pass json.loads"),
                             (' \n[1, 2]', "not a str of JSON text"), (b'{"prompt": "Hi"}', "not bytes"),
                             (bytearray(b"[]"), "not bytearray"), (nested, "not JSON serializable")]:
        with pytest.raises(EncodeError, match=message):
            client.call_json("inference.v1.LLMService", "Generate", request)
    for text in ("Hi", "[citation needed]", "{not json", "42", ""):  # no JSON object or array: a JSON string
        assert client.call_json("inference.v1.LLMService", "Generate", text) == text
        assert echo_server.requests[-1].body == json.dumps(text).encode()
    assert len(echo_server.requests) == 5  # no refused request reached the server
    for streaming in (client.stream_tokens, client.call_stream, client.call_tensor):  # only bytes, dicts, lists
        with pytest.raises(TypeError, match="not a str: pass json.loads"):
            streaming("inference.v1.LLMService", "Generate", '{"prompt": "Hi"}')
    assert len(echo_server.requests) == 5


def test_call_json_rejects_a_non_json_answer():
    with ScriptedServer(lambda req, sock: sock.sendall(response(200, b"<html>", "text/html"))) as server:
        with pytest.raises(DecodeError, match="not valid JSON"):
            QuillClient(server.url).call_json(SERVICE, METHOD, {})


def test_bytes_like_requests_are_accepted_without_conversion(echo_server):
    import numpy as np

    client = QuillClient(echo_server.url)
    array = np.arange(10, dtype=np.int32)
    assert client.call(SERVICE, METHOD, array) == array.tobytes()
    assert client.call(SERVICE, METHOD, bytearray(b"ba")) == b"ba"
    assert client.call(SERVICE, METHOD, memoryview(b"mv")) == b"mv"
    with pytest.raises(TypeError):
        client.call(SERVICE, METHOD, "a str is not bytes")


# ---------------------------------------------------------------- compression

def test_compression_respects_the_threshold_both_ways():
    def handler(req, sock):
        if req.path.endswith("/Compressed"):
            payload = req.content[::-1]
            sock.sendall(response(200, zstd.compress(payload), headers={"Content-Encoding": "zstd"}))
        else:
            echo(req, sock)

    with ScriptedServer(handler) as server:
        client = QuillClient(server.url, enable_compression=True)
        small = b"s" * 1023
        assert client.call(SERVICE, METHOD, small) == small
        req = server.requests[-1]
        assert "content-encoding" not in req.headers and req.body == small
        assert req.headers["accept-encoding"] == "zstd"

        big = bytes(range(256)) * 4  # exactly 1,024 bytes
        assert client.call(SERVICE, METHOD, big) == big
        req = server.requests[-1]
        assert req.headers["content-encoding"] == "zstd"
        assert zstd.decompress(req.body) == big and req.body != big

        assert client.call(SERVICE, "Compressed", big) == big[::-1]

        plain = QuillClient(server.url)
        plain.call(SERVICE, METHOD, big)
        assert "content-encoding" not in server.requests[-1].headers


def test_a_corrupt_compressed_answer_is_a_decode_error():
    def handler(req, sock):
        sock.sendall(response(200, b"\x28\xb5\x2f\xfd garbage", headers={"Content-Encoding": "zstd"}))

    with ScriptedServer(handler) as server:
        with pytest.raises(DecodeError):
            QuillClient(server.url, enable_compression=True).call(SERVICE, METHOD, b"x")


# ---------------------------------------------------------------- errors

PROBLEM_CASES = [
    (400, BadRequestError), (401, UnauthorizedError), (403, PermissionDeniedError), (404, NotFoundError),
    (409, ConflictError), (429, RateLimitedError), (500, ServerError), (502, ServerError),
    (503, ServiceUnavailableError), (418, RpcError),
]


@pytest.mark.parametrize("status,cls", PROBLEM_CASES)
def test_problem_details_become_typed_errors(status, cls):
    problem = {
        "type": "https://quill.dev/errors/x", "title": "Something", "status": status, "detail": "it broke",
        "instance": "/req/1", "trace_id": "t-42", "quill_proto_type": "google.rpc.BadRequest",
        "quill_proto_detail_base64": "CgVmaWVsZA==", "extra_member": [1, 2],
    }

    def handler(req, sock):
        sock.sendall(response(status, json.dumps(problem).encode(), "application/problem+json",
                              {"Retry-After": "7"}))

    with ScriptedServer(handler) as server:
        client = QuillClient(server.url)
        with pytest.raises(cls) as info:
            client.call(SERVICE, METHOD, b"x")
        err = info.value
        assert isinstance(err, RuntimeError) and isinstance(err, QuillError) and err.status == status
        assert err.problem == ProblemDetails.from_dict(problem)
        assert err.problem.trace_id == "t-42" and err.problem.instance == "/req/1"
        assert err.problem.extensions == {"extra_member": [1, 2]}
        assert err.problem.proto_detail == b"\n\x05field"
        assert err.retry_after == 7.0
        text = str(err)
        assert "echo.v1.EchoService/Echo" in text and server.url in text and "it broke" in text
        # The connection stays usable after an error answer.
        server.handler = echo
        assert client.call(SERVICE, METHOD, b"after") == b"after"


@pytest.mark.parametrize("status,cls", [(404, NotFoundError), (502, ServerError), (503, ServiceUnavailableError)])
def test_plain_text_error_bodies_keep_status_and_body_start(status, cls):
    body = b"<html><body>Bad gateway from the proxy</body></html>" + b" " * 5000

    def handler(req, sock):
        sock.sendall(response(status, body, "text/html"))

    with ScriptedServer(handler) as server:
        with pytest.raises(cls) as info:
            QuillClient(server.url).call(SERVICE, METHOD, b"x")
        assert info.value.problem is None and info.value.status == status
        assert "Bad gateway from the proxy" in str(info.value) and f"HTTP {status}" in str(info.value)
        assert info.value.body.startswith("<html>")


def test_connection_refused_is_a_connection_error():
    client = QuillClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff_ms=1)
    with pytest.raises(QuillConnectionError) as info:
        client.call(SERVICE, METHOD, b"x")
    assert isinstance(info.value, ConnectionError) and "echo.v1.EchoService/Echo" in str(info.value)


def test_accept_and_never_answer_times_out():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        client = QuillClient(f"http://127.0.0.1:{port}", timeout_ms=300)
        started = time.monotonic()
        with pytest.raises(QuillTimeoutError) as info:
            client.call(SERVICE, METHOD, b"x")
        assert isinstance(info.value, TimeoutError) and time.monotonic() - started < 5
        with pytest.raises(QuillTimeoutError):
            client.call(SERVICE, METHOD, b"x", timeout_ms=100)


def test_lying_content_length_and_reset_are_connection_errors():
    def lying(req, sock):
        sock.sendall(response(200, b"short")[:-5].replace(b"Content-Length: 5", b"Content-Length: 500") + b"short")
        return False

    def reset(req, sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        return False

    def garbage(req, sock):
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        return False

    for handler in (lying, reset, garbage):
        with ScriptedServer(handler) as server:
            with pytest.raises(QuillConnectionError):
                QuillClient(server.url, retries=0).call(SERVICE, METHOD, b"x")


def test_response_size_limit():
    with ScriptedServer(lambda req, sock: sock.sendall(response(200, b"x" * 5000))) as server:
        with pytest.raises(ValueError, match="max_response_bytes"):
            QuillClient(server.url, max_response_bytes=4096).call(SERVICE, METHOD, b"")


# ---------------------------------------------------------------- retries

def test_connection_failures_are_retried_with_backoff():
    port = free_port()
    client = QuillClient(f"http://127.0.0.1:{port}", retries=8, backoff_ms=20)
    servers = []
    thread = threading.Timer(0.15, lambda: servers.append(ScriptedServer(echo, port=port)))
    thread.start()
    try:
        assert client.call(SERVICE, METHOD, b"eventually") == b"eventually"
    finally:
        thread.join()
        servers[0].close()


def test_a_stale_keep_alive_connection_is_replaced_transparently():
    def answer_then_close(req, sock):
        echo(req, sock)
        return False  # server closes after every answer without saying so

    with ScriptedServer(answer_then_close) as server:
        client = QuillClient(server.url)
        for i in range(5):
            assert client.call(SERVICE, METHOD, b"%d" % i) == b"%d" % i
            # an idle connection goes stale: the server has closed it before the next call (under
            # load the call could otherwise race the server's own close, which no client can tell
            # from a server that read the request and died)
            assert wait_until(lambda: server.closed > i, 5, interval=0.001)
        assert server.connections == 5


def test_status_retries_are_opt_in_and_honour_retry_after():
    answers = []

    def flaky(req, sock):
        answers.append(req)
        if len(answers) % 3 != 0:
            sock.sendall(response(429 if len(answers) % 3 == 1 else 503, b"busy", "text/plain", {"Retry-After": "0.05"}))
        else:
            echo(req, sock)

    with ScriptedServer(flaky) as server:
        with pytest.raises(RateLimitedError) as info:
            QuillClient(server.url).call(SERVICE, METHOD, b"x")
        assert info.value.retry_after == 0.05
        answers.clear()
        client = QuillClient(server.url, status_retries=2)
        payload = os.urandom(4096)
        started = time.monotonic()
        assert client.call(SERVICE, METHOD, payload) == payload
        assert time.monotonic() - started >= 0.1
        assert [r.body for r in server.requests[-3:]] == [payload] * 3


@pytest.mark.sync_only
def test_retries_resend_the_same_body_object(monkeypatch):
    """A retry must not rebuild or copy the body (tritonclient #918): the same buffer goes out again."""
    import quill.transports.http11 as transport_module

    sent = []
    real = transport_module.send_parts

    def spy(sock, parts):
        sent.append([id(p) for p in parts])
        return real(sock, parts)

    monkeypatch.setattr(transport_module, "send_parts", spy)
    answers = []

    def flaky(req, sock):
        answers.append(1)
        if len(answers) == 1:
            sock.sendall(response(503, b"", headers={"Retry-After": "0"}))
        else:
            echo(req, sock)

    payload = bytearray(os.urandom(1 << 20))
    with ScriptedServer(flaky) as server:
        assert QuillClient(server.url, status_retries=1).call(SERVICE, METHOD, payload) == payload
    assert len(sent) == 2 and sent[0] == sent[1] == [id(payload)]


# ---------------------------------------------------------------- pool, threads, lifecycle

def test_keep_alive_reuses_one_connection(echo_server):
    client = QuillClient(echo_server.url)
    for i in range(50):
        assert client.call(SERVICE, METHOD, b"%d" % i) == b"%d" % i
    assert echo_server.connections == 1


def test_eight_threads_share_one_client_without_losses_or_pool_warnings(echo_server):
    client = QuillClient(echo_server.url)
    errors, counts = [], [0] * 8

    def worker(n):
        try:
            for i in range(500):
                payload = b"%d-%d-" % (n, i) + os.urandom(16)
                if client.call(SERVICE, METHOD, payload) != payload:
                    errors.append((n, i))
                counts[n] += 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import logging

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("urllib3").addHandler(handler)
        try:
            threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            logging.getLogger("urllib3").removeHandler(handler)
    assert errors == [] and counts == [500] * 8
    assert not [r for r in records if "pool is full" in r.getMessage()]
    assert echo_server.connections <= 8


def test_max_connections_bounds_the_pool(echo_server):
    client = QuillClient(echo_server.url, max_connections=2)
    threads = [threading.Thread(target=lambda: [client.call(SERVICE, METHOD, b"x") for _ in range(50)])
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(echo_server.requests) == 300 and echo_server.connections <= 2


def test_close_and_context_manager(echo_server):
    with QuillClient(echo_server.url) as client:
        assert client.call(SERVICE, METHOD, b"a") == b"a"
    with pytest.raises(QuillConnectionError, match="closed"):
        client.call(SERVICE, METHOD, b"a")


@pytest.mark.sync_only
def test_pickled_client_keeps_config_and_gets_a_new_pool(echo_server):
    client = QuillClient(echo_server.url, timeout_ms=777, enable_compression=True, max_connections=3)
    client.set_bearer_token("pickled")
    client.call(SERVICE, METHOD, b"before")
    clone = pickle.loads(pickle.dumps(client))
    assert (clone.base_url, clone.timeout_ms, clone.compression_enabled) == (client.base_url, 777, True)
    assert clone.get_headers() == {"Authorization": "Bearer pickled"}
    assert clone._transport.pool is not client._transport.pool
    assert clone.call(SERVICE, METHOD, b"after") == b"after"
    assert echo_server.requests[-1].headers["authorization"] == "Bearer pickled"
    assert echo_server.connections == 2


@pytest.mark.sync_only
def test_a_forked_child_opens_its_own_connection(echo_server):
    client = QuillClient(echo_server.url)
    assert client.call(SERVICE, METHOD, b"parent") == b"parent"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=call_from_child, args=(client, queue))
    child.start()
    assert queue.get(timeout=10) == b"from-child"
    child.join(10)
    assert child.exitcode == 0
    # The child used a new connection; the parent's socket still works and was never shared.
    assert client.call(SERVICE, METHOD, b"parent-again") == b"parent-again"
    conns = [r.connection for r in echo_server.requests]
    assert conns[0] == conns[2] != conns[1]


@pytest.mark.sync_only
def test_client_ships_to_spawned_worker_processes(echo_server):
    client = QuillClient(echo_server.url)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=call_from_child, args=(client, queue))
    child.start()
    assert queue.get(timeout=30) == b"from-child"
    child.join(10)


# ---------------------------------------------------------------- health

def test_health_check_healthy_unhealthy_and_absent():
    def health(status):
        def handler(req, sock):
            assert (req.method, req.path) == ("GET", "/health")
            body = json.dumps({"healthy": status == 200}).encode()
            sock.sendall(response(status, body, "application/json"))
        return handler

    with ScriptedServer(health(200)) as server:
        assert QuillClient(server.url).health_check() is True
        assert "content-length" not in server.requests[-1].headers
    with ScriptedServer(health(503)) as server:
        assert QuillClient(server.url).health_check() is False
    assert QuillClient(f"http://127.0.0.1:{free_port()}", retries=0).health_check() is False
    with socket.create_server(("127.0.0.1", 0)) as silent:
        client = QuillClient(f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        assert client.health_check(timeout_ms=200) is False
        assert time.monotonic() - started < 3


# ---------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )
    return str(d / "cert.pem"), str(d / "key.pem")


def test_tls_verifies_by_default_and_accepts_a_ca_file_and_client_cert(tls_files):
    import ssl

    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cert)  # the client certificate is the same self-signed one
    context.verify_mode = ssl.CERT_OPTIONAL
    peer_certs = []

    def handler(req, sock):
        peer_certs.append(sock.getpeercert())
        echo(req, sock)

    with ScriptedServer(handler, ssl_context=context) as server:
        with pytest.raises(QuillConnectionError, match="TLS|certificate|SSL"):
            QuillClient(server.url, retries=0).call(SERVICE, METHOD, b"x")
        assert QuillClient(server.url, ca_file=cert).call(SERVICE, METHOD, b"secure") == b"secure"
        assert not peer_certs[-1]
        from urllib3.exceptions import InsecureRequestWarning

        with pytest.warns(InsecureRequestWarning, match="Unverified HTTPS request"):  # as urllib3 itself warns
            assert QuillClient(server.url, verify=False).call(SERVICE, METHOD, b"unverified") == b"unverified"
        mutual = QuillClient(server.url, ca_file=cert, client_cert=cert, client_key=key)
        assert mutual.call(SERVICE, METHOD, b"mutual") == b"mutual"
        assert dict(x[0] for x in peer_certs[-1]["subject"])["commonName"] == "localhost"
