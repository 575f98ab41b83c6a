"""atheris fuzz target for MessageStreamDecoder (quill._core.frames): DATA, END_STREAM, CANCEL, CREDIT.

Input: a frame-size limit, a message stream (generated frames with random flags,
over-long varints and garbage, or raw bytes) and split points. Invariants (see
harness.py): only quill errors, with offsets inside the stream; whole and split feeds
give the same messages and error; ``buffered`` stays under a 10-byte varint, the flags
byte and the limit; the heap stays within budget.

    python tests/fuzz/fuzz_message_stream_decoder.py -max_total_time=60 -rss_limit_mb=2048
"""

import atheris

import harness

with atheris.instrument_imports(include=["quill"]):
    from quill.frames import MessageStreamDecoder


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    limit = fdp.ConsumeIntInRange(0, 4096)
    stream, cuts = harness.stream_and_cuts(fdp, harness.message_frame_stream)
    with harness.MemoryWatch(harness.memory_budget(len(data), limit)):
        harness.check_splits_agree(lambda: MessageStreamDecoder(max_frame_size=limit), stream, cuts,
                                   max_buffered=11 + limit)


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
