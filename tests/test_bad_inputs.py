"""Regression tests for bad inputs found by the fuzz targets (tests/fuzz/) and the sanitizer runs."""

import pytest

from quill.errors import DecodeError, ProblemDetails


@pytest.mark.parametrize("body", [b"[" * 5000, b'{"a":' * 5000, b'{"type":"t","title":"x","status":1,"e":' + b"[" * 3000])
def test_problem_details_deep_nesting_is_a_decode_error(body):
    # fuzz_problem_details: json's recursion guard escaped ProblemDetails.from_json as RecursionError.
    with pytest.raises(DecodeError, match="too deeply"):
        ProblemDetails.from_json(body)
