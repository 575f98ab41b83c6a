"""atheris fuzz target for TensorReceiver (quill._core.frames): TENSOR_META, payload frames, END_STREAM.

Input: a tensor-size limit, a tensor-frame stream (generated frames, including metas that
claim up to 2**64 bytes, lying lengths and garbage, or raw bytes) and split points.
Invariants (see harness.py): only quill errors, with offsets inside the stream; whole and
split feeds give the same tensor (meta and bytes) and error; no tensor over the limit is
produced; ``buffered`` stays under header plus the largest frame allowed; the heap stays
within budget (a hostile meta is refused before its buffer is allocated).

    python tests/fuzz/fuzz_tensor_receiver.py -max_total_time=60 -rss_limit_mb=2048
"""

import atheris

import harness

with atheris.instrument_imports(include=["quill"]):
    from quill.frames import MAX_CANCEL_PAYLOAD, MAX_META_PAYLOAD, TensorReceiver


@atheris.instrument_func
def tensor_value(tensor, limit):
    if tensor.size_bytes > limit:
        raise AssertionError(f"receiver produced a {tensor.size_bytes}-byte tensor over its {limit}-byte limit")
    return tensor.meta, tensor.tobytes()


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    limit = fdp.ConsumeIntInRange(0, 4096)
    stream, cuts = harness.stream_and_cuts(fdp, harness.tensor_frame_stream)
    with harness.MemoryWatch(harness.memory_budget(len(data), limit)):
        harness.check_splits_agree(lambda: TensorReceiver(max_bytes=limit), stream, cuts,
                                   comparable=lambda tensor: tensor_value(tensor, limit),
                                   max_buffered=9 + max(limit, MAX_META_PAYLOAD, MAX_CANCEL_PAYLOAD))


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
