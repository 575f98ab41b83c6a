"""The Arrow PyCapsule Interface of TokenBatch and Tensor (quill/_core/arrow.pyx, arrow_import.pyx),
checked against pyarrow, polars and DuckDB, and the import side against malformed C structs."""

import doctest
import gc
import os
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import duckdb
import polars as pl
import pyarrow as pa

import quill._core.arrow
import quill._core.arrow_import
from quill import DecodeError, Tensor, Token, TokenBatch
from quill._core.arrow import token_batch_stream
from quill._core.tokens import pin_batch

sys.path.insert(0, os.path.dirname(__file__))
from arrow_c import Array, RawSource, Schema, bits, i32, i64, metadata, token_source, u32  # noqa: E402

TOKENS = [Token(7, 0, "Hi", -0.5), Token(8, 1), Token(9, 2, "", None, True), Token(10, 3, "héllo ✓ 🦜", 1.25),
          Token(4294967295, 4294967295, None, -3.0, True)]
DTYPES = ["float32", "float64", "float16", "int8", "int32", "int64", "uint8", "bool"]


def sample_batch(sequence_id=3, is_final=True):
    batch = TokenBatch.from_tokens(TOKENS, sequence_id=sequence_id)
    batch.is_final = is_final
    return batch


def expected_rows(batch):
    """The batch's rows from its numpy columns, None where a token has no logprob or text."""
    has_logprob = batch.has_logprob_array()
    return {
        "id": batch.ids_array().tolist(),
        "position": batch.positions_array().tolist(),
        "logprob": [float(v) if ok else None for v, ok in zip(batch.logprobs_array(), has_logprob)],
        "text": batch.texts(),
        "is_special": batch.is_special_array().tolist(),
    }


def address(view):
    return np.frombuffer(view, np.uint8).ctypes.data if len(view) else None


def tensor_of(dtype, shape=(2, 3, 4)):
    values = (np.arange(int(np.prod(shape))) % 7 - 3).astype(dtype).reshape(shape)
    return Tensor.from_numpy(values, name="t")


class StreamOf:
    """An object whose __arrow_c_stream__ reads ``batches`` through token_batch_stream."""

    def __init__(self, batches, metadata=None):
        self.batches, self.metadata = batches, metadata

    def __arrow_c_stream__(self, requested_schema=None):
        return token_batch_stream(self.batches, self.metadata)


@pytest.mark.parametrize("module", [quill._core.arrow, quill._core.arrow_import], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted >= 1 and result.failed == 0


# -- TokenBatch to pyarrow, polars, DuckDB --------------------------------------------------------

def test_pyarrow_reads_a_batch_as_a_record_batch():
    batch = sample_batch()
    for table in (pa.table(batch), pa.record_batch(batch), pa.RecordBatchReader.from_stream(batch).read_all()):
        assert table.schema.types == [pa.uint32(), pa.uint32(), pa.float32(), pa.large_utf8(), pa.bool_()]
        assert table.schema.names == ["id", "position", "logprob", "text", "is_special"]
        assert table.schema.metadata == {b"sequence_id": b"3", b"is_final": b"true"}
        assert table.to_pydict() == expected_rows(batch)
    assert pa.schema(batch) == pa.table(batch).schema


def test_schema_metadata_without_sequence_id():
    assert pa.table(TokenBatch()).schema.metadata == {b"is_final": b"false"}


def test_polars_reads_a_batch():
    batch = sample_batch()
    frame = pl.DataFrame(batch)
    assert frame.schema == {"id": pl.UInt32, "position": pl.UInt32, "logprob": pl.Float32,
                            "text": pl.String, "is_special": pl.Boolean}
    assert frame.to_dict(as_series=False) == expected_rows(batch)
    # polars.from_arrow gives a Series of structs for a PyCapsule object (polars' own rule)
    assert pl.from_arrow(batch).struct.unnest().to_dict(as_series=False) == expected_rows(batch)


def test_duckdb_queries_a_batch():
    batch = sample_batch()
    rows = duckdb.sql("select id, text, logprob from batch where not is_special order by position").fetchall()
    expected = expected_rows(batch)
    assert rows == [(i, t, lp) for i, t, lp, s in zip(expected["id"], expected["text"], expected["logprob"],
                                                       expected["is_special"]) if not s]
    assert duckdb.sql("select count(*), sum(length(text)) from batch").fetchall() == [(5, 2 + 0 + 9)]


def test_empty_batch_exports():
    empty = pa.table(TokenBatch())
    assert empty.num_rows == 0 and empty.column("text").type == pa.large_utf8()
    assert TokenBatch.from_arrow(empty) == TokenBatch()
    assert duckdb.sql("select count(*) from empty").fetchall() == [(0,)]


def test_numeric_and_text_columns_share_the_batch_memory():
    batch = sample_batch()
    record = pa.record_batch(batch)
    pin = pin_batch(batch)   # the storage as it is now
    assert record.column("id").buffers()[1].address == address(pin.column("ids"))
    assert record.column("position").buffers()[1].address == address(pin.column("positions"))
    assert record.column("logprob").buffers()[1].address == address(pin.column("logprob_bits"))
    text = record.column("text").buffers()
    assert text[1].address == address(pin.column("text_offsets"))
    assert text[2].address == address(pin.column("text"))


def test_exported_arrays_outlive_the_batch():
    batch = sample_batch()
    expected = expected_rows(batch)
    schema_capsule, array_capsule = batch.__arrow_c_array__()
    table = pa.table(batch)
    del batch
    gc.collect()
    assert table.to_pydict() == expected
    record = pa.RecordBatch._import_from_c_capsule(schema_capsule, array_capsule)
    assert record.to_pydict() == expected


def test_mutating_the_batch_leaves_exported_arrays_unchanged():
    batch = sample_batch()
    expected = expected_rows(batch)
    table = pa.table(batch)
    batch.add(Token(99, 9, "new"))
    batch.extend(batch)
    assert table.to_pydict() == expected
    batch.clear()
    batch.add(Token(1, 1, "overwrite"))
    assert table.to_pydict() == expected
    assert pa.table(batch).to_pydict()["text"] == ["overwrite"]


def test_released_exports_unpin_the_storage():
    batch = TokenBatch.from_tokens([Token(1, 0, "a")] * 3)   # spare capacity: grows in place when unpinned
    before = address(pin_batch(batch).column("ids"))
    for _ in range(3):
        pa.table(batch)
        pa.record_batch(batch)
        duckdb.sql("select * from batch").fetchall()
    gc.collect()
    batch.add(Token(2, 1))
    assert address(pin_batch(batch).column("ids")) == before, "an export still pins the storage"


def test_arrays_released_from_another_thread():
    batch = sample_batch()
    tables = [pa.table(batch) for _ in range(8)]
    del batch

    def drop():
        tables.clear()
        gc.collect()

    worker = threading.Thread(target=drop)
    worker.start()
    worker.join()
    assert tables == []


# -- the C stream over an iterator ----------------------------------------------------------------

def test_stream_reads_batches_as_the_consumer_asks():
    produced = []

    def batches():
        for i in range(3):
            produced.append(i)
            yield TokenBatch.from_tokens([Token(i, i, str(i))], sequence_id=5)

    reader = pa.RecordBatchReader.from_stream(StreamOf(batches(), {"sequence_id": "5"}))
    assert reader.schema.metadata == {b"sequence_id": b"5"}
    assert produced == []
    assert reader.read_next_batch().to_pydict()["text"] == ["0"]
    assert produced == [0]
    assert [b.to_pydict()["id"] for b in reader] == [[1], [2]]
    assert produced == [0, 1, 2]


def test_stream_into_quill_polars_and_duckdb():
    parts = [sample_batch(), TokenBatch(), TokenBatch.from_tokens([Token(1, 0, "z")])]
    combined = TokenBatch.from_tokens(TOKENS + [Token(1, 0, "z")])
    assert TokenBatch.from_arrow(StreamOf(parts)) == combined
    assert pl.DataFrame(StreamOf(parts)).height == 6
    stream = StreamOf(parts)
    assert duckdb.sql("select count(*) from stream").fetchall() == [(6,)]


def test_stream_reports_iterator_errors():
    def failing():
        yield TokenBatch.from_tokens([Token(1, 0)])
        raise ValueError("upstream went away")

    reader = pa.RecordBatchReader.from_stream(StreamOf(failing()))
    reader.read_next_batch()
    with pytest.raises(OSError, match="ValueError: upstream went away"):
        reader.read_next_batch()
    with pytest.raises(OSError, match="upstream went away"):   # the error stays
        reader.read_next_batch()
    with pytest.raises(DecodeError, match="ValueError: upstream went away"):
        TokenBatch.from_arrow(StreamOf(failing()))


def test_stream_refuses_items_that_are_not_token_batches():
    reader = pa.RecordBatchReader.from_stream(StreamOf([TokenBatch(), "text", TokenBatch()]))
    reader.read_next_batch()
    with pytest.raises(pa.ArrowInvalid, match="item 1 of the stream is a str, not a TokenBatch"):
        reader.read_next_batch()
    other = pa.record_batch({"id": pa.array([1], pa.int64())})
    with pytest.raises(pa.ArrowInvalid, match="does not have the stream's schema"):
        pa.RecordBatchReader.from_stream(StreamOf([other])).read_all()


def test_stream_read_from_another_thread():
    reader = pa.RecordBatchReader.from_stream(StreamOf(sample_batch() for _ in range(50)))
    result = []
    worker = threading.Thread(target=lambda: result.append(reader.read_all()))
    worker.start()
    worker.join()
    assert result[0].num_rows == 50 * len(TOKENS)


def test_unread_stream_never_advances_the_iterator():
    produced = []

    def batches():
        produced.append(1)
        yield TokenBatch()

    capsule = token_batch_stream(batches())
    del capsule
    gc.collect()
    assert produced == []


def test_stream_metadata_is_checked():
    with pytest.raises(TypeError, match="dict of str to str"):
        token_batch_stream([], {"sequence_id": 5})


# -- the way back: TokenBatch.from_arrow ----------------------------------------------------------

token_strategy = st.builds(
    Token,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.just(""), st.text(max_size=12)),
    st.one_of(st.none(), st.floats(width=32, allow_nan=False)),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(token_strategy, max_size=40), st.one_of(st.none(), st.integers(0, 2**32 - 1)), st.booleans())
def test_round_trips_through_pyarrow(tokens, sequence_id, is_final):
    batch = TokenBatch.from_tokens(tokens, sequence_id=sequence_id)
    batch.is_final = is_final
    table = pa.table(batch)
    assert TokenBatch.from_arrow(table) == batch
    assert TokenBatch.from_arrow(batch) == batch
    as_utf8 = table.cast(pa.schema([f.with_type(pa.utf8()) if f.name == "text" else f for f in table.schema],
                                   metadata=table.schema.metadata))
    assert TokenBatch.from_arrow(as_utf8) == batch
    as_view = table.cast(pa.schema([f.with_type(pa.string_view()) if f.name == "text" else f for f in table.schema],
                                   metadata=table.schema.metadata))
    assert TokenBatch.from_arrow(as_view) == batch


@settings(max_examples=30, deadline=None)
@given(st.lists(token_strategy, max_size=30))
def test_round_trips_through_polars_and_duckdb(tokens):
    batch = TokenBatch.from_tokens(tokens)   # neither keeps schema metadata
    assert TokenBatch.from_arrow(pl.DataFrame(batch)) == batch   # polars exports utf8_view
    relation = duckdb.sql("select * from batch")
    assert TokenBatch.from_arrow(relation) == batch


def test_from_arrow_reads_every_chunk_and_slices():
    batch = sample_batch()
    table = pa.concat_tables([pa.table(batch), pa.table(batch)])
    doubled = sample_batch()
    doubled.extend(batch)
    assert TokenBatch.from_arrow(table) == doubled
    record = pa.record_batch(batch)
    assert TokenBatch.from_arrow(record.slice(1, 3)) == sample_batch()[1:4]
    sliced_columns = pa.Table.from_arrays([c.slice(2) for c in record.columns], schema=record.schema)
    assert TokenBatch.from_arrow(sliced_columns).tokens() == TOKENS[2:]


def test_from_arrow_optional_columns_and_extra_columns():
    table = pa.table({"position": pa.array([0, 1], pa.uint32()), "id": pa.array([5, 6], pa.uint32()),
                      "score": pa.array([0.1, 0.2])})
    assert TokenBatch.from_arrow(table).tokens() == [Token(5, 0), Token(6, 1)]


def test_from_arrow_null_logprobs_and_texts_keep_no_stale_values():
    ids = pa.array([1, 2], pa.uint32())
    logprob = pa.Array.from_buffers(pa.float32(), 2, [pa.py_buffer(bits(False, True)),
                                                      pa.py_buffer(np.array([7.0, -1.0], np.float32).tobytes())])
    text = pa.Array.from_buffers(pa.large_utf8(), 2, [pa.py_buffer(bits(False, True)),
                                                      pa.py_buffer(i64(0, 3, 5)), pa.py_buffer(b"abcde")])
    table = pa.table({"id": ids, "position": ids, "logprob": logprob, "text": text})
    batch = TokenBatch.from_arrow(table)
    assert batch.tokens() == [Token(1, 1), Token(2, 2, "de", -1.0)]
    assert batch == TokenBatch.from_tokens([Token(1, 1), Token(2, 2, "de", -1.0)])
    assert batch.encode() == TokenBatch.from_tokens(batch.tokens()).encode()


# -- malformed input ------------------------------------------------------------------------------

def columns(**overrides):
    base = {"id": pa.array([1, 2], pa.uint32()), "position": pa.array([0, 1], pa.uint32()),
            "logprob": pa.array([None, -1.0], pa.float32()), "text": pa.array(["a", None], pa.large_utf8()),
            "is_special": pa.array([False, True])}
    base.update(overrides)
    return pa.table({k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize("column, array, expected", [
    ("id", pa.array([1, 2], pa.int64()), "column 'id' is Arrow type int64 ('l'); TokenBatch.from_arrow expects uint32 ('I')"),
    ("position", pa.array([0.0, 1.0]), "column 'position' is Arrow type float64 ('g')"),
    ("logprob", pa.array([0.0, 1.0], pa.float64()), "column 'logprob' is Arrow type float64 ('g'); TokenBatch.from_arrow expects float32 ('f')"),
    ("text", pa.array([b"a", b"b"]), "column 'text' is Arrow type binary ('z'); TokenBatch.from_arrow expects large_utf8 ('U') or utf8 ('u') or utf8_view ('vu')"),
    ("text", pa.array(["a", "b"]).dictionary_encode(), "column 'text' is dictionary-encoded"),
    ("is_special", pa.array([0, 1], pa.uint8()), "column 'is_special' is Arrow type uint8 ('C')"),
])
def test_wrong_column_types(column, array, expected):
    with pytest.raises(TypeError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        TokenBatch.from_arrow(columns(**{column: array}))


@pytest.mark.parametrize("column", ["id", "position"])
def test_missing_required_column(column):
    with pytest.raises(TypeError, match=f"the record batch has no column '{column}' \\(uint32"):
        TokenBatch.from_arrow(columns(**{column: None}))


@pytest.mark.parametrize("column, array", [
    ("id", pa.array([1, None], pa.uint32())),
    ("position", pa.array([None, 1], pa.uint32())),
    ("is_special", pa.array([None, True])),
])
def test_nulls_where_a_token_needs_a_value(column, array):
    with pytest.raises(DecodeError, match=f"column '{column}': null at row"):
        TokenBatch.from_arrow(columns(**{column: array}))


def test_not_a_record_batch_or_not_arrow():
    with pytest.raises(TypeError, match="expects a record batch .* got Arrow type int64"):
        TokenBatch.from_arrow(pa.array([1, 2]))
    with pytest.raises(TypeError, match="Arrow PyCapsule Interface .* got int"):
        TokenBatch.from_arrow(42)
    with pytest.raises(TypeError, match="column 'id' appears twice"):
        TokenBatch.from_arrow(pa.table([pa.array([1], pa.uint32())] * 3, names=["id", "id", "position"]))


@pytest.mark.parametrize("fmt, text, message", [
    (b"U", Array(2, [None, i64(0, 3, 1), b"abc"]), "offset 2 is 1, below offset 1 \\(3\\)"),
    (b"u", Array(2, [None, i32(-1, 0, 1), b"abc"]), "offset 0 is -1, below 0"),
    (b"u", Array(2, [None, i32(0, 1, 3), b"a\xff\xfe"]), "row 1 is not valid UTF-8"),
    (b"U", Array(2, [None, i64(0, 1, 3), None]), "column 'text': buffer 2 is NULL"),
    (b"U", Array(2, [None, None, b"abc"]), "column 'text': buffer 1 is NULL"),
    (b"u", Array(2, [None, i32(0, 1)]), "column 'text': 2 buffers, not the 3 its type has"),
])
def test_malformed_text_columns(fmt, text, message):
    source = token_source([("id", b"I", Array(2, [None, u32(1, 2)])), ("position", b"I", Array(2, [None, u32(0, 1)])),
                           ("text", fmt, text)], 2)
    with pytest.raises(DecodeError, match=message):
        TokenBatch.from_arrow(source)


def test_malformed_string_views():
    view = np.zeros(2, dtype=[("length", "<i4"), ("prefix", "S4"), ("buffer", "<i4"), ("offset", "<i4")])
    view[0] = (20, b"aaaa", 0, 0)       # 20 bytes of a 10-byte buffer
    view[1] = (2, b"ok", 0, 0)
    source = token_source([("id", b"I", Array(2, [None, u32(1, 2)])), ("position", b"I", Array(2, [None, u32(0, 1)])),
                           ("text", b"vu", Array(2, [None, view.tobytes(), b"a" * 10, i64(10)]))], 2)
    with pytest.raises(DecodeError, match="row 0 \\(20 bytes at 0\\) runs past data buffer 0 \\(10 bytes\\)"):
        TokenBatch.from_arrow(source)
    view[0] = (20, b"aaaa", 3, 0)
    source.array.children[2].buffers[1] = view.tobytes()
    with pytest.raises(DecodeError, match="row 0 points into data buffer 3 of 1"):
        TokenBatch.from_arrow(source)


def id_and_position(id_array):
    return [("id", b"I", id_array), ("position", b"I", Array(2, [None, u32(0, 1)]))]


@pytest.mark.parametrize("id_array, message", [
    (Array(2, [None]), "column 'id': 1 buffers, not the 2 its type has"),
    (Array(2, [None, None]), "column 'id': buffer 1 is NULL"),
    (Array(2, [None, u32(1, 2)], null_count=1), "column 'id': null_count 1 but no validity bitmap"),
    (Array(2, [bits(True, False), u32(1, 2)], null_count=-1), "column 'id': null at row 1"),
    (Array(1, [None, u32(1)]), "column 'id' holds 1 values; its parent needs 2"),
    (Array(2, [None, u32(1, 2)], released=True), "column 'id': missing or released array"),
    (Array(2, [None, u32(1, 2)], n_children=1), "column 'id': 1 children, not the 0 its type has"),
    (Array(-1, [None, u32(1, 2)]), "column 'id': invalid length -1"),
    (Array(2, [None, u32(1, 2)], null_count=5), "column 'id': null_count 5 for 2 values"),
    (Array(2, [None, u32(1, 2)], dictionary=Array(1, [None, u32(1)])), "a dictionary where the schema has none"),
])
def test_malformed_c_structs(id_array, message):
    with pytest.raises(DecodeError, match=message):
        TokenBatch.from_arrow(token_source(id_and_position(id_array), 2))


def test_malformed_record_batch_and_metadata():
    good = id_and_position(Array(2, [None, u32(1, 2)]))
    with pytest.raises(DecodeError, match="the record batch: null at row 0"):
        TokenBatch.from_arrow(token_source(good, 2, validity=bits(False, True), null_count=1))
    with pytest.raises(DecodeError, match="sequence_id '-4' is not an integer"):
        TokenBatch.from_arrow(token_source(good, 2, meta=metadata({"sequence_id": "-4"})))
    with pytest.raises(DecodeError, match="is_final 'yes' is not 'true' or 'false'"):
        TokenBatch.from_arrow(token_source(good, 2, meta=metadata({"is_final": "yes"})))
    batch = TokenBatch.from_arrow(token_source(good, 2, meta=metadata({"sequence_id": "9", "is_final": "true"})))
    assert (batch.sequence_id, batch.is_final, batch.token_ids()) == (9, True, [1, 2])
    released = token_source(good, 2)
    released.schema.released = True
    with pytest.raises(DecodeError, match="schema was already released"):
        TokenBatch.from_arrow(released)


def test_offset_struct_reads_the_right_rows():
    source = token_source(id_and_position(Array(3, [None, u32(0, 1, 2)], offset=1)), 1, offset=1)
    source.array.children[1] = Array(2, [None, u32(5, 6)])
    assert TokenBatch.from_arrow(source).tokens() == [Token(2, 6)]


# -- Tensor ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_as_fixed_shape_tensor(dtype):
    tensor = tensor_of(dtype)
    array = pa.array(tensor)
    assert isinstance(array.type, pa.FixedShapeTensorType)
    assert array.type.shape == [3, 4] and len(array) == 2
    assert array.type.value_type == pa.from_numpy_dtype(np.dtype(dtype))
    assert array.storage.flatten().to_numpy(zero_copy_only=False).tolist() == tensor.to_numpy().ravel().tolist()
    assert Tensor.from_arrow(array).to_numpy().tolist() == tensor.to_numpy().tolist()
    assert Tensor.from_arrow(tensor) == tensor
    assert Tensor.from_arrow(pl.Series(tensor)) == tensor
    assert Tensor.from_arrow(pa.table({"t": array})) == tensor
    if dtype != "float16":   # DuckDB has no half-precision type
        assert duckdb.sql("select count(*) from tensor").fetchall() == [(2,)]


def test_tensor_field_metadata_and_values_in_consumers():
    tensor = tensor_of("float32")
    field = pa.field(tensor)
    assert field.name == "t"
    assert np.array_equal(pa.array(tensor).to_numpy_ndarray(), tensor.to_numpy())
    rows = duckdb.sql("select * from tensor").fetchall()   # DuckDB sees the storage: FLOAT[12] rows
    assert [list(row[0]) for row in rows] == tensor.to_numpy().reshape(2, -1).tolist()
    assert pl.Series(tensor).to_list() == tensor.to_numpy().reshape(2, -1).tolist()   # polars too
    capsule, _ = tensor.__arrow_c_array__()
    raw_field = pa.Field._import_from_c_capsule(capsule)
    assert raw_field.type.extension_name == "arrow.fixed_shape_tensor"


def test_tensor_export_and_import_share_memory():
    tensor = tensor_of("int64")
    array = pa.array(tensor)
    assert array.storage.values.buffers()[1].address == tensor.to_numpy().ctypes.data
    back = Tensor.from_arrow(array)
    assert back.to_numpy().ctypes.data == array.storage.values.buffers()[1].address
    assert not back.to_numpy().flags.writeable
    del array, tensor
    gc.collect()
    assert back.to_numpy()[0, 0].tolist() == [-3, -2, -1, 0]


def test_tensor_export_outlives_the_tensor_and_pins_a_bytearray():
    data = bytearray(np.arange(4, dtype=np.int32).tobytes())
    tensor = Tensor.from_bytes(data, [4], "int32")
    array = pa.array(tensor)
    del tensor
    gc.collect()
    with pytest.raises(BufferError):
        data.extend(b"1234")   # the array holds a buffer export of it
    assert array.storage.flatten().to_pylist() == [0, 1, 2, 3]


def test_tensor_shapes():
    one_d = Tensor.from_numpy(np.arange(5, dtype=np.int32))
    assert pa.array(one_d).type.shape == [] and Tensor.from_arrow(one_d) == one_d
    empty = Tensor.zeros([0, 3], "float32")
    assert len(pa.array(empty)) == 0 and Tensor.from_arrow(empty) == empty
    zero_rows = Tensor.zeros([2, 0], "float32")
    assert Tensor.from_arrow(pa.array(zero_rows)).shape == [2, 0]
    assert Tensor.from_arrow(pa.array([1.5, 2.5], pa.float32())).shape == [2]
    fixed = pa.array([[1, 2], [3, 4]], pa.list_(pa.int8(), 2))
    assert Tensor.from_arrow(fixed).to_numpy().tolist() == [[1, 2], [3, 4]]
    chunked = pa.chunked_array([pa.array(tensor_of("int8")), pa.array(tensor_of("int8"))])
    assert Tensor.from_arrow(chunked).shape == [4, 3, 4]
    sliced = pa.array(tensor_of("int32")).slice(1)
    assert Tensor.from_arrow(sliced).to_numpy().tolist() == tensor_of("int32").to_numpy()[1:].tolist()


def test_tensor_errors():
    with pytest.raises(TypeError, match="Arrow has no bfloat16 type.*astype\\('float32'\\)"):
        pa.array(Tensor.zeros([2], "bfloat16"))
    with pytest.raises(ValueError, match="0-d tensor has no rows"):
        Tensor.zeros([], "float32").__arrow_c_array__()
    with pytest.raises(TypeError, match="Arrow type utf8 \\('u'\\) has no quill dtype"):
        Tensor.from_arrow(pa.array(["a"]))
    with pytest.raises(DecodeError, match="the tensor values: null at row 1; a tensor has no nulls"):
        Tensor.from_arrow(pa.array([1, None], pa.int32()))
    with pytest.raises(TypeError, match="one-column record batch; this record batch has 2 columns"):
        Tensor.from_arrow(pa.table({"a": [1], "b": [2]}))
    permuted = pa.FixedShapeTensorArray.from_numpy_ndarray(np.zeros((2, 2, 3), np.float32)).type
    transposed = pa.fixed_shape_tensor(pa.float32(), [2, 3], permutation=[1, 0])
    storage = pa.array([[0.0] * 6], pa.list_(pa.float32(), 6))
    assert Tensor.from_arrow(pa.ExtensionArray.from_storage(permuted, storage)).shape == [1, 2, 3]
    with pytest.raises(TypeError, match="row-major tensors; this one has permutation \\[1, 0\\]"):
        Tensor.from_arrow(pa.ExtensionArray.from_storage(transposed, storage))
    wrong = RawSource(Schema(b"+w:4", meta=metadata({"ARROW:extension:name": "arrow.fixed_shape_tensor",
                                                      "ARROW:extension:metadata": '{"shape": [3]}'}),
                             children=[Schema(b"f", b"item")]),
                      Array(1, [None], children=[Array(4, [None, bytes(16)])]))
    with pytest.raises(DecodeError, match="shape \\[3\\] holds 3 values, but its list size is 4"):
        Tensor.from_arrow(wrong)
    short = RawSource(Schema(b"+w:4", children=[Schema(b"f", b"item")]),
                      Array(2, [None], children=[Array(4, [None, bytes(16)])]))
    with pytest.raises(DecodeError, match="the tensor values hold 4 values; 2 rows of 4 need 8"):
        Tensor.from_arrow(short)


def test_a_tensor_name_lives_in_its_arrow_field():
    """pa.array drops the field and with it the name; a named column or name= keep it."""
    t = Tensor.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3), name="emb")
    assert Tensor.from_arrow(t).name == "emb"
    assert pa.field(t).name == "emb" and Tensor.from_arrow(pa.record_batch([t], names=["emb"])).name == "emb"
    assert Tensor.from_arrow(pa.table({"kept": pa.array(t)})).name == "kept"
    bare = Tensor.from_arrow(pa.array(t))
    assert bare.name is None and bare.shape == [2, 3] and np.array_equal(bare.to_numpy(), t.to_numpy())
    assert Tensor.from_arrow(pa.array(t), name="emb") == t
