"""Golden vectors from the Rust reference for the TENSOR_META payload (docs/protocol.md section 4):
tensor_meta.json and the decode_tensor_meta cases of malformed.json.

Where we deliberately differ from the reference (docs/protocol.md **Ours**), the case is listed in
``OURS_MALFORMED`` / ``OURS_ENCODER_OVERFLOW`` with the reason, and the test asserts our
behaviour instead of the reference's.
"""

import json
import pathlib

import pytest

from quill.dtypes import DType
from quill.errors import DecodeError, EncodeError
from quill.tensor import TensorMeta

VECTORS = pathlib.Path(__file__).parent / "vectors"
META_FILE = json.loads((VECTORS / "tensor_meta.json").read_text())
META_VECTORS = META_FILE["vectors"]
OVERFLOW_VECTORS = META_FILE["encoder_overflow_vectors"]
MALFORMED = json.loads((VECTORS / "malformed.json").read_text())["decode_tensor_meta"]


def meta_of(fields):
    return TensorMeta(fields["shape"], fields["dtype"], name=fields["name"], device=fields["device"])


def assert_meta_matches(meta, fields):
    """``meta`` equals the reference's decoded meta, field by field."""
    assert meta.shape == tuple(fields["shape"])
    assert meta.ndim == fields["ndim"]
    assert meta.dtype is DType.from_code(fields["dtype_code"])
    assert meta.dtype.name == fields["dtype"]
    assert meta.dtype.element_size == fields["element_size"]
    assert meta.device == fields["device"]
    assert meta.size_bytes == fields["byte_size"]
    if fields["name_utf8_hex"] is None:
        assert meta.name is None
    else:
        assert meta.name.encode("utf-8").hex() == fields["name_utf8_hex"]
        assert meta.name == fields["name"]


def ids(cases):
    return [case["name"] for case in cases]


@pytest.mark.parametrize("vec", META_VECTORS, ids=ids(META_VECTORS))
def test_encode_matches_reference_bytes(vec):
    encoded = meta_of(vec["input"]).encode()
    assert encoded.hex() == vec["encoded_hex"]
    assert len(encoded) == vec["encoded_len"]


@pytest.mark.parametrize("vec", META_VECTORS, ids=ids(META_VECTORS))
def test_decode_matches_reference(vec):
    meta = TensorMeta.decode(bytes.fromhex(vec["encoded_hex"]))
    assert_meta_matches(meta, vec["decoded"]["meta"])
    if vec["kind"] == "roundtrip":
        assert meta == meta_of(vec["input"])
    # re-encoding what we decoded gives the reference bytes again
    assert meta.encode().hex() == vec["encoded_hex"]


def test_empty_name_is_the_lossy_vector():
    """The reference encodes name "" exactly like no name and decodes it as no name; we store an
    empty name as None up front, so the round trip is exact on our side."""
    (vec,) = [v for v in META_VECTORS if v["kind"] == "lossy"]
    assert vec["input"]["name"] == "" and vec["decoded"]["meta"]["name"] is None
    assert meta_of(vec["input"]).name is None
    assert TensorMeta.decode(bytes.fromhex(vec["encoded_hex"])) == meta_of(vec["input"])


# **Ours**: the reference encoder wraps the u8 ndim / u16 name length and writes a stream that
# decodes as something else; we refuse to encode, and our decoder rejects the reference's bytes.
OURS_ENCODER_OVERFLOW = {
    "name_65536_bytes": "name_len wraps to 0; we raise EncodeError (name over 65,535 bytes)",
    "ndim_256": "ndim wraps to 0; we raise EncodeError (more than 255 dimensions)",
}


@pytest.mark.parametrize("vec", OVERFLOW_VECTORS, ids=ids(OVERFLOW_VECTORS))
def test_encoder_overflow_is_refused(vec):
    assert vec["name"] in OURS_ENCODER_OVERFLOW, "new overflow vector: decide and document our behaviour"
    meta = meta_of(vec["input"])
    with pytest.raises(EncodeError, match="255 dimensions|65535"):
        meta.encode()
    # The wrapped bytes the reference emits do not decode as something else on our side either:
    # the 65,536 name bytes become trailing garbage, the 256 dimensions a byte_size mismatch.
    with pytest.raises(DecodeError):
        TensorMeta.decode(bytes.fromhex(vec["encoded_hex"]))


# malformed.json decode_tensor_meta: reference outcome -> ours, with the offset we report.
# "ok" cases the reference accepts but docs/protocol.md section 4 (**Ours**) rejects carry the reason.
EXPECTED_MALFORMED = {
    "empty": ("err", 0, "empty tensor meta"),
    "ndim_only": ("err", 1, "truncated tensor meta: 0 dimension\\(s\\) need at least 13 bytes, got 1"),
    "dtype_0": ("err", 1, "unknown dtype code 0 \\(0 means unspecified\\)"),
    "dtype_10": ("err", 1, "unknown dtype code 10"),
    "device_2": ("err", 2, "unknown device code 2"),
    "ndim_2_one_dim": ("err", 21, "truncated tensor meta: 2 dimension\\(s\\) need at least 29 bytes, got 21"),
    "name_invalid_utf8": ("ok", None, None),
}
OURS_MALFORMED = {
    "scalar_minimal": ((3, "byte_size field says 0 bytes but shape \\(\\) of float32 needs 4"),
                       "the reference ignores byte_size; we check it against the shape"),
    "byte_size_field_ignored": ((11, "byte_size field says 18446744073709551615 bytes"),
                                "the reference ignores byte_size; we check it against the shape"),
    "name_len_exceeds_data": ((13, "the name is 5 bytes but only 3 remain"),
                              "the reference silently drops a truncated name; it is an error for us"),
    "trailing_bytes": ((13, "2 unexpected byte\\(s\\) after the tensor meta"),
                       "one TENSOR_META frame carries exactly one meta, so leftovers mean corruption "
                       "(as for TokenBatch in docs/protocol.md section 3); the reference ignores them"),
}


def test_every_malformed_case_is_classified():
    assert {c["name"] for c in MALFORMED} == set(EXPECTED_MALFORMED) | set(OURS_MALFORMED)


@pytest.mark.parametrize("case", MALFORMED, ids=ids(MALFORMED))
def test_malformed(case):
    data = bytes.fromhex(case["input_hex"])
    assert len(data) == case["input_len"]
    result = case["result"]
    if case["name"] in OURS_MALFORMED:
        assert result["status"] == "ok", "the reference accepted this input"
        (offset, message), _reason = OURS_MALFORMED[case["name"]]
        with pytest.raises(DecodeError, match=message) as info:
            TensorMeta.decode(data)
        assert info.value.offset == offset
        return
    status, offset, message = EXPECTED_MALFORMED[case["name"]]
    assert result["status"] == status
    if status == "ok":
        assert_meta_matches(TensorMeta.decode(data), result["meta"])
    else:
        with pytest.raises(DecodeError, match=message) as info:
            TensorMeta.decode(data)
        assert info.value.offset == offset


def test_invalid_utf8_name_follows_the_reference():
    """Invalid UTF-8 in a name becomes U+FFFD per maximal subpart, as the reference does (and as
    docs/protocol.md prescribes for token text): a name is a label, and a Rust peer cannot produce
    invalid UTF-8 anyway, so leniency costs nothing and keeps us interoperable."""
    def with_name(raw):
        return bytes.fromhex("00010004000000000000000000")[:-2] + len(raw).to_bytes(2, "little") + raw

    assert TensorMeta.decode(with_name(b"\xff\xfe")).name == "\ufffd\ufffd"
    assert TensorMeta.decode(with_name(b"\xed\xa0\x80")).name == "\ufffd" * 3
    assert TensorMeta.decode(with_name(b"\xe2\x82")).name == "\ufffd"
    assert TensorMeta.decode(with_name(b"\xef\xbb\xbfx")).name == "\ufeffx"  # a BOM is kept
