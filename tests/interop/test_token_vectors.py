"""Token and TokenBatch against the golden vectors of the Rust reference (tests/interop/vectors).

Every `roundtrip` vector must encode to exactly its bytes and decode back to its input.
Where we deliberately differ from the reference (docs/protocol.md **Ours**) the test says so:
  * encoder_overflow vectors: the reference silently wraps a u16 length/count; we raise EncodeError.
  * trailing bytes after a batch: the reference ignores them; TokenBatch.decode raises DecodeError.
  * trailing bytes after a single token: the reference reports `consumed`; Token.decode_prefix
    returns the same count, while Token.decode (whole buffer = one token) raises DecodeError.
"""

import json
import pathlib
import struct

import pytest

from quill._core.tokens import Token, TokenBatch
from quill.errors import DecodeError, EncodeError

VECTORS = pathlib.Path(__file__).parent / "vectors"


def load(name):
    return json.loads((VECTORS / name).read_text())


TOKENS = load("tokens.json")
BATCHES = load("token_batches.json")
MALFORMED = load("malformed.json")


def f32_bits(obj):
    """The float object of the vectors (or None) as its 32-bit pattern."""
    return None if obj is None else int(obj["bits"], 16)


def token_from_input(spec):
    """Build a Token from a vector input; NaN payloads come in through their exact wire bits."""
    bits = f32_bits(spec["logprob"])
    if bits is not None and spec["logprob"]["value"] is None:
        # NaN / infinity: a Python float may not carry a signalling NaN, so build from the bits.
        flags = 0x02 | (0x01 if spec["text"] is not None else 0) | (0x04 if spec["is_special"] else 0)
        text = b"" if spec["text"] is None else bytes.fromhex(spec["text_utf8_hex"])
        wire = struct.pack(">IIBI", spec["id"], spec["position"], flags, bits)
        if spec["text"] is not None:
            wire += struct.pack(">H", len(text)) + text
        return Token.decode(wire)
    logprob = None if bits is None else spec["logprob"]["value"]
    return Token(spec["id"], spec["position"], spec["text"], logprob, spec["is_special"])


def assert_token_matches(token, spec):
    assert token.id == spec["id"]
    assert token.position == spec["position"]
    assert token.text == spec["text"]
    if spec["text"] is not None:
        assert token.text.encode("utf-8").hex() == spec["text_utf8_hex"]
    assert token.logprob_bits == f32_bits(spec["logprob"])
    assert token.is_special == spec["is_special"]


def batch_from_input(spec):
    tokens = [token_from_input(t) for t in spec["tokens"]]
    batch = TokenBatch.from_tokens(tokens, sequence_id=spec["sequence_id"])
    batch.is_final = spec["is_final"]
    return batch


def assert_batch_matches(batch, spec):
    assert batch.sequence_id == spec["sequence_id"]
    assert batch.is_final == spec["is_final"]
    assert len(batch) == spec["token_count"]
    for token, token_spec in zip(batch, spec["tokens"]):
        assert_token_matches(token, token_spec)


@pytest.mark.parametrize("vector", TOKENS["vectors"], ids=lambda v: v["name"])
def test_token_vector_encodes_exactly(vector):
    assert vector["kind"] == "roundtrip"
    assert token_from_input(vector["input"]).encode().hex() == vector["encoded_hex"]


@pytest.mark.parametrize("vector", TOKENS["vectors"], ids=lambda v: v["name"])
def test_token_vector_decodes_back(vector):
    wire = bytes.fromhex(vector["encoded_hex"])
    token = Token.decode(wire)
    assert_token_matches(token, vector["input"])
    assert token == token_from_input(vector["input"])
    assert token.encode() == wire  # raw logprob bits survive, signalling NaN included
    assert Token.decode_prefix(wire) == (token, vector["decoded"]["consumed"])


@pytest.mark.parametrize("vector", TOKENS["encoder_overflow_vectors"], ids=lambda v: v["name"])
def test_token_text_overflow_raises_instead_of_wrapping(vector):
    """Ours: the reference wraps the u16 text length and writes all bytes; we refuse to encode."""
    token = token_from_input(vector["input"])
    assert len(vector["input"]["text"].encode()) > 65535
    with pytest.raises(EncodeError, match="65535"):
        token.encode()
    with pytest.raises(EncodeError, match="65535"):
        TokenBatch.from_tokens([token]).encode()


@pytest.mark.parametrize("vector", TOKENS["encoder_overflow_vectors"], ids=lambda v: v["name"])
def test_token_text_overflow_bytes_decode_as_the_reference_reads_them(vector):
    """The wrapped bytes a reference peer sends still decode the way the reference reads them."""
    wire = bytes.fromhex(vector["encoded_hex"])
    token, consumed = Token.decode_prefix(wire)
    assert_token_matches(token, vector["decoded"]["token"])
    assert consumed == vector["decoded"]["consumed"]
    with pytest.raises(DecodeError) as info:
        Token.decode(wire)
    assert info.value.offset == consumed


@pytest.mark.parametrize("vector", BATCHES["vectors"], ids=lambda v: v["name"])
def test_batch_vector_encodes_exactly(vector):
    assert vector["kind"] == "roundtrip"
    batch = batch_from_input(vector["input"])
    assert batch.encode().hex() == vector["encoded_hex"]
    assert batch.encoded_size() == vector["encoded_len"]


@pytest.mark.parametrize("vector", BATCHES["vectors"], ids=lambda v: v["name"])
def test_batch_vector_decodes_back(vector):
    wire = bytes.fromhex(vector["encoded_hex"])
    batch = TokenBatch.decode(wire)
    assert_batch_matches(batch, vector["input"])
    assert batch == batch_from_input(vector["input"])
    assert batch.encode() == wire


def test_batch_count_overflow_raises_instead_of_wrapping():
    """Ours: the reference writes 65537 tokens under a wrapped count of 1; we refuse to encode."""
    (vector,) = BATCHES["encoder_overflow_vectors"]
    count = vector["input"]["token_count"]
    assert vector["input"]["tokens_rule"] == "token i: id=i, position=i, text=None, logprob=None, is_special=false"
    batch = TokenBatch.from_tokens([Token(i, i) for i in range(count)])
    assert len(batch) == count == 65537
    with pytest.raises(EncodeError, match="65535"):
        batch.encode()
    # The largest count the wire carries encodes like the reference (count field ffff).
    exact = batch[:65535].encode()
    assert exact[:3].hex() == "00ffff"
    assert exact[3:3 + 9 * 3].hex() == vector["encoded_hex"][6:6 + 18 * 3]


def test_batch_count_overflow_bytes_are_refused_on_decode():
    """Ours: the reference reads token 0 and ignores the other 65536 tokens; we report leftovers."""
    (vector,) = BATCHES["encoder_overflow_vectors"]
    wire = bytes.fromhex(vector["encoded_hex"])
    with pytest.raises(DecodeError, match="left over") as info:
        TokenBatch.decode(wire)
    assert info.value.offset == 3 + 9
    # The part the reference does read is what it reported.
    assert_batch_matches(TokenBatch.decode(wire[:12]), vector["decoded"]["batch"])


@pytest.mark.parametrize("case", MALFORMED["token_decode"], ids=lambda c: c["name"])
def test_malformed_token(case):
    wire = bytes.fromhex(case["input_hex"])
    result = case["result"]
    if result["status"] == "none":
        with pytest.raises(DecodeError, match="truncated") as info:
            Token.decode(wire)
        assert info.value.offset is not None and 0 <= info.value.offset <= len(wire)
        with pytest.raises(DecodeError):
            Token.decode_prefix(wire)
        return
    assert result["status"] == "some"
    token, consumed = Token.decode_prefix(wire)
    assert consumed == result["consumed"]
    assert_token_matches(token, result["token"])
    if consumed == len(wire):
        assert Token.decode(wire) == token
    else:  # Ours: Token.decode wants exactly one token, the reference ignores the rest.
        with pytest.raises(DecodeError, match="left over") as info:
            Token.decode(wire)
        assert info.value.offset == consumed


@pytest.mark.parametrize("case", MALFORMED["token_batch_decode"], ids=lambda c: c["name"])
def test_malformed_token_batch(case):
    wire = bytes.fromhex(case["input_hex"])
    result = case["result"]
    if result["status"] == "none":
        with pytest.raises(DecodeError) as info:
            TokenBatch.decode(wire)
        assert info.value.offset is not None and 0 <= info.value.offset <= len(wire)
        return
    assert result["status"] == "some"
    expected = result["batch"]
    if len(wire) > len(batch_from_input(expected).encode()):
        # Ours: the reference ignores bytes after the last token; leftovers mean corruption.
        exact = batch_from_input(expected).encode()
        assert wire.startswith(exact)
        with pytest.raises(DecodeError, match="left over") as info:
            TokenBatch.decode(wire)
        assert info.value.offset == len(exact)
        wire = exact
    batch = TokenBatch.decode(wire)
    assert_batch_matches(batch, expected)


def test_count_ffff_without_data_fails_before_allocating():
    with pytest.raises(DecodeError, match="65535 tokens but only 0 bytes") as info:
        TokenBatch.decode(bytes.fromhex("00ffff"))
    assert info.value.offset == 3


def test_invalid_utf8_replacement_matches_python_maximal_subpart():
    """The reference's U+FFFD output equals Python's 'replace' decoding on every vector."""
    for case in MALFORMED["token_decode"]:
        if case["name"].startswith("invalid_utf8"):
            raw = bytes.fromhex(case["input_hex"])[11:]
            assert raw.decode("utf-8", "replace") == case["result"]["token"]["text"]
