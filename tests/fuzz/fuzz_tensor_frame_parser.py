"""atheris fuzz target for TensorFrameParser (quill._core.frames).

Input: a payload limit, a tensor-frame stream (generated frames with lying lengths and
garbage mixed in, or raw bytes) and split points. Invariants (see harness.py): only quill
errors, with offsets inside the stream; whole and split feeds agree; ``buffered`` never
exceeds the 9-byte header plus the limit; the heap stays within budget. When the parser
accepts the whole stream, the one-shot decode_tensor_frame walks it to the same frames.

    python tests/fuzz/fuzz_tensor_frame_parser.py -max_total_time=60 -rss_limit_mb=2048
"""

import atheris

import harness

with atheris.instrument_imports(include=["quill"]):
    from quill.frames import TensorFrameParser, decode_tensor_frame


@atheris.instrument_func
def frames_one_by_one(stream):
    frames, offset = [], 0
    while offset < len(stream):
        frame, used = decode_tensor_frame(stream, offset)
        frames.append(frame)
        offset += used
    return frames


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    limit = fdp.ConsumeIntInRange(0, 4096)
    stream, cuts = harness.stream_and_cuts(fdp, harness.tensor_frame_stream)
    with harness.MemoryWatch(harness.memory_budget(len(data), limit)):
        frames, error = harness.check_splits_agree(lambda: TensorFrameParser(max_payload=limit), stream, cuts,
                                                   max_buffered=9 + limit)
        if error is None and frames_one_by_one(stream) != frames:
            raise AssertionError(f"decode_tensor_frame disagrees with the parser on {stream.hex()}")


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
