"""Write docs/bad-inputs.md: bad inputs fed to every decoder and what each one answers.

Every row is produced by running the input through quill now: the exception class and its
message (or what the decoder returned, for the inputs it accepts on purpose) are real
outputs, never typed in. A second table comes from live calls of both clients to misbehaving
loopback servers (tests/bad_peers.py). tests/test_bad_inputs.py checks that the committed
tables are current.

    python tools/bad_inputs_table.py            # rewrite docs/bad-inputs.md
    python tools/bad_inputs_table.py --check    # exit 1 if it is out of date
"""

import pathlib
import struct
import sys

from quill._core.tokens import Token, TokenBatch
from quill.errors import ProblemDetails
from quill.frames import (
    MessageStreamDecoder,
    StreamFrameParser,
    TensorDataChunk,
    TensorFrameParser,
    TensorReceiver,
    TokenStreamDecoder,
    decode_varint,
    encode_cancel_frame,
    encode_stream_frame,
    encode_tensor_frame,
    encode_token_batch_frame,
    tensor_frame_header,
)
from quill.protocol.compression import ZstdDecoder, compress, compress_stream
from quill.protocol.responses import BytesConsumer, FrameConsumer, TensorConsumer, parse_retry_after
from quill.tensor import TensorMeta

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the misbehaving servers, and the async client made blocking
from bad_peers import SERVICE, UPLOADS, early_answer_server, reset_after_read_server  # noqa: E402
from client_kinds import CLIENTS  # noqa: E402

TABLE_PATH = ROOT / "docs" / "bad-inputs.md"
MAX_SHOWN_INPUT = 48
PEERS_HEADING = "## Misbehaving servers"


def meta_bytes(shape, dtype_code=1, device=0, byte_size=None, name=b"", name_len=None):
    """A TENSOR_META payload with every field under the caller's control (docs/protocol.md section 4)."""
    if byte_size is None:
        count = 1
        for dim in shape:
            count *= dim
        byte_size = (count * 4) & (2**64 - 1)
    out = bytes([len(shape)]) + b"".join(struct.pack("<Q", d) for d in shape)
    out += bytes([dtype_code, device]) + struct.pack("<Q", byte_size)
    return out + struct.pack("<H", len(name) if name_len is None else name_len) + name


GOOD_TOKEN = Token(7, 0, "hi", -0.5).encode()
GOOD_BATCH = TokenBatch.from_tokens([Token(1, 0, "a"), Token(2, 1, "b")], 3).encode()
GOOD_META = meta_bytes([2, 2])
META_FRAME = encode_tensor_frame(0x10, GOOD_META)
END = tensor_frame_header(0x02, 0)


def feed_whole(make_parser):
    """Feed the stream in one chunk, then finish; return what was produced."""
    def run(stream):
        parser = make_parser()
        produced = parser.feed(stream)
        parser.finish()
        return produced
    return run


def client_for_url(url: bytes) -> str:
    """What a client makes of a base_url: how it shows itself, and the Authorization its requests carry."""
    from quill.client import QuillClient

    client = QuillClient(url.decode())
    sent = dict(client._core.request("unary", "s.v1.S", "M", b"").headers).get("Authorization")
    client.close()
    return f"{client!r}, requests sent with Authorization: {sent}"


def consume(make_consumer):
    """Feed a response body to a consumer in one chunk (and what it still holds back), then finish."""
    def run(body):
        consumer = make_consumer()
        produced = consumer.feed(body)
        while getattr(consumer, "backlog", False):
            produced += consumer.feed(b"")
        return consumer.finish() if produced is None else produced
    return run


ZSTD = {"content-encoding": "zstd"}
#: One zstd frame that expands to 1 GiB of zeros.
ZSTD_BOMB = b"".join(compress_stream(bytes(1 << 20) for _ in range(1024)))
BOMB_AFTER_END = f"a small answer, then {len(ZSTD_BOMB) >> 10} KiB of zstd expanding to 1 GiB after END_STREAM"
#: A zstd frame header asking for a 128 MiB window (Window_Descriptor 0x88), then a 1-byte raw block.
ZSTD_WIDE_WINDOW = b"\x28\xb5\x2f\xfd\x00\x88\x09\x00\x00x"


def content_length_of(encoding):
    """A response whose Content-Length header is ``value`` decoded as ``encoding``."""
    return lambda value: BytesConsumer({"content-length": value.decode(encoding)}, 1 << 20, "s/M")


# (decoder, what is wrong, input bytes, call)
CASES = [
    ("Token.decode", "empty input", b"", Token.decode),
    ("Token.decode", "8 of the 9 fixed bytes", GOOD_TOKEN[:8], Token.decode),
    ("Token.decode", "has_logprob set, logprob cut short", GOOD_TOKEN[:11], Token.decode),
    ("Token.decode", "text_len says 2, 1 text byte present", GOOD_TOKEN[:-1], Token.decode),
    ("Token.decode", "a byte after the token", GOOD_TOKEN + b"\0", Token.decode),
    ("Token.decode", "text is invalid UTF-8 (accepted: U+FFFD, as the reference)",
     GOOD_TOKEN[:-2] + b"\xff\xfe", Token.decode),
    ("Token.decode_prefix", "empty input", b"", Token.decode_prefix),
    ("TokenBatch.decode", "empty input", b"", TokenBatch.decode),
    ("TokenBatch.decode", "count says 65,535 tokens, none present",
     b"\x00\xff\xff", TokenBatch.decode),
    ("TokenBatch.decode", "sequence_id flag set, sequence_id cut short", GOOD_BATCH[:3], TokenBatch.decode),
    ("TokenBatch.decode", "second token cut short", GOOD_BATCH[:-1], TokenBatch.decode),
    ("TokenBatch.decode", "a byte after the last token", GOOD_BATCH + b"\0", TokenBatch.decode),
    ("TensorMeta.decode", "empty input", b"", TensorMeta.decode),
    ("TensorMeta.decode", "ndim 3, one dimension present", meta_bytes([2, 2])[:9].replace(b"\x02", b"\x03", 1),
     TensorMeta.decode),
    ("TensorMeta.decode", "dtype code 0 (unspecified)", meta_bytes([2], dtype_code=0), TensorMeta.decode),
    ("TensorMeta.decode", "dtype code 42", meta_bytes([2], dtype_code=42), TensorMeta.decode),
    ("TensorMeta.decode", "device code 7", meta_bytes([2], device=7), TensorMeta.decode),
    ("TensorMeta.decode", "byte_size disagrees with the shape", meta_bytes([2, 2], byte_size=15),
     TensorMeta.decode),
    ("TensorMeta.decode", "shape product overflows 64 bits", meta_bytes([2**40, 2**40], byte_size=0),
     TensorMeta.decode),
    ("TensorMeta.decode", "name_len 10, 3 name bytes present", meta_bytes([2], name=b"abc", name_len=10),
     TensorMeta.decode),
    ("TensorMeta.decode", "a byte after the name", GOOD_META + b"\0", TensorMeta.decode),
    ("TensorMeta.decode(max_bytes=2**30)", "meta claiming 2**60 bytes (refused before allocating)",
     meta_bytes([2**58], byte_size=2**60), lambda b: TensorMeta.decode(b, max_bytes=2**30)),
    ("decode_varint", "empty input", b"", decode_varint),
    ("decode_varint", "continuation bit set on the last byte", b"\x80\x80", decode_varint),
    ("decode_varint", "11-byte varint", b"\x80" * 10 + b"\x01", decode_varint),
    ("decode_varint", "10-byte varint over 2**64", b"\xff" * 9 + b"\x02", decode_varint),
    ("TensorFrameParser", "unknown frame type 0x7f", b"\x7f" + bytes(8), feed_whole(TensorFrameParser)),
    ("TensorFrameParser(max_payload=1024)", "header claiming a 4 GiB payload (refused at the header)",
     tensor_frame_header(0x11, 2**32 - 1), feed_whole(lambda: TensorFrameParser(max_payload=1024))),
    ("TensorFrameParser", "stream ends inside a header", END[:5], feed_whole(TensorFrameParser)),
    ("TensorFrameParser", "stream ends inside a payload", encode_tensor_frame(0x11, b"abcd")[:-1],
     feed_whole(TensorFrameParser)),
    ("TensorReceiver", "payload frame before TENSOR_META", encode_tensor_frame(0x11, bytes(16)) + END,
     feed_whole(TensorReceiver)),
    ("TensorReceiver(max_bytes=2**30)", "meta claiming 2**60 bytes (refused before allocating)",
     encode_tensor_frame(0x10, meta_bytes([2**58], byte_size=2**60)),
     feed_whole(lambda: TensorReceiver(max_bytes=2**30))),
    ("TensorReceiver", "second TENSOR_META", META_FRAME + META_FRAME, feed_whole(TensorReceiver)),
    ("TensorReceiver", "more payload than the meta declares", META_FRAME + encode_tensor_frame(0x11, bytes(17)),
     feed_whole(TensorReceiver)),
    ("TensorReceiver", "END_STREAM after 8 of 16 bytes", META_FRAME + encode_tensor_frame(0x11, bytes(8)) + END,
     feed_whole(TensorReceiver)),
    ("TensorReceiver", "stream ends after 8 of 16 bytes, no END_STREAM",
     META_FRAME + encode_tensor_frame(0x11, bytes(8)), feed_whole(TensorReceiver)),
    ("TensorReceiver", "TENSOR_META payload is garbage", encode_tensor_frame(0x10, b"\x01\x02"),
     feed_whole(TensorReceiver)),
    ("TensorReceiver", "CANCEL from the peer", META_FRAME + encode_cancel_frame("model unloaded"),
     feed_whole(TensorReceiver)),
    ("TensorReceiver", "a byte after END_STREAM",
     META_FRAME + encode_tensor_frame(0x11, bytes(16)) + END + b"\0", feed_whole(TensorReceiver)),
    ("TokenStreamDecoder", "TENSOR_META frame in a token stream", META_FRAME, feed_whole(TokenStreamDecoder)),
    ("TokenStreamDecoder", "TOKEN_BATCH payload cut short (frame length agrees)",
     encode_tensor_frame(0x20, GOOD_BATCH[:-1]), feed_whole(TokenStreamDecoder)),
    ("TokenStreamDecoder", "END_STREAM frame with a payload", encode_tensor_frame(0x02, b"x"),
     feed_whole(TokenStreamDecoder)),
    ("TokenStreamDecoder", "CANCEL with invalid UTF-8 reason", encode_tensor_frame(0x04, b"bad \xff"),
     feed_whole(TokenStreamDecoder)),
    ("TokenStreamDecoder", "stream ends without END_STREAM",
     encode_token_batch_frame(TokenBatch.decode(GOOD_BATCH)), feed_whole(TokenStreamDecoder)),
    ("StreamFrameParser", "11-byte length varint", b"\x80" * 10 + b"\x01", feed_whole(StreamFrameParser)),
    ("StreamFrameParser", "length varint over 2**64", b"\xff" * 9 + b"\x02", feed_whole(StreamFrameParser)),
    ("StreamFrameParser(max_frame_size=1024)", "frame claiming 1 MiB (refused at the varint)",
     b"\x80\x80\x40\x01", feed_whole(lambda: StreamFrameParser(max_frame_size=1024))),
    ("StreamFrameParser", "stream ends before the flags byte", b"\x05", feed_whole(StreamFrameParser)),
    ("StreamFrameParser", "stream ends inside the payload", b"\x05\x01abc", feed_whole(StreamFrameParser)),
    ("StreamFrameParser", "CREDIT frame, bytes after the varint (read via .credit)", b"\x02\x08\x01\x00",
     lambda b: StreamFrameParser().feed(b)[0].credit),
    ("MessageStreamDecoder", "stream ends without END_STREAM", encode_stream_frame(b"msg"),
     feed_whole(MessageStreamDecoder)),
    ("MessageStreamDecoder", "CANCEL from the peer", encode_stream_frame(b"quota", 0x04),
     feed_whole(MessageStreamDecoder)),
    ("MessageStreamDecoder", "a byte after END_STREAM", b"\x00\x02\x00", feed_whole(MessageStreamDecoder)),
    ("TensorDataChunk.decode", "3 bytes of garbage", b"\xff\xff\xff", TensorDataChunk.decode),
    ("ProblemDetails.from_json", "not JSON", b"<html>Bad gateway</html>", ProblemDetails.from_json),
    ("ProblemDetails.from_json", "invalid UTF-8", b'{"title": "\xff"}', ProblemDetails.from_json),
    ("ProblemDetails.from_json", "a JSON array", b"[1, 2]", ProblemDetails.from_json),
    ("ProblemDetails.from_json", "type and status missing", b'{"title": "Oops"}', ProblemDetails.from_json),
    ("ProblemDetails.from_json", "status is a string",
     b'{"type": "about:blank", "title": "Oops", "status": "500"}', ProblemDetails.from_json),
    ("ProblemDetails.from_json", "status is true",
     b'{"type": "about:blank", "title": "Oops", "status": true}', ProblemDetails.from_json),
    ("ProblemDetails.from_json", "5,000 nested arrays", b"[" * 5000, ProblemDetails.from_json),
    ("ProblemDetails.proto_detail", "quill_proto_detail_base64 is not base64",
     b'{"type": "about:blank", "title": "Bad", "status": 400, "quill_proto_detail_base64": "%%%"}',
     lambda b: ProblemDetails.from_json(b).proto_detail),
    ("ProblemDetails.proto_detail", "quill_proto_detail_base64 is a number",
     b'{"type": "about:blank", "title": "Bad", "status": 400, "quill_proto_detail_base64": 5}',
     lambda b: ProblemDetails.from_json(b).proto_detail),
    ("QuillClient(base_url)", "user:password in the URL (accepted: sent as Basic auth, shown nowhere)",
     b"http://alice:s3cret@127.0.0.1:8080/api", client_for_url),
    ("FrameConsumer (message stream, zstd)", BOMB_AFTER_END,
     compress(encode_stream_frame(b"msg") + encode_stream_frame(b"", 0x02)) + ZSTD_BOMB,
     consume(lambda: FrameConsumer(ZSTD, MessageStreamDecoder(), "s/M", "message stream"))),
    ("FrameConsumer (token stream, zstd)", BOMB_AFTER_END,
     compress(encode_token_batch_frame(TokenBatch.decode(GOOD_BATCH)) + END) + ZSTD_BOMB,
     consume(lambda: FrameConsumer(ZSTD, TokenStreamDecoder(), "s/M", "token stream"))),
    ("TensorConsumer (zstd)", BOMB_AFTER_END,
     compress(META_FRAME + encode_tensor_frame(0x11, bytes(16)) + END) + ZSTD_BOMB,
     consume(lambda: TensorConsumer(ZSTD, 1 << 20, "s/M"))),
    ("ZstdDecoder", "a frame asking for a 128 MiB window (RFC 9659 allows 8 MiB)", ZSTD_WIDE_WINDOW,
     lambda b: ZstdDecoder().decompress(b, 1 << 20)),
    ("BytesConsumer (Content-Length)", "'²' (a digit to str.isdigit, not to int)", "²".encode("latin-1"),
     content_length_of("latin-1")),
    ("BytesConsumer (Content-Length)", "'١٢' (non-ASCII digits: int() reads 12)", "١٢".encode(),
     content_length_of("utf-8")),
    ("BytesConsumer (Content-Length)", "'+3' (int() reads 3)", b"+3", content_length_of("latin-1")),
    ("parse_retry_after", "'١٢' (non-ASCII digits: float() reads 12; accepted as absent)", "١٢".encode(),
     lambda b: parse_retry_after(b.decode())),
]


def second_transfer(headers=None):
    """The second call of a client: it goes out on the connection the first one kept alive."""
    def run(client):
        client.call(SERVICE, "Transfer", b"transfer-1")
        return client.call(SERVICE, "Transfer", b"transfer-2", headers=headers)
    return run


def transfers(server):
    return sum(request.body == b"transfer-2" for request in server.requests)


# (what the server does, its factory, the call shown, the call, how many copies of it the server got)
PEER_CASES = [
    ("an early answer: `413` keep-alive once the head is read; the body drained afterwards (Go's net/http)",
     early_answer_server, "`send_tensor` of 16 MiB", UPLOADS["tensor"], lambda server: len(server.answered_early)),
    ("a reset after the request was read: a POST on a kept-alive connection read whole, then a reset "
     "(SO_LINGER 0)", reset_after_read_server, "`call`", second_transfer(), transfers),
    ("the same reset", reset_after_read_server, "`call` with an `Idempotency-Key` header",
     second_transfer({"Idempotency-Key": "k-1"}), transfers),
]


def peer_row(kind, what, make_server, shown_call, call, copies):
    """One live exchange: the call's outcome, how many copies of it the server got, the next call."""
    with make_server() as server:
        client = CLIENTS[kind](server.url, max_connections=1, timeout_ms=5000)
        error, message = outcome(call, client)
        after, answer = outcome(lambda c: c.call(SERVICE, "Echo", b"next"), client)
        client.close()
    error = "returned" if error == "accepted" else error
    message = message.replace(server.url, "http://127.0.0.1:PORT")
    follow = f"`{answer}`" if after == "accepted" else f"`{after}`: {answer}"
    name = "QuillClient" if kind == "sync" else "AsyncQuillClient"
    return (f"| `{name}` | {cell(what)} | {shown_call} | `{error}` | {cell(message)} | {copies(server)} "
            f"| {cell(follow)}, {server.connections} connection(s) in all |")


def render_peers():
    lines = [
        "",
        PEERS_HEADING,
        "",
        "Generated as well, from live calls of both clients to raw-socket servers on loopback that",
        "misbehave (tests/bad_peers.py); docs/protocol.md, Retries, says why each outcome is the right",
        "one. \"Copies\" is how many times the server received the call; the next call goes to the",
        "same client (`max_connections=1`). `QuillClient` writes a body through before it reads the",
        "answer, so its connection carried the whole upload and may carry the next call;",
        "`AsyncQuillClient` stops writing at the early answer and closes that connection.",
        "",
        "| client | the server | the call | outcome | message | copies | the next call |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for what, make_server, shown_call, call, is_copy in PEER_CASES:
        for kind in ("sync", "async"):
            lines.append(peer_row(kind, what, make_server, shown_call, call, is_copy))
    return "\n".join(lines) + "\n"


def hand_written(old):
    """The hand-maintained sections after the generated ones (from the first other ``## `` heading)."""
    start = 0
    while True:
        marker = old.find("\n## ", start)
        if marker < 0:
            return ""
        if not old.startswith(PEERS_HEADING, marker + 1):
            return old[marker:]
        start = marker + 1


def outcome(call, data):
    """(error class name, message) for a refused input, or ("accepted", repr of the result)."""
    try:
        result = call(data)
    except Exception as exc:   # the table records whatever happens, quill's errors or not
        return type(exc).__name__, str(exc)
    return "accepted", repr(result)


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def shown_input(data):
    """Hex for binary input, a bytes literal for (mostly) text such as JSON bodies."""
    if not data:
        return "(empty)"
    head = data[:MAX_SHOWN_INPUT]
    printable = sum(32 <= b < 127 for b in head)
    shown = repr(head) if printable >= 0.9 * len(head) else head.hex(" ")
    return f"`{shown}`" + (f" ... ({len(data)} bytes)" if len(data) > MAX_SHOWN_INPUT else "")


def render():
    lines = [
        "# Bad inputs and the errors they get",
        "",
        "Generated by `python tools/bad_inputs_table.py` from real runs (tests/test_bad_inputs.py",
        "fails when it is out of date). Every decoder refuses bad bytes with a quill exception:",
        "`DecodeError` (a `ValueError`) and its subclasses `LimitExceededError` (a declared size",
        "over a configured limit, refused before allocating) and `IncompleteStreamError` (the input",
        "ended early), or `StreamCancelledError` (a `RuntimeError`) when the peer sent CANCEL.",
        "The offset in the message is the byte offset in the input (for parsers: in the stream).",
        "Binary inputs are shown as hex, text ones as bytes literals; stream parsers are fed the whole",
        "input, then `finish()`.",
        "",
        "| decoder | bad input | bytes | error | message |",
        "| --- | --- | --- | --- | --- |",
    ]
    for decoder, what, data, call in CASES:
        error, message = outcome(call, data)
        lines.append(f"| {cell(decoder)} | {cell(what)} | {cell(shown_input(data))} | "
                     f"`{error}` | {cell(message)} |")
    return "\n".join(lines) + "\n" + render_peers()


def main(argv):
    text = render()
    if "--check" in argv:
        current = TABLE_PATH.read_text() if TABLE_PATH.exists() else ""
        if not current.startswith(text):
            print(f"{TABLE_PATH} is out of date: run python tools/bad_inputs_table.py", file=sys.stderr)
            return 1
        return 0
    TABLE_PATH.parent.mkdir(exist_ok=True)
    rest = hand_written(TABLE_PATH.read_text()) if TABLE_PATH.exists() else ""
    TABLE_PATH.write_text(text + rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
