"""Invariant checks and input generators shared by the atheris fuzz targets in this directory (not itself a target).

Every target checks, for each input:
  * no crash, and the only exceptions are quill's (DecodeError and its subclasses, and
    StreamCancelledError for a peer's CANCEL): anything else propagates out of the
    target's TestOneInput and libFuzzer reports it with the input that caused it;
  * a DecodeError carries an offset inside the input;
  * memory: the Python-heap peak while handling one input (tracemalloc traces bytes objects,
    numpy buffers and every other PyMem/PyObject allocation) stays under
    ``memory_budget(len(input), limit)``, so a hostile length is refused before anything
    is allocated for it. libFuzzer's ``-rss_limit_mb`` bounds the whole process as well.

Incremental parsers are also fed the same bytes in random splits: the frames produced and
the error met (class and message) must be the same as when the stream is fed whole.

``fuzz(test_one_input)`` is the entry point of every target. Only quill's Python modules
and the targets themselves carry atheris coverage instrumentation (``instrument_imports``
around the quill imports, ``instrument_func`` on harness functions): instrumenting every
loaded module with ``atheris.instrument_all()`` costs about 25 s of start-up.
"""

import sys
import tracemalloc

import atheris

with atheris.instrument_imports(include=["quill"]):
    from quill.dtypes import DType
    from quill.errors import DecodeError, StreamCancelledError
    from quill.frames import (
        encode_cancel_frame,
        encode_credit_frame,
        encode_stream_frame,
        encode_tensor_frame,
        encode_varint,
        tensor_frame_header,
    )
    from quill.tensor import TensorMeta

QUILL_ERRORS = (DecodeError, StreamCancelledError)
BASE_MEMORY_BUDGET = 1 << 20
BYTES_PER_INPUT_BYTE = 64


def check_decode_error(exc, data_len):
    """A DecodeError must say where: an offset inside the ``data_len``-byte input."""
    if isinstance(exc, DecodeError) and (exc.offset is None or not 0 <= exc.offset <= data_len):
        raise AssertionError(f"DecodeError offset {exc.offset} outside the {data_len}-byte input: {exc}")


def memory_budget(input_len, limit=0):
    """Heap bytes one input may use: a fixed base, a few dozen bytes of objects per input byte
    (a 9-byte token becomes a Token object and a str), and the configured size limit."""
    return BASE_MEMORY_BUDGET + BYTES_PER_INPUT_BYTE * input_len + 2 * limit


class MemoryWatch:
    """Context manager: raise if the traced heap peak inside the block exceeds ``budget`` bytes."""

    def __init__(self, budget):
        self.budget = budget

    def __enter__(self):
        self.start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc_info):
        _, peak = tracemalloc.get_traced_memory()
        used = peak - self.start
        if used > self.budget:
            raise AssertionError(f"one input used {used} heap bytes, over its budget of {self.budget}")
        return False


def random_cuts(fdp, length, max_cuts=16):
    """Split points chosen by the fuzzer, sorted and unique, inside 0..length."""
    return sorted({fdp.ConsumeIntInRange(0, length) for _ in range(fdp.ConsumeIntInRange(0, max_cuts))})


def chunks_at(stream, cuts):
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


@atheris.instrument_func
def feed_all(parser, chunks, comparable=lambda item: item, max_buffered=None):
    """Feed ``chunks`` then finish; return (outputs, (error class, message) or None).

    ``max_buffered``: the parser's ``buffered`` count must never exceed it (the size limit
    is applied before the payload is held).
    """
    produced, error = [], None
    total = sum(len(c) for c in chunks)
    try:
        for chunk in chunks:
            result = parser.feed(chunk)
            if max_buffered is not None and parser.buffered > max_buffered:
                raise AssertionError(f"parser holds {parser.buffered} bytes, over its limit of {max_buffered}")
            if isinstance(result, list):
                produced.extend(comparable(r) for r in result)
            elif result is not None:
                produced.append(comparable(result))
        parser.finish()
    except QUILL_ERRORS as exc:
        check_decode_error(exc, total)
        error = (type(exc), str(exc))
    return produced, error


def check_splits_agree(make_parser, stream, cuts, **feed_options):
    """The parser gives the same outputs and error whether ``stream`` arrives whole or cut at ``cuts``."""
    whole = feed_all(make_parser(), [stream], **feed_options)
    split = feed_all(make_parser(), chunks_at(stream, cuts), **feed_options)
    if whole != split:
        raise AssertionError(f"whole and split feeds disagree: stream={stream.hex()} cuts={cuts}\n"
                             f"whole: {whole}\nsplit: {split}")
    return whole


TENSOR_FRAME_TYPES = [0x01, 0x02, 0x04, 0x08, 0x10, 0x11, 0x20]


@atheris.instrument_func
def tensor_frame_stream(fdp):
    """A sequence of tensor frames, mostly well-formed, some with lying lengths or garbage between."""
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        kind = fdp.ConsumeIntInRange(0, 10)
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
            parts.append(tensor_frame_header(fdp.PickValueInList(TENSOR_FRAME_TYPES),
                                             fdp.ConsumeIntInRange(0, 2**32 - 1)))
        elif kind == 9:
            # a TENSOR_META frame whose meta claims a huge tensor (up to 2**64 bytes)
            dims = [fdp.ConsumeIntInRange(0, 2**64 - 1) for _ in range(fdp.ConsumeIntInRange(1, 4))]
            raw = bytes([len(dims)]) + b"".join(d.to_bytes(8, "little") for d in dims)
            raw += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
            parts.append(encode_tensor_frame(0x10, raw))
        else:
            parts.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16)))
    return b"".join(parts)


@atheris.instrument_func
def message_frame_stream(fdp):
    """A sequence of message-stream frames, mostly well-formed, some with lying lengths or garbage."""
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


@atheris.instrument_func
def stream_and_cuts(fdp, generate):
    """A generated stream or raw fuzzer bytes, and split points inside it."""
    stream = generate(fdp) if fdp.ConsumeBool() else fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1024))
    return stream, random_cuts(fdp, len(stream))


def raw_or_built(fuzz_raw, fuzz_built):
    """A ``TestOneInput``: the first byte's low bit sends the rest to ``fuzz_raw`` as bytes, or
    to ``fuzz_built`` as a FuzzedDataProvider for a structured input; memory is watched."""

    def test_one_input(data):
        if not data:
            return
        with MemoryWatch(memory_budget(len(data))):
            if data[0] & 1:
                fuzz_raw(data[1:])
            else:
                fuzz_built(atheris.FuzzedDataProvider(data[1:]))

    return test_one_input


def fuzz(test_one_input):
    """Run ``test_one_input(data)`` under libFuzzer, with tracemalloc on for the memory checks."""
    tracemalloc.start()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
