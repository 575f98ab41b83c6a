"""atheris fuzz target for the frame parsers and decoders of quill.frames.

Each input picks a parser (TensorFrameParser, TensorReceiver, TokenStreamDecoder,
StreamFrameParser, MessageStreamDecoder), a size limit, a byte stream (raw bytes or a
sequence of mostly well-formed frames with corrupted lengths and random garbage mixed
in) and split points. The stream is fed whole and in the random splits: both must give
the same frames and the same error, and the only errors allowed are quill's
(DecodeError and its subclasses, StreamCancelledError). Anything else crashes the run.
The compiled parsers carry no coverage instrumentation; the Python functions here do, so
libFuzzer keeps inputs that reach new frame kinds, parsers and outcomes.

    python tests/fuzz/fuzz_frames.py -max_total_time=60 -rss_limit_mb=2048
"""

import sys

import atheris

with atheris.instrument_imports():
    from quill.dtypes import DType
    from quill.errors import DecodeError, StreamCancelledError
    from quill.frames import (
        MessageStreamDecoder,
        StreamFrameParser,
        TensorFrameParser,
        TensorReceiver,
        TokenStreamDecoder,
        encode_cancel_frame,
        encode_credit_frame,
        encode_stream_frame,
        encode_tensor_frame,
        encode_varint,
        tensor_frame_header,
    )
    from quill.tensor import TensorMeta

TENSOR_TYPES = [0x01, 0x02, 0x04, 0x08, 0x10, 0x11, 0x20]


@atheris.instrument_func
def tensor_stream(fdp):
    """A sequence of tensor frames, mostly well-formed, some corrupted."""
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        kind = fdp.ConsumeIntInRange(0, 9)
        if kind == 0:
            shape = [fdp.ConsumeIntInRange(0, 6) for _ in range(fdp.ConsumeIntInRange(0, 3))]
            meta = TensorMeta(shape, DType.from_code(fdp.ConsumeIntInRange(1, 9)))
            parts.append(encode_tensor_frame(0x10, meta.encode()))
        elif kind <= 3:
            parts.append(encode_tensor_frame(0x11, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 48))))
        elif kind == 4:
            parts.append(encode_tensor_frame(0x02))
        elif kind == 5:
            parts.append(encode_cancel_frame(fdp.ConsumeUnicodeNoSurrogates(8)))
        elif kind == 6:
            parts.append(encode_tensor_frame(0x20, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))))
        elif kind == 7:
            parts.append(encode_credit_frame(fdp.ConsumeIntInRange(0, 2**64 - 1)))
        elif kind == 8:
            parts.append(tensor_frame_header(fdp.PickValueInList(TENSOR_TYPES), fdp.ConsumeIntInRange(0, 2**32 - 1)))
        else:
            parts.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16)))
    return b"".join(parts)


@atheris.instrument_func
def message_stream(fdp):
    """A sequence of message-stream frames, mostly well-formed, some corrupted."""
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        kind = fdp.ConsumeIntInRange(0, 5)
        if kind <= 2:
            flags = fdp.ConsumeIntInRange(0, 255) if kind == 2 else 0x01
            parts.append(encode_stream_frame(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 48)), flags))
        elif kind == 3:
            parts.append(encode_varint(fdp.ConsumeIntInRange(0, 2**64 - 1)) + fdp.ConsumeBytes(1))
        elif kind == 4:
            parts.append(b"\x00\x02")
        else:
            parts.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16)))
    return b"".join(parts)


def parsers(fdp):
    limit = fdp.ConsumeIntInRange(0, 4096)
    return [
        (lambda: TensorFrameParser(max_payload=limit), tensor_stream),
        (lambda: TensorReceiver(max_bytes=limit), tensor_stream),
        (lambda: TokenStreamDecoder(max_payload=limit), tensor_stream),
        (lambda: StreamFrameParser(max_frame_size=limit), message_stream),
        (lambda: MessageStreamDecoder(max_frame_size=limit), message_stream),
    ]


def comparable(item):
    """Frames and tensors compare by value; token batches by their encoding."""
    return item.encode() if type(item).__name__ == "TokenBatch" else item


@atheris.instrument_func
def run(parser, chunks):
    produced, error = [], None
    try:
        for chunk in chunks:
            result = parser.feed(chunk)
            if isinstance(result, list):
                produced.extend(comparable(r) for r in result)
            elif result is not None:
                produced.append(result)
        parser.finish()
    except (DecodeError, StreamCancelledError) as exc:
        error = (type(exc), str(exc))
        assert not isinstance(exc, DecodeError) or exc.offset is not None, exc
    return produced, error


@atheris.instrument_func
def test_one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    make, generate = fdp.PickValueInList(parsers(fdp))
    stream = generate(fdp) if fdp.ConsumeBool() else fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
    cuts = sorted({fdp.ConsumeIntInRange(0, len(stream)) for _ in range(fdp.ConsumeIntInRange(0, 16))})
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    whole = run(make(), [stream])
    split = run(make(), chunks)
    assert whole == split, (stream.hex(), cuts, whole, split)


def main():
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
