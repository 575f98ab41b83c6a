"""Both clients over HTTP/2 (``http2=True``): every call kind against the engines that speak h2c
(hypercorn, granian), answers compared with the HTTP/1.1 client's and with curl's; multiplexing
over one connection; and a hostile raw-socket HTTP/2 server (tests/h2_hostile.py) whose every
misbehaviour ends in a clear error or a timeout, never a hang or a silent truncation."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("quill._core.h2engine", reason="quill was built without libnghttp2 (HTTP/2 engine)")

sys.path.insert(0, os.path.dirname(__file__))
from certificates import make_certificates  # noqa: E402
from h2_hostile import HostileH2Server, answer, count_connects, raw_frame  # noqa: E402

from quill.client import AsyncQuillClient, QuillClient  # noqa: E402
from quill.demo import create_demo_app  # noqa: E402
from quill.errors import (  # noqa: E402
    LimitExceededError,
    NotFoundError,
    QuillConnectionError,
    QuillTimeoutError,
    StreamCancelledError,
)
from quill.server import serve_in_thread  # noqa: E402
from quill.server.tls import TLSConfig  # noqa: E402
from quill.tensor import Tensor  # noqa: E402
from quill.transports import aio_http2  # noqa: E402

ECHO = "echo.v1.EchoService"
LLM = "inference.v1.LLMService"
CURL = shutil.which("curl")
NGHTTPD = shutil.which("nghttpd") or (os.path.exists("/usr/sbin/nghttpd") and "/usr/sbin/nghttpd")


def build_app():
    app = create_demo_app(max_request_bytes=64 << 20)

    @app.unary(f"{ECHO}/Echo")
    def echo(request, context):
        return bytes(request)

    @app.unary(f"{ECHO}/Json")
    def as_json(request, context):
        return json.dumps({"got": json.loads(bytes(request))}).encode()

    @app.client_stream(f"{ECHO}/Concat")
    async def concat(messages, context):
        return b"|".join([m async for m in messages])

    @app.server_stream(f"{ECHO}/Count")
    async def count(request, context):
        total, _, pause = bytes(request).partition(b" ")
        for i in range(int(total)):
            yield b"n%d" % i
            if pause:
                await asyncio.sleep(float(pause))

    return app


@pytest.fixture(scope="module", params=["hypercorn", "granian"])
def h2_url(request):
    with serve_in_thread(build_app(), engine=request.param) as url:
        yield url


@pytest.fixture
def client_kind(request):
    """sync or async (tests/conftest.py generates both)."""
    return request.param


def make(kind, url, **options):
    from client_kinds import CLIENTS

    return CLIENTS[kind](url, http2=True, **options)


# ----------------------------------------------------------------------------------------
# every call kind, against real servers
# ----------------------------------------------------------------------------------------
def test_every_call_kind(h2_url, client_kind):
    big = os.urandom(3_000_000)
    array = np.random.default_rng(7).standard_normal((512, 1024)).astype(np.float32)
    with make(client_kind, h2_url) as client:
        assert client.call(ECHO, "Echo", b"hi") == b"hi"
        assert client.call(ECHO, "Echo", big) == big  # DATA frames both ways, past the 64 KiB default window
        assert client.call_json(ECHO, "Json", {"a": [1, 2]}) == {"got": {"a": [1, 2]}}
        assert client.call_client_stream(ECHO, "Concat", [b"a", b"b" * 100_000, b"c"]) == b"|".join(
            [b"a", b"b" * 100_000, b"c"])
        assert list(client.call_stream(ECHO, "Count", b"5")) == [b"n%d" % i for i in range(5)]
        tensor = client.call_tensor(LLM, "Echo", Tensor.from_numpy(array))
        np.testing.assert_array_equal(tensor.to_numpy(), array)
        out = np.empty(array.nbytes, dtype=np.uint8)
        into = client.call_tensor(LLM, "Echo", Tensor.from_numpy(array), out=out)
        np.testing.assert_array_equal(out.view(np.float32).reshape(array.shape), array)  # read into place
        assert into.shape == list(array.shape)
        tokens = [t for batch in client.stream_tokens(LLM, "Generate", {"prompt": "Hi", "max_tokens": 12})
                  for t in batch]
        assert len(tokens) == 12
        assert client.health_check()
        assert {m.name for m in client.list_methods(ECHO)} == {"Echo", "Json", "Concat", "Count"}


def test_errors_read_as_over_http11(h2_url, client_kind):
    with make(client_kind, h2_url) as h2, QuillClient(h2_url) as h1:
        errors = []
        for client in (h2, h1):
            with pytest.raises(NotFoundError) as caught:
                client.call(ECHO, "Missing", b"x")
            errors.append((caught.value.status, str(caught.value)))
        assert errors[0] == errors[1]


def test_answers_match_curl_side_by_side(h2_url, client_kind):
    if CURL is None:
        pytest.fail("curl is not installed (.ci/run installs it)", pytrace=False)
    body = os.urandom(200_000)
    done = subprocess.run([CURL, "-sS", "--http2-prior-knowledge", "--max-time", "30", "-w", "%{http_version}",
                           "-H", "Content-Type: application/proto", "--data-binary", "@-", f"{h2_url}/{ECHO}/Echo"],
                          input=body, capture_output=True, timeout=40, check=True)
    assert done.stdout[-1:] == b"2" and done.stdout[:-1] == body
    with make(client_kind, h2_url) as client:
        assert client.call(ECHO, "Echo", body) == done.stdout[:-1]


H2LOAD = shutil.which("h2load")  # Debian's nghttp2-client; .ci/run installs it


def test_h2load_sends_what_quill_sends_and_gets_the_same_answers(h2_url, tmp_path, monkeypatch):
    """h2load (nghttp2's load client) replays the exact header list quill's HTTP/2 client sent for
    a call, 200 times over one connection; its status counts and DATA bytes match quill's own 200."""
    if H2LOAD is None:
        pytest.fail("h2load is not installed (.ci/run installs nghttp2-client)", pytrace=False)
    sent = []
    original = aio_http2.request_headers

    def capture(cache, endpoint, request):
        sent.append(original(cache, endpoint, request))
        return sent[-1]

    monkeypatch.setattr(aio_http2, "request_headers", capture)
    for method, body in (("Echo", b"replayed by h2load"), ("Missing", b"no such method")):
        async def main():
            async with AsyncQuillClient(h2_url, http2=True) as client:
                return await asyncio.gather(*[client.call(ECHO, method, body) for _ in range(200)],
                                            return_exceptions=True)

        sent.clear()
        answers = asyncio.run(main())
        statuses = collections.Counter(200 if isinstance(a, bytes) else a.status for a in answers)
        fields = dict(sent[0])
        assert all(dict(headers) == fields for headers in sent)  # one request, 200 times
        (tmp_path / "body").write_bytes(body)
        command = [H2LOAD, "-n", "200", "-c", "1", "-m", "10", "-d", str(tmp_path / "body")]
        for name, value in sent[0]:
            if not name.startswith(b":") and name != b"content-length":  # h2load frames the body itself
                command += ["-H", f"{name.decode()}: {value.decode()}"]
        done = subprocess.run(command + [h2_url + fields[b":path"].decode()], capture_output=True, text=True,
                              timeout=120)
        assert "200 done" in done.stdout and "0 errored, 0 timeout" in done.stdout, done.stdout  # 4xx: "failed"
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", done.stdout).groups()
        assert [int(n) for n in codes] == [sum(n for s, n in statuses.items() if s // 100 == c) for c in (2, 3, 4, 5)]
        if method == "Echo":
            data = int(re.search(r"B \((\d+)\) data", done.stdout).group(1))
            assert answers == [body] * 200 and data == 200 * len(body)
        else:
            assert statuses == {404: 200}


def test_against_nghttpd_serving_static_files(tmp_path, h2_url, client_kind):
    """nghttpd (nghttp2's server, Debian's nghttp2-server) serves discovery's answer as a file."""
    if not NGHTTPD:
        pytest.fail("nghttpd is not installed (.ci/run installs nghttp2-server)", pytrace=False)
    with QuillClient(h2_url) as h1:
        expected = h1.list_methods()
        request = h1._core.describe_request(None, None)
        response = h1._transport.open(request)
        document = response.read_all(1 << 20, "discovery")
        response.release(True)
    (tmp_path / ".well-known" / "quill").mkdir(parents=True)
    (tmp_path / ".well-known" / "quill" / "methods").write_bytes(document)
    (tmp_path / "health").write_bytes(b"ok")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([NGHTTPD, "--no-tls", "-d", str(tmp_path), "--address", "127.0.0.1", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert time.monotonic() < deadline and server.poll() is None, "nghttpd did not start"
            time.sleep(0.05)
        with make(client_kind, f"http://127.0.0.1:{port}") as client:
            assert client.health_check()
            assert client.list_methods() == expected
            with pytest.raises(NotFoundError):
                client.call(ECHO, "Echo", b"nghttpd has no such file")
    finally:
        server.terminate()
        server.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_sync_threads_share_one_connection(h2_url):
    with QuillClient(h2_url, http2=True) as client:
        results: dict[int, bytes] = {}

        def work(index):
            results[index] = client.call(ECHO, "Echo", b"t%d" % index)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == {i: b"t%d" % i for i in range(32)}
        assert [conn.engine.alive for conn in client._transport._async._conns] == [True]


def test_async_calls_multiplex_over_one_connection(h2_url, monkeypatch):
    connects = count_connects(monkeypatch)

    async def main():
        async with AsyncQuillClient(h2_url, http2=True) as client:
            answers = await asyncio.gather(*[client.call(ECHO, "Echo", b"c%d" % i) for i in range(300)])
            assert answers == [b"c%d" % i for i in range(300)]

    asyncio.run(main())
    assert len(connects) == 1


def test_cancelling_one_stream_leaves_the_others_running(h2_url):
    async def main():
        async with AsyncQuillClient(h2_url, http2=True) as client:
            slow = await client.call_stream(ECHO, "Count", b"1000 0.01")
            other = await client.call_stream(ECHO, "Count", b"20 0.01")
            assert await slow.__anext__() == b"n0"
            threading.Thread(target=slow.cancel).start()  # from another thread: RST_STREAM
            with pytest.raises(StreamCancelledError):
                async for _ in slow:
                    pass
            assert [m async for m in other] == [b"n%d" % i for i in range(20)]
            assert await client.call(ECHO, "Echo", b"after") == b"after"

    asyncio.run(main())


def test_tls_alpn_h2_and_fallback_to_http11(tmp_path, client_kind):
    certs = make_certificates(tmp_path)
    tls = TLSConfig(certs.server_cert, certs.server_key)
    for engine, spoken in (("hypercorn", "h2"), ("uvicorn", "http/1.1")):  # uvicorn has no HTTP/2
        with serve_in_thread(build_app(), tls=tls, engine=engine) as url:
            with make(client_kind, url, ca_file=certs.ca) as client:
                assert client.call(ECHO, "Echo", b"secure") == b"secure"
                assert client.call(ECHO, "Echo", b"again") == b"again"
                transport = client._transport  # the sync one runs the async one on its loop
                transport = getattr(transport, "_async", transport)
                assert (transport._fallback is None) == (spoken == "h2"), engine


def test_unix_socket(tmp_path):
    path = str(tmp_path / "q.sock")
    with serve_in_thread(build_app(), uds=path, engine="hypercorn"):
        url = "http+unix://" + path.replace("/", "%2F")
        with QuillClient(url, http2=True) as client:
            assert client.call(ECHO, "Echo", b"over a unix socket") == b"over a unix socket"


# ----------------------------------------------------------------------------------------
# a hostile server
# ----------------------------------------------------------------------------------------
def test_queues_beyond_max_concurrent_streams():
    def slow(conn, sock, stream_id, headers, body):
        time.sleep(0.02)
        answer(conn, stream_id, body)

    with HostileH2Server(slow, settings={3: 2}) as server:  # SETTINGS_MAX_CONCURRENT_STREAMS = 2
        async def main():
            async with AsyncQuillClient(server.url, http2=True) as client:
                await client.call(ECHO, "Echo", b"settings first")
                return await asyncio.gather(*[client.call(ECHO, "Echo", b"q%d" % i) for i in range(12)])

        assert asyncio.run(main()) == [b"q%d" % i for i in range(12)]
        assert server.max_open <= 2 and server.connections == 1


def test_rst_stream_mid_body(client_kind):
    def reset(conn, sock, stream_id, headers, body):
        conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/proto"),
                                      (b"content-length", b"1000")])
        conn.send_data(stream_id, b"x" * 100)
        conn.reset_stream(stream_id, error_code=2)

    with HostileH2Server(reset) as server, make(client_kind, server.url, timeout_ms=5000) as client:
        with pytest.raises(QuillConnectionError, match="RST_STREAM INTERNAL_ERROR"):
            client.call(ECHO, "Echo", b"x")


def test_goaway_before_processing_is_retried_even_when_not_idempotent(client_kind):
    seen = []

    def refuse_first(conn, sock, stream_id, headers, body):
        seen.append(body)
        if len(seen) == 1:
            conn.close_connection(last_stream_id=0)  # GOAWAY: stream 1 was not processed
            return False
        answer(conn, stream_id, body)

    with HostileH2Server(refuse_first) as server, make(client_kind, server.url, timeout_ms=5000) as client:
        assert client.call(ECHO, "Echo", b"post once") == b"post once"  # a POST, not idempotent
        assert seen == [b"post once", b"post once"] and server.connections == 2


def test_goaway_mid_stream_is_not_a_silent_truncation(client_kind):
    def cut(conn, sock, stream_id, headers, body):
        conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/proto"),
                                      (b"content-length", b"100000")])
        conn.send_data(stream_id, b"y" * 1000)
        conn.close_connection(last_stream_id=stream_id)  # processed, but the rest never comes
        return False

    with HostileH2Server(cut) as server, make(client_kind, server.url, timeout_ms=5000, retries=0) as client:
        with pytest.raises(QuillConnectionError, match="mid-body|closed"):
            client.call(ECHO, "Echo", b"x")


def test_header_list_bomb_is_refused(client_kind):
    def bomb(conn, sock, stream_id, headers, body):
        fields = [(b"x-bomb-%d" % i, b"v" * 4000) for i in range(40)]  # 160 KB of headers
        answer(conn, stream_id, b"never read", headers=fields)

    with HostileH2Server(bomb) as server, make(client_kind, server.url, timeout_ms=5000) as client:
        with pytest.raises(LimitExceededError, match="header list"):
            client.call(ECHO, "Echo", b"x")


def test_a_server_that_never_opens_its_window_times_out(client_kind):
    with HostileH2Server(lambda *args: answer(args[0], args[2], b"ok"), settings={4: 0}) as server:
        with make(client_kind, server.url, timeout_ms=1000, retries=0) as client:
            assert client.health_check()  # a GET: no DATA, and the server's SETTINGS are in force after it
            started = time.monotonic()
            with pytest.raises(QuillTimeoutError):
                client.call(ECHO, "Echo", b"z" * 100_000)  # INITIAL_WINDOW_SIZE 0: no DATA may go
            assert time.monotonic() - started < 20


@pytest.mark.parametrize("frame", [
    raw_frame(0x8, 0, 0, (0x7FFFFFFF).to_bytes(4, "big")),  # WINDOW_UPDATE past 2**31 - 1
    raw_frame(0x0, 1, 99, b"stray"),  # DATA on a stream never opened
    raw_frame(0x4, 0, 0, (4).to_bytes(2, "big") + (1 << 31).to_bytes(4, "big")),  # INITIAL_WINDOW_SIZE too large
], ids=["window-overflow", "unknown-stream", "huge-settings"])
def test_protocol_violations_fail_the_call(frame, client_kind):
    def violate(conn, sock, stream_id, headers, body):
        sock.sendall(conn.data_to_send() + frame)

    with HostileH2Server(violate) as server, make(client_kind, server.url, timeout_ms=5000, retries=0) as client:
        with pytest.raises(QuillConnectionError, match="HTTP/2 protocol error|connection"):
            client.call(ECHO, "Echo", b"x")


def _after(frame_for):
    """A script that answers whole, then sends ``frame_for(stream_id)`` on the stream it closed."""
    def script(conn, sock, stream_id, headers, body):
        answer(conn, stream_id, body)
        sock.sendall(conn.data_to_send() + frame_for(stream_id))
    return script


def _reset_then(frame_for):
    """A script that resets the stream itself (RST_STREAM), then sends ``frame_for(stream_id)`` on it."""
    def script(conn, sock, stream_id, headers, body):
        conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/proto")])
        conn.reset_stream(stream_id, error_code=2)
        sock.sendall(conn.data_to_send() + frame_for(stream_id))
    return script


_STATUS_200 = b"\x88"  # HPACK: the static table's ":status: 200"
_CLOSED_STREAM_FRAMES = {
    "data-after-end-stream": _after(lambda sid: raw_frame(0x0, 1, sid, b"late")),
    # 3 x 24 MiB, past the client's 64 MiB connection window: ignored bytes count as consumed
    "data-past-the-window-after-end-stream": _after(lambda sid: raw_frame(0x0, 0, sid, b"z" * (1 << 20)) * 24),
    "headers-after-end-stream": _after(lambda sid: raw_frame(0x1, 0x5, sid, _STATUS_200)),
    "data-after-rst-stream": _reset_then(lambda sid: raw_frame(0x0, 1, sid, b"late")),
    "headers-after-rst-stream": _reset_then(lambda sid: raw_frame(0x1, 0x5, sid, _STATUS_200)),
}


@pytest.mark.parametrize("case", list(_CLOSED_STREAM_FRAMES))
def test_frames_on_a_stream_the_server_closed(case, client_kind):
    """RFC 9113 section 5.1: DATA or HEADERS on a stream the server itself ended (END_STREAM) or
    reset is a STREAM_CLOSED error. The answer already whole stays whole, a reset call fails with
    its reset, the late frame never reaches a call, and the client goes on (on a new connection
    where the engine ended the first): no hang, no mixed-up answer."""
    with HostileH2Server(_CLOSED_STREAM_FRAMES[case]) as server, \
            make(client_kind, server.url, timeout_ms=5000, retries=0) as client:
        for index in range(3):
            started = time.monotonic()
            if "rst-stream" in case:
                with pytest.raises(QuillConnectionError, match="RST_STREAM INTERNAL_ERROR"):
                    client.call(ECHO, "Echo", b"x")
            else:
                body = b"answer %d" % index
                assert client.call(ECHO, "Echo", body) == body
            assert time.monotonic() - started < 4
