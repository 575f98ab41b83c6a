"""How the server sends answers, seen at the ASGI interface itself: QuillApp called in memory
with a scripted ``receive`` and a recording ``send`` (no engine, no socket), so each message
handed to the engine can be checked: its type, size and whether it shares the tensor's memory.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from quill.frames import TensorReceiver, encode_tensor_frames
from quill.protocol.constants import PROTO
from quill.server import QuillApp, exchange
from quill.server.exchange import SEND_BYTES_EXTENSION
from quill.server.kinds import SEND_BLOCK_BYTES, TENSOR_ANSWER_FRAME_BYTES, _blocks
from quill.tensor import Tensor

TENSOR = Tensor.from_numpy(np.arange(3 << 20, dtype=np.uint8).reshape(3, 1 << 20), name="t")


def tensor_app() -> QuillApp:
    app = QuillApp()

    @app.tensor("t.v1.T/Get")
    async def get(request, context):
        return TENSOR

    return app


def call(app: QuillApp, path: str, body: bytes = b"", headers=(), extensions=None, sent=None) -> list[dict]:
    """Run one HTTP call through ``app`` in memory; return the messages it sent (into ``sent``
    when given: a handler can look at it midway)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
             "headers": [(b"content-type", PROTO.encode()), *headers], "client": ("127.0.0.1", 1)}
    if extensions is not None:
        scope["extensions"] = extensions
    requests = [{"type": "http.request", "body": body, "more_body": False}]
    sent = [] if sent is None else sent

    async def receive():
        if requests:
            return requests.pop(0)
        await asyncio.sleep(3600)  # no disconnect while the answer is sent

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def body_of(messages: list[dict]) -> bytes:
    return b"".join(bytes(m["body"]) for m in messages if m["type"] == "http.response.body")


def test_tensor_answer_payloads_are_views_of_the_tensor():
    messages = call(tensor_app(), "/t.v1.T/Get")
    start, bodies = messages[0], messages[1:]
    assert start["status"] == 200 and dict(start["headers"])[b"content-length"] == b"%d" % len(body_of(messages))
    views = [m["body"] for m in bodies if isinstance(m["body"], memoryview)]
    assert len(views) == TENSOR.size_bytes // TENSOR_ANSWER_FRAME_BYTES == 3
    base = np.frombuffer(TENSOR.data, dtype=np.uint8)
    for view in views:  # zero copy: every payload shares the tensor's memory
        assert np.shares_memory(np.frombuffer(view, dtype=np.uint8), base)
    receiver = TensorReceiver()
    assert receiver.feed(body_of(messages)) == TENSOR


def test_tensor_answer_in_bytes_blocks_for_an_engine_that_asks():
    messages = call(tensor_app(), "/t.v1.T/Get", extensions={SEND_BYTES_EXTENSION: {}})
    bodies = [m["body"] for m in messages[1:]]
    assert all(type(b) is bytes for b in bodies)
    assert all(len(b) >= SEND_BLOCK_BYTES for b in bodies[:-1]) and len(bodies) <= TENSOR.size_bytes // SEND_BLOCK_BYTES + 1
    assert [m["more_body"] for m in messages[1:]] == [True] * (len(bodies) - 1) + [False]
    wire = b"".join(bytes(p) for p in encode_tensor_frames(TENSOR, chunk_size=TENSOR_ANSWER_FRAME_BYTES))
    assert body_of(messages) == wire


def test_tensor_blocks_are_joined_one_at_a_time_as_they_are_sent(monkeypatch):
    """Never the whole tensor copied at once: at most the block being sent and the next one exist."""
    import quill.server.kinds as kinds

    events = []
    blocks = kinds._blocks

    def recording_blocks(pieces, size):
        for block in blocks(pieces, size):
            events.append("joined")
            yield block

    monkeypatch.setattr(kinds, "_blocks", recording_blocks)

    class Recording(list):
        def append(self, message):
            if message.get("type") == "http.response.body":
                events.append("sent")
            super().append(message)

    sent = Recording()
    call(tensor_app(), "/t.v1.T/Get", extensions={SEND_BYTES_EXTENSION: {}}, sent=sent)
    ahead = [events[:i].count("joined") - events[:i].count("sent") for i in range(len(events) + 1)]
    assert events.count("joined") == events.count("sent") >= 3 and max(ahead) <= 2


@pytest.mark.parametrize("size", [1, 9, 100, 1 << 16])
def test_blocks_keep_the_bytes_in_order(size):
    pieces = list(encode_tensor_frames(Tensor.from_numpy(np.arange(1000, dtype=np.int32)), chunk_size=97))
    blocks = list(_blocks(pieces, size))
    assert b"".join(blocks) == b"".join(bytes(p) for p in pieces)
    assert all(len(b) >= size for b in blocks[:-1])


def test_which_engines_ask_for_bytes_bodies(engine):
    """granian converts a memoryview body element by element (76 MB/s for a tensor answer,
    against 1.6 GB/s in bytes blocks): its adapter asks for bytes; the others take views."""
    import urllib3

    from quill.server import serve_in_thread

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        flag = b"yes" if SEND_BYTES_EXTENSION in (scope.get("extensions") or {}) else b"no"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(flag))]})
        await send({"type": "http.response.body", "body": flag})

    with serve_in_thread(app, engine=engine) as url:
        answer = urllib3.PoolManager(retries=False).request("GET", url + "/", timeout=10).data
    assert answer == (b"yes" if engine == "granian" else b"no")


# ----------------------------------------------------------------------------------------
# zstd for streamed answers: frame by frame, never buffered
# ----------------------------------------------------------------------------------------
from quill._core.tokens import Token, TokenBatch  # noqa: E402
from quill.frames import MessageStreamDecoder, StreamFlags, StreamFrameParser, TokenStreamDecoder  # noqa: E402
from quill.protocol.compression import ZstdDecoder  # noqa: E402

ZSTD = [(b"accept-encoding", b"zstd")]


def stream_app() -> QuillApp:
    app = QuillApp()

    @app.server_stream("s.v1.S/Count")
    async def count(request, context):
        for i in range(int(request)):
            yield b"message %d " % i * 20

    @app.server_stream("s.v1.S/Fail")
    async def fail(request, context):
        yield b"first"
        raise RuntimeError("the model fell over")

    @app.token_stream("s.v1.S/Tokens")
    async def tokens(request, context):
        for i in range(int(request)):
            yield TokenBatch.from_tokens([Token(7, i, text=" tok", logprob=-0.5)])

    return app


def decoded_per_message(messages: list[dict]) -> list[bytes]:
    """Each body message decoded as soon as it is handed on (what a streaming client sees)."""
    decoder = ZstdDecoder()
    out = [decoder.decompress(m["body"]) for m in messages if m["type"] == "http.response.body"]
    decoder.finish()
    return out


def test_message_stream_compressed_in_whole_frames():
    messages = call(stream_app(), "/s.v1.S/Count", b"50", headers=ZSTD)
    assert dict(messages[0]["headers"])[b"content-encoding"] == b"zstd"
    assert b"content-length" not in dict(messages[0]["headers"])
    decoded = decoded_per_message(messages)
    assert [bytes(f.payload) for f in whole_frames(decoded) if f.flags == StreamFlags.DATA] == [
        b"message %d " % i * 20 for i in range(50)
    ]
    assert sum(len(m["body"]) for m in messages[1:]) < len(b"".join(decoded)) / 2  # it did compress


def whole_frames(pieces: list[bytes]) -> list:
    """The stream frames of ``pieces``, each piece read on its own: it must hold whole frames
    (what a client decodes as soon as the piece arrives)."""
    frames = []
    for piece in pieces:
        parser = StreamFrameParser()
        frames += parser.feed(piece)
        parser.finish()  # raises for a frame cut at the piece's end
    return frames


def test_frames_made_back_to_back_go_out_joined(monkeypatch):
    monkeypatch.setattr(exchange, "QUICK_ITEM_SECONDS", float("inf"))  # however loaded the machine
    messages = call(stream_app(), "/s.v1.S/Count", b"50")
    bodies = [m["body"] for m in messages[1:]]
    assert len(bodies) == 2  # the first message at once, then the other 49 and END_STREAM together
    assert len(whole_frames(bodies)) == 51


def test_frames_held_to_be_joined_go_out_before_the_cancel_frame(monkeypatch):
    monkeypatch.setattr(exchange, "QUICK_ITEM_SECONDS", float("inf"))
    app = QuillApp()

    @app.server_stream("s.v1.S/FailLate")
    async def fail_late(request, context):
        yield b"a"
        yield b"b"
        yield b"c"
        raise RuntimeError("the model fell over")

    frames = whole_frames([m["body"] for m in call(app, "/s.v1.S/FailLate")[1:]])
    assert [bytes(f.payload) for f in frames[:-1]] == [b"a", b"b", b"c"] and frames[-1].flags & StreamFlags.CANCEL


def test_a_frame_made_is_sent_before_the_handler_waits(monkeypatch):
    monkeypatch.setattr(exchange, "QUICK_ITEM_SECONDS", float("inf"))
    sent: list[dict] = []
    seen: list[list] = []
    app = QuillApp()

    @app.server_stream("s.v1.S/Wait")
    async def wait(request, context):
        yield b"a"
        yield b"b"  # ready at once: held to be joined...
        await asyncio.sleep(0)  # ...until the handler waits
        seen.append([bytes(f.payload) for f in whole_frames([m["body"] for m in sent[1:]])])
        yield b"c"

    call(app, "/s.v1.S/Wait", sent=sent)
    assert seen == [[b"a", b"b"]]


def test_a_handler_computing_between_items_gets_each_frame_sent_at_once():
    sent: list[dict] = []
    seen: list[list] = []
    app = QuillApp()

    @app.server_stream("s.v1.S/Compute")
    async def compute(request, context):
        for message in (b"a", b"b", b"c"):
            seen.append([bytes(f.payload) for f in whole_frames([m["body"] for m in sent[1:]])])
            time.sleep(0.002)  # blocking work, no await: longer than QUICK_ITEM_SECONDS
            yield message

    call(app, "/s.v1.S/Compute", sent=sent)
    assert seen == [[], [b"a"], [b"a", b"b"]]


def test_token_stream_compressed_and_q0_is_not():
    decoded = decoded_per_message(call(stream_app(), "/s.v1.S/Tokens", b"30", headers=ZSTD))
    decoder = TokenStreamDecoder()
    batches = [b for piece in decoded for b in decoder.feed(piece)]
    decoder.finish()
    assert [b.token_ids() for b in batches] == [[7]] * 30
    plain = call(stream_app(), "/s.v1.S/Tokens", b"30", headers=[(b"accept-encoding", b"zstd;q=0")])
    assert b"content-encoding" not in dict(plain[0]["headers"])
    assert b"".join(decoded) == body_of(plain)


def test_failing_stream_ends_with_a_compressed_cancel_frame():
    decoded = decoded_per_message(call(stream_app(), "/s.v1.S/Fail", headers=ZSTD))
    frames = MessageStreamDecoder()
    assert frames.feed(decoded[0]) == [b"first"]
    parser = StreamFrameParser()
    (cancel,) = parser.feed(decoded[1])
    assert cancel.flags & StreamFlags.CANCEL and b"500 Internal server error" in bytes(cancel.payload)


def test_tensor_compressed_in_blocks_without_content_length():
    noise = Tensor.from_numpy(np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8))
    app = QuillApp()

    @app.tensor("t.v1.T/Noise")
    async def get(request, context):
        return noise

    messages = call(app, "/t.v1.T/Noise", headers=ZSTD)
    headers = dict(messages[0]["headers"])
    assert headers[b"content-encoding"] == b"zstd" and b"content-length" not in headers
    bodies = [m["body"] for m in messages[1:]]
    assert len(bodies) >= 3 and all(len(b) < 2 * SEND_BLOCK_BYTES for b in bodies)  # sent as it is compressed
    decoder = ZstdDecoder()
    wire = b"".join(decoder.decompress(b) for b in bodies)
    decoder.finish()
    assert wire == b"".join(bytes(p) for p in encode_tensor_frames(noise, chunk_size=TENSOR_ANSWER_FRAME_BYTES))
    compressible = decoded_per_message(call(tensor_app(), "/t.v1.T/Get", headers=ZSTD))
    assert b"".join(compressible) == b"".join(bytes(p) for p in encode_tensor_frames(TENSOR, chunk_size=TENSOR_ANSWER_FRAME_BYTES))


BIG = bytes(range(256)) * 1024  # 256 KiB


def big_message_app() -> QuillApp:
    app = QuillApp()

    @app.server_stream("s.v1.S/Big")
    async def big(request, context):
        yield b"small"
        yield BIG
        yield memoryview(BIG)[: 100 * 1024]

    return app


def test_large_stream_messages_go_out_uncopied_after_their_header():
    messages = call(big_message_app(), "/s.v1.S/Big")
    bodies = [m["body"] for m in messages[1:]]
    assert any(b is BIG for b in bodies)  # the handler's own buffer, not a joined copy
    decoder = MessageStreamDecoder()
    assert decoder.feed(body_of(messages)) == [b"small", BIG, BIG[: 100 * 1024]]
    decoder.finish()


@pytest.mark.parametrize("headers, extensions", [(ZSTD, None), ((), {SEND_BYTES_EXTENSION: {}})])
def test_large_stream_messages_joined_when_compressed_or_for_bytes_engines(headers, extensions):
    messages = call(big_message_app(), "/s.v1.S/Big", headers=headers, extensions=extensions)
    bodies = [m["body"] for m in messages[1:]]
    assert len(bodies) == 4 and all(type(b) is bytes for b in bodies)  # one message per frame
    data = b"".join(decoded_per_message(messages)) if headers else body_of(messages)
    decoder = MessageStreamDecoder()
    assert decoder.feed(data) == [b"small", BIG, BIG[: 100 * 1024]]
