"""Token, TokenBatch and TokenBatchBuilder (quill._core.tokens).

The independent oracle is a small `struct` implementation of docs/protocol.md sections 2-3 written
here from the spec; numpy supplies the float32 rounding. Golden vectors of the Rust reference
are checked in tests/interop/test_token_vectors.py.
"""

import doctest
import math
import pickle
import struct
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quill._core.tokens
from quill._core.tokens import Token, TokenBatch, TokenBatchBuilder
from quill.errors import DecodeError, EncodeError, QuillError

U32 = st.integers(0, 2**32 - 1)


# -- the struct oracle -----------------------------------------------------------------------


def oracle_token(id, position, text=None, logprob_bits=None, is_special=False):
    flags = (text is not None) | (logprob_bits is not None) << 1 | bool(is_special) << 2
    out = struct.pack(">IIB", id, position, flags)
    if logprob_bits is not None:
        out += struct.pack(">I", logprob_bits)
    if text is not None:
        raw = text.encode("utf-8")
        out += struct.pack(">H", len(raw)) + raw
    return out


def oracle_batch(tokens, sequence_id=None, is_final=False):
    flags = (sequence_id is not None) | bool(is_final) << 1
    out = struct.pack(">B", flags)
    if sequence_id is not None:
        out += struct.pack(">I", sequence_id)
    return out + struct.pack(">H", len(tokens)) + b"".join(oracle_token(*t) for t in tokens)


def f32_bits(value):
    with np.errstate(over="ignore"):
        return int(np.array(value, dtype=np.float64).astype(np.float32).view(np.uint32))


token_fields = st.tuples(
    U32,
    U32,
    st.none() | st.text(max_size=40),
    st.none() | U32,  # any float32 bit pattern, signalling NaNs included
    st.booleans(),
)


# -- the module's examples -------------------------------------------------------------------


def test_docstring_examples():
    # Every part (the .pyx and its .pxi units), TokenBatch's inherited column methods included.
    result = doctest.testmod(quill._core.tokens)
    assert result.attempted >= 30 and result.failed == 0


# -- Token -------------------------------------------------------------------------------------


def test_token_seed_api():
    token = Token(id=42, position=0, text="hello", logprob=-0.5)
    assert repr(token) == str(token) == "Token(id=42, text='hello', pos=0)"
    assert token.prob() == pytest.approx(math.exp(-0.5))
    assert (token.id, token.position, token.text, token.logprob, token.is_special) == (42, 0, "hello", -0.5, False)
    assert token.to_dict() == {"id": 42, "text": "hello", "logprob": -0.5, "position": 0, "is_special": False}
    assert Token.with_text(1, "Hello", 0) == Token(1, 0, "Hello")
    assert Token.with_text(1, "Hi", 3, logprob=-1.0).logprob == -1.0
    assert repr(Token(7, 3)) == "Token(id=7, text=None, pos=3)"


def test_token_without_logprob():
    token = Token(5, 1, "a")
    assert token.logprob is None and token.logprob_bits is None and token.prob() is None


@pytest.mark.parametrize("id, special, eos", [(0, True, True), (1, True, True), (2, True, True),
                                             (3, True, False), (2, False, False)])
def test_is_eos(id, special, eos):
    assert Token(id, 0, is_special=special).is_eos() is eos


@given(st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_logprob_is_rounded_to_float32_like_numpy(value):
    token = Token(1, 0, logprob=value)
    assert token.logprob_bits == f32_bits(value)
    assert token.encode()[9:13] == struct.pack(">I", f32_bits(value))


def test_logprob_accepts_int_and_refuses_non_numbers():
    assert Token(1, 0, logprob=-2).logprob == -2.0
    with pytest.raises(TypeError):
        Token(1, 0, logprob="x")


@pytest.mark.parametrize("field", ["id", "position"])
@pytest.mark.parametrize("value", [-1, 2**32, 2**70, -(2**70)])
def test_u32_fields_out_of_range_raise_overflow(field, value):
    args = {"id": 1, "position": 1, field: value}
    with pytest.raises(OverflowError, match=f"token {field} {value} is outside"):
        Token(**args)


def test_u32_fields_at_the_limits():
    token = Token(2**32 - 1, 0)
    assert token.id == 2**32 - 1
    assert Token.decode(token.encode()) == token


def test_non_integer_id_is_a_type_error():
    with pytest.raises(TypeError):
        Token(1.5, 0)


def test_lone_surrogate_text_is_refused():
    with pytest.raises(EncodeError, match=r"lone surrogate U\+D800 at index 2") as info:
        Token(1, 0, "ab\ud800c")
    assert isinstance(info.value, ValueError) and isinstance(info.value, QuillError)


@given(st.text(alphabet=st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=30))
def test_any_str_round_trips_or_is_refused_for_surrogates(text):
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    if has_surrogate:
        with pytest.raises(EncodeError, match="lone surrogate"):
            Token(1, 0, text)
    else:
        assert Token.decode(Token(1, 0, text).encode()).text == text


def test_text_type_checked_and_str_subclass_accepted():
    with pytest.raises(TypeError, match="token text must be str"):
        Token(1, 0, b"bytes")

    class Name(str):
        pass

    token = Token(1, 0, Name("abc"))
    assert type(token.text) is str and token.text == "abc"


def test_text_over_65535_bytes_refused_on_encode():
    token = Token(1, 0, "é" * 32768)  # 65,536 UTF-8 bytes
    with pytest.raises(EncodeError, match="65536 UTF-8 bytes"):
        token.encode()
    assert len(Token(1, 0, "a" * 65535).encode()) == 9 + 2 + 65535


def test_token_equality_and_hash():
    a = Token(1, 2, "x", -0.25, True)
    assert a == Token(1, 2, "x", -0.25, True)
    assert hash(a) == hash(Token(1, 2, "x", -0.25, True))
    assert a != Token(1, 2, "x", -0.25, False)
    assert Token(1, 2, "") != Token(1, 2)  # "" is distinct from None
    assert Token(1, 2, logprob=0.0) != Token(1, 2, logprob=-0.0)  # compared by float32 bits
    assert a != (1, 2, "x")
    assert len({a, Token(1, 2, "x", -0.25, True), Token(3, 4)}) == 2


def test_constructor_arguments_follow_python_semantics():
    assert Token(id=1, position=2, text="a", logprob=-1.0, is_special=True) == Token(1, 2, "a", -1.0, True)
    assert Token(1, position=2, is_special=True).is_special
    kwargs = {"".join(["te", "xt"]): "x"}  # a keyword name that is not interned
    assert Token(1, 2, **kwargs).text == "x"
    for args, kwargs, message in [((1, 2, "a", 0.5, True, 6), {}, "at most 5 arguments"),
                                  ((1,), {}, "missing required argument 'position'"),
                                  ((), {"position": 1}, "missing required argument 'id'"),
                                  ((1,), {"pos": 2}, "unexpected keyword argument 'pos'"),
                                  ((1, 2), {"id": 3}, "multiple values for argument 'id'")]:
        with pytest.raises(TypeError, match=message):
            Token(*args, **kwargs)
    token = Token.__new__(Token)
    token.__init__(4, 5, "y")
    assert token == Token(4, 5, "y")


def test_token_immutable():
    token = Token(1, 0)
    with pytest.raises(AttributeError):
        token.id = 2


@given(token_fields)
def test_token_roundtrip_against_oracle(fields):
    wire = oracle_token(*fields)
    token = Token.decode(wire)
    id, position, text, bits, special = fields
    assert (token.id, token.position, token.text, token.logprob_bits, token.is_special) == fields
    assert token.encode() == wire  # raw float32 bits kept exactly
    assert pickle.loads(pickle.dumps(token)) == token
    if bits is None or not math.isnan(struct.unpack(">f", struct.pack(">I", bits))[0]):
        logprob = None if bits is None else token.logprob
        assert Token(id, position, text, logprob, special) == token


@pytest.mark.parametrize("buffer_type", [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, np.uint8)])
def test_token_decode_accepts_any_buffer(buffer_type):
    wire = oracle_token(3, 4, "héllo", f32_bits(-1.5))
    assert Token.decode(buffer_type(wire)) == Token(3, 4, "héllo", -1.5)


def test_token_decode_refuses_non_contiguous_and_non_buffers():
    with pytest.raises(BufferError):
        Token.decode(memoryview(b"\0" * 18)[::2])
    with pytest.raises(TypeError):
        Token.decode("0000")


def test_token_decode_truncation_reports_offset():
    wire = oracle_token(1, 2, "hello", f32_bits(-0.5))
    expected = {0: 0, 8: 0, 9: 9, 12: 9, 13: 13, 14: 13, 15: 15, 19: 15}
    for cut, offset in expected.items():
        with pytest.raises(DecodeError, match="truncated") as info:
            Token.decode(wire[:cut])
        assert info.value.offset == offset, cut


def test_token_decode_leftovers_and_prefix():
    wire = oracle_token(1, 2) + b"\xaa"
    with pytest.raises(DecodeError, match="1 bytes left over after the token") as info:
        Token.decode(wire)
    assert info.value.offset == 9
    assert Token.decode_prefix(wire) == (Token(1, 2), 9)


def test_unknown_token_flag_bits_ignored_and_not_reemitted():
    token = Token.decode(bytes.fromhex("0000000100000002f8"))
    assert token == Token(1, 2) and token.encode().hex() == "000000010000000200"


# -- TokenBatch --------------------------------------------------------------------------------


def sample_batch():
    batch = TokenBatch(sequence_id=1)
    batch.add(Token.with_text(1, "Hello", 0))
    batch.add(Token.with_text(2, " ", 1, logprob=-0.5))
    batch.add(Token(3, 2, None, -1.25, True))
    batch.add(Token.with_text(4, "Wörld", 3))
    return batch


def test_batch_seed_api():
    batch = sample_batch()
    assert batch.text() == "Hello Wörld"
    assert batch.token_ids() == [1, 2, 3, 4]
    assert batch.positions() == [0, 1, 2, 3]
    assert len(batch) == 4 and not batch.is_empty() and TokenBatch().is_empty()
    assert [t.text for t in batch] == ["Hello", " ", None, "Wörld"]
    assert batch.tokens() == list(batch)
    assert batch.to_dicts()[2] == {"id": 3, "text": None, "logprob": -1.25, "position": 2, "is_special": True}
    assert batch.get(1) == Token(2, 1, " ", -0.5) and batch.get(-1).id == 4
    assert batch.get(4) is None and batch.get(-5) is None
    batch.is_final = True
    assert batch.is_final
    assert repr(batch) == "TokenBatch(sequence_id=1, is_final=True, tokens=4)"


def test_from_tokens_and_extend():
    tokens = [Token(i, i, str(i)) for i in range(5)]
    batch = TokenBatch.from_tokens(tokens, sequence_id=9)
    assert batch.sequence_id == 9 and batch.tokens() == tokens
    batch.extend(t for t in tokens[:2])
    batch.extend(TokenBatch.from_tokens(tokens[2:3]))
    assert batch.token_ids() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert TokenBatch.from_tokens(iter(tokens)).tokens() == tokens


def test_extend_is_all_or_nothing():
    batch = TokenBatch.from_tokens([Token(1, 0)])
    with pytest.raises(TypeError, match="item 1 is int, not Token"):
        batch.extend([Token(2, 1), 5])
    assert batch.token_ids() == [1]
    with pytest.raises(TypeError):
        batch.add("token")


def test_indexing_and_slicing():
    batch = sample_batch()
    batch.is_final = True
    batch.set_metadata("model", "m")
    assert batch[0] == Token(1, 0, "Hello") and batch[-1].text == "Wörld"
    with pytest.raises(IndexError):
        batch[4]
    with pytest.raises(IndexError):
        batch[-5]
    with pytest.raises(TypeError):
        batch["a"]
    tokens = batch.tokens()
    for key in [slice(1, 3), slice(None, None, -1), slice(None, None, 2), slice(-2, None), slice(3, 1), slice(0, 100)]:
        part = batch[key]
        assert type(part) is TokenBatch
        assert part.tokens() == tokens[key]
        assert part.sequence_id == 1 and part.is_final and part.get_metadata("model") == "m"
        assert TokenBatch.decode(part.encode()) == part


def test_clear_keeps_batch_fields():
    batch = sample_batch()
    batch.clear()
    assert len(batch) == 0 and batch.text() == "" and batch.sequence_id == 1
    assert batch.encode() == oracle_batch([], sequence_id=1)
    batch.add(Token(8, 0, "z"))
    assert batch.encode() == oracle_batch([(8, 0, "z")], sequence_id=1)


def test_sequence_id_property():
    batch = TokenBatch()
    assert batch.sequence_id is None
    batch.sequence_id = 0
    assert batch.sequence_id == 0 and batch.encode().hex() == "01000000000000"
    batch.sequence_id = None
    assert batch.encode().hex() == "000000"
    with pytest.raises(OverflowError, match="sequence_id"):
        TokenBatch(sequence_id=2**32)


def test_metadata_is_local():
    batch = sample_batch()
    batch.set_metadata("model", "llama-7b")
    batch.set_metadata("temperature", "0.7")
    assert batch.get_metadata("model") == "llama-7b"
    assert batch.get_metadata("missing") is None and batch.get_metadata("missing", "d") == "d"
    assert batch.metadata_dict() == {"model": "llama-7b", "temperature": "0.7"}
    batch.metadata_dict()["model"] = "changed"  # a copy
    assert batch.get_metadata("model") == "llama-7b"
    assert batch.encode() == sample_batch().encode()
    assert batch == sample_batch()  # metadata is not compared
    assert TokenBatch.decode(batch.encode()).metadata_dict() == {}
    with pytest.raises(TypeError):
        batch.set_metadata("n", 1)


def test_batch_equality_and_hash():
    assert sample_batch() == sample_batch()
    other = sample_batch()
    other.is_final = True
    assert sample_batch() != other
    other = sample_batch()
    other.sequence_id = 2
    assert sample_batch() != other
    assert sample_batch() != sample_batch()[:3]
    assert TokenBatch() == TokenBatch() and TokenBatch() != TokenBatch(sequence_id=0)
    assert sample_batch() != sample_batch().tokens()
    with pytest.raises(TypeError):
        hash(sample_batch())


def test_batch_pickle_keeps_everything():
    batch = sample_batch()
    batch.is_final = True
    batch.set_metadata("k", "v")
    batch.add(Token.decode(oracle_token(5, 4, "", 0x7F800001)))  # a signalling NaN
    copy = pickle.loads(pickle.dumps(batch))
    assert copy == batch and copy.metadata_dict() == {"k": "v"} and copy.is_final
    assert copy.encode() == batch.encode()
    assert pickle.loads(pickle.dumps(TokenBatch())) == TokenBatch()


def test_columns():
    batch = sample_batch()
    batch.add(Token.decode(oracle_token(5, 4, "", 0x7F800001)))
    ids = batch.ids_array()
    assert ids.dtype == np.uint32 and ids.tolist() == [1, 2, 3, 4, 5]
    assert batch.positions_array().dtype == np.uint32 and batch.positions_array().tolist() == [0, 1, 2, 3, 4]
    logprobs = batch.logprobs_array()
    assert logprobs.dtype == np.float32
    assert logprobs.view(np.uint32).tolist() == [0x7FC00000, f32_bits(-0.5), f32_bits(-1.25), 0x7FC00000, 0x7F800001]
    assert batch.has_logprob_array().tolist() == [False, True, True, False, True]
    assert batch.is_special_array().tolist() == [False, False, True, False, False]
    assert batch.has_text_array().tolist() == [True, True, False, True, True]
    offsets = batch.text_offsets_array()
    raw = batch.text_bytes()
    assert offsets.dtype == np.int64 and raw == "Hello Wörld".encode()
    assert [raw[a:b].decode() for a, b in zip(offsets[:-1], offsets[1:])] == ["Hello", " ", "", "Wörld", ""]
    assert batch.texts() == ["Hello", " ", None, "Wörld", ""]
    ids[0] = 99  # arrays are copies
    assert batch.token_ids()[0] == 1
    empty = TokenBatch()
    assert empty.ids_array().shape == (0,) and empty.text_offsets_array().tolist() == [0]
    assert empty.logprobs_array().dtype == np.float32 and empty.texts() == [] and empty.text() == ""


@given(st.lists(token_fields, max_size=20), st.none() | U32, st.booleans())
def test_batch_roundtrip_against_oracle(tokens, sequence_id, is_final):
    wire = oracle_batch(tokens, sequence_id, is_final)
    batch = TokenBatch.decode(wire)
    assert batch.sequence_id == sequence_id and batch.is_final == is_final
    assert [(t.id, t.position, t.text, t.logprob_bits, t.is_special) for t in batch] == tokens
    assert batch.encode() == wire and batch.encoded_size() == len(wire)
    rebuilt = TokenBatch.from_tokens(batch.tokens(), sequence_id=sequence_id)
    rebuilt.is_final = is_final
    assert rebuilt == batch and rebuilt.encode() == wire
    assert TokenBatch.encode_tokens(batch.tokens(), sequence_id, is_final) == wire
    assert batch.ids_array().tolist() == [t[0] for t in tokens]
    assert batch.texts() == [t[2] for t in tokens]
    assert batch.text() == "".join(t[2] or "" for t in tokens)
    assert pickle.loads(pickle.dumps(batch)) == batch


def test_tokens_from_a_batch_share_its_text_until_used():
    batch = sample_batch()
    tokens = batch.tokens()
    batch.clear()  # the tokens keep their text although the batch reuses its storage
    batch.add(Token(9, 9, "overwritten?"))
    for _ in range(3):
        batch.add(Token(9, 9, "x" * 500))  # grows the text buffer
    assert [t.text for t in tokens] == ["Hello", " ", None, "Wörld"]
    fresh = sample_batch().tokens()
    assert tokens == fresh and [hash(t) for t in tokens] == [hash(t) for t in fresh]
    eager = [Token(t.id, t.position, t.text, t.logprob, t.is_special) for t in sample_batch()]
    assert sample_batch().tokens() == eager and eager == sample_batch().tokens()
    assert {*sample_batch().tokens()} == {*eager}
    del batch
    assert [t.encode() for t in tokens] == [t.encode() for t in eager]
    assert TokenBatch.from_tokens(tokens).encode() == TokenBatch.from_tokens(eager).encode()
    assert pickle.loads(pickle.dumps(tokens)) == eager


def test_encode_tokens_matches_a_built_batch():
    tokens = sample_batch().tokens() + [Token(5, 4, "e", -2.0)]
    for sequence_id, is_final in [(None, False), (7, True), (0, False)]:
        batch = TokenBatch.from_tokens(tokens, sequence_id)
        batch.is_final = is_final
        assert TokenBatch.encode_tokens(tokens, sequence_id, is_final) == batch.encode()
        assert TokenBatch.encode_tokens(iter(tokens), sequence_id=sequence_id, is_final=is_final) == batch.encode()
    assert TokenBatch.encode_tokens([]) == b"\x00\x00\x00"
    with pytest.raises(TypeError, match="item 1 is str"):
        TokenBatch.encode_tokens([Token(1, 0), "x"])
    with pytest.raises(EncodeError, match="65535"):
        TokenBatch.encode_tokens([Token(1, 0, "a" * 65536)])
    with pytest.raises(EncodeError, match="at most 65535 tokens"):
        TokenBatch.encode_tokens([Token(1, 0)] * 65536)
    with pytest.raises(OverflowError, match="sequence_id"):
        TokenBatch.encode_tokens([], sequence_id=-1)


def test_batch_decode_accepts_buffers_and_slices():
    wire = sample_batch().encode()
    framed = memoryview(b"\x20" + wire + b"\x02")[1:-1]
    assert TokenBatch.decode(framed) == sample_batch()
    assert TokenBatch.decode(bytearray(wire)) == sample_batch()
    assert TokenBatch.decode(np.frombuffer(wire, np.uint8)) == sample_batch()


def test_batch_decode_every_truncation_fails_with_offset():
    wire = sample_batch().encode()
    for cut in range(len(wire)):
        with pytest.raises(DecodeError) as info:
            TokenBatch.decode(wire[:cut])
        assert 0 <= info.value.offset <= cut, cut


def test_batch_decode_messages_name_the_problem():
    with pytest.raises(DecodeError, match="flags byte is missing"):
        TokenBatch.decode(b"")
    with pytest.raises(DecodeError, match="sequence_id needs 4 bytes, 2 left") as info:
        TokenBatch.decode(b"\x01\x00\x00")
    assert info.value.offset == 1
    with pytest.raises(DecodeError, match="token 1 of 2 in the batch truncated: text of 5 bytes declared, 2 left"):
        TokenBatch.decode(oracle_batch([(1, 0), (2, 1, "hello")])[:-3])
    with pytest.raises(DecodeError, match="3 bytes left over after the 1 tokens") as info:
        TokenBatch.decode(oracle_batch([(1, 0)]) + b"abc")
    assert info.value.offset == 12


def test_batch_count_without_data_fails_fast():
    for wire in [b"\x00\xff\xff", b"\x00\xff\xff" + b"\0" * 100, b"\x01\0\0\0\0\x10\x00" + b"\0" * 9 * 4095]:
        with pytest.raises(DecodeError, match="each token needs at least 9"):
            TokenBatch.decode(wire)


def test_large_batches_use_the_nogil_paths():
    tokens = [(i, i, "t%d" % i if i % 3 else None, f32_bits(-i / 7) if i % 2 else None, i % 5 == 0)
              for i in range(65535)]
    wire = oracle_batch(tokens, sequence_id=3, is_final=True)
    batch = TokenBatch.decode(wire)
    assert len(batch) == 65535 and batch.encode() == wire
    assert batch[40001] == Token(40001, 40001, "t40001", -40001 / 7, False)
    assert batch[40000] == Token(40000, 40000, "t40000", None, True)
    with pytest.raises(DecodeError, match="token 65534 of 65535"):
        TokenBatch.decode(wire[:-1])


def test_mutating_a_batch_while_another_thread_encodes_it_gives_whole_snapshots():
    # encode() writes 65,535 tokens without the GIL from a pin; clear() and extend() on this
    # thread move the batch onto a copy instead of touching the pinned storage.
    batch = TokenBatch.from_tokens([Token(i, i, "tok%d" % i, -1.0) for i in range(65535)])
    expected = batch.encode()
    outputs = []

    def encode_repeatedly():
        for _ in range(15):
            outputs.append(batch.encode())

    worker = threading.Thread(target=encode_repeatedly)
    worker.start()
    while worker.is_alive():
        batch.clear()
        batch.extend(TokenBatch.decode(expected))
    worker.join()
    # clear() and extend() are single calls: an encode sees the batch full or empty, never torn.
    assert len(outputs) == 15 and all(out in (expected, TokenBatch().encode()) for out in outputs)


def test_invalid_utf8_is_replaced_and_reencoded_as_replacement():
    bad = [b"\xff", b"a\xc3", b"\xed\xa0\x80", b"ok", b"\xf4\x90\x80\x80", "é".encode()]
    wire = b"\x00" + struct.pack(">H", len(bad)) + b"".join(
        struct.pack(">IIBH", i, i, 1, len(raw)) + raw for i, raw in enumerate(bad))
    batch = TokenBatch.decode(wire)
    expected = [raw.decode("utf-8", "replace") for raw in bad]
    assert batch.texts() == expected and [t.text for t in batch] == expected
    assert batch.text() == "".join(expected)
    assert batch.encode() == oracle_batch([(i, i, text) for i, text in enumerate(expected)])
    assert batch.encoded_size() == len(batch.encode())


def test_replacement_that_outgrows_the_wire_limit_refuses_to_encode():
    wire = b"\x00\x00\x01" + struct.pack(">IIBH", 1, 0, 1, 30000) + b"\xff" * 30000
    batch = TokenBatch.decode(wire)
    assert batch[0].text == "\ufffd" * 30000
    with pytest.raises(EncodeError, match="token 0 text is 90000 UTF-8 bytes"):
        batch.encode()
    with pytest.raises(EncodeError):
        batch[0].encode()
    assert pickle.loads(pickle.dumps(batch)) == batch


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_never_crashes(data):
    for decode in (TokenBatch.decode, Token.decode):
        try:
            value = decode(data)
        except DecodeError as exc:
            assert exc.offset is not None and 0 <= exc.offset <= len(data)
            continue
        assert decode(value.encode()) == value


@given(st.lists(token_fields, min_size=1, max_size=8), st.data())
def test_truncated_batches_are_errors_never_partial(tokens, data):
    wire = oracle_batch(tokens)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(DecodeError):
        TokenBatch.decode(wire[:cut])


# -- TokenBatchBuilder ------------------------------------------------------------------------


def test_builder_batches_by_max_size():
    builder = TokenBatchBuilder(max_size=3, sequence_id=7)
    assert builder.max_size == 3 and builder.sequence_id == 7
    out = [builder.push(Token(i, i, "x")) for i in range(7)]
    full = [b for b in out if b is not None]
    assert [out.index(b) for b in full] == [2, 5]
    assert [b.token_ids() for b in full] == [[0, 1, 2], [3, 4, 5]]
    assert all(b.sequence_id == 7 and not b.is_final for b in full)
    assert len(builder) == 1
    final = builder.finish()
    assert final.is_final and final.token_ids() == [6] and final.sequence_id == 7


def test_builder_flush_and_empty_finish():
    builder = TokenBatchBuilder()
    assert builder.max_size == 32 and builder.sequence_id is None
    assert builder.flush() is None
    builder.push(Token(1, 0))
    flushed = builder.flush()
    assert flushed.token_ids() == [1] and not flushed.is_final
    assert builder.flush() is None
    final = builder.finish()
    assert final.is_final and final.is_empty() and final.encode().hex() == "020000"


def test_builder_closed_after_finish():
    builder = TokenBatchBuilder(max_size=2)
    builder.finish()
    for call in (lambda: builder.push(Token(1, 0)), builder.flush, builder.finish):
        with pytest.raises(RuntimeError, match="finish"):
            call()


@pytest.mark.parametrize("size", [0, -1, 65536])
def test_builder_max_size_validated(size):
    with pytest.raises(ValueError, match="max_size"):
        TokenBatchBuilder(max_size=size)


def test_builder_refuses_non_tokens():
    with pytest.raises(TypeError):
        TokenBatchBuilder().push((1, 0))
