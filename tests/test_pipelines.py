"""QuillStep on one machine: pyarrow batches, tables and readers, polars and DuckDB; each kind of
column in and out checked against numpy and the service's own answers; bad input refused
before any call; faults (503 + Retry-After, answers lost after the handler ran) leave every row
answered once and every key handled once (the service's side-effect counter)."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sys
import time

import duckdb
import numpy as np
import polars
import pyarrow as pa
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from pipeline_service import SERVICE, serving  # noqa: E402

from quill import Tensor  # noqa: E402
from quill.errors import QuillError  # noqa: E402
from quill.pipelines import TOKEN_TYPE, QuillStep, RowError, StepInputError, TokenBucket  # noqa: E402

SCORE = pa.struct([("length", pa.int64()), ("upper", pa.string())])


@pytest.fixture(scope="module")
def served():
    with serving() as (service, url):
        yield service, url


def score_step(url, **options):
    return QuillStep(url, SERVICE, "Score", input_column="text", request_field="text", **options)


def texts(n, offset=0):
    return pa.table({"text": [f"row {i}" for i in range(offset, offset + n)], "n": list(range(offset, offset + n))})


def test_json_answers_as_structs_or_text_and_input_columns_pass_through(served):
    service, url = served
    table = texts(50)
    structs = score_step(url, output="struct", output_type=SCORE)(table)
    assert structs.schema == pa.schema([*table.schema, pa.field("result", SCORE), pa.field("error", pa.string())])
    assert structs.select(["text", "n"]).equals(table)
    assert structs.column("result").to_pylist() == [{"length": len(t), "upper": t.upper()} for t in
                                                     table.column("text").to_pylist()]
    assert structs.column("error").null_count == 50
    text = score_step(url, output_column="scored", error_column="problem")(table)
    assert [json.loads(a) for a in text.column("scored").to_pylist()] == structs.column("result").to_pylist()
    assert text.column("problem").null_count == 50


def test_json_text_columns_are_sent_as_parsed_json(served):
    _, url = served
    step = QuillStep(url, SERVICE, "Score", input_column="request", output="struct", output_type=SCORE)
    out = step(pa.record_batch({"request": ['{"text": "ab"}', '{"text": "xyz"}']}))
    assert out.column("result").to_pylist() == [{"length": 2, "upper": "AB"}, {"length": 3, "upper": "XYZ"}]


def test_binary_tensor_and_token_columns(served):
    _, url = served
    out = QuillStep(url, SERVICE, "Reverse", input_column="b", kind="binary")(pa.table({"b": [b"abc", b"", b"xy"]}))
    assert out.column("result").to_pylist() == [b"cba", b"", b"yx"]

    array = np.random.default_rng(1).standard_normal((6, 2, 3)).astype(np.float32)
    column = pa.array(Tensor.from_numpy(array))
    step = QuillStep(url, SERVICE, "Double", input_column="x", kind="tensor", tensor_shape=[2, 3],
                     tensor_dtype="float32", output_shape=[2, 3], output_dtype="float32")
    out = step(pa.table({"x": column}))
    assert out.schema.field("result").type == pa.fixed_shape_tensor(pa.float32(), [2, 3])
    np.testing.assert_array_equal(out.column("result").combine_chunks().to_numpy_ndarray(), array * 2)

    prompts = pa.table({"p": ["a b c", "dd"]})
    joined = QuillStep(url, SERVICE, "Generate", input_column="p", kind="tokens", request_field="prompt")(prompts)
    assert joined.column("result").to_pylist() == ["a b c ", "dd "]
    listed = QuillStep(url, SERVICE, "Generate", input_column="p", kind="tokens", request_field="prompt",
                       tokens_output="columns")(prompts)
    assert listed.schema.field("result").type == pa.list_(TOKEN_TYPE)
    assert listed.column("result").to_pylist()[1] == [{"id": 0, "text": "dd ", "logprob": 0.0}]


def test_per_row_failures_fill_the_error_column_or_raise(served):
    _, url = served
    column = pa.array(Tensor.from_numpy(np.ones((3, 99), np.float32)))  # the service answers shape [3]
    mixed = pa.chunked_array([column.slice(0, 1)])
    step = QuillStep(url, SERVICE, "Double", input_column="x", kind="tensor", output_shape=[99], output_dtype="float32")
    out = step(pa.table({"x": mixed}))
    assert out.column("result").null_count == 1 and "shape [3]" in out.column("error")[0].as_py()
    missing = QuillStep(url, SERVICE, "Nope", input_column="b", kind="binary")
    out = missing(pa.table({"b": [b"x", b"y"]}))
    assert out.column("result").null_count == 2
    assert all(e.startswith("NotFoundError") for e in out.column("error").to_pylist())
    with pytest.raises(RowError, match="row 0 of the batch failed \\(2 of 2\\)") as raised:
        QuillStep(url, SERVICE, "Nope", input_column="b", kind="binary", on_error="raise")(pa.table({"b": [b"x", b"y"]}))
    assert isinstance(raised.value, (QuillError, RuntimeError)) and raised.value.__cause__ is not None


@pytest.mark.parametrize("make, data, message", [
    (lambda url: score_step(url), pa.table({"other": ["x"]}), "no column 'text'"),
    (lambda url: QuillStep(url, SERVICE, "Reverse", input_column="b", kind="binary"), pa.table({"b": ["text"]}),
     "kind='binary' reads a binary column"),
    (lambda url: QuillStep(url, SERVICE, "Double", input_column="x", kind="tensor"), pa.table({"x": [1.0]}),
     "fixed_shape_tensor"),
    (lambda url: QuillStep(url, SERVICE, "Double", input_column="x", kind="tensor", tensor_shape=[3]),
     pa.table({"x": pa.array(Tensor.from_numpy(np.zeros((2, 4), np.float32)))}), "shape \\[4\\], the step takes \\[3\\]"),
    (lambda url: QuillStep(url, SERVICE, "Double", input_column="x", kind="tensor", tensor_dtype="float64"),
     pa.table({"x": pa.array(Tensor.from_numpy(np.zeros((2, 4), np.float32)))}), "float32 tensors, the step takes float64"),
    (lambda url: score_step(url), pa.table({"text": ["a", None]}), "1 null\\(s\\), the first at row 1"),
    (lambda url: QuillStep(url, SERVICE, "Score", input_column="text"), pa.table({"text": [1, 2]}), "JSON text or a struct"),
    (lambda url: QuillStep(url, SERVICE, "Score", input_column="text"), pa.table({"text": ["not json"]}), "not JSON text"),
    (lambda url: score_step(url), pa.table({"text": ["a"], "result": [1]}), "already has a column 'result'"),
    (lambda url: score_step(url, key_column="id"), pa.table({"text": ["a"]}), "no key column 'id'"),
    (lambda url: score_step(url, key_column="id"), pa.table({"text": ["a"], "id": [1.5]}), "strings or integers"),
])
def test_bad_input_is_refused_before_any_call(served, make, data, message):
    service, url = served
    before = sum(service.handled.values())
    with pytest.raises(StepInputError, match=message) as raised:
        make(url)(data)
    assert isinstance(raised.value, ValueError)
    assert sum(service.handled.values()) == before


@pytest.mark.parametrize("options, message", [
    ({"on_error": "ignore"}, "on_error"), ({"concurrency": 0}, "concurrency"), ({"rate": 0}, "rate"),
    ({"kind": "bytes"}, "kind must be"), ({"output": "dict"}, "output must be"),
    ({"output_shape": [3]}, "go together"), ({"output_column": "text"}, "three different names"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        QuillStep("http://127.0.0.1:1", SERVICE, "Score", input_column="text", **options)


def test_every_row_exactly_once_through_503s_and_lost_answers():
    with serving(fault_rate=0.05) as (service, url):
        table = pa.concat_tables([texts(400), texts(400, 400)])
        out = score_step(url, output="struct", output_type=SCORE, concurrency=16)(table)
        assert out.column("error").null_count == out.num_rows == 800
        assert sorted(out.column("n").to_pylist()) == list(range(800))
        assert service.faults >= 20  # 5% of ~800 calls and their retries
        assert len(service.handled) == 800 and not service.keys_handled_more_than_once()


def test_a_key_column_names_the_keys_and_a_rerun_is_answered_from_the_store(served):
    service, url = served
    table = pa.table({"text": ["same", "same"], "id": ["order-1", "order-2"]})
    step = score_step(url, key_column="id")
    first, again = step(table), step(table)
    assert first.equals(again)
    assert service.handled["order-1"] == service.handled["order-2"] == 1


def test_polars_duckdb_readers_and_iterators(served):
    _, url = served
    step = score_step(url, output="struct", output_type=SCORE)
    expected = step(texts(10)).column("result").to_pylist()
    frame = step(polars.DataFrame({"text": [f"row {i}" for i in range(10)]}))
    assert isinstance(frame, polars.DataFrame) and frame["result"].to_list() == expected
    relation = duckdb.sql("select 'row ' || i::varchar as text from range(10) t(i) order by i")
    assert step(relation).column("result").to_pylist() == expected
    reader = pa.RecordBatchReader.from_batches(texts(10).schema, texts(10).to_batches(max_chunksize=3))
    lazy = step(reader)
    assert isinstance(lazy, pa.RecordBatchReader) and lazy.read_all().column("result").to_pylist() == expected
    batches = list(step(iter(texts(10).to_batches(max_chunksize=4))))
    assert [b.num_rows for b in batches] == [4, 4, 2]
    with pytest.raises(TypeError, match="takes Arrow data"):
        step(42)


def test_the_step_pickles_as_its_configuration_and_keeps_one_client_per_process(served):
    _, url = served
    step = score_step(url)
    step(texts(3))
    copy = pickle.loads(pickle.dumps(step))
    assert copy._runtime() is step._runtime()  # the same configuration in this process: the same client
    copy(texts(3))
    assert step.progress[0] >= 6
    assert len(pickle.dumps(step)) < 2000


def test_the_rate_limit_holds(served):
    _, url = served
    step = score_step(url, rate=50.0, concurrency=8)
    started = time.perf_counter()
    step(texts(100, 6000))
    # a burst of 50 (one second's worth), then 50 more at 50 a second
    assert time.perf_counter() - started >= 0.95


def test_token_bucket_charges_debt_in_order():
    now = [0.0]
    bucket = TokenBucket(rate=10.0, burst=2, clock=lambda: now[0])
    assert [bucket.charge(1) for _ in range(4)] == [0.0, 0.0, pytest.approx(0.1), pytest.approx(0.2)]
    now[0] = 1.0
    assert bucket.charge(0) == 0.0 and bucket.level == 2.0
    asyncio.run(bucket.take(1))


def test_a_row_timeout_fills_the_error_column():
    with serving(model_seconds=0.5) as (_, url):
        out = score_step(url, timeout_ms=100)(texts(2))
        assert all("Timeout" in e for e in out.column("error").to_pylist())
