"""Regression tests for bad inputs found by the fuzz targets (tests/fuzz/) and the sanitizer runs."""

import pytest

from quill.errors import DecodeError, ProblemDetails


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
