"""Hostile answers at the decoding layer: zstd bombs in tensor, message-stream and token-stream
answers, zstd windows over 8 MiB, and Content-Length values that are not ASCII digits.

A raw loopback server (tests/client_servers.py) plays the server; every test runs over both
clients (tests/client_kinds.py). Peak memory is the peak of tracemalloc (every thread, the
async client's loop included) while the call runs: the decoded pieces of a bomb are Python
bytes, so decoding one in full shows up there. The server side gets the same Content-Length
values through a raw socket on every engine, and through the ASGI interface itself (an engine
that passes the header through).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sys
import tracemalloc

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_kinds import CLIENTS  # noqa: E402
from client_servers import ScriptedServer, echo  # noqa: E402
from test_server_sending import call as asgi_call  # noqa: E402

from quill._tokens import Token, TokenBatch  # noqa: E402
from quill.errors import DecodeError, QuillError  # noqa: E402
from quill.frames import (  # noqa: E402
    END_STREAM_FRAME,
    encode_end_stream,
    encode_stream_frame,
    encode_tensor_frames,
    encode_token_batch_frame,
)
from quill.protocol.compression import coding_weights, compress  # noqa: E402
from quill.protocol.numbers import content_length, is_decimal, parse_decimal, parse_real  # noqa: E402
from quill.protocol.responses import parse_retry_after  # noqa: E402
from quill.server import QuillApp, serve_in_thread  # noqa: E402
from quill.tensor import Tensor  # noqa: E402

try:
    from compression import zstd
except ImportError:
    from backports import zstd

SVC = "bomb.v1.Bombs"
GIB = 1 << 30
PEAK_LIMIT = 32 << 20  # what a call may hold at its peak, whatever the answer expands to
TENSOR = Tensor.from_numpy(np.arange(16, dtype=np.float32), name="small")


def token_frame(start: int, count: int = 1, final: bool = False) -> bytes:
    """A TOKEN_BATCH frame of tokens ``start`` .. ``start + count - 1``."""
    batch = TokenBatch(sequence_id=1)
    for i in range(start, start + count):
        batch.add(Token.with_text(i, f"t{i}", i, logprob=-0.5))
    batch.is_final = final
    return encode_token_batch_frame(batch)


WIRES = {
    "tensor": b"".join(bytes(p) for p in encode_tensor_frames(TENSOR)),
    "messages": encode_stream_frame(b"one") + encode_stream_frame(b"two") + encode_end_stream(),
    "tokens": token_frame(0) + token_frame(1, final=True) + END_STREAM_FRAME,
}
ITEM_FRAMES = {"messages": encode_stream_frame(bytes(4096)), "tokens": token_frame(0, count=50)}


@functools.lru_cache(maxsize=None)
def expanding(block: bytes, size: int) -> bytes:
    """One zstd frame of ``block`` repeated up to ``size`` bytes: 32 KiB for 1 GiB of zeros."""
    compressor = zstd.ZstdCompressor()
    block *= max(1, (1 << 20) // len(block))
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join(parts) + compressor.flush()


def call(client, kind: str, first: int | None = None):
    """One call of ``kind``; for a stream, its items (only the ``first`` ones, then it is closed)."""
    if kind == "tensor":
        return client.call_tensor(SVC, "Embed", TENSOR)
    if kind == "unary":
        return client.call(SVC, "Echo1", b"x")
    stream = client.call_stream(SVC, "Watch", b"") if kind == "messages" else client.stream_tokens(SVC, "Gen", b"")
    with stream:
        return [item for _, item in zip(range(first or 1 << 62), stream)]


def scripted(body: bytes, head: bytes = b"Content-Encoding: zstd\r\n", length: bytes | None = None):
    """A server answering ``<SVC>/Echo`` by echoing, everything else with ``body`` (and ``head``)."""
    def handler(request, sock):
        if request.path.endswith("/Echo"):
            return echo(request, sock)
        declared = b"%d" % len(body) if length is None else length
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\n" + head
                     + b"Content-Length: " + declared + b"\r\n\r\n" + body)
        return False
    return ScriptedServer(handler)


@contextlib.contextmanager
def traced_peak():
    """Yields a list that holds, after the block, the peak of traced memory during it."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    out: list = []
    try:
        yield out
    finally:
        out.append(tracemalloc.get_traced_memory()[1] - before)
        if not tracing:
            tracemalloc.stop()


@pytest.fixture
def client_kind(request):
    return request.param


@pytest.fixture
def make_client(client_kind):
    made = []

    def make(url: str):
        made.append(CLIENTS[client_kind](url, retries=0, timeout_ms=10_000))
        return made[-1]

    yield make
    for client in made:
        client.close()


# ---------------------------------------------------------------- zstd bombs

@pytest.mark.parametrize("kind", ["tensor", "messages", "tokens"])
def test_a_zstd_bomb_after_end_stream_is_refused_in_bounded_memory(make_client, kind):
    """A small answer, then 32 KiB of zstd that expands to 1 GiB after its END_STREAM: the first
    stray piece is refused, and no more than a piece of the bomb is ever decoded."""
    bomb = expanding(bytes(1), GIB)
    assert len(bomb) < 64 << 10
    with scripted(compress(WIRES[kind]) + bomb) as server:
        client = make_client(server.url)
        with traced_peak() as peak, pytest.raises(DecodeError, match="after END_STREAM"):
            call(client, kind)
        assert peak[0] < PEAK_LIMIT
        assert client.call(SVC, "Echo", b"next") == b"next"


@pytest.mark.parametrize("kind", ["messages", "tokens"])
def test_a_chunk_expanding_into_a_flood_of_items_is_handed_out_piece_by_piece(make_client, kind):
    """A 256 MiB stream of valid items in a few KiB of zstd: the first items arrive while the rest
    is still compressed; closing the stream leaves it undecoded."""
    body = expanding(ITEM_FRAMES[kind], 256 << 20)
    with scripted(body) as server:
        client = make_client(server.url)
        with traced_peak() as peak:
            items = call(client, kind, first=3)
        assert len(items) == 3 and peak[0] < PEAK_LIMIT


@pytest.mark.parametrize("kind", ["messages", "tokens"])
def test_a_compressed_stream_decoding_into_many_pieces_arrives_whole_and_in_order(make_client, kind):
    """Items that cross the 1 MiB piece boundaries of one compressed chunk, all taken in turn."""
    if kind == "messages":
        sent = [bytes([i]) * (100_000 + i) for i in range(40)]
        wire = b"".join(encode_stream_frame(m) for m in sent) + encode_end_stream()
    else:
        sent = list(range(200_000))
        wire = b"".join(token_frame(i, 50, final=i + 50 == len(sent)) for i in sent[::50]) + END_STREAM_FRAME
    assert len(wire) > 3 << 20
    with scripted(compress(wire)) as server:
        got = call(make_client(server.url), kind)
    assert (got if kind == "messages" else [token.id for batch in got for token in batch]) == sent


def test_a_zstd_window_over_8_mib_is_refused(make_client):
    """RFC 9659: the zstd content coding's window is at most 8 MiB; a frame asking for 128 MiB
    would have the decoder allocate (and fill) that much."""
    data = os.urandom(1 << 16) * 64 + bytes(16 << 20)  # content over 8 MiB, matches far back
    body = zstd.compress(data, options={zstd.CompressionParameter.window_log: 27})
    with scripted(body) as server:
        client = make_client(server.url)
        with pytest.raises(DecodeError, match="not valid zstd: .*too much memory"):
            client.call(SVC, "Echo1", b"x")
        assert client.call(SVC, "Echo", b"next") == b"next"


# ---------------------------------------------------------------- Content-Length that is not ASCII digits

BAD_LENGTHS = {"superscript two": "²".encode("latin-1"), "Arabic-Indic 12": "١٢".encode(),
               "plus sign": b"+3", "two values": b"3, 4"}


@pytest.mark.parametrize("value", BAD_LENGTHS.values(), ids=BAD_LENGTHS.keys())
@pytest.mark.parametrize("kind", ["unary", "tensor", "messages", "tokens"])
def test_a_malformed_content_length_in_an_answer_is_a_quill_error(make_client, kind, value):
    with scripted(WIRES.get(kind, b"abc"), head=b"", length=value) as server:
        client = make_client(server.url)
        with pytest.raises(QuillError, match="Content-Length"):
            call(client, kind)
        assert client.call(SVC, "Echo", b"next") == b"next"


def echo_app() -> QuillApp:
    app = QuillApp(max_request_bytes=1 << 20)

    @app.unary("e.v1.E/Echo")
    def echo_handler(request, context):
        return bytes(request)

    return app


def raw_post(url: str, length: bytes) -> bytes:
    """POST ``hello`` with Content-Length ``length`` over a raw socket; the start of the answer."""
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /e.v1.E/Echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/proto\r\n"
                     b"Connection: close\r\nContent-Length: " + length + b"\r\n\r\nhello")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_a_malformed_content_length_in_a_request_is_400_on_every_engine(engine):
    with serve_in_thread(echo_app(), engine=engine) as url:
        for value in BAD_LENGTHS.values():
            assert raw_post(url, value).startswith(b"HTTP/1.1 400"), value
        assert raw_post(url, b"5").endswith(b"\r\n\r\nhello")


@pytest.mark.parametrize("value", BAD_LENGTHS.values(), ids=BAD_LENGTHS.keys())
def test_a_malformed_content_length_passed_through_by_an_engine_is_a_400_problem(value):
    """The app's own check, for an engine that hands the header on as it came (was a 500)."""
    messages = asgi_call(echo_app(), "/e.v1.E/Echo", b"hello", headers=[(b"content-length", value)])
    assert messages[0]["status"] == 400
    problem = json.loads(b"".join(m["body"] for m in messages[1:]))
    assert "Content-Length header" in problem["detail"] and repr(value.decode("latin-1")) in problem["detail"]


def test_a_repeated_identical_content_length_counts_once():
    messages = asgi_call(echo_app(), "/e.v1.E/Echo", b"hello", headers=[(b"content-length", b"5, 5")])
    assert messages[0]["status"] == 200 and messages[1]["body"] == b"hello"


# ---------------------------------------------------------------- the number parsers themselves

@pytest.mark.parametrize("text", ["²", "١٢", "+5", "-5", "1_0", "0x5", "", "５", "5\n"])
def test_only_ascii_digits_are_a_decimal(text):
    assert not is_decimal(text) and not is_decimal(text.encode())
    with pytest.raises(DecodeError, match="not a decimal number"):
        parse_decimal(text, "Content-Length header")
    with pytest.raises(DecodeError, match="Content-Length header"):
        content_length({"content-length": text}, "s/M")


def test_decimals_and_their_bounds():
    assert parse_decimal("0042", "x") == 42 and parse_decimal(b"7", "x", maximum=7) == 7
    with pytest.raises(DecodeError, match="over the maximum of 7"):
        parse_decimal("8", "x", maximum=7)
    assert content_length({"content-length": "12"}, "s/M") == 12
    with pytest.raises(DecodeError, match="conflicting Content-Length header '3, 4'"):
        content_length({"content-length": "3, 4"}, "s/M")


@pytest.mark.parametrize("text", ["١٢", "1_0", "nan", "inf", "1e3", "+5", ".5", "--1"])
def test_retry_after_and_q_values_take_ascii_decimals_only(text):
    assert parse_real(text) is None and parse_retry_after(text) is None
    assert coding_weights(f"zstd;q={text}") == {"zstd": 0.0}


def test_retry_after_and_q_values_still_read_what_they_read():
    assert parse_retry_after("0.05") == 0.05 and parse_retry_after(" 7 ") == 7.0 and parse_retry_after("-3") == 0.0
    assert coding_weights("zstd;q=0.5, gzip;q=1., br;q=0") == {"zstd": 0.5, "gzip": 1.0, "br": 0.0}
