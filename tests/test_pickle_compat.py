"""Pickles written before the compiled core moved into quill._core still load.

tests/data/pickles_0.1.0.pkl was written by quill 0.1.0 as built at commit ea0c0ab, when the
compiled modules were quill._tokens and quill._frames: one pickle per object and protocol
(2, 4 and 5), with each object's repr at the time. Loading them needs the aliases in
quill/__init__.py; the objects must equal freshly built ones.
"""

import pathlib
import pickle
import pickletools

import numpy as np
import pytest

import quill
from quill import frames
from quill.errors import DecodeError, LimitExceededError

DATA = pathlib.Path(__file__).parent / "data" / "pickles_0.1.0.pkl"
STORED = pickle.loads(DATA.read_bytes())


def expected_objects():
    return {
        "token": quill.Token(id=42, position=3, text="héllo", logprob=-0.5),
        "token_batch": quill.TokenBatch.from_tokens(
            [quill.Token(id=i, position=i, text=f"t{i}", logprob=-i / 4) for i in range(5)], sequence_id=9),
        "tensor": quill.Tensor.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3), name="x"),
        "tensor_bf16": quill.Tensor.zeros([2, 2], quill.DType.bfloat16(), name="kv"),
        "tensor_meta": quill.Tensor.zeros([4], quill.DType.int64()).meta,
        "dtype": quill.DType.float16(),
        "tensor_data_chunk": frames.TensorDataChunk(1, 3, False, b"abc"),
        "stream_frame": frames.StreamFrame(1, b"msg"),
        "tensor_frame": frames.TensorFrame(0x11, b"payload"),
        "decode_error": DecodeError("bad thing", offset=7),
        "limit_error": LimitExceededError("too big", offset=3),
    }


def globals_named(data: bytes) -> set[str]:
    """The module names a pickle refers to (its GLOBAL / STACK_GLOBAL operands)."""
    strings = [arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    return {s for s in strings if s.startswith("quill.")}


def test_the_stored_pickles_name_the_old_module_paths():
    named = set().union(*(globals_named(data) for data in STORED["objects"].values()))
    assert {"quill._tokens", "quill._frames"} <= named


@pytest.mark.parametrize("key", sorted(STORED["objects"]))
def test_old_pickle_loads_and_equals_a_fresh_object(key):
    name = key.rsplit(".", 1)[0]
    loaded = pickle.loads(STORED["objects"][key])
    fresh = expected_objects()[name]
    assert type(loaded) is type(fresh)
    assert repr(loaded) == STORED["reprs"][name] == repr(fresh)
    if isinstance(fresh, Exception):
        assert (loaded.message, loaded.offset) == (fresh.message, fresh.offset)
    elif isinstance(fresh, quill.Tensor):
        np.testing.assert_array_equal(loaded.to_numpy(dtype="float32"), fresh.to_numpy(dtype="float32"))
        assert loaded.meta == fresh.meta
    else:
        assert loaded == fresh


def test_new_pickles_round_trip_through_the_new_paths():
    for name, obj in expected_objects().items():
        data = pickle.dumps(obj, protocol=5)
        assert not globals_named(data) & {"quill._tokens", "quill._frames"}, name
        assert repr(pickle.loads(data)) == repr(obj)
