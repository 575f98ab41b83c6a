"""Regression tests for the minor defects of issue 9's outside review in the compiled modules.

The TokenBatch memory-safety defects have theirs in tests/test_token_storage.py and
tests/test_threads.py.
"""

import numpy as np
import pytest

from quill._core.tensor import export_dlpack
from quill._core.tokens import Token, TokenBatch
from quill.dtypes import DType
from quill.tensor import Tensor


def test_token_init_cannot_rewrite_a_token():
    # Token is documented immutable and hashable: re-running __init__ rewrote it in place, and
    # then `t in {t}` was False.
    token = Token(1, 0, "abc", -0.5)
    tokens = {token}
    with pytest.raises(TypeError, match="immutable"):
        token.__init__(2, 5, "zzz")
    assert (token.id, token.position, token.text, token.logprob) == (1, 0, "abc", -0.5)
    assert token in tokens and token == Token(1, 0, "abc", -0.5)


@pytest.mark.parametrize("make", [lambda: Token(3, 4, "x"), lambda: Token.with_text(3, "x", 4),
                                  lambda: TokenBatch.from_tokens([Token(3, 4, "x")])[0],
                                  lambda: Token.decode(Token(3, 4, "x").encode())])
def test_every_way_of_making_a_token_freezes_it(make):
    with pytest.raises(TypeError, match="immutable"):
        make().__init__(0, 0)


def test_a_bare_token_can_be_initialised_once():
    token = Token.__new__(Token)
    token.__init__(7, 8, "y")
    assert token == Token(7, 8, "y")
    with pytest.raises(TypeError, match="immutable"):
        token.__init__(7, 8, "z")


@pytest.mark.parametrize("data, shape, dtype", [
    (bytearray(3), (2, 2), DType.uint8()),        # short: a consumer would read past the end
    (bytearray(17), (2, 2), DType.float32()),     # long
    (bytearray(0), (1,), DType.float64()),
    (bytearray(8), (), DType.float32()),
])
def test_dlpack_export_checks_the_buffer_length(data, shape, dtype):
    with pytest.raises(ValueError, match=f"data holds {len(data)} bytes but shape"):
        export_dlpack(data, shape, dtype)
    with pytest.raises(ValueError, match="but shape"):
        export_dlpack(data, shape, dtype, max_version=(1, 0))


def test_dlpack_export_refuses_negative_and_overflowing_shapes():
    with pytest.raises(ValueError, match="negative"):
        export_dlpack(bytearray(4), (-1, -4), DType.uint8())
    with pytest.raises(ValueError, match="more than 2\\*\\*64-1 bytes"):
        export_dlpack(bytearray(4), (2**62, 2**62), DType.uint8())


def test_dlpack_export_of_exact_buffers_still_works():
    assert np.from_dlpack(Tensor.from_numpy(np.arange(6, dtype=np.int32).reshape(2, 3))).tolist() == [
        [0, 1, 2], [3, 4, 5]]
    assert type(export_dlpack(bytearray(0), (0, 5), DType.float32())).__name__ == "PyCapsule"
