"""atheris fuzz target for TokenStreamDecoder (quill._core.frames): TOKEN_BATCH frames, END_STREAM, CANCEL.

Input: a payload limit, a tensor-frame stream (generated frames with lying lengths and
garbage, or raw bytes) and split points. Invariants (see harness.py): only quill errors,
with offsets inside the stream; whole and split feeds give the same batches (compared by
their encoding) and error; ``buffered`` stays under header plus the largest payload
allowed; the heap stays within budget.

    python tests/fuzz/fuzz_token_stream_decoder.py -max_total_time=60 -rss_limit_mb=2048
"""

import atheris

import harness

with atheris.instrument_imports(include=["quill"]):
    from quill.frames import MAX_CANCEL_PAYLOAD, TokenStreamDecoder


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    limit = fdp.ConsumeIntInRange(0, 4096)
    stream, cuts = harness.stream_and_cuts(fdp, harness.tensor_frame_stream)
    with harness.MemoryWatch(harness.memory_budget(len(data), limit)):
        harness.check_splits_agree(lambda: TokenStreamDecoder(max_payload=limit), stream, cuts,
                                   comparable=lambda batch: batch.encode(),
                                   max_buffered=9 + max(limit, MAX_CANCEL_PAYLOAD))


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
