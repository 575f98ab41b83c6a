"""Faults on the wire, for each kind of call (unary, token stream, tensor, message stream of large
messages, which the clients read straight into place): the server dies, hangs,
sends garbage, truncates, lies about Content-Length, resets, or says 429/503 with Retry-After.

Every fault must end in the documented error (ConnectionError, TimeoutError, a DecodeError, an
RpcError) within the call's timeout, never in a partial result handed over as complete, and the
same client must serve the next call. Complements test_client.py (unary faults) and
test_client_streaming.py (message-stream endings, a message stream killed mid-way).
"""

from __future__ import annotations

import email.utils
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_servers import LAST_CHUNK, ScriptedServer, chunk, chunked_head, echo, response  # noqa: E402
from serve_process import quill_serve  # noqa: E402

from quill._core.tokens import Token, TokenBatch  # noqa: E402
from quill.client import QuillClient  # noqa: E402


@pytest.fixture(autouse=True)
def client_kind(request, monkeypatch):
    """Every test here runs over both clients: ``QuillClient`` in this module is the sync client or
    the async one behind a blocking facade (tests/client_kinds.py)."""
    from client_kinds import CLIENTS

    monkeypatch.setattr(request.module, "QuillClient", CLIENTS[request.param])
    return request.param
from quill.errors import (  # noqa: E402
    DecodeError,
    IncompleteStreamError,
    QuillConnectionError,
    QuillTimeoutError,
    RateLimitedError,
    ServiceUnavailableError,
)
from quill.frames import (  # noqa: E402
    END_STREAM_FRAME,
    encode_end_stream,
    encode_stream_frame,
    encode_tensor_frames,
    encode_token_batch_frame,
)
from quill.tensor import Tensor  # noqa: E402

SVC = "fault.v1.Faults"
TIMEOUT_MS = 1500  # the calls' timeout: each hanging fault must end within it (plus scheduling slack)
SLACK_S = 3.0
TENSOR = Tensor.from_numpy(np.arange(64 * 1024, dtype=np.float32).reshape(256, 256), name="weights")
# 128 KiB frames: the clients read such payloads from the socket straight into the tensor
TENSOR_WIRE = b"".join(bytes(p) for p in encode_tensor_frames(TENSOR, chunk_size=128 * 1024))
MESSAGES = [os.urandom(200_000), os.urandom(300_000)]


def token_wire(count: int) -> bytes:
    frames = []
    for i in range(count):
        batch = TokenBatch(sequence_id=3)
        batch.add(Token.with_text(i, f"t{i}", i, logprob=-0.25))
        batch.is_final = i == count - 1
        frames.append(encode_token_batch_frame(batch))
    return b"".join(frames) + END_STREAM_FRAME


TOKEN_WIRE = token_wire(20)
WIRES = {"tokens": TOKEN_WIRE, "tensor": TENSOR_WIRE, "unary": os.urandom(4096),
         "messages": b"".join(encode_stream_frame(m) for m in MESSAGES) + encode_end_stream()}
STREAMED = ["tokens", "tensor", "messages"]
EVERY_KIND = [*STREAMED, "unary"]


def call(client: QuillClient, kind: str):
    """One complete call of ``kind``: what a caller gets back (a stream is read to its end)."""
    if kind == "tokens":
        return list(client.stream_tokens(SVC, "Generate", b"prompt"))
    if kind == "tensor":
        return client.call_tensor(SVC, "Embed", TENSOR)
    if kind == "messages":
        return list(client.call_stream(SVC, "Watch", b""))
    return client.call(SVC, "Echo1", b"x")


def check_result(kind: str, result) -> None:
    if kind == "tokens":
        assert len(result) == 20 and result[-1].is_final and [b[0].id for b in result] == list(range(20))
    elif kind == "tensor":
        assert result == TENSOR
    elif kind == "messages":
        assert result == MESSAGES
    else:
        assert result == WIRES["unary"]


class FaultServer(ScriptedServer):
    """Answers ``<SVC>/Echo`` by echoing; every other call gets ``fault(wire, sock)``."""

    def __init__(self, kind: str, fault):
        self.release = threading.Event()  # hanging handlers wait on it; set when the test ends
        wire = WIRES[kind]

        def handler(request, sock):
            if request.path.endswith("/Echo"):
                return echo(request, sock)
            return fault(wire, sock, self.release)

        super().__init__(handler)

    def close(self) -> None:
        self.release.set()
        super().close()


def ends_in(error, kind: str, fault, match: str | None = None):
    """Run the faulty call; it must raise ``error`` in time; then the same client must work."""
    with FaultServer(kind, fault) as server:
        client = QuillClient(server.url, timeout_ms=TIMEOUT_MS, retries=0)
        started = time.monotonic()
        with pytest.raises(error, match=match) as info:
            call(client, kind)
        assert time.monotonic() - started < TIMEOUT_MS / 1000 + SLACK_S
        assert client.call(SVC, "Echo", b"next call") == b"next call"
        return info.value


# ---------------------------------------------------------------- the faults, as handlers

def head_for(wire: bytes, length: int | None = None) -> bytes:
    """A 200 head with Content-Length ``length`` (default: the body's real length)."""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nContent-Length: %d\r\n\r\n"
            % (len(wire) if length is None else length))


def never_answers(wire, sock, release):
    release.wait(30)
    return False


def stalls_mid_body(wire, sock, release):
    sock.sendall(head_for(wire) + wire[: len(wire) // 2])
    release.wait(30)
    return False


def stalls_mid_chunked_body(wire, sock, release):
    sock.sendall(chunked_head() + chunk(wire[: len(wire) // 2]))
    release.wait(30)
    return False


def truncated_chunked(wire, sock, release):
    half = len(wire) // 2
    sock.sendall(chunked_head() + chunk(wire[:half]) + b"%x\r\n" % (len(wire) - half) + wire[half:half + 10])
    return False  # closed mid-chunk


def chunked_without_last_chunk(wire, sock, release):
    half = len(wire) // 2
    sock.sendall(chunked_head() + chunk(wire[:half]))
    return False  # closed between chunks: the terminating 0-chunk never comes


def content_length_longer(wire, sock, release):
    sock.sendall(head_for(wire, len(wire) + 1000) + wire)
    return False


def content_length_shorter(wire, sock, release):
    """The head says less than is sent: the rest lingers on the kept-alive connection."""
    sock.sendall(head_for(wire, len(wire) // 2) + wire)
    return True


def reset_mid_body(wire, sock, release):
    sock.sendall(head_for(wire) + wire[: len(wire) // 2])
    time.sleep(0.05)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return False  # closing with linger 0 sends RST


def garbage_body(wire, sock, release):
    junk = bytes([0x7F]) + b"\xff" * 64 + os.urandom(256)  # unknown frame type, absurd length
    sock.sendall(head_for(junk) + junk)
    return True


def garbage_chunk_mid_stream(wire, sock, release):
    sock.sendall(chunked_head() + chunk(wire[:200]) + chunk(b"\x42" * 64) + chunk(wire[200:]) + LAST_CHUNK)
    return True


def garbage_status_line(wire, sock, release):
    sock.sendall(b"\x16\x03\x01\x02\x00 garbage, not HTTP\r\n\r\n" + wire)
    return False


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("kind", STREAMED)
def test_a_server_that_accepts_and_never_answers_times_out(kind):
    ends_in(QuillTimeoutError, kind, never_answers, match="no answer within 1.5 s")


@pytest.mark.parametrize("kind", EVERY_KIND)
@pytest.mark.parametrize("fault", [stalls_mid_body, stalls_mid_chunked_body])
def test_a_server_that_stalls_mid_body_times_out(kind, fault):
    error = ends_in(QuillTimeoutError, kind, fault)
    assert isinstance(error, TimeoutError)


@pytest.mark.parametrize("kind", EVERY_KIND)
@pytest.mark.parametrize("fault", [truncated_chunked, chunked_without_last_chunk, content_length_longer,
                                   reset_mid_body])
def test_a_body_cut_short_is_a_connection_error(kind, fault):
    error = ends_in(QuillConnectionError, kind, fault)
    assert isinstance(error, ConnectionError) and f"{SVC}/" in str(error)


@pytest.mark.parametrize("kind", STREAMED)
def test_a_content_length_shorter_than_the_frames_is_an_incomplete_stream(kind):
    ends_in(IncompleteStreamError, kind, content_length_shorter, match="ended")


def test_unary_content_length_shorter_never_leaks_into_the_next_call():
    """HTTP cannot tell a short unary answer from a whole one: the client returns the bytes the
    head announced. What must not happen is the surplus being read as the next call's answer."""
    wire = WIRES["unary"]
    with FaultServer("unary", content_length_shorter) as server:
        client = QuillClient(server.url, timeout_ms=TIMEOUT_MS, max_connections=1)
        for _ in range(3):
            assert client.call(SVC, "Echo1", b"x") == wire[: len(wire) // 2]
            time.sleep(0.05)  # the surplus has arrived before the next checkout looks
            assert client.call(SVC, "Echo", b"mine") == b"mine"


@pytest.mark.parametrize("kind", ["tokens", "tensor"])  # message frames carry no type byte to refuse
@pytest.mark.parametrize("fault", [garbage_body, garbage_chunk_mid_stream])
def test_garbage_frames_are_a_decode_error(kind, fault):
    error = ends_in(DecodeError, kind, fault)
    assert isinstance(error, ValueError) and error.offset is not None


@pytest.mark.parametrize("kind", EVERY_KIND)
def test_a_garbage_status_line_is_a_connection_error(kind):
    ends_in(QuillConnectionError, kind, garbage_status_line)


# ---------------------------------------------------------------- the server process is killed

KILLED_MID_BODY = textwrap.dedent("""
    import socket, sys, time
    sys.path.insert(0, {tests!r})
    from client_servers import read_request, chunked_head, chunk
    wire = bytes.fromhex(sys.stdin.readline())
    chunked = sys.argv[1] == "chunked"
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    sock, _ = listener.accept()
    read_request(sock.makefile("rb"), 1)
    half = wire[: len(wire) // 2]
    if chunked:
        sock.sendall(chunked_head() + chunk(half))
    else:
        sock.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/proto\\r\\nContent-Length: %d\\r\\n\\r\\n"
                     % len(wire) + half)
    print("sent", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("kind,framing", [("tokens", "chunked"), ("tensor", "length"), ("tensor", "chunked")])
def test_server_killed_mid_stream_then_a_restarted_server_serves_the_same_client(kind, framing):
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_BODY.format(tests=os.path.dirname(__file__)), framing],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        process.stdin.write(WIRES[kind].hex() + "\n")
        process.stdin.flush()
        port = int(process.stdout.readline())
        client = QuillClient(f"http://127.0.0.1:{port}", timeout_ms=10_000, retries=0)
        got = []
        started = time.monotonic()
        with pytest.raises(QuillConnectionError):
            if kind == "tokens":
                stream = client.stream_tokens(SVC, "Generate", b"prompt")
                got.append(next(stream))  # the first half arrived and is handed out as it came
                assert process.stdout.readline().strip() == "sent"
                process.send_signal(signal.SIGKILL)
                got.extend(stream)
            else:
                threading.Timer(0.3, process.send_signal, (signal.SIGKILL,)).start()
                got.append(client.call_tensor(SVC, "Embed", TENSOR))
        assert time.monotonic() - started < 8  # the kill was noticed, not the 10 s timeout
        if kind == "tokens":
            assert 1 <= len(got) < 20 and not got[-1].is_final
        else:
            assert got == []  # no tensor, not even a partial one
        process.wait()
        with ScriptedServer(echo, port=port):  # the service comes back on the same port
            assert client.call(SVC, "Echo", b"after the restart") == b"after the restart"
    finally:
        process.kill()
        process.wait()


def test_the_reference_server_killed_mid_token_stream_then_restarted():
    slow = {"prompt": "the", "max_tokens": 1000, "token_delay_ms": 2}
    with quill_serve() as server:
        client = QuillClient(server.url, timeout_ms=10_000)
        stream = client.stream_tokens("inference.v1.LLMService", "Generate", slow)
        got = [next(stream), next(stream)]
        server.process.send_signal(signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(QuillConnectionError, match="mid-token stream"):
            got.extend(stream)
        assert time.monotonic() - started < 8 and not got[-1].is_final and sum(map(len, got)) < 1000
        port = server.url.rsplit(":", 1)[1]
    with quill_serve("--port", port):
        batches = list(client.stream_tokens("inference.v1.LLMService", "Generate", {"prompt": "the", "max_tokens": 5}))
        assert sum(map(len, batches)) == 5 and batches[-1].is_final


# ---------------------------------------------------------------- 429 and 503 with Retry-After

def busy_then_ok(kind: str, statuses: list[int], retry_after: str):
    """Answer 429/503 (with Retry-After) for the first len(statuses) calls, then the real answer."""
    answered = []

    def handler(request, sock):
        answered.append(time.monotonic())
        if len(answered) <= len(statuses):
            status = statuses[len(answered) - 1]
            body = b'{"type":"about:blank","title":"busy","status":%d}' % status
            sock.sendall(response(status, body, "application/problem+json", {"Retry-After": retry_after}))
        elif kind == "tokens":
            sock.sendall(chunked_head() + chunk(TOKEN_WIRE) + LAST_CHUNK)
        else:
            sock.sendall(head_for(WIRES[kind]) + WIRES[kind])

    return ScriptedServer(handler), answered


@pytest.mark.parametrize("kind", EVERY_KIND)
@pytest.mark.parametrize("status,error", [(429, RateLimitedError), (503, ServiceUnavailableError)])
def test_429_and_503_raise_with_retry_after_when_not_retrying(kind, status, error):
    server, answered = busy_then_ok(kind, [status], "0.2")
    with server:
        client = QuillClient(server.url, timeout_ms=TIMEOUT_MS)  # status_retries=0: the default
        with pytest.raises(error) as info:
            call(client, kind)
        assert info.value.status == status and info.value.retry_after == pytest.approx(0.2)
        assert info.value.problem.title == "busy" and len(answered) == 1
        check_result(kind, call(client, kind))  # the connection was kept and the client works
        assert server.connections == 1


@pytest.mark.parametrize("kind", EVERY_KIND)
def test_status_retries_wait_as_retry_after_says_then_succeed(kind):
    server, answered = busy_then_ok(kind, [429, 503], "0.2")
    with server:
        client = QuillClient(server.url, timeout_ms=TIMEOUT_MS, status_retries=2)
        check_result(kind, call(client, kind))
        assert len(answered) == 3
        gaps = np.diff(answered)
        assert np.all(gaps >= 0.19), gaps


def test_retry_after_as_an_http_date():
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    server, answered = busy_then_ok("unary", [503], when)
    with server:
        with pytest.raises(ServiceUnavailableError) as info:
            QuillClient(server.url).call(SVC, "Echo1", b"x")
        assert 0.5 < info.value.retry_after <= 2.0


def test_status_retries_give_up_on_a_retry_after_beyond_the_timeout_or_when_exhausted():
    server, answered = busy_then_ok("unary", [503] * 5, "30")
    with server:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as info:
            QuillClient(server.url, timeout_ms=TIMEOUT_MS, status_retries=3).call(SVC, "Echo1", b"x")
        assert time.monotonic() - started < TIMEOUT_MS / 1000  # no 30 s sleep: it would outlast the timeout
        assert info.value.retry_after == 30 and len(answered) == 1
    server, answered = busy_then_ok("unary", [429] * 5, "0")
    with server:
        with pytest.raises(RateLimitedError):
            QuillClient(server.url, timeout_ms=TIMEOUT_MS, status_retries=2).call(SVC, "Echo1", b"x")
        assert len(answered) == 3  # the first try and two retries
