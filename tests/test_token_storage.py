"""TokenBatch storage (quill/_core/tokens_storage.pxi): appending a batch's own tokens, pins
(PinnedBatch), copy-on-write, and the storage base class behind TokenBatch.

Regression tests for issue 9 defect 1 (use-after-free when a batch is extended with its own
tokens) and its siblings found while reading the code. The expected results are built from
fresh Token objects, never from the batch under test.
"""

import gc
import pickle

import pytest

from quill._core.tokens import PinnedBatch, Token, TokenBatch, pin_batch

TEXT = "abcdefghijklmnop"   # 16 bytes: four tokens fill the first 64-byte text buffer exactly


def four_tokens():
    return [Token(i, i, TEXT, -0.25 * i, i == 3) for i in range(4)]


def batch_of(tokens):
    batch = TokenBatch(sequence_id=9)
    for token in tokens:
        batch.add(token)
    return batch


SELF_APPENDS = {
    "extend(b)": lambda b: b.extend(b),
    "extend(b.tokens())": lambda b: b.extend(b.tokens()),
    "extend(iter(b))": lambda b: b.extend(iter(b)),
    "extend(b[:])": lambda b: b.extend(b[:]),
    "add(b[i]) for i": lambda b: [b.add(b[i]) for i in range(len(b))],
    "add(b.get(i)) for i": lambda b: [b.add(b.get(i)) for i in range(len(b))],
    "add(t) for t in b.tokens()": lambda b: [b.add(t) for t in b.tokens()],
}


@pytest.mark.parametrize("append", SELF_APPENDS.values(), ids=SELF_APPENDS.keys())
def test_appending_a_batch_to_itself_repeats_it(append):
    # Each of these read freed memory: the source pointer was taken before the text buffer grew.
    batch = batch_of(four_tokens())
    append(batch)
    expected = batch_of(four_tokens() + four_tokens())
    assert batch == expected
    assert batch.text_bytes() == TEXT.encode() * 8 and batch.texts() == [TEXT] * 8
    assert TokenBatch.decode(batch.encode()) == expected


def test_self_extend_repeatedly_doubles():
    batch = batch_of([Token(1, 0, "é" * 7), Token(2, 1), Token(3, 2, "")])
    for _ in range(6):
        batch.extend(batch)
    assert len(batch) == 3 * 64
    assert batch.texts() == ["é" * 7, None, ""] * 64


def test_token_from_a_cleared_batch_keeps_its_text():
    batch = batch_of(four_tokens())
    token = batch[2]
    batch.clear()
    batch.add(Token(5, 5, "zzzzzzzzzzzzzzzz"))
    batch.add(token)
    assert token.text == TEXT and batch.texts() == ["zzzzzzzzzzzzzzzz", TEXT]


def test_slice_bounds_that_mutate_the_batch_are_safe():
    # A slice bound's __index__ ran after the batch length was read: a clear() there made the
    # slice copy from freed or NULL storage (segfault).
    batch = batch_of(four_tokens())
    keep = batch[0]   # shares the text buffer, so clear() detaches it

    class ClearingIndex:
        def __index__(self):
            batch.clear()
            return 1

    part = batch[ClearingIndex():]
    assert len(part) == 0 and len(batch) == 0 and keep.text == TEXT
    batch.extend(four_tokens())

    class GrowingIndex:
        def __index__(self):
            batch.extend(four_tokens())
            return 0

    part = batch[GrowingIndex()::3]
    assert part == batch_of([four_tokens()[i % 4] for i in range(0, 8, 3)])


@pytest.mark.parametrize("key", [slice(None), slice(1, None), slice(None, -1), slice(None, None, -1),
                                 slice(-2, 0, -1), slice(5, 1), slice(0, 4, 2), slice(-100, 100)])
def test_slices_match_list_slices(key):
    tokens = four_tokens()
    assert batch_of(tokens)[key] == batch_of(tokens[key])


MUTATIONS = {
    "add": lambda b: b.add(Token(99, 99, "new text")),
    "add own token": lambda b: b.add(b[0]),
    "extend self": lambda b: b.extend(b),
    "extend list": lambda b: b.extend(four_tokens()),
    "clear and add": lambda b: (b.clear(), b.add(Token(98, 0, "QQQQQQQQQQQQQQQQ"))),
    "clear and extend": lambda b: (b.clear(), b.extend(four_tokens()[::-1])),
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_pinned_storage_never_changes(mutate):
    batch = batch_of(four_tokens())
    pin = pin_batch(batch)
    columns = {name: bytes(pin.column(name)) for name in
               ("ids", "positions", "logprob_bits", "flags", "text_offsets", "text")}
    views = {name: pin.column(name) for name in columns}
    for _ in range(3):
        mutate(batch)
    assert {name: bytes(view) for name, view in views.items()} == columns
    assert len(pin) == 4 and pin.column("ids").cast("I").tolist() == [0, 1, 2, 3]
    assert pin.column("text_offsets").cast("q").tolist() == [0, 16, 32, 48, 64]
    # and the batch itself went on from its own state
    reference = batch_of(four_tokens())
    for _ in range(3):
        mutate(reference)
    assert batch == reference


def test_pinned_columns_outlive_the_batch():
    batch = batch_of(four_tokens())
    text = pin_batch(batch).column("text")   # the memoryview keeps the pin alive
    del batch
    assert bytes(text) == TEXT.encode() * 4 and text.readonly


def test_pin_of_an_empty_batch():
    pin = pin_batch(TokenBatch())
    assert len(pin) == 0 and bytes(pin.column("text")) == b"" and bytes(pin.column("ids")) == b""
    assert pin.column("text_offsets").cast("q").tolist() == [0]
    with pytest.raises(ValueError, match="unknown column 'nope'"):
        pin.column("nope")
    with pytest.raises(TypeError, match="needs a TokenBatch"):
        pin_batch([])
    assert isinstance(pin, PinnedBatch)


def test_unpinned_batch_grows_in_place_and_pins_end():
    # After the pin is dropped the batch stops copying: its storage is private again.
    batch = batch_of(four_tokens())
    pin = pin_batch(batch)
    batch.add(Token(4, 4, "x"))    # moves onto a copy
    del pin
    before = pin_batch(batch).column("ids")
    del before
    batch.add(Token(5, 5, "y"))
    assert batch.token_ids() == [0, 1, 2, 3, 4, 5]


def test_pickle_restores_every_column():
    batch = batch_of(four_tokens() + [Token(7, 7), Token(8, 8, "")])
    batch.set_metadata("k", "v")
    clone = pickle.loads(pickle.dumps(batch))
    assert clone == batch and clone.get_metadata("k") == "v" and clone.texts() == batch.texts()


def test_pickle_with_text_bytes_on_a_textless_token_is_refused():
    from quill._core.tokens import _restore_batch
    _, (seq, final, n, columns, offsets, text, metadata) = TokenBatch.from_tokens([Token(1, 0)]).__reduce__()
    with pytest.raises(ValueError, match="text bytes for a token without text"):
        _restore_batch(seq, final, n, columns, offsets[:8] + (2).to_bytes(8, "little"), b"ab", metadata)


def test_token_batch_adds_no_field_to_its_storage_base():
    # The freelist and no_gc that Cython takes from the root class _BatchStorage serve TokenBatch
    # only while TokenBatch and _BatchColumns keep its size (tokens_storage.pxi).
    from quill._core.tokens import _BatchColumns, _BatchStorage
    assert TokenBatch.__mro__ == (TokenBatch, _BatchColumns, _BatchStorage, object)
    assert TokenBatch.__basicsize__ == _BatchColumns.__basicsize__ == _BatchStorage.__basicsize__
    batch = batch_of(four_tokens())
    batch.set_metadata("k", "v")
    assert not gc.is_tracked(batch) and not gc.is_tracked(pin_batch(batch))
