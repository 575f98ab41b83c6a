"""atheris fuzz target for TensorMeta.decode (quill._core.tensor) and Tensor.from_bytes.

The first byte of each input picks a mode:
  * raw: the rest of the input is decoded as a TENSOR_META payload, with and without a size limit;
  * built: a meta is built from the input, encoded, decoded back, then decoded truncated at a
    random point and with a random byte flipped; a tensor over random bytes is built for it.
Invariants: the decoder raises only DecodeError (LimitExceededError for the limit), with an
offset inside the input; whatever decodes re-encodes to the same bytes (unless the name held
invalid UTF-8, which becomes U+FFFD); the limit is never exceeded; Tensor.from_bytes raises
only ValueError for a wrong size; the heap stays within budget (see harness.py): a meta
claiming 2**64 bytes costs nothing until a tensor is built for it.

    python tests/fuzz/fuzz_tensor_meta.py -max_total_time=60 -rss_limit_mb=2048
"""

import atheris

import harness

with atheris.instrument_imports(include=["quill"]):
    from quill.errors import DecodeError, LimitExceededError
    from quill.tensor import Tensor, TensorMeta

DTYPES = ["float32", "float16", "bfloat16", "float64", "int8", "int32", "int64", "uint8", "bool"]
LIMIT = 1 << 20


def name_is_utf8(data):
    try:
        data[1 + 8 * data[0] + 12:].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@atheris.instrument_func
def fuzz_raw(data):
    try:
        meta = TensorMeta.decode(data)
    except DecodeError as exc:
        harness.check_decode_error(exc, len(data))
        return
    if name_is_utf8(data) and meta.encode() != data:
        raise AssertionError(f"{meta!r} re-encodes differently")
    try:
        limited = TensorMeta.decode(data, max_bytes=LIMIT)
    except LimitExceededError as exc:
        harness.check_decode_error(exc, len(data))
        if meta.size_bytes <= LIMIT:
            raise AssertionError(f"limit refused a {meta.size_bytes}-byte tensor") from exc
    else:
        if limited != meta or meta.size_bytes > LIMIT:
            raise AssertionError("the size limit changed the result or let a large tensor through")


@atheris.instrument_func
def fuzz_built(fdp):
    shape = [fdp.ConsumeIntInRange(0, 6) for _ in range(fdp.ConsumeIntInRange(0, 5))]
    name = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 20)) if fdp.ConsumeBool() else None
    meta = TensorMeta(shape, fdp.PickValueInList(DTYPES), name, fdp.PickValueInList(["cpu", "cuda"]))
    wire = meta.encode()
    if TensorMeta.decode(wire) != meta:
        raise AssertionError(f"{meta!r} does not round trip")
    cut = fdp.ConsumeIntInRange(0, len(wire))
    if cut < len(wire):
        try:
            TensorMeta.decode(wire[:cut])
        except DecodeError as exc:
            harness.check_decode_error(exc, cut)
        else:
            raise AssertionError(f"a meta truncated to {cut} of {len(wire)} bytes decoded")
    flipped = bytearray(wire)
    flipped[fdp.ConsumeIntInRange(0, len(wire) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
    fuzz_raw(bytes(flipped))
    data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2 * meta.size_bytes + 2))
    try:
        tensor = Tensor.from_bytes(data, meta.shape, meta.dtype, meta.name, device=meta.device)
    except ValueError:
        if len(data) == meta.size_bytes:
            raise
    else:
        if tensor.meta != meta or tensor.tobytes() != data:
            raise AssertionError("from_bytes changed the meta or the bytes")


TestOneInput = harness.raw_or_built(fuzz_raw, fuzz_built)


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
