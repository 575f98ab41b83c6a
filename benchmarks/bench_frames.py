"""Throughput of quill's frame parsers and tensor receiver.

Each workload feeds a prepared wire stream in fixed-size chunks (as a socket read loop
would) and is measured for quill and for a pure-Python ``struct`` implementation of the
same format in the same process; the median of several runs is reported. Two plain
copies of the same chunks are printed as baselines: ``b"".join`` (a fresh buffer, so it
pays the page faults a receiver pays too) and slice assignment into a buffer allocated
and touched beforehand (memory bandwidth, the ceiling for any parser that copies).

    python benchmarks/bench_frames.py [--mib 64] [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time

import numpy as np

from quill.frames import (
    MessageStreamDecoder,
    StreamFrameParser,
    TensorFrameParser,
    TensorReceiver,
    encode_stream_frame,
    encode_tensor_frame,
    encode_tensor_frames,
)
from quill.tensor import Tensor

TENSOR_HEADER = struct.Struct(">B4sI")
TENSOR_TYPES = {0x01, 0x02, 0x04, 0x08, 0x10, 0x11, 0x20}


# -- the pure-Python peers ------------------------------------------------------------------

class StructTensorFrameParser:
    """Tensor frames with struct: buffer in a bytearray, parse by offset, compact once per feed."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        buf = self.buf
        buf += data
        frames, pos, end = [], 0, len(buf)
        while end - pos >= 9:
            frame_type, reserved, length = TENSOR_HEADER.unpack_from(buf, pos)
            if frame_type not in TENSOR_TYPES:
                raise ValueError(f"unknown frame type {frame_type:#x} at {pos}")
            if end - pos - 9 < length:
                break
            frames.append((frame_type, reserved, bytes(buf[pos + 9:pos + 9 + length])))
            pos += 9 + length
        del buf[:pos]
        return frames


class StructTensorReceiver:
    """A tensor receiver on StructTensorFrameParser: meta with struct, payload copied into one bytearray."""

    def __init__(self):
        self.parser = StructTensorFrameParser()
        self.data = None
        self.received = 0

    def feed(self, data):
        for frame_type, _, payload in self.parser.feed(data):
            if frame_type == 0x10:
                ndim = payload[0]
                shape = struct.unpack_from(f"<{ndim}Q", payload, 1)
                code, device, byte_size, name_len = struct.unpack_from("<BBQH", payload, 1 + 8 * ndim)
                self.shape, self.code = shape, code
                self.data = bytearray(byte_size)
                self.view = memoryview(self.data)
            elif frame_type == 0x11:
                self.view[self.received:self.received + len(payload)] = payload
                self.received += len(payload)
            elif frame_type == 0x02:
                return self.data
        return None


def read_varint(buf, pos, end):
    value = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")
    return None, pos


class StructStreamFrameParser:
    """Message-stream frames in pure Python: varint length, flags, payload."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        buf = self.buf
        buf += data
        frames, pos, end = [], 0, len(buf)
        while True:
            length, after = read_varint(buf, pos, end)
            if length is None or end - after < 1 + length:
                break
            frames.append((buf[after], bytes(buf[after + 1:after + 1 + length])))
            pos = after + 1 + length
        del buf[:pos]
        return frames


# -- measurement --------------------------------------------------------------------------

def median_seconds(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def chunked(data, size):
    view = memoryview(data)
    return [bytes(view[i:i + size]) for i in range(0, len(data), size)]


def copy_into_warm_buffer(chunks):
    target = memoryview(bytearray(sum(len(c) for c in chunks)))

    def run():
        offset = 0
        for chunk in chunks:
            target[offset:offset + len(chunk)] = chunk
            offset += len(chunk)
    return run


def feed_all(make):
    def run(chunks):
        parser = make()
        for chunk in chunks:
            parser.feed(chunk)
    return run


def workloads(mib):
    nbytes = mib << 20
    tensor = Tensor.from_numpy(np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32))
    tensor_stream = b"".join(encode_tensor_frames(tensor))
    small = [encode_tensor_frame(0x20, bytes(200)) for _ in range(nbytes // (4 * 209))]
    small_stream = b"".join(small)
    messages = b"".join(encode_stream_frame(bytes(1000)) for _ in range(nbytes // 1003)) + b"\x00\x02"
    one_mib_stream = b"".join(encode_tensor_frames(Tensor.from_numpy(np.arange(1 << 18, dtype=np.float32))))
    small_tensor_stream = b"".join(encode_tensor_frames(
        Tensor.from_numpy(np.arange(1 << 14, dtype=np.float32)), chunk_size=4096))
    tiny = b"".join(encode_stream_frame(bytes(50)) for _ in range(nbytes // (4 * 52))) + b"\x00\x02"
    return [
        (f"TensorReceiver, {mib} MiB float32 tensor, 64 KiB reads", tensor_stream, 65536,
         feed_all(TensorReceiver), feed_all(StructTensorReceiver)),
        (f"TensorFrameParser, {mib} MiB in 64 KiB frames, 64 KiB reads", tensor_stream, 65536,
         feed_all(TensorFrameParser), feed_all(StructTensorFrameParser)),
        (f"TensorFrameParser, {len(small)} frames of 200 B, 64 KiB reads", small_stream, 65536,
         feed_all(TensorFrameParser), feed_all(StructTensorFrameParser)),
        (f"StreamFrameParser, {mib} MiB of 1000 B messages, 64 KiB reads", messages, 65536,
         feed_all(StreamFrameParser), feed_all(StructStreamFrameParser)),
        (f"MessageStreamDecoder, {len(tiny) // 52} messages of 50 B, 64 KiB reads", tiny, 65536,
         feed_all(MessageStreamDecoder), feed_all(StructStreamFrameParser)),
        ("TensorReceiver, 1 MiB tensor, 1 KiB reads", one_mib_stream, 1024,
         feed_all(TensorReceiver), feed_all(StructTensorReceiver)),
        ("TensorReceiver, 64 KiB tensor, 1-byte reads", small_tensor_stream, 1,
         feed_all(TensorReceiver), feed_all(StructTensorReceiver)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="stream size in MiB (default 64)")
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement; the median is reported")
    args = parser.parse_args()

    print("| workload | quill GB/s | struct peer GB/s | quill / peer | b\"\".join GB/s | copy into warm buffer GB/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, stream, read_size, quill_run, peer_run in workloads(args.mib):
        chunks = chunked(stream, read_size)
        size = len(stream)
        quill_s = median_seconds(lambda: quill_run(chunks), args.runs)
        peer_s = median_seconds(lambda: peer_run(chunks), args.runs)
        join_s = median_seconds(lambda: b"".join(chunks), args.runs)
        warm_s = median_seconds(copy_into_warm_buffer(chunks), args.runs)
        print(f"| {name} | {size / quill_s / 1e9:.3g} | {size / peer_s / 1e9:.3g} | "
              f"{peer_s / quill_s:.1f}x | {size / join_s / 1e9:.3g} | {size / warm_s / 1e9:.3g} |")


if __name__ == "__main__":
    main()
