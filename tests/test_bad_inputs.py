"""Regression tests for bad inputs found by the fuzz targets (tests/fuzz/) and the sanitizer runs."""

import importlib.util
import pathlib

import pytest

from quill import errors
from quill._core.tokens import Token, TokenBatch
from quill.errors import DecodeError, ProblemDetails

QUILL_ERROR_NAMES = {name for name in errors.__all__ if isinstance(getattr(errors, name), type)
                     and issubclass(getattr(errors, name), (DecodeError, errors.StreamCancelledError))}


@pytest.mark.parametrize("body", [b"[" * 5000, b'{"a":' * 5000, b'{"type":"t","title":"x","status":1,"e":' + b"[" * 3000])
def test_problem_details_deep_nesting_is_a_decode_error(body):
    # fuzz_problem_details: json's recursion guard escaped ProblemDetails.from_json as RecursionError.
    with pytest.raises(DecodeError, match="too deeply"):
        ProblemDetails.from_json(body)


@pytest.mark.parametrize("value", [True, 7, [], {"a": 1}])
def test_problem_details_non_string_proto_detail_is_a_decode_error(value):
    # fuzz_problem_details: a non-string quill_proto_detail_base64 made proto_detail raise TypeError.
    problem = ProblemDetails.from_dict({"type": "about:blank", "title": "Bad", "status": 400,
                                        "quill_proto_detail_base64": value})
    with pytest.raises(DecodeError, match="must be a string"):
        problem.proto_detail


def test_bad_inputs_table_is_current():
    # docs/bad-inputs.md records real outputs: regenerate it with python tools/bad_inputs_table.py.
    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "bad_inputs_table.py"
    spec = importlib.util.spec_from_file_location("bad_inputs_table", path)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert table.main(["--check"]) == 0, "docs/bad-inputs.md is out of date: run python tools/bad_inputs_table.py"
    for _decoder, _what, data, call in table.CASES:
        error, _message = table.outcome(call, data)
        assert error in QUILL_ERROR_NAMES or error == "accepted", (error, _what)


def test_empty_columns_and_texts():
    # The UBSan build (tools/native_builds.py asan) flagged memcpy/memcmp on the NULL columns of an
    # empty batch and on an empty text: these paths must give empty results, equal batches, no crash.
    empty = TokenBatch()
    assert empty.ids_array().tolist() == [] and empty.positions_array().tolist() == []
    assert TokenBatch.decode(empty.encode()) == empty
    textless = TokenBatch.from_tokens([Token(1, 0), Token(2, 1, "")])
    assert textless == TokenBatch.decode(textless.encode())
    assert textless.texts() == [None, ""] and textless.ids_array().tolist() == [1, 2]


def test_invalid_utf8_after_an_empty_text():
    # UBSan on the fuzz_token_batch corpus: rewriting invalid UTF-8 copied an empty first text from NULL.
    wire = TokenBatch.from_tokens([Token(1, 0, ""), Token(2, 1, "ok")]).encode()
    batch = TokenBatch.decode(wire[:-2] + b"\xff\xfe")
    assert batch.texts() == ["", "\ufffd\ufffd"]
