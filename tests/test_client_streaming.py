"""QuillClient streaming against the reference server (quill.server on uvicorn) and against
scripted loopback servers that misbehave: server, client and token streams, tensors, and every
way a stream can end badly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_kinds import PROTOCOLS  # noqa: E402
from client_servers import (  # noqa: E402
    LAST_CHUNK,
    ScriptedServer,
    chunk,
    chunked_head,
    read_request,
    zstd,
)

from quill._core.tokens import Token, TokenBatch  # noqa: E402
from quill.client import QuillClient  # noqa: E402


@pytest.fixture(autouse=True)
def client_kind(request, monkeypatch):
    """Every test here runs over both clients: ``QuillClient`` in this module is the sync client or
    the async one behind a blocking facade (tests/client_kinds.py)."""
    from client_kinds import client_for

    monkeypatch.setattr(request.module, "QuillClient", client_for(request))
    return request.param
from quill.errors import (  # noqa: E402
    DecodeError,
    IncompleteStreamError,
    NotFoundError,
    QuillConnectionError,
    StreamCancelledError,
    UnauthorizedError,
)
from quill.frames import (  # noqa: E402
    MessageStreamDecoder,
    StreamFlags,
    encode_end_stream,
    encode_stream_cancel,
    encode_stream_frame,
)
from quill.server import QuillApp, serve_in_thread  # noqa: E402
from quill.tensor import Tensor  # noqa: E402

SVC = "test.v1.Streams"
WAIT = 10  # seconds any test waits for the other side before failing


def build_app() -> QuillApp:
    app = QuillApp(max_request_bytes=256 << 20)
    app.state = {"cancelled": threading.Event(), "seen": [], "seen_event": threading.Event()}

    @app.unary(f"{SVC}/Echo")
    def echo(request, context):
        app.state["headers"] = context.headers
        return request

    @app.server_stream(f"{SVC}/Count")
    def count(request, context):
        n, size = (int(x) for x in request.split(b","))
        for i in range(n):
            yield i.to_bytes(4, "big") * (size // 4)

    @app.server_stream(f"{SVC}/Forever")
    async def forever(request, context):
        i = 0
        try:
            while True:
                yield b"tick %d" % i
                i += 1
                await asyncio.sleep(0.001)
        finally:
            app.state["cancelled"].set()

    @app.server_stream(f"{SVC}/FailMidway")
    def fail_midway(request, context):
        yield b"one"
        raise RuntimeError("the model fell over")

    @app.client_stream(f"{SVC}/Collect")
    async def collect(messages, context):
        total = []
        async for message in messages:
            total.append(message)
            app.state["seen"].append(message)
            app.state["seen_event"].set()
        return b"%d:%s" % (len(total), b"|".join(total))

    @app.token_stream(f"{SVC}/Generate")
    def generate(request, context):
        words = request.decode().split() if not request.startswith(b"{") else ["json", "prompt"]
        for i, word in enumerate(words):
            batch = TokenBatch(sequence_id=7)
            batch.add(Token.with_text(100 + i, word, i, logprob=-0.5))
            batch.is_final = i == len(words) - 1
            yield batch

    @app.tensor(f"{SVC}/Double")
    def double(request, context):
        if isinstance(request, Tensor):
            return Tensor.from_numpy(request.to_numpy() * 2, name="doubled")
        return Tensor.from_numpy(np.frombuffer(request, dtype=np.uint8).astype(np.int32), name="from-bytes")

    @app.tensor(f"{SVC}/Store")
    def store(request, context):
        app.state["stored"] = request
        return Tensor.from_numpy(np.array([request.num_elements], dtype=np.int64))

    return app


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def served(request):
    app = build_app()
    with serve_in_thread(app, **PROTOCOLS[request.param]) as url:
        yield app, url


@pytest.fixture
def client(served):
    with QuillClient(served[1], timeout_ms=WAIT * 1000) as c:
        yield c


# ---------------------------------------------------------------- against the reference server

def test_unary_and_headers_reach_the_reference_server(served, client):
    app, _ = served
    client.set_bearer_token("tok")
    client.set_header("X-Custom", "v")
    assert client.call(SVC, "Echo", b"ping") == b"ping"
    assert app.state["headers"]["authorization"] == "Bearer tok" and app.state["headers"]["x-custom"] == "v"
    assert app.state["headers"]["prefer"] == "prism=classic"
    with pytest.raises(NotFoundError):
        client.call(SVC, "NoSuchMethod", b"")


def test_compression_round_trip_with_the_reference_server(served):
    with QuillClient(served[1], enable_compression=True) as client:
        payload = os.urandom(200) * 50
        assert client.call(SVC, "Echo", payload) == payload
        stream = client.call_stream(SVC, "Count", b"3,40000")
        assert [m[:4] for m in stream] == [i.to_bytes(4, "big") for i in range(3)]
        messages = [os.urandom(100) * 10 for _ in range(5)]
        assert client.call_client_stream(SVC, "Collect", iter(messages)).startswith(b"5:")


def test_server_stream_yields_every_message(client):
    messages = list(client.call_stream(SVC, "Count", b"100,1000"))
    assert messages == [i.to_bytes(4, "big") * 250 for i in range(100)]
    assert list(client.call_stream(SVC, "Count", b"0,0")) == []


def test_early_exit_then_more_calls_on_the_same_client(served):
    app, url = served
    with QuillClient(url, max_connections=1, timeout_ms=WAIT * 1000) as client:
        for attempt in range(3):
            for i, message in enumerate(client.call_stream(SVC, "Forever", b"")):
                assert message == b"tick %d" % i
                if i == 5:
                    break
            assert client.call(SVC, "Echo", b"after %d" % attempt) == b"after %d" % attempt
        with client.call_stream(SVC, "Count", b"1000,4") as stream:
            assert next(stream) == bytes(4)
        assert client.call(SVC, "Echo", b"after with") == b"after with"


def test_cancel_stops_the_server_and_the_iteration(served):
    app, url = served
    app.state["cancelled"].clear()
    with QuillClient(url, max_connections=1, timeout_ms=WAIT * 1000) as client:
        stream = client.call_stream(SVC, "Forever", b"")
        assert next(stream) == b"tick 0"
        stream.cancel()
        assert stream.cancelled
        with pytest.raises(StreamCancelledError, match="cancelled"):  # never a quiet, truncated end
            next(stream)
        assert list(stream) == []
        assert app.state["cancelled"].wait(WAIT)
        assert client.call(SVC, "Echo", b"still fine") == b"still fine"


def test_handler_failure_mid_stream_raises_stream_cancelled(client):
    stream = client.call_stream(SVC, "FailMidway", b"")
    assert next(stream) == b"one"
    with pytest.raises(StreamCancelledError):
        next(stream)
    assert client.call(SVC, "Echo", b"ok") == b"ok"


def test_client_stream_is_sent_lazily_as_it_is_produced(served, client):
    app, _ = served
    app.state["seen"].clear()

    def produce():
        for i in range(4):
            app.state["seen_event"].clear()
            yield b"msg-%d" % i
            # The next message is produced only once the server has received this one:
            # a client that collected the iterable first would never get here.
            assert app.state["seen_event"].wait(WAIT), f"server never received message {i}"

    assert client.call_client_stream(SVC, "Collect", produce()) == b"4:msg-0|msg-1|msg-2|msg-3"
    assert client.call_client_stream(SVC, "Collect", []) == b"0:"


def test_stream_tokens_yields_token_batches(client):
    batches = list(client.stream_tokens(SVC, "Generate", b"hello big world"))
    assert [b.text() for b in batches] == ["hello", "big", "world"]
    assert [t.id for b in batches for t in b] == [100, 101, 102]
    assert [b.is_final for b in batches] == [False, False, True]
    assert batches[0].sequence_id == 7
    assert [b.text() for b in client.stream_tokens(SVC, "Generate", {"prompt": "x"})] == ["json", "prompt"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.int64, np.uint8])
def test_call_tensor_round_trip(client, dtype):
    array = (np.arange(3 * 50_000) % 101).astype(dtype).reshape(3, 50_000)
    result = client.call_tensor(SVC, "Double", Tensor.from_numpy(array, name="x"))
    assert result.name == "doubled"
    np.testing.assert_array_equal(result.to_numpy(), array * 2)


def test_call_tensor_into_a_reused_out_buffer(client):
    from quill.errors import LimitExceededError

    out = np.empty(4 * 150_000, dtype=np.uint8)
    for scale in (1, 2):
        array = (np.arange(150_000, dtype=np.float32) * scale).reshape(3, 50_000)
        result = client.call_tensor(SVC, "Double", Tensor.from_numpy(array), out=out)
        np.testing.assert_array_equal(result.to_numpy(), array * 2)
        assert np.shares_memory(result.to_numpy(), out)  # written into the caller's buffer, no new pages
    with pytest.raises(LimitExceededError, match="does not fit the out buffer"):
        client.call_tensor(SVC, "Double", Tensor.from_numpy(np.ones(200_000, dtype=np.float32)), out=out)
    assert client.call(SVC, "Echo", b"after") == b"after"


def test_call_tensor_with_bytes_and_send_tensor(served, client):
    app, _ = served
    np.testing.assert_array_equal(client.call_tensor(SVC, "Double", b"\x01\x02").to_numpy(), [1, 2])
    tensor = Tensor.from_numpy(np.ones((128, 1024), dtype=np.float32))
    answer = client.send_tensor(SVC, "Store", tensor)
    assert app.state["stored"] == tensor
    assert answer.endswith(b"\x00" * 7)  # the server's int64 count tensor, as raw tensor frames
    with pytest.raises(TypeError):
        client.send_tensor(SVC, "Store", b"not a tensor")


# ---------------------------------------------------------------- scripted misbehaving servers

def stream_server(pieces, close=True):
    """A server answering every request with a chunked 200 made of ``pieces`` (each one HTTP chunk)."""

    def handler(req, sock):
        sock.sendall(chunked_head())
        for piece in pieces:
            sock.sendall(piece)
        return not close

    return ScriptedServer(handler)


def test_messages_arrive_before_the_stream_ends():
    delivered = threading.Event()

    def handler(req, sock):
        sock.sendall(chunked_head() + chunk(encode_stream_frame(b"first")))
        assert delivered.wait(WAIT)  # the second frame is sent only after the client got the first
        sock.sendall(chunk(encode_stream_frame(b"second") + encode_end_stream()) + LAST_CHUNK)

    with ScriptedServer(handler) as server:
        stream = QuillClient(server.url).call_stream(SVC, "S", b"")
        assert next(stream) == b"first"
        delivered.set()
        assert list(stream) == [b"second"]


def test_frames_split_across_http_chunks_and_data_with_end_stream():
    wire = b"".join(encode_stream_frame(b"m%d" % i * 300) for i in range(5))
    wire += encode_stream_frame(b"last", StreamFlags.DATA | StreamFlags.END_STREAM)
    pieces = [chunk(wire[i:i + 7]) for i in range(0, len(wire), 7)] + [LAST_CHUNK]
    with stream_server(pieces, close=False) as server:
        client = QuillClient(server.url)
        assert list(client.call_stream(SVC, "S", b"")) == [b"m%d" % i * 300 for i in range(5)] + [b"last"]
        assert list(client.call_stream(SVC, "S", b""))[-1] == b"last"
        assert server.connections == 1  # a cleanly ended stream returns its connection to the pool


@pytest.mark.parametrize("pieces,error,words", [
    ([chunk(encode_stream_frame(b"a")), LAST_CHUNK], IncompleteStreamError, "without END_STREAM"),
    ([chunk(encode_stream_frame(b"a") + b"\x05\x01ab"), LAST_CHUNK], IncompleteStreamError, "without END_STREAM"),
    ([chunk(encode_stream_frame(b"a")), chunk(encode_stream_cancel("overloaded"))], StreamCancelledError,
     "overloaded"),
    ([chunk(encode_stream_frame(b"a") + b"\xff" * 11), LAST_CHUNK], DecodeError, "varint"),
    ([chunk(encode_stream_frame(b"a")), b"10\r\n\x05\x01ab"], QuillConnectionError, "mid-message stream"),
    ([chunk(encode_stream_frame(b"a") + encode_end_stream() + encode_stream_frame(b"late")), LAST_CHUNK],
     DecodeError, "after END_STREAM|END_STREAM"),
])
def test_bad_stream_endings_raise_errors_that_say_so(pieces, error, words):
    with stream_server(pieces) as server:
        stream = QuillClient(server.url).call_stream(SVC, "S", b"")
        with pytest.raises(error, match=words) as info:
            list(stream)
        if error is QuillConnectionError:
            assert isinstance(info.value, ConnectionError)


def test_zstd_compressed_stream_response_is_decoded_incrementally():
    wire = b"".join(encode_stream_frame(b"%d" % i * 100) for i in range(50)) + encode_end_stream()
    packed = zstd.compress(wire)
    pieces = [chunk(packed[i:i + 100]) for i in range(0, len(packed), 100)] + [LAST_CHUNK]

    def handler(req, sock):
        sock.sendall(chunked_head(headers={"Content-Encoding": "zstd"}) + b"".join(pieces))

    with ScriptedServer(handler) as server:
        assert list(QuillClient(server.url, enable_compression=True).call_stream(SVC, "S", b"")) == [
            b"%d" % i * 100 for i in range(50)]


def test_client_stream_wire_format_and_compression_threshold():
    answers = []

    def handler(req, sock):
        answers.append(req)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with ScriptedServer(handler) as server:
        client = QuillClient(server.url, enable_compression=True)
        small = [b"a" * 100, b"b" * 100]
        assert client.call_client_stream(SVC, "Up", iter(small)) == b"ok"
        big = [os.urandom(600), os.urandom(600)]
        assert client.call_client_stream(SVC, "Up", (m for m in big)) == b"ok"
        plain = QuillClient(server.url)
        assert plain.call_client_stream(SVC, "Up", big) == b"ok"

    small_req, big_req, plain_req = answers
    assert "content-encoding" not in small_req.headers and small_req.headers["content-length"]
    assert big_req.headers["content-encoding"] == "zstd" and big_req.chunked
    assert plain_req.chunked and "content-encoding" not in plain_req.headers
    for req, messages in ((small_req, small), (big_req, big), (plain_req, big)):
        decoder = MessageStreamDecoder()
        assert decoder.feed(req.content) == messages and decoder.done


KILLABLE_SERVER = textwrap.dedent("""
    import socket, sys, time
    sys.path.insert(0, {tests!r})
    from client_servers import read_request, chunked_head, chunk
    from quill.frames import encode_stream_frame
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    sock, _ = listener.accept()
    read_request(sock.makefile("rb"), 1)
    sock.sendall(chunked_head() + chunk(encode_stream_frame(b"one")) + chunk(encode_stream_frame(b"two")))
    time.sleep(60)
""")


def test_server_killed_mid_stream(tmp_path):
    # cwd elsewhere: from the checkout, "import quill" would find the uncompiled source tree.
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_SERVER.format(tests=os.path.dirname(__file__))],
        stdout=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        port = int(proc.stdout.readline())
        stream = QuillClient(f"http://127.0.0.1:{port}", timeout_ms=WAIT * 1000).call_stream(SVC, "S", b"")
        assert next(stream) == b"one" and next(stream) == b"two"
        proc.send_signal(signal.SIGKILL)
        with pytest.raises(QuillConnectionError, match="after 2 item"):
            next(stream)
    finally:
        proc.kill()
        proc.wait()


def test_an_early_answer_to_a_client_stream_survives_the_reset_of_the_next_write():
    """The server answers after the request head (401 here; a call of the wrong kind gets 415) and
    closes with the body unread, so the kernel resets the connection: the client's next write
    fails, and the answer, already in the socket, must still be read (the async client lost it)."""
    answered = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        sock, _ = listener.accept()
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(1)
        body = b'{"type":"urn:quill:error:401","title":"Unauthorized","status":401}'
        sock.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/problem+json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(0.1)  # the answer is in the client's socket before the reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset
        answered.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def messages():
        yield b"first"
        answered.wait(WAIT)
        time.sleep(0.1)
        yield from (b"x" * 1000 for _ in range(20))  # these writes meet the reset

    try:
        with QuillClient(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_ms=WAIT * 1000, retries=0) as c:
            with pytest.raises(UnauthorizedError):
                c.call_client_stream(SVC, "Collect", messages())
    finally:
        listener.close()
        thread.join(WAIT)


# ---------------------------------------------------------------- a 1 GiB tensor, memory measured

ECHO_BODY_SERVER = textwrap.dedent("""
    import socket, sys
    sys.path.insert(0, {tests!r})
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    sock, _ = listener.accept()
    rfile = sock.makefile("rb")
    headers = {{}}
    rfile.readline()
    while (line := rfile.readline()) not in (b"\\r\\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = bytearray(int(headers["content-length"]))
    view, got = memoryview(body), 0
    while got < len(body):
        got += rfile.readinto(view[got:])
    sock.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/proto\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body))
    sock.sendall(body)
    sock.close()
""")

GIB_CLIENT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from quill.client import QuillClient
    from quill.tensor import Tensor
    n = 1 << 30
    array = np.arange(n // 4, dtype=np.int32)
    tensor = Tensor.from_numpy(array, name="gib")
    result = QuillClient("http://127.0.0.1:" + sys.argv[1], timeout_ms=120000).call_tensor("t.v1.T", "Echo", tensor)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the check's own temporaries
    assert result.shape == tensor.shape and result.name == "gib"
    assert np.array_equal(result.to_numpy(), array)
    print(peak)
""")


def test_one_gib_tensor_sent_and_received_within_2_5x_memory(tmp_path):
    # cwd elsewhere: from the checkout, "import quill" would find the uncompiled source tree.
    server = subprocess.Popen(
        [sys.executable, "-c", ECHO_BODY_SERVER.format(tests=os.path.dirname(__file__))],
        stdout=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        port = server.stdout.readline().strip()
        out = subprocess.run([sys.executable, "-c", GIB_CLIENT, port], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        peak = int(out.stdout.strip().splitlines()[-1])
        assert peak < 2.5 * (1 << 30), f"peak RSS {peak / (1 << 30):.2f} GiB for a 1 GiB tensor sent and received"
    finally:
        server.kill()
        server.wait()
