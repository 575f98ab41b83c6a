"""atheris fuzz target for the Arrow import side: TokenBatch.from_arrow and Tensor.from_arrow
(quill._core.arrow_import) over hand-built C structs (tests/arrow_c.py).

The first byte of each input picks a mode:
  * raw: a well-typed token record batch whose buffers (bitmaps, values, string offsets, text
    bytes, offsets and null counts) come from the input;
  * built: structure chosen by the fuzzer as well: column names and formats, lengths, offsets,
    null counts, buffer and child counts, NULL buffers, string views, schema metadata, and
    fixed-size lists read as tensors.
Every buffer is as large as the C data interface says (see arrow_c.py): the structs may lie,
the memory behind them is real. Invariants (see harness.py): the only errors are TypeError and
DecodeError; a batch that imports has the tokens an independent Python reading of the same
buffers gives, and survives an Arrow round trip and (when the wire can carry it) an
encode/decode; the heap stays within budget.

    python tests/fuzz/fuzz_arrow_import.py -max_total_time=60 -rss_limit_mb=2048
"""

import os
import struct
import sys

import atheris

import harness

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from arrow_c import Array, RawSource, Schema, i32, i64, metadata  # noqa: E402

with atheris.instrument_imports(include=["quill"]):
    from quill._core.tokens import TokenBatch
    from quill.errors import DecodeError, EncodeError
    from quill.tensor import Tensor

ERRORS = (TypeError, DecodeError)
FORMATS = [b"I", b"i", b"f", b"g", b"b", b"u", b"U", b"vu", b"C", b"e", b"n", b"+s", b"+w:2", b"z"]
NAMES = [b"id", b"position", b"logprob", b"text", b"is_special", b"other"]
WIDTHS = {b"I": 4, b"i": 4, b"f": 4, b"g": 8, b"C": 1, b"e": 2}


def bit(bitmap, i):
    return bitmap is None or bool(bitmap[i // 8] >> (i % 8) & 1)


@atheris.instrument_func
def expected_tokens(ids, positions, logprob, logprob_valid, offsets, text, text_valid, special, start, n):
    """The (id, position, text, logprob bits, is_special) the buffers hold, read in plain Python
    (rows start..start+n; logprobs as bits, since a float conversion may quiet a NaN)."""
    rows = []
    for i in range(start, start + n):
        lp = struct.unpack_from("<I", logprob, 4 * i)[0] if bit(logprob_valid, i) else None
        body = text[offsets[i]:offsets[i + 1]].decode() if bit(text_valid, i) else None
        rows.append((struct.unpack_from("<I", ids, 4 * i)[0], struct.unpack_from("<I", positions, 4 * i)[0],
                     body, lp, bit(special, i)))
    return rows


@atheris.instrument_func
def check_batch(batch, expected=None):
    rows = [(t.id, t.position, t.text, t.logprob_bits, t.is_special) for t in batch.tokens()]
    if expected is not None and rows != expected:
        raise AssertionError(f"imported {rows}, the buffers hold {expected}")
    if TokenBatch.from_arrow(batch) != batch:
        raise AssertionError("an imported batch does not round trip through Arrow")
    try:
        wire = batch.encode()
    except EncodeError:
        return
    if TokenBatch.decode(wire) != batch:
        raise AssertionError("an imported batch does not round trip through the wire")


@atheris.instrument_func
def fuzz_raw(data):
    fdp = atheris.FuzzedDataProvider(data)
    n = fdp.ConsumeIntInRange(0, 12)
    offset = fdp.ConsumeIntInRange(0, 3)
    rows = offset + n

    def maybe_bitmap():
        return fdp.ConsumeBytes((rows + 7) // 8).ljust((rows + 7) // 8, b"\0") if fdp.ConsumeBool() else None

    ids, positions, logprob = (fdp.ConsumeBytes(4 * rows).ljust(4 * rows, b"\0") for _ in range(3))
    offsets = [fdp.ConsumeIntInRange(-2, 40) for _ in range(rows + 1)]
    if fdp.ConsumeBool():
        offsets.sort()
    text = fdp.ConsumeBytes(max(0, max(offsets))).ljust(max(0, max(offsets)), b"a")
    logprob_valid, text_valid, special = maybe_bitmap(), maybe_bitmap(), maybe_bitmap() or bytes((rows + 7) // 8)
    large = fdp.ConsumeBool()
    null_count = fdp.PickValueInList([-1, 0, 1])
    columns = [
        ("id", b"I", Array(rows, [None, ids])), ("position", b"I", Array(rows, [None, positions])),
        ("logprob", b"f", Array(rows, [logprob_valid, logprob], null_count=null_count)),
        ("text", b"U" if large else b"u",
         Array(rows, [text_valid, i64(*offsets) if large else i32(*offsets), text], null_count=null_count)),
        ("is_special", b"b", Array(rows, [None, special])),
    ]
    schema = Schema(b"+s", children=[Schema(fmt, name.encode()) for name, fmt, _ in columns])
    source = RawSource(schema, Array(n, [None], children=[a for _, _, a in columns], offset=offset))
    try:
        batch = TokenBatch.from_arrow(source)
    except ERRORS:
        return
    if null_count == 0:
        logprob_valid = text_valid = None   # a null count of 0 means no nulls, whatever the bitmap says
    check_batch(batch, expected_tokens(ids, positions, logprob, logprob_valid, offsets, text, text_valid,
                                       special, offset, n))


@atheris.instrument_func
def built_column(fdp, fmt, name, depth, min_length=0):
    """(Schema, Array) of one column of format ``fmt``, its buffers as large as its own length
    and offset imply, its counts and pointers possibly wrong."""
    length = max(fdp.ConsumeIntInRange(0, 8), min_length)
    offset = fdp.ConsumeIntInRange(0, 2)
    rows = length + offset
    bitmap_size = (rows + 7) // 8
    validity = fdp.ConsumeBytes(bitmap_size).ljust(bitmap_size, b"\xff") if fdp.ConsumeBool() else None
    children = []
    if fmt in WIDTHS:
        buffers = [validity, fdp.ConsumeBytes(WIDTHS[fmt] * rows).ljust(WIDTHS[fmt] * rows, b"\0")]
    elif fmt == b"b":
        buffers = [validity, fdp.ConsumeBytes(bitmap_size).ljust(bitmap_size, b"\0")]
    elif fmt in (b"u", b"U", b"z"):
        offsets = [fdp.ConsumeIntInRange(-1, 24) for _ in range(rows + 1)]
        if fdp.ConsumeBool():
            offsets.sort()
        body = fdp.ConsumeBytes(max(0, max(offsets))).ljust(max(0, max(offsets)), b"x")
        buffers = [validity, i64(*offsets) if fmt == b"U" else i32(*offsets), body]
    elif fmt == b"vu":
        data = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 32)) for _ in range(fdp.ConsumeIntInRange(0, 2))]
        views = b"".join(struct.pack("<i4sii", fdp.ConsumeIntInRange(-1, 40), fdp.ConsumeBytes(4).ljust(4, b"v"),
                                     fdp.ConsumeIntInRange(-1, 2), fdp.ConsumeIntInRange(-1, 32)) for _ in range(rows))
        buffers = [validity, views, *data, i64(*(len(d) for d in data))]
    elif fmt == b"+w:2" and depth < 2:   # values for every slot the list's length and offset imply
        buffers = [validity]
        children.append(built_column(fdp, fdp.PickValueInList(FORMATS), b"item", depth + 1, 2 * rows))
    elif fmt == b"+s" and depth < 2:
        buffers = [validity]
        for _ in range(fdp.ConsumeIntInRange(0, 6)):
            children.append(built_column(fdp, fdp.PickValueInList(FORMATS), fdp.PickValueInList(NAMES), depth + 1))
    else:
        buffers = []
    n_buffers = fdp.PickValueInList([None, None, None, 0, 1, 2, 3])
    buffers = buffers[:n_buffers] if n_buffers is not None else buffers
    if buffers and fdp.ConsumeIntInRange(0, 7) == 0:
        buffers[fdp.ConsumeIntInRange(0, len(buffers) - 1)] = None
    array = Array(length, buffers, [a for _, a in children], offset=offset,
                  null_count=fdp.PickValueInList([0, 0, -1, 1, length]))
    return Schema(fmt, name, children=[s for s, _ in children]), array


@atheris.instrument_func
def fuzz_built(fdp):
    fmt = b"+s" if fdp.ConsumeIntInRange(0, 3) else fdp.PickValueInList(FORMATS)
    schema, array = built_column(fdp, fmt, b"", 0)
    pairs = {}
    if fdp.ConsumeBool():
        pairs["sequence_id"] = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 11))
    if fdp.ConsumeBool():
        pairs["is_final"] = fdp.PickValueInList(["true", "false", "", "TRUE"])
    if fmt == b"+w:2" and fdp.ConsumeBool():
        pairs["ARROW:extension:name"] = "arrow.fixed_shape_tensor"
        pairs["ARROW:extension:metadata"] = fdp.PickValueInList(['{"shape":[2]}', '{"shape":[1,2]}', '{"shape":[3]}',
                                                                  '{"shape":[2],"permutation":[0]}', "[", "{}"])
    schema.meta = metadata(pairs) if pairs else None
    source = RawSource(schema, array)
    try:
        batch = TokenBatch.from_arrow(source)
    except ERRORS:
        pass
    else:
        check_batch(batch)
    try:
        tensor = Tensor.from_arrow(source)
    except ERRORS:
        pass
    else:
        if Tensor.from_arrow(tensor) != tensor:
            raise AssertionError("an imported tensor does not round trip through Arrow")


TestOneInput = harness.raw_or_built(fuzz_raw, fuzz_built)


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
