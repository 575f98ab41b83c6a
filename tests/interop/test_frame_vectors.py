"""Golden vectors from the Rust reference: tensor frames, tensor streams, stream frames,
varints, TensorDataChunk, and the malformed-input cases of those decoders.

Where we deliberately differ from the reference (docs/protocol.md **Ours**, or a reference
behaviour that silently loses or invents data), the case is listed in an ``OURS_*``
table with the reason, and the test asserts our behaviour instead.
"""

import json
import pathlib

import pytest

from quill._core.tokens import TokenBatch
from quill.errors import DecodeError, EncodeError, IncompleteStreamError, LimitExceededError
from quill.frames import (
    END_STREAM_FRAME,
    MAX_STREAM_FRAME,
    StreamFrame,
    StreamFrameParser,
    TensorDataChunk,
    TensorFrame,
    TensorFrameParser,
    TensorReceiver,
    decode_tensor_frame,
    decode_varint,
    encode_cancel_frame,
    encode_credit_frame,
    encode_end_stream,
    encode_stream_cancel,
    encode_stream_credit,
    encode_stream_frame,
    encode_tensor_frame,
    encode_tensor_frames,
    encode_token_batch_frame,
    encode_varint,
    stream_frame_header,
    tensor_frame_header,
)
from quill.tensor import Tensor, TensorMeta

VECTORS = pathlib.Path(__file__).parent / "vectors"


def load(name):
    return json.loads((VECTORS / name).read_text())


TENSOR_FRAMES = load("tensor_frames.json")["vectors"]
TENSOR_STREAMS = load("tensor_streams.json")["vectors"]
STREAM_FRAMES = load("stream_frames.json")
DATA_CHUNKS = load("tensor_data_chunks.json")["vectors"]
MALFORMED = load("malformed.json")


def ids(cases):
    return [case["name"] for case in cases]


# ------------------------------------------------------------------------------------------
# tensor_frames.json
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vec", TENSOR_FRAMES, ids=ids(TENSOR_FRAMES))
def test_tensor_frame_encode(vec):
    payload = bytes.fromhex(vec["payload_hex"])
    reserved = bytes.fromhex(vec["reserved_hex"])
    encoded = bytes.fromhex(vec["encoded_hex"])
    assert encode_tensor_frame(vec["type_code"], payload, reserved) == encoded
    assert tensor_frame_header(vec["type_code"], len(payload), reserved).hex() == vec["header_hex"]
    assert TensorFrame(vec["type_code"], payload, reserved).encode() == encoded


@pytest.mark.parametrize("vec", TENSOR_FRAMES, ids=ids(TENSOR_FRAMES))
def test_tensor_frame_decode(vec):
    encoded = bytes.fromhex(vec["encoded_hex"])
    frame, consumed = decode_tensor_frame(encoded)
    assert consumed == vec["decoded"]["consumed"] == len(encoded)
    assert (frame.type, frame.reserved.hex(), frame.payload.hex()) == (
        vec["type_code"], vec["reserved_hex"], vec["payload_hex"])
    # the incremental parser, whole and one byte at a time, gives the same frame
    assert TensorFrameParser().feed(encoded) == [frame]
    parser = TensorFrameParser()
    assert [f for i in range(len(encoded)) for f in parser.feed(encoded[i:i + 1])] == [frame]
    parser.finish()


@pytest.mark.parametrize("vec", [v for v in TENSOR_FRAMES if v["type"] == "CREDIT"],
                         ids=lambda v: v["name"])
def test_credit_frame(vec):
    credit = vec["decoded"]["credit_bytes_le_u64"]
    assert encode_credit_frame(credit).hex() == vec["encoded_hex"]
    assert decode_tensor_frame(bytes.fromhex(vec["encoded_hex"]))[0].credit == credit


@pytest.mark.parametrize("vec", [v for v in TENSOR_FRAMES if v["type"] == "CANCEL"],
                         ids=lambda v: v["name"])
def test_cancel_frame(vec):
    reason = vec["decoded"]["reason_lossy_utf8"]
    assert encode_cancel_frame(reason).hex() == vec["encoded_hex"]
    assert decode_tensor_frame(bytes.fromhex(vec["encoded_hex"]))[0].reason == reason


def test_end_stream_frame():
    (vec,) = [v for v in TENSOR_FRAMES if v["type"] == "END_STREAM"]
    assert END_STREAM_FRAME.hex() == vec["encoded_hex"]


@pytest.mark.parametrize("vec", [v for v in TENSOR_FRAMES if v["type"] == "TOKEN_BATCH"],
                         ids=lambda v: v["name"])
def test_token_batch_frame(vec):
    expected = vec["decoded"]["token_batch"]
    batch = TokenBatch.decode(bytes.fromhex(vec["payload_hex"]))
    assert (batch.sequence_id, batch.is_final, len(batch)) == (
        expected["sequence_id"], expected["is_final"], expected["token_count"])
    assert [t.id for t in batch] == [t["id"] for t in expected["tokens"]]
    assert encode_token_batch_frame(batch).hex() == vec["encoded_hex"]


# ------------------------------------------------------------------------------------------
# tensor_streams.json
# ------------------------------------------------------------------------------------------

def tensor_of(vec):
    meta = vec["input"]["meta"]
    tensor_meta = TensorMeta(meta["shape"], meta["dtype"], name=meta["name"], device=meta["device"])
    return Tensor.from_bytes(bytes.fromhex(vec["input"]["data_hex"]), tensor_meta.shape,
                             tensor_meta.dtype, name=meta["name"], device=meta["device"])


def wire_of(vec):
    return b"".join(bytes.fromhex(f["header_hex"] + f["payload_hex"]) for f in vec["frames"])


@pytest.mark.parametrize("vec", TENSOR_STREAMS, ids=ids(TENSOR_STREAMS))
def test_tensor_stream_encode(vec):
    tensor = tensor_of(vec)
    pieces = list(encode_tensor_frames(tensor, chunk_size=vec["chunk_size"]))
    wire = wire_of(vec)
    assert len(wire) == vec["stream_len"]
    assert b"".join(pieces) == wire
    # META frame, then (9-byte header, zero-copy slice) per chunk, then END_STREAM
    payload_frames = [f for f in vec["frames"] if f["type"] == "TENSOR_PAYLOAD"]
    assert len(pieces) == 2 + 2 * len(payload_frames)
    assert bytes(pieces[0]).hex() == vec["frames"][0]["header_hex"] + vec["frames"][0]["payload_hex"]
    for i, frame in enumerate(payload_frames):
        header, chunk = pieces[1 + 2 * i], pieces[2 + 2 * i]
        assert bytes(header).hex() == frame["header_hex"]
        assert isinstance(chunk, memoryview) and chunk.obj is tensor.data.obj
    assert pieces[-1] == END_STREAM_FRAME


@pytest.mark.parametrize("vec", TENSOR_STREAMS, ids=ids(TENSOR_STREAMS))
def test_tensor_stream_receive(vec):
    """The reference receiver's events, and a deliberate difference for empty tensors.

    **Ours:** the reference receiver never completes a zero-byte tensor
    (``take_tensor`` is none after META + END_STREAM); we hand it out at END_STREAM.
    """
    expected = tensor_of(vec)
    reference = vec["reference_receiver"]
    if vec["input"]["data_len"] == 0:
        assert reference["take_tensor"]["status"] == "none"   # reference: never completes
    else:
        assert reference["take_tensor"] == {"status": "some", "data_equal": True}
    data_events = [e for e in reference["events"] if e["event"] == "Data"]
    assert sum(e["len"] for e in data_events) == vec["input"]["data_len"]

    for pieces in ([wire_of(vec)],                                   # one chunk
                   [bytes.fromhex(f["header_hex"] + f["payload_hex"]) for f in vec["frames"]]):
        receiver = TensorReceiver()
        results = [receiver.feed(p) for p in pieces]
        assert all(r is None for r in results[:-1])
        tensor = results[-1]
        assert receiver.done and tensor is not None   # Ours for data_len == 0 as well
        receiver.finish()
        assert tensor.tobytes().hex() == vec["input"]["data_hex"]
        assert tensor.shape == expected.shape and tensor.dtype == expected.dtype
        assert tensor.name == vec["input"]["meta"]["name"]
        assert tensor.meta.device == vec["input"]["meta"]["device"]


# ------------------------------------------------------------------------------------------
# stream_frames.json
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vec", STREAM_FRAMES["varints"], ids=ids(STREAM_FRAMES["varints"]))
def test_varint(vec):
    value = int(vec["value_str"])
    assert encode_varint(value).hex() == vec["encoded_hex"]
    assert decode_varint(bytes.fromhex(vec["encoded_hex"])) == (value, vec["encoded_len"])


@pytest.mark.parametrize("vec", STREAM_FRAMES["frames"], ids=ids(STREAM_FRAMES["frames"]))
def test_stream_frame(vec):
    flags, payload = vec["input"]["flags"], bytes.fromhex(vec["input"]["payload_hex"])
    encoded = bytes.fromhex(vec["encoded_hex"])
    assert encode_stream_frame(payload, flags) == encoded
    assert stream_frame_header(len(payload), flags).hex() == vec["length_varint_hex"] + vec["flags_hex"]
    assert StreamFrame(flags, payload).encode() == encoded
    (frame,) = StreamFrameParser().feed(encoded)
    assert frame == StreamFrame(flags, payload) and frame.offset == 0
    assert frame.credit == vec["decoded"]["decode_credit"]


def test_stream_frame_helpers():
    by_name = {v["name"]: v["encoded_hex"] for v in STREAM_FRAMES["frames"]}
    assert encode_end_stream().hex() == by_name["end_stream"]
    assert encode_stream_cancel().hex() == by_name["cancel"]
    for n in (42, 0, 300):
        assert encode_stream_credit(n).hex() == by_name[f"credit_{n}"]
    assert encode_stream_credit(2**32 - 1).hex() == by_name["credit_u32_max"]


def test_stream_frame_sequence():
    (vec,) = STREAM_FRAMES["sequences"]
    wire = bytes.fromhex(vec["encoded_hex"])
    expected = [StreamFrame(p["flags"], bytes.fromhex(p["payload_hex"])) for p in vec["parsed"]]
    assert StreamFrameParser().feed(wire) == expected
    parser = StreamFrameParser()
    assert [f for i in range(len(wire)) for f in parser.feed(wire[i:i + 1])] == expected
    parser.finish()


def test_stream_frame_size_limit():
    over, exact = STREAM_FRAMES["size_limit"]
    assert over["parse_result"] == {"status": "err", "error": "FrameTooLarge", "value": MAX_STREAM_FRAME + 1}
    # Ours: the reference encoder emits the oversized frame; we refuse unless the limit is raised.
    with pytest.raises(EncodeError, match="4194305"):
        encode_stream_frame(bytes(MAX_STREAM_FRAME + 1))
    wire = encode_stream_frame(bytes(MAX_STREAM_FRAME + 1), max_size=MAX_STREAM_FRAME + 1)
    assert len(wire) == over["encoded_len"] and wire.startswith(bytes.fromhex(over["encoded_prefix_hex"]))
    # the parser refuses as soon as the length varint is readable (4 bytes), like the reference
    parser = StreamFrameParser()
    with pytest.raises(LimitExceededError, match="4194305") as err:
        parser.feed(wire[:4])
    assert err.value.offset == 0

    wire = encode_stream_frame(bytes(MAX_STREAM_FRAME))
    assert len(wire) == exact["encoded_len"] and wire.startswith(bytes.fromhex(exact["encoded_prefix_hex"]))
    (frame,) = StreamFrameParser().feed(wire)
    assert (frame.flags, len(frame.payload)) == (exact["parse_result"]["flags"], exact["parse_result"]["payload_len"])


# ------------------------------------------------------------------------------------------
# tensor_data_chunks.json
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vec", DATA_CHUNKS, ids=ids(DATA_CHUNKS))
def test_tensor_data_chunk(vec):
    inp = vec["input"]
    chunk = TensorDataChunk(inp["sequence"], inp["total_chunks"], inp["is_final"], bytes.fromhex(inp["data_hex"]))
    assert chunk.encode().hex() == vec["encoded_hex"]
    assert TensorDataChunk.decode(bytes.fromhex(vec["encoded_hex"])) == chunk


# ------------------------------------------------------------------------------------------
# malformed.json
# ------------------------------------------------------------------------------------------

def frame_matches(frame, expected):
    return (frame.type, frame.reserved.hex(), frame.payload.hex()) == (
        expected["type_code"], expected["reserved_hex"], expected["payload_hex"])


@pytest.mark.parametrize("case", MALFORMED["tensor_frame_decode"], ids=ids(MALFORMED["tensor_frame_decode"]))
def test_malformed_tensor_frame_decode(case):
    data, result = bytes.fromhex(case["input_hex"]), case["result"]
    if result["status"] == "ok":
        frame, consumed = decode_tensor_frame(data)
        assert consumed == result["consumed"] and frame_matches(frame, result["frame"])
    elif result["error"] == "Incomplete":
        with pytest.raises(IncompleteStreamError, match=f"need {result['value']} more") as err:
            decode_tensor_frame(data)
        assert err.value.offset == 0
    else:
        assert result["error"] == "UnknownFrameType"
        with pytest.raises(DecodeError, match=f"unknown tensor frame type 0x{result['value']:02x}") as err:
            decode_tensor_frame(data)
        assert err.value.offset == 0 and not isinstance(err.value, IncompleteStreamError)


# Reference outcome -> ours, with the reason (docs/protocol.md section 4 **Ours**).
OURS_TENSOR_FRAME_PARSER = {
    "length_u32_max": "Ours: a length over the parser's limit is refused when the 9 header bytes "
                      "arrive; the reference has no limit and waits for 4 GiB of payload",
}


@pytest.mark.parametrize("case", MALFORMED["tensor_frame_parser"], ids=ids(MALFORMED["tensor_frame_parser"]))
def test_malformed_tensor_frame_parser(case):
    data, result = bytes.fromhex(case["input_hex"]), case["result"]
    parser = TensorFrameParser()
    if case["name"] in OURS_TENSOR_FRAME_PARSER:
        assert result["calls"] == [{"status": "none"}]   # the reference waits for more data
        with pytest.raises(LimitExceededError, match="4294967295") as err:
            parser.feed(data)
        assert err.value.offset == 5   # the length field
        with pytest.raises(LimitExceededError):
            parser.feed(b"")   # sticky
        return
    first = result["calls"][0]
    if first["status"] == "err":
        assert first["error"] == "UnknownFrameType"
        with pytest.raises(DecodeError, match=f"unknown tensor frame type 0x{first['value']:02x}") as err:
            parser.feed(data)
        assert err.value.offset == 0
        assert result["calls"][1]["second_call"].startswith("same error again")
        with pytest.raises(DecodeError, match=f"0x{first['value']:02x}"):
            parser.feed(b"")
        with pytest.raises(DecodeError, match=f"0x{first['value']:02x}"):
            parser.finish()
        return
    frames = parser.feed(data)
    expected = [c["frame"] for c in result["calls"] if c["status"] == "frame"]
    assert len(frames) == len(expected) and all(map(frame_matches, frames, expected))
    assert parser.feed(b"") == []
    assert parser.buffered == result["buffered_len_after"]
    if parser.buffered:
        with pytest.raises(IncompleteStreamError) as err:
            parser.finish()
        assert err.value.offset == len(data) - parser.buffered
    else:
        parser.finish()


OURS_STREAM_FRAME_PARSER = {
    "len_10_byte_varint_bit64_dropped": (
        "overflows 64 bits", "Ours: a varint overflowing 64 bits is an error; the reference drops "
                             "bit 64 and returns an empty frame"),
    "len_11_byte_varint": (
        "longer than 10 bytes", "Ours: a varint longer than 10 bytes is an error; the reference waits "
                                "for more data forever"),
}


@pytest.mark.parametrize("case", MALFORMED["stream_frame_parser"], ids=ids(MALFORMED["stream_frame_parser"]))
def test_malformed_stream_frame_parser(case):
    data, result = bytes.fromhex(case["input_hex"]), case["result"]
    parser = StreamFrameParser()
    if case["name"] in OURS_STREAM_FRAME_PARSER:
        message, _reason = OURS_STREAM_FRAME_PARSER[case["name"]]
        with pytest.raises(DecodeError, match=message) as err:
            parser.feed(data)
        assert err.value.offset == 0
        with pytest.raises(DecodeError, match=message):
            parser.feed(b"")
        return
    first = result["calls"][0]
    if first["status"] == "err":
        assert first["error"] == "FrameTooLarge"
        with pytest.raises(LimitExceededError, match=str(first["value"])) as err:
            parser.feed(data)
        assert err.value.offset == 0
        with pytest.raises(LimitExceededError, match=str(first["value"])):
            parser.feed(b"")
        return
    expected = [StreamFrame(c["flags"], bytes.fromhex(c["payload_hex"]))
                for c in result["calls"] if c["status"] == "frame"]
    assert parser.feed(data) == expected
    consumed = 0   # walk the expected frames by hand (varints may be non-canonical)
    for _ in expected:
        length, used = decode_varint(data, consumed)
        consumed += used + 1 + length
    assert parser.buffered == len(data) - consumed
    if parser.buffered:
        with pytest.raises(IncompleteStreamError) as err:   # truncated stream, never a silent end
            parser.finish()
        assert err.value.offset == consumed
    else:
        parser.finish()


OURS_DECODE_VARINT = {
    "ten_byte_high_bits_dropped": ("overflows 64 bits", "Ours: the reference drops bits above 63"),
    "eleven_bytes": ("longer than 10 bytes", "Ours: the reference reports 'need more data'"),
}


@pytest.mark.parametrize("case", MALFORMED["decode_varint"], ids=ids(MALFORMED["decode_varint"]))
def test_malformed_decode_varint(case):
    data, result = bytes.fromhex(case["input_hex"]), case["result"]
    if case["name"] in OURS_DECODE_VARINT:
        with pytest.raises(DecodeError, match=OURS_DECODE_VARINT[case["name"]][0]) as err:
            decode_varint(data)
        assert err.value.offset == 0
    elif result["status"] == "none":
        with pytest.raises(IncompleteStreamError, match="truncated"):
            decode_varint(data)
    else:
        assert decode_varint(data) == (int(result["value_str"]), result["bytes_read"])


OURS_CREDIT = {
    "credit_empty_payload": (DecodeError, "Ours: a CREDIT frame without a varint is an error; the reference "
                                          "returns None, silently losing the grant"),
    "credit_2_pow_32": (2**32, "Ours: the full 64-bit credit; the reference truncates to 32 bits (0)"),
    "credit_2_pow_32_plus_5": (2**32 + 5, "Ours: the full 64-bit credit; the reference truncates to 5"),
    "credit_trailing": (DecodeError, "Ours: bytes after the credit varint mean corruption; the reference "
                                     "ignores them"),
}


@pytest.mark.parametrize("case", MALFORMED["frame_decode_credit"], ids=ids(MALFORMED["frame_decode_credit"]))
def test_malformed_frame_decode_credit(case):
    frame = StreamFrame(case["flags"], bytes.fromhex(case["payload_hex"]))
    expected = case["result"]["result"]
    if case["name"] in OURS_CREDIT:
        expected = OURS_CREDIT[case["name"]][0]
    if expected is DecodeError:
        with pytest.raises(DecodeError, match="CREDIT"):
            frame.credit
        # from a parser, the error's offset points into the stream, inside this frame's payload
        prefix = encode_stream_frame(b"ab")
        _, parsed = StreamFrameParser().feed(prefix + frame.encode())
        with pytest.raises(DecodeError, match="CREDIT") as err:
            parsed.credit
        assert len(prefix) + 2 <= err.value.offset <= len(prefix) + len(frame.encode())
    else:
        assert frame.credit == expected
        # encoding the credit gives a canonical varint that reads back the same
        if frame.flags == 0x08 and expected is not None:
            assert StreamFrameParser().feed(encode_stream_credit(expected))[0].credit == expected


@pytest.mark.parametrize("case", MALFORMED["tensor_data_chunk_decode"], ids=ids(MALFORMED["tensor_data_chunk_decode"]))
def test_malformed_tensor_data_chunk(case):
    data, result = bytes.fromhex(case["input_hex"]), case["result"]
    if result["status"] == "none":
        with pytest.raises(IncompleteStreamError, match="9-byte header") as err:
            TensorDataChunk.decode(data)
        assert err.value.offset == 0
    else:
        chunk = TensorDataChunk.decode(data)
        assert (chunk.sequence, chunk.total_chunks, chunk.is_final, chunk.data.hex()) == (
            result["sequence"], result["total_chunks"], result["is_final"], result["data_hex"])
