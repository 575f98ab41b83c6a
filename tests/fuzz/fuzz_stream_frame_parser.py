"""atheris fuzz target for StreamFrameParser (quill._core.frames): varint length, flags, payload.

Input: a frame-size limit, a message stream (generated frames, over-long and overflowing
varints, garbage, or raw bytes) and split points. Invariants (see harness.py): only quill
errors, with offsets inside the stream; whole and split feeds give the same frames (and
the same CREDIT value or error for each) and error; ``buffered`` stays under a 10-byte
varint, the flags byte and the limit; the heap stays within budget.

    python tests/fuzz/fuzz_stream_frame_parser.py -max_total_time=60 -rss_limit_mb=2048
"""

import atheris

import harness

with atheris.instrument_imports(include=["quill"]):
    from quill.frames import StreamFrameParser


@atheris.instrument_func
def frame_value(frame):
    try:
        credit = frame.credit
    except harness.DecodeError as exc:
        credit = (type(exc), str(exc))
    if frame.offset is None:
        raise AssertionError("a parsed frame has no stream offset")
    return frame.flags, frame.payload, frame.offset, credit


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    limit = fdp.ConsumeIntInRange(0, 4096)
    stream, cuts = harness.stream_and_cuts(fdp, harness.message_frame_stream)
    with harness.MemoryWatch(harness.memory_budget(len(data), limit)):
        harness.check_splits_agree(lambda: StreamFrameParser(max_frame_size=limit), stream, cuts,
                                   comparable=frame_value, max_buffered=11 + limit)


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
