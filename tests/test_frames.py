"""quill.frames: tensor frames, message-stream frames, incremental parsers and decoders.

Golden vectors from the reference live in tests/interop/test_frame_vectors.py; this file
covers behaviour the vectors do not reach: limits, errors and their offsets, chunking,
memory use, and property-based round trips.
"""

import doctest
import pickle
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quill._core.frames
import quill.frames
from quill._core.tokens import Token, TokenBatch
from quill.errors import (
    DecodeError,
    EncodeError,
    IncompleteStreamError,
    LimitExceededError,
    QuillError,
    StreamCancelledError,
)
from quill.frames import (
    END_STREAM_FRAME,
    MAX_META_PAYLOAD,
    MAX_STREAM_FRAME,
    MessageStreamDecoder,
    StreamFlags,
    StreamFrame,
    StreamFrameParser,
    TensorDataChunk,
    TensorFrame,
    TensorFrameParser,
    TensorFrameType,
    TensorReceiver,
    TokenStreamDecoder,
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

T = TensorFrameType


def feed_bytewise(parser, data):
    """Feed one byte at a time; collect list results (or the non-None result)."""
    out = []
    for i in range(len(data)):
        result = parser.feed(data[i:i + 1])
        if isinstance(result, list):
            out.extend(result)
        elif result is not None:
            out.append(result)
    return out


def meta_payload(shape, dtype="float32", name=None):
    return TensorMeta(shape, dtype, name=name).encode()


def tensor_wire(tensor, chunk_size=65536):
    return b"".join(encode_tensor_frames(tensor, chunk_size=chunk_size))


# ------------------------------------------------------------------------------------------
# enums and encoders
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [quill._core.frames, quill.frames], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 10 and result.failed == 0


def test_enums_match_wire_values():
    assert {t.name: t.value for t in TensorFrameType} == {
        "PROTO_MSG": 1, "END_STREAM": 2, "CANCEL": 4, "CREDIT": 8,
        "TENSOR_META": 0x10, "TENSOR_PAYLOAD": 0x11, "TOKEN_BATCH": 0x20}
    assert {f.name: f.value for f in StreamFlags} == {"DATA": 1, "END_STREAM": 2, "CANCEL": 4, "CREDIT": 8}
    for t in TensorFrameType:
        assert encode_tensor_frame(t)[0] == t.value
    assert encode_stream_frame(b"x", StreamFlags.DATA | StreamFlags.END_STREAM) == b"\x01\x03x"
    assert MAX_STREAM_FRAME == 4 * 1024 * 1024


@pytest.mark.parametrize("bad_type", [0, 3, 0x12, 0xFF, 256, -1])
def test_encode_refuses_unknown_tensor_frame_type(bad_type):
    with pytest.raises(EncodeError, match="unknown tensor frame type"):
        encode_tensor_frame(bad_type, b"")
    with pytest.raises(EncodeError, match="unknown tensor frame type"):
        tensor_frame_header(bad_type, 0)


def test_tensor_encoders_refuse_what_the_format_cannot_carry():
    with pytest.raises(EncodeError, match="u32"):
        tensor_frame_header(T.TENSOR_PAYLOAD, 2**32)
    tensor_frame_header(T.TENSOR_PAYLOAD, 2**32 - 1)
    with pytest.raises(EncodeError, match="4 bytes"):
        encode_tensor_frame(T.PROTO_MSG, b"", reserved=b"\0\0\0")
    with pytest.raises(EncodeError):
        encode_credit_frame(-1)
    with pytest.raises(EncodeError):
        encode_credit_frame(2**64)
    with pytest.raises(EncodeError, match="UTF-8"):
        encode_cancel_frame("bad \ud800 surrogate")
    with pytest.raises(TypeError):
        encode_tensor_frame(T.PROTO_MSG, "text is not bytes")


def test_stream_encoders_refuse_oversized_frames():
    with pytest.raises(EncodeError, match="exceeds the limit"):
        encode_stream_frame(bytes(MAX_STREAM_FRAME + 1))
    with pytest.raises(EncodeError, match="exceeds the limit"):
        stream_frame_header(MAX_STREAM_FRAME + 1)
    with pytest.raises(EncodeError, match="exceeds the limit"):
        encode_stream_frame(b"12345", max_size=4)
    assert stream_frame_header(MAX_STREAM_FRAME) == bytes.fromhex("8080800201")
    with pytest.raises(EncodeError, match="one byte"):
        encode_stream_frame(b"", flags=256)
    with pytest.raises(EncodeError):
        encode_varint(-1)
    with pytest.raises(EncodeError):
        encode_varint(2**64)
    with pytest.raises(EncodeError, match="UTF-8"):
        encode_stream_cancel("\udfff")


def test_encoders_accept_any_buffer():
    payload = np.arange(5, dtype=np.uint8)
    assert encode_tensor_frame(T.PROTO_MSG, payload) == encode_tensor_frame(T.PROTO_MSG, bytes(payload))
    assert encode_stream_frame(bytearray(b"ab")) == encode_stream_frame(memoryview(b"ab")) == b"\x02\x01ab"


def test_stream_control_frames():
    assert StreamFrameParser().feed(encode_end_stream() + encode_stream_cancel("why") + encode_stream_credit(2**63)) == [
        StreamFrame(StreamFlags.END_STREAM), StreamFrame(StreamFlags.CANCEL, b"why"),
        StreamFrame(StreamFlags.CREDIT, encode_varint(2**63))]
    assert StreamFrame(StreamFlags.CREDIT, encode_varint(2**63)).credit == 2**63


def test_frame_values_pickle_compare_and_repr():
    frames = [TensorFrame(T.CANCEL, b"r", b"\x01\x02\x03\x04"), StreamFrame(0xF0, b"x"),
              TensorDataChunk(1, 2, False, b"abc")]
    for frame in frames:
        assert pickle.loads(pickle.dumps(frame)) == frame
        assert hash(pickle.loads(pickle.dumps(frame))) == hash(frame)
    assert repr(frames[0]) == "TensorFrame(CANCEL, b'r', reserved=b'\\x01\\x02\\x03\\x04')"
    assert repr(frames[1]) == "StreamFrame(0xf0, b'x')"
    assert TensorFrame(T.CANCEL, b"r") != frames[0]
    assert TensorFrame(T.PROTO_MSG).credit is None and TensorFrame(T.PROTO_MSG).reason is None
    assert TensorFrame(T.CANCEL, b"\xff ok").reason == "\ufffd ok"
    with pytest.raises(DecodeError, match="8 bytes"):
        TensorFrame(T.CREDIT, b"\0" * 4).credit


def test_tensor_data_chunk_limits():
    with pytest.raises(EncodeError):
        TensorDataChunk(2**32, 1, True)
    with pytest.raises(EncodeError):
        TensorDataChunk(0, -1, True)
    assert TensorDataChunk.decode(TensorDataChunk(7, 9, True, b"xyz").encode()).data == b"xyz"


def test_decode_varint_offset():
    assert decode_varint(b"\xff\xac\x02", 1) == (300, 2)
    with pytest.raises(IncompleteStreamError) as err:
        decode_varint(b"\x00\x80\x80", 1)
    assert err.value.offset == 1
    with pytest.raises(ValueError):
        decode_varint(b"\x00", 5)


# ------------------------------------------------------------------------------------------
# encode_tensor_frames
# ------------------------------------------------------------------------------------------

def test_encode_tensor_frames_is_scatter_gather_and_zero_copy():
    array = np.arange(10, dtype=np.float32)
    tensor = Tensor.from_numpy(array, name="w")
    pieces = list(encode_tensor_frames(tensor, chunk_size=16))
    assert [len(p) for p in pieces[1:]] == [9, 16, 9, 16, 9, 8, 9]
    chunks = pieces[2:-1:2]
    assert all(isinstance(c, memoryview) and c.obj is tensor.data.obj for c in chunks)
    assert b"".join(chunks) == array.tobytes()
    meta_frame, used = decode_tensor_frame(pieces[0])
    assert used == len(pieces[0]) and meta_frame.type == T.TENSOR_META
    assert TensorMeta.decode(meta_frame.payload) == tensor.meta


def test_encode_tensor_frames_validates_eagerly():
    tensor = Tensor.from_numpy(np.zeros(3, dtype=np.int8))
    for bad in (0, -5, 2**32):
        with pytest.raises(ValueError, match="chunk_size"):
            encode_tensor_frames(tensor, chunk_size=bad)


def test_empty_tensor_has_no_payload_frame():
    tensor = Tensor.from_numpy(np.zeros((0, 3), dtype=np.int64))
    pieces = list(encode_tensor_frames(tensor))
    assert len(pieces) == 2 and pieces[1] == END_STREAM_FRAME


# ------------------------------------------------------------------------------------------
# TensorFrameParser
# ------------------------------------------------------------------------------------------

def test_parser_reports_limit_when_header_arrives():
    parser = TensorFrameParser(max_payload=10)
    header = tensor_frame_header(T.TENSOR_PAYLOAD, 11)
    assert parser.feed(header[:8]) == []
    with pytest.raises(LimitExceededError, match="11 bytes exceeds the parser limit of 10") as err:
        parser.feed(header[8:])
    assert err.value.offset == 5
    with pytest.raises(LimitExceededError):   # sticky
        parser.feed(b"\0" * 11)
    ok = TensorFrameParser(max_payload=10)
    assert ok.feed(encode_tensor_frame(T.TENSOR_PAYLOAD, b"0123456789"))[0].payload == b"0123456789"


def test_parser_error_offsets_are_stream_offsets():
    good = encode_tensor_frame(T.PROTO_MSG, b"abc") + END_STREAM_FRAME
    bad = bytes.fromhex("300000000000000000")   # type 0x30
    parser = TensorFrameParser()
    assert len(parser.feed(good)) == 2
    with pytest.raises(DecodeError, match="0x30") as err:
        parser.feed(bad)
    assert err.value.offset == len(good)


def test_parser_returns_complete_frames_before_an_error_then_raises():
    good = encode_tensor_frame(T.PROTO_MSG, b"abc")
    parser = TensorFrameParser()
    frames = parser.feed(good + bytes.fromhex("ff0000000000000000"))
    assert frames == [TensorFrame(T.PROTO_MSG, b"abc")]
    with pytest.raises(DecodeError, match="0xff") as err:
        parser.feed(b"")
    assert err.value.offset == len(good)
    with pytest.raises(DecodeError, match="0xff"):
        parser.finish()


def test_parser_finish_reports_truncation():
    wire = encode_tensor_frame(T.TOKEN_BATCH, b"x" * 20)
    for cut, match in ((3, "header"), (15, "6 of 20 payload bytes")):
        parser = TensorFrameParser()
        assert parser.feed(wire[:cut]) == [] and parser.buffered == cut
        with pytest.raises(IncompleteStreamError, match=match) as err:
            parser.finish()
        assert err.value.offset == 0


def test_parser_handles_big_payload_in_small_chunks():
    payload = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    wire = encode_tensor_frame(T.TENSOR_PAYLOAD, payload) + END_STREAM_FRAME
    parser = TensorFrameParser()
    frames = [f for i in range(0, len(wire), 7) for f in parser.feed(wire[i:i + 7])]
    assert [f.type for f in frames] == [T.TENSOR_PAYLOAD, T.END_STREAM]
    assert frames[0].payload == payload and frames[1].offset == len(wire) - 9
    assert parser.position == len(wire)


def test_parser_memory_is_one_payload_copy():
    """Feeding a 4 MiB frame in 1 KiB chunks allocates about the payload once (no re-joining)."""
    wire = encode_tensor_frame(T.TENSOR_PAYLOAD, bytes(4 << 20))
    chunks = [wire[i:i + 1024] for i in range(0, len(wire), 1024)]
    parser = TensorFrameParser()
    tracemalloc.start()
    try:
        for chunk in chunks:
            frames = parser.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(frames[0].payload) == 4 << 20
    assert peak < (4 << 20) + (256 << 10)


def test_parser_accepts_any_buffer():
    wire = encode_tensor_frame(T.PROTO_MSG, b"hi")
    for buf in (bytearray(wire), memoryview(wire), np.frombuffer(wire, dtype=np.uint8)):
        assert TensorFrameParser().feed(buf) == [TensorFrame(T.PROTO_MSG, b"hi")]


# ------------------------------------------------------------------------------------------
# TensorReceiver
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "uint8", "bool", "float64", "int8", "int32"])
def test_receiver_reconstructs_tensor_bytewise(dtype):
    rng = np.random.default_rng(7)
    array = (rng.integers(0, 2, (3, 5)) if dtype == "bool" else rng.integers(-100, 100, (3, 5))).astype(dtype)
    tensor = Tensor.from_numpy(array, name="t")
    wire = tensor_wire(tensor, chunk_size=8)
    receiver = TensorReceiver()
    results = feed_bytewise(receiver, wire)
    assert results == [tensor] and receiver.done
    np.testing.assert_array_equal(results[0].to_numpy(), array)
    receiver.finish()


def test_receiver_meta_and_progress():
    tensor = Tensor.from_numpy(np.arange(100, dtype=np.int32))
    wire = tensor_wire(tensor, chunk_size=64)
    receiver = TensorReceiver()
    assert receiver.feed(wire[:200]) is None
    assert receiver.meta == tensor.meta and 0 < receiver.received < 400
    with pytest.raises(IncompleteStreamError, match="before END_STREAM"):
        TensorReceiver().finish()


def test_receiver_empty_tensor_is_handed_out():
    """**Ours:** the reference receiver never completes an empty tensor."""
    tensor = Tensor.from_numpy(np.zeros((0, 4), dtype=np.float32))
    result = TensorReceiver().feed(tensor_wire(tensor))
    assert result == tensor and result.shape == (0, 4)


def test_receiver_allocates_once_without_intermediate_copies():
    tensor = Tensor.from_numpy(np.ones(1 << 20, dtype=np.float32))   # 4 MiB
    pieces = [bytes(p) for p in encode_tensor_frames(tensor, chunk_size=65536)]
    stream = b"".join(pieces)
    chunks = [stream[i:i + 5000] for i in range(0, len(stream), 5000)]
    receiver = TensorReceiver()
    tracemalloc.start()
    try:
        for chunk in chunks:
            result = receiver.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result == tensor
    assert peak < (4 << 20) + (256 << 10)


def test_receiver_refuses_huge_meta_before_allocating():
    huge = meta_payload([10 * 1024**3], "uint8")                  # a 10 GB tensor
    wire = encode_tensor_frame(T.TENSOR_META, huge)
    receiver = TensorReceiver(max_bytes=1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceededError) as err:
            receiver.feed(wire)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert err.value.offset is not None and err.value.offset >= 9
    with pytest.raises(LimitExceededError):
        receiver.feed(b"")


def test_receiver_limit_is_inclusive():
    tensor = Tensor.from_numpy(np.zeros(16, dtype=np.uint8))
    assert TensorReceiver(max_bytes=16).feed(tensor_wire(tensor)) == tensor
    assert TensorReceiver(max_bytes=None).feed(tensor_wire(tensor)) == tensor
    with pytest.raises(ValueError):
        TensorReceiver(max_bytes=-1)
    with pytest.raises(LimitExceededError):
        TensorReceiver(max_bytes=15).feed(tensor_wire(tensor))


def test_receiver_refuses_oversized_meta_frame_at_header():
    receiver = TensorReceiver()
    with pytest.raises(LimitExceededError, match="largest possible tensor meta") as err:
        receiver.feed(tensor_frame_header(T.TENSOR_META, MAX_META_PAYLOAD + 1))
    assert err.value.offset == 5


def receiver_error(wire, **kwargs):
    receiver = TensorReceiver(**kwargs)
    with pytest.raises(QuillError) as err:
        receiver.feed(wire)
        receiver.finish()
    # the error is sticky
    with pytest.raises(type(err.value)):
        receiver.feed(b"")
    return err.value


def test_receiver_stream_errors():
    meta = encode_tensor_frame(T.TENSOR_META, meta_payload([4], "uint8"))
    payload = lambda n: encode_tensor_frame(T.TENSOR_PAYLOAD, bytes(n))

    err = receiver_error(payload(4))
    assert isinstance(err, DecodeError) and "before TENSOR_META" in str(err) and err.offset == 0

    err = receiver_error(meta + meta)
    assert "second TENSOR_META" in str(err) and err.offset == len(meta)

    err = receiver_error(meta + payload(3) + payload(2))
    assert "overruns" in str(err) and err.offset == len(meta) + 12

    err = receiver_error(meta + payload(3) + END_STREAM_FRAME)
    assert isinstance(err, IncompleteStreamError) and "3 of 4" in str(err) and err.offset == len(meta) + 12

    err = receiver_error(END_STREAM_FRAME)
    assert "before any TENSOR_META" in str(err)

    err = receiver_error(meta + encode_tensor_frame(T.END_STREAM, b"x"))
    assert "must be empty" in str(err)

    for frame_type in (T.PROTO_MSG, T.CREDIT, T.TOKEN_BATCH):
        err = receiver_error(meta + encode_tensor_frame(frame_type, b"12345678"))
        assert f"unexpected {frame_type.name} frame" in str(err) and err.offset == len(meta)

    err = receiver_error(meta + payload(4) + END_STREAM_FRAME + b"\x02")
    assert "after END_STREAM" in str(err) and err.offset == len(meta) + 13 + 9

    err = receiver_error(meta + payload(2))
    assert isinstance(err, IncompleteStreamError) and "2 of 4" in str(err)

    err = receiver_error(encode_tensor_frame(T.TENSOR_META, b"\x01\x02"))
    assert isinstance(err, DecodeError) and err.offset is not None and err.offset >= 9


def test_receiver_returns_tensor_then_reports_trailing_garbage():
    tensor = Tensor.from_numpy(np.arange(3, dtype=np.int8))
    receiver = TensorReceiver()
    assert receiver.feed(tensor_wire(tensor) + b"junk") == tensor
    with pytest.raises(DecodeError, match="data after END_STREAM"):
        receiver.finish()


def test_receiver_cancel():
    meta = encode_tensor_frame(T.TENSOR_META, meta_payload([4], "uint8"))
    receiver = TensorReceiver()
    with pytest.raises(StreamCancelledError) as err:
        receiver.feed(meta + encode_cancel_frame("client went away"))
    assert err.value.reason == "client went away"
    with pytest.raises(StreamCancelledError):
        receiver.feed(b"")


# ------------------------------------------------------------------------------------------
# TokenStreamDecoder
# ------------------------------------------------------------------------------------------

def make_batch(seq, n, final=False):
    batch = TokenBatch(sequence_id=seq)
    for i in range(n):
        batch.add(Token(id=i * 7, position=i, text=f"t{i}", logprob=-0.5 * i))
    batch.is_final = final
    return batch


def test_token_stream_bytewise():
    batches = [make_batch(1, 3), make_batch(1, 0), make_batch(1, 5, final=True)]
    wire = b"".join(encode_token_batch_frame(b) for b in batches) + END_STREAM_FRAME
    decoder = TokenStreamDecoder()
    got = feed_bytewise(decoder, wire)
    assert [b.encode() for b in got] == [b.encode() for b in batches]
    assert decoder.done
    decoder.finish()


def test_token_stream_errors():
    frame = encode_token_batch_frame(make_batch(2, 2))
    decoder = TokenStreamDecoder()
    decoder.feed(frame)
    with pytest.raises(IncompleteStreamError, match="before END_STREAM"):
        decoder.finish()

    with pytest.raises(StreamCancelledError) as err:
        TokenStreamDecoder().feed(encode_cancel_frame("stop"))
    assert err.value.reason == "stop"

    for frame_type in (T.PROTO_MSG, T.TENSOR_META, T.TENSOR_PAYLOAD, T.CREDIT):
        with pytest.raises(DecodeError, match=f"unexpected {frame_type.name}") as err:
            TokenStreamDecoder().feed(encode_tensor_frame(frame_type, b"12345678"))
        assert err.value.offset == 0
    decoder = TokenStreamDecoder()
    assert len(decoder.feed(frame + encode_tensor_frame(T.PROTO_MSG, b""))) == 1
    with pytest.raises(DecodeError, match="unexpected PROTO_MSG") as err:
        decoder.finish()
    assert err.value.offset == len(frame)

    # a truncated batch inside a complete frame: offset points into the stream
    bad = encode_tensor_frame(T.TOKEN_BATCH, bytes.fromhex("00ffff"))
    decoder = TokenStreamDecoder()
    assert len(decoder.feed(frame + bad)) == 1
    with pytest.raises(DecodeError, match="TOKEN_BATCH frame") as err:
        decoder.finish()
    assert err.value.offset >= len(frame) + 9

    with pytest.raises(LimitExceededError):
        TokenStreamDecoder(max_payload=10).feed(tensor_frame_header(T.TOKEN_BATCH, 11))

    decoder = TokenStreamDecoder()
    decoder.feed(END_STREAM_FRAME)
    with pytest.raises(DecodeError, match="after END_STREAM") as err:
        decoder.feed(frame)
    assert err.value.offset == 9


# ------------------------------------------------------------------------------------------
# StreamFrameParser and MessageStreamDecoder
# ------------------------------------------------------------------------------------------

def test_stream_parser_limits_and_varints():
    parser = StreamFrameParser(max_frame_size=100)
    assert len(parser.feed(encode_stream_frame(b"a"))) == 1
    with pytest.raises(LimitExceededError, match="101 bytes") as err:
        parser.feed(encode_varint(101))
    assert err.value.offset == 3
    assert StreamFrameParser(max_frame_size=100).feed(encode_stream_frame(bytes(100)))[0].payload == bytes(100)

    parser = StreamFrameParser()
    assert parser.feed(b"\xff" * 9) == []
    with pytest.raises(DecodeError, match="longer than 10 bytes"):
        parser.feed(b"\xff")
    with pytest.raises(DecodeError, match="longer than 10 bytes"):
        parser.finish()


def test_stream_parser_finish_reports_truncation():
    wire = encode_stream_frame(b"hello")
    for cut, what in ((1, "flags byte missing"), (4, "2 of 5 bytes")):
        parser = StreamFrameParser()
        assert parser.feed(wire[:cut]) == []
        with pytest.raises(IncompleteStreamError, match=what):
            parser.finish()
    parser = StreamFrameParser()
    parser.feed(b"\x80")
    with pytest.raises(IncompleteStreamError, match="length varint"):
        parser.finish()


def test_message_decoder_data_end_stream_delivers_payload():
    """**Ours:** DATA|END_STREAM delivers its payload (the reference parser drops it)."""
    decoder = MessageStreamDecoder()
    assert decoder.feed(encode_stream_frame(b"last", StreamFlags.DATA | StreamFlags.END_STREAM)) == [b"last"]
    assert decoder.done
    decoder.finish()


def test_message_decoder_stream():
    wire = (encode_stream_frame(b"one") + encode_stream_credit(10) + encode_stream_frame(b"")
            + encode_stream_frame(b"x", 0xF0) + encode_stream_frame(b"two", 0x11) + encode_end_stream())
    decoder = MessageStreamDecoder()
    assert feed_bytewise(decoder, wire) == [b"one", b"", b"two"]
    assert decoder.done
    decoder.finish()


def test_message_decoder_errors():
    with pytest.raises(IncompleteStreamError, match="before END_STREAM") as err:
        decoder = MessageStreamDecoder()
        decoder.feed(encode_stream_frame(b"a"))
        decoder.finish()
    assert err.value.offset == 3

    decoder = MessageStreamDecoder()
    assert decoder.feed(encode_stream_frame(b"a") + encode_stream_cancel("deadline")) == [b"a"]
    with pytest.raises(StreamCancelledError) as err:
        decoder.feed(b"")
    assert err.value.reason == "deadline"
    with pytest.raises(StreamCancelledError):
        decoder.finish()

    decoder = MessageStreamDecoder()
    with pytest.raises(DecodeError, match="after END_STREAM") as err:
        decoder.feed(encode_end_stream() + b"\x00")
    assert err.value.offset == 2 and not decoder.done
    assert MessageStreamDecoder().feed(encode_stream_frame(b"z", 0x03) + b"\x00") == [b"z"]

    with pytest.raises(DecodeError, match="CREDIT") as err:
        MessageStreamDecoder().feed(encode_stream_frame(b"", StreamFlags.CREDIT))
    assert err.value.offset == 2


# ------------------------------------------------------------------------------------------
# property-based tests
# ------------------------------------------------------------------------------------------

tensor_frames = st.builds(
    TensorFrame,
    st.sampled_from(list(TensorFrameType)),
    st.binary(max_size=300),
    st.binary(min_size=4, max_size=4))
stream_frames = st.builds(StreamFrame, st.integers(0, 255), st.binary(max_size=300))


def split(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def run(parser, chunks):
    """Everything the parser produced for these chunks, then the error it ended with."""
    produced, error = [], None
    try:
        for chunk in chunks:
            result = parser.feed(chunk)
            if isinstance(result, list):
                produced.extend(result)
            elif result is not None:
                produced.append(result)
        parser.finish()
    except (DecodeError, StreamCancelledError) as exc:
        error = (type(exc), str(exc))
    return produced, error


@given(st.lists(tensor_frames, max_size=8), st.lists(st.integers(0, 10**6), max_size=12))
@settings(deadline=None)
def test_tensor_frames_split_anywhere(frames, cuts):
    wire = b"".join(f.encode() for f in frames)
    assert run(TensorFrameParser(), split(wire, cuts)) == (frames, None)
    offset = 0
    for frame in frames:
        decoded, used = decode_tensor_frame(wire, offset)
        assert decoded == frame
        offset += used


@given(st.lists(stream_frames, max_size=8), st.lists(st.integers(0, 10**6), max_size=12))
@settings(deadline=None)
def test_stream_frames_split_anywhere(frames, cuts):
    wire = b"".join(f.encode() for f in frames)
    assert run(StreamFrameParser(), split(wire, cuts)) == (frames, None)


@given(st.integers(0, 2**64 - 1))
@settings(deadline=None)
def test_varint_round_trip(value):
    encoded = encode_varint(value)
    assert decode_varint(encoded) == (value, len(encoded))
    assert StreamFrame(StreamFlags.CREDIT, encoded).credit == value


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.booleans(), st.binary(max_size=50))
@settings(deadline=None)
def test_tensor_data_chunk_round_trip(seq, total, final, data):
    chunk = TensorDataChunk(seq, total, final, data)
    assert TensorDataChunk.decode(chunk.encode()) == chunk


@given(st.binary(max_size=200), st.lists(st.integers(0, 10**6), max_size=6))
@settings(max_examples=300, deadline=None)
def test_garbage_gives_same_outcome_whatever_the_split(data, cuts):
    for make in (lambda: TensorFrameParser(max_payload=64), lambda: StreamFrameParser(max_frame_size=64),
                 lambda: TensorReceiver(max_bytes=256), TokenStreamDecoder, MessageStreamDecoder):
        whole = run(make(), [data])
        assert run(make(), split(data, cuts)) == whole


numeric_dtypes = st.sampled_from(["float32", "float64", "float16", "int8", "int32", "int64", "uint8"])


@given(numeric_dtypes, st.lists(st.integers(0, 5), max_size=3), st.integers(1, 40),
       st.lists(st.integers(0, 10**6), max_size=10))
@settings(max_examples=60, deadline=None)
def test_receiver_round_trip_any_split(dtype, shape, chunk_size, cuts):
    array = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    tensor = Tensor.from_numpy(array, name="p")
    produced, error = run(TensorReceiver(), split(tensor_wire(tensor, chunk_size), cuts))
    assert error is None and produced == [tensor]


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 20)), max_size=5),
       st.lists(st.integers(0, 10**6), max_size=8))
@settings(max_examples=60, deadline=None)
def test_token_stream_any_split(specs, cuts):
    batches = [make_batch(seq, n) for seq, n in specs]
    wire = b"".join(encode_token_batch_frame(b) for b in batches) + END_STREAM_FRAME
    produced, error = run(TokenStreamDecoder(), split(wire, cuts))
    assert error is None and [b.encode() for b in produced] == [b.encode() for b in batches]


def corrupt(wire, flips):
    wire = bytearray(wire)
    for position, value in flips:
        wire[position % len(wire)] = value
    return bytes(wire)


@given(numeric_dtypes, st.lists(st.integers(0, 4), max_size=3), st.integers(1, 24),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3),
       st.lists(st.integers(0, 10**6), max_size=8))
@settings(max_examples=200, deadline=None)
def test_corrupted_streams_fail_cleanly_whatever_the_split(dtype, shape, chunk_size, flips, cuts):
    """Valid streams with a few bytes overwritten: the same result or quill error for any split."""
    tensor = Tensor.from_numpy(np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape))
    tensor_stream = corrupt(tensor_wire(tensor, chunk_size), flips)
    token_stream = corrupt(b"".join(encode_token_batch_frame(make_batch(5, n)) for n in (2, 0, 3))
                           + END_STREAM_FRAME, flips)
    for make, wire in ((TensorReceiver, tensor_stream), (TensorFrameParser, tensor_stream),
                       (TokenStreamDecoder, token_stream)):
        produced, error = run(make(), split(wire, cuts))
        assert (produced, error) == run(make(), [wire])
        if make is TensorReceiver and error is None:
            # what it accepted is exactly what the frames carry: the meta and every payload byte
            (received,) = produced
            frames = TensorFrameParser().feed(wire)
            assert received.meta == TensorMeta.decode(frames[0].payload)
            assert received.tobytes() == b"".join(f.payload for f in frames if f.type == T.TENSOR_PAYLOAD)


def test_tensor_receiver_writes_into_a_caller_buffer():
    array = np.arange(70_000, dtype=np.int32)
    wire = b"".join(bytes(p) for p in encode_tensor_frames(Tensor.from_numpy(array)))
    out = bytearray(array.nbytes + 16)
    tensor = TensorReceiver(out=out).feed(wire)
    np.testing.assert_array_equal(tensor.to_numpy(), array)
    assert np.shares_memory(tensor.to_numpy(), np.frombuffer(out, dtype=np.uint8))
    with pytest.raises(LimitExceededError, match="does not fit"):
        TensorReceiver(out=bytearray(array.nbytes - 1)).feed(wire)
    with pytest.raises(ValueError, match="writable"):
        TensorReceiver(out=bytes(16))
    with pytest.raises(TypeError, match="writable buffer"):
        TensorReceiver(out=42)
