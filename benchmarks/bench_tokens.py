"""Token batches: quill._core.tokens against a pure-Python struct codec, protobuf (upb) and msgpack.

Workload (issue 3): 100,000 batches of 32 tokens; each token has a 3-8 letter ASCII text, a
logprob in (-10, 0], a sequential position and a random id below 50,000; each batch has a
sequence_id. Every measurement processes the whole workload; the table shows the median of
``--runs`` runs in tokens per second, for quill and the peers alike:
  * time is this process's CPU time (time.process_time), so other processes on a shared
    machine do not count; the garbage collector is paused while timing (as timeit does);
  * builds and encodes keep every result (3.2 M objects, 100,000 byte strings);
  * decodes stream: each batch is decoded, its content read as the row says, then dropped,
    as a client consuming a token stream does. One extra row keeps all decoded tokens alive.

    python benchmarks/bench_tokens.py [--batches 100000] [--runs 5]

The protobuf schema is built at run time (descriptor_pb2 + message_factory, no protoc):
    message Token { optional uint32 id = 1; optional uint32 position = 2; optional string text = 3;
                    optional float logprob = 4; optional bool is_special = 5; }
    message TokenBatch { optional uint32 sequence_id = 1; optional bool is_final = 2;
                         repeated Token tokens = 3; }
"""

import argparse
import gc
import os
import random
import statistics
import string
import struct
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads would add idle CPU time

import msgpack
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal import api_implementation

from quill._core.tokens import Token, TokenBatch

TOKENS_PER_BATCH = 32


# -- workload ----------------------------------------------------------------------------------


def make_workload(batches, seed=1234):
    """Per batch: (sequence_id, [(id, position, text, logprob), ...])."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    position = 0
    workload = []
    for b in range(batches):
        tokens = []
        for _ in range(TOKENS_PER_BATCH):
            text = "".join(rng.choices(letters, k=rng.randint(3, 8)))
            tokens.append((rng.randrange(50_000), position, text, -rng.random() * 10))
            position += 1
        workload.append((b, tokens))
    return workload


# -- peer 1: the same wire format in pure Python with struct --------------------------------------


class PyToken:
    __slots__ = ("id", "position", "text", "logprob", "is_special")

    def __init__(self, id, position, text=None, logprob=None, is_special=False):
        self.id = id
        self.position = position
        self.text = text
        self.logprob = logprob
        self.is_special = is_special


_FIXED = struct.Struct(">IIB")
_F32 = struct.Struct(">f")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def struct_encode(sequence_id, tokens, is_final=False):
    parts = [bytes([(sequence_id is not None) | (is_final << 1)])]
    if sequence_id is not None:
        parts.append(_U32.pack(sequence_id))
    parts.append(_U16.pack(len(tokens)))
    for t in tokens:
        flags = (t.text is not None) | ((t.logprob is not None) << 1) | (t.is_special << 2)
        parts.append(_FIXED.pack(t.id, t.position, flags))
        if t.logprob is not None:
            parts.append(_F32.pack(t.logprob))
        if t.text is not None:
            raw = t.text.encode()
            parts.append(_U16.pack(len(raw)))
            parts.append(raw)
    return b"".join(parts)


def struct_decode(buf):
    flags = buf[0]
    pos = 1
    sequence_id = None
    if flags & 1:
        (sequence_id,) = _U32.unpack_from(buf, pos)
        pos += 4
    (count,) = _U16.unpack_from(buf, pos)
    pos += 2
    tokens = []
    for _ in range(count):
        id, position, tflags = _FIXED.unpack_from(buf, pos)
        pos += 9
        logprob = text = None
        if tflags & 2:
            (logprob,) = _F32.unpack_from(buf, pos)
            pos += 4
        if tflags & 1:
            (n,) = _U16.unpack_from(buf, pos)
            text = buf[pos + 2:pos + 2 + n].decode("utf-8", "replace")
            pos += 2 + n
        tokens.append(PyToken(id, position, text, logprob, bool(tflags & 4)))
    return sequence_id, bool(flags & 2), tokens


# -- peer 2: protobuf ----------------------------------------------------------------------------


def protobuf_classes():
    fdp = descriptor_pb2.FileDescriptorProto(name="bench_tokens.proto", package="bench", syntax="proto2")
    F = descriptor_pb2.FieldDescriptorProto
    token = fdp.message_type.add(name="Token")
    for number, (name, kind) in enumerate([("id", F.TYPE_UINT32), ("position", F.TYPE_UINT32),
                                           ("text", F.TYPE_STRING), ("logprob", F.TYPE_FLOAT),
                                           ("is_special", F.TYPE_BOOL)], start=1):
        token.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
    batch = fdp.message_type.add(name="TokenBatch")
    batch.field.add(name="sequence_id", number=1, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL)
    batch.field.add(name="is_final", number=2, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    batch.field.add(name="tokens", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED, type_name=".bench.Token")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.TokenBatch"))


# -- timing ------------------------------------------------------------------------------------


def measure(fn, runs):
    """Median CPU seconds of ``runs`` calls of fn() with the GC paused; also returns the last result."""
    times = []
    result = None
    for _ in range(runs):
        result = None
        gc.collect()
        gc.disable()
        try:
            start = time.process_time()
            result = fn()
            times.append(time.process_time() - start)
        finally:
            gc.enable()
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = args.runs
    workload = make_workload(args.batches)
    total = args.batches * TOKENS_PER_BATCH
    PbBatch = protobuf_classes()
    rate = {}

    def record(name, fn):
        seconds, result = measure(fn, runs)
        rate[name] = total / seconds
        return result

    # Build the objects.
    quill_tokens = record("quill: build Token objects", lambda: [
        [Token(id, position, text, logprob) for id, position, text, logprob in tokens] for _, tokens in workload])
    record("quill: build Token objects + TokenBatch", lambda: [
        TokenBatch.from_tokens([Token(id, position, text, logprob) for id, position, text, logprob in tokens], seq)
        for seq, tokens in workload])
    py_tokens = record("struct: build PyToken objects", lambda: [
        [PyToken(id, position, text, logprob) for id, position, text, logprob in tokens] for _, tokens in workload])

    def pb_build():
        out = []
        for seq, tokens in workload:
            msg = PbBatch(sequence_id=seq)
            add = msg.tokens.add
            for id, position, text, logprob in tokens:
                add(id=id, position=position, text=text, logprob=logprob)
            out.append(msg)
        return out

    pb_messages = record("protobuf: build messages", pb_build)

    # Encode.
    quill_batches = [TokenBatch.from_tokens(tokens, seq) for (seq, _), tokens in zip(workload, quill_tokens)]
    sequence_ids = [seq for seq, _ in workload]
    from_tokens = TokenBatch.from_tokens
    encode_tokens = TokenBatch.encode_tokens
    quill_wire = record("quill: encode from Token objects (encode_tokens)", lambda: [
        encode_tokens(tokens, seq) for seq, tokens in zip(sequence_ids, quill_tokens)])
    record("quill: encode from Token objects (from_tokens().encode())", lambda: [
        from_tokens(tokens, seq).encode() for seq, tokens in zip(sequence_ids, quill_tokens)])
    record("quill: encode prebuilt TokenBatch", lambda: [b.encode() for b in quill_batches])
    struct_wire = record("struct: encode from objects", lambda: [
        struct_encode(seq, tokens) for seq, tokens in zip(sequence_ids, py_tokens)])
    record("protobuf: build + serialize", lambda: [m.SerializeToString() for m in pb_build()])
    pb_wire = record("protobuf: serialize prebuilt", lambda: [m.SerializeToString() for m in pb_messages])
    packb = msgpack.packb
    mp_wire = record("msgpack: pack", lambda: [
        packb([seq, False, [[t.id, t.position, t.text, t.logprob, t.is_special] for t in tokens]])
        for seq, tokens in zip(sequence_ids, py_tokens)])
    assert quill_wire == struct_wire, "quill and the struct codec disagree on the wire bytes"
    del pb_messages, quill_batches, py_tokens

    # Decode (streaming: each result is read, then dropped).
    decode = TokenBatch.decode

    def stream(consume, wire):
        def run():
            for buf in wire:
                consume(buf)
        return run

    record("quill: decode to Token objects", stream(lambda buf: decode(buf).tokens(), quill_wire))
    record("quill: decode to Token objects, all kept", lambda: [decode(buf).tokens() for buf in quill_wire])

    def quill_read(buf):  # Token.text is decoded on first access: this reads it
        batch = decode(buf)
        return batch.sequence_id, batch.is_final, [(t.id, t.position, t.text, t.logprob, t.is_special) for t in batch]

    record("quill: decode + read every field", stream(quill_read, quill_wire))

    def quill_columns(buf):
        batch = decode(buf)
        return batch.ids_array(), batch.logprobs_array()

    record("quill: decode to columns (ids + logprobs arrays)", stream(quill_columns, quill_wire))
    record("quill: decode only (columnar TokenBatch)", stream(decode, quill_wire))
    record("struct: decode to objects", stream(struct_decode, struct_wire))

    def pb_parse_read(buf):
        msg = PbBatch.FromString(buf)
        return msg.sequence_id, msg.is_final, [(t.id, t.position, t.text, t.logprob, t.is_special) for t in msg.tokens]

    record("protobuf: parse + read every field", stream(pb_parse_read, pb_wire))
    record("protobuf: parse + read every field, all kept", lambda: [pb_parse_read(buf) for buf in pb_wire])
    record("protobuf: parse only", stream(PbBatch.FromString, pb_wire))
    unpackb = msgpack.unpackb

    def mp_unpack(buf):
        seq, final, tokens = unpackb(buf)
        return seq, final, [PyToken(*t) for t in tokens]

    record("msgpack: unpack + objects", stream(mp_unpack, mp_wire))

    build = f"build {total / 1e6:.1f} M token objects"
    comparisons = [
        (build, "quill: build Token objects", "protobuf: build messages", 5.0),
        (build, "quill: build Token objects + TokenBatch", "protobuf: build messages", None),
        (build, "quill: build Token objects", "struct: build PyToken objects", None),
        ("encode from Token objects", "quill: encode from Token objects (encode_tokens)",
         "protobuf: serialize prebuilt", 2.0),
        ("encode from Token objects", "quill: encode from Token objects (from_tokens().encode())",
         "protobuf: serialize prebuilt", 2.0),
        ("encode from Token objects", "quill: encode from Token objects (encode_tokens)",
         "protobuf: build + serialize", None),
        ("encode from Token objects", "quill: encode from Token objects (encode_tokens)",
         "struct: encode from objects", None),
        ("encode from Token objects", "quill: encode from Token objects (encode_tokens)", "msgpack: pack", None),
        ("encode prebuilt batches", "quill: encode prebuilt TokenBatch", "protobuf: serialize prebuilt", None),
        ("decode to Token objects", "quill: decode to Token objects", "protobuf: parse + read every field", None),
        ("decode to Token objects", "quill: decode to Token objects", "struct: decode to objects", None),
        ("decode to Token objects", "quill: decode to Token objects", "msgpack: unpack + objects", None),
        ("decode + read every field", "quill: decode + read every field", "protobuf: parse + read every field", None),
        ("decode to Token objects, all kept", "quill: decode to Token objects, all kept",
         "protobuf: parse + read every field, all kept", None),
        ("decode to columns", "quill: decode to columns (ids + logprobs arrays)", "protobuf: parse only", None),
        ("decode only", "quill: decode only (columnar TokenBatch)", "protobuf: parse only", None),
    ]
    absolute = {"quill: encode from Token objects (encode_tokens)": 30e6,
                "quill: encode from Token objects (from_tokens().encode())": 30e6,
                "quill: decode to Token objects": 10e6,
                "quill: decode to columns (ids + logprobs arrays)": 60e6}

    print(f"\n{args.batches:,} batches x {TOKENS_PER_BATCH} tokens = {total:,} tokens, median CPU time of {runs} "
          f"runs, protobuf backend: {api_implementation.Type()}, msgpack {'.'.join(map(str, msgpack.version))}\n")
    print("| workload | quill | quill tokens/s | peer | peer tokens/s | ratio | target |")
    print("| --- | --- | ---: | --- | ---: | ---: | --- |")
    for workload_name, ours, peer, target_ratio in comparisons:
        ratio = rate[ours] / rate[peer]
        targets = []
        if ours in absolute:
            floor = absolute.pop(ours)  # shown once, on the first row of that measurement
            targets.append(f">= {floor / 1e6:.0f} M/s {'met' if rate[ours] >= floor else 'MISSED'}")
        if target_ratio:
            targets.append(f">= {target_ratio:.0f}x {'met' if ratio >= target_ratio else 'MISSED'}")
        print(f"| {workload_name} | {ours.split(': ', 1)[1]} | {rate[ours] / 1e6:.2f} M | "
              f"{peer} | {rate[peer] / 1e6:.2f} M | {ratio:.1f}x | {'; '.join(targets)} |")


if __name__ == "__main__":
    main()
