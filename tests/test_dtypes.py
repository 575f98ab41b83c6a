"""DType registry: codes, sizes, names, numpy mapping, identity, pickling."""

import copy
import pickle

import numpy as np
import pytest

from quill import DType

# (constructor, name, wire code, element size, is_float, is_integer, is_signed, numpy dtype)
TABLE = [
    (DType.float32, "float32", 1, 4, True, False, True, np.float32),
    (DType.float16, "float16", 2, 2, True, False, True, np.float16),
    (DType.bfloat16, "bfloat16", 3, 2, True, False, True, None),
    (DType.float64, "float64", 4, 8, True, False, True, np.float64),
    (DType.int8, "int8", 5, 1, False, True, True, np.int8),
    (DType.int32, "int32", 6, 4, False, True, True, np.int32),
    (DType.int64, "int64", 7, 8, False, True, True, np.int64),
    (DType.uint8, "uint8", 8, 1, False, True, False, np.uint8),
    (DType.bool_, "bool", 9, 1, False, False, False, np.bool_),
]


@pytest.mark.parametrize("ctor,name,code,size,is_float,is_int,is_signed,np_type", TABLE)
def test_registry(ctor, name, code, size, is_float, is_int, is_signed, np_type):
    d = ctor()
    assert d is ctor()
    assert (d.name, d.code, d.element_size) == (name, code, size)
    assert (d.is_float(), d.is_integer(), d.is_signed()) == (is_float, is_int, is_signed)
    assert repr(d) == f"DType.{name}" and str(d) == name
    assert DType.from_code(code) is d
    assert DType.from_name(name) is d
    assert pickle.loads(pickle.dumps(d)) is d
    assert copy.deepcopy(d) is d
    if np_type is not None:
        assert d.numpy_dtype == np.dtype(np_type)
        assert DType.from_numpy(np_type) is d
        assert DType.from_numpy(np.dtype(np_type).newbyteorder(">")) is d


def test_equality_and_hash():
    assert DType.float32() == DType.from_name("float32")
    assert DType.float32() != DType.float64()
    assert DType.float32() != "float32"
    assert len({DType.from_code(c) for c in range(1, 10)} | {DType.float32()}) == 9


def test_bfloat16_numpy_via_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert DType.bfloat16().numpy_dtype == np.dtype(ml_dtypes.bfloat16)
    assert DType.from_numpy(ml_dtypes.bfloat16) is DType.bfloat16()


def test_bfloat16_without_ml_dtypes_says_how_to_fix(monkeypatch):
    import quill.dtypes

    monkeypatch.setattr(quill.dtypes, "_ml_dtypes_bfloat16", lambda: None)
    with pytest.raises(TypeError, match="ml_dtypes"):
        DType.bfloat16().numpy_dtype


def test_bool_alias():
    assert DType.from_name("bool_") is DType.bool_()


@pytest.mark.parametrize("code", [0, 10, 255, -1, "1", None, 1.0 + 0.5])
def test_unknown_code(code):
    with pytest.raises(ValueError, match="unknown dtype code"):
        DType.from_code(code)


@pytest.mark.parametrize("name", ["float", "f4", "", "complex64", None])
def test_unknown_name(name):
    with pytest.raises(ValueError, match="unknown dtype name"):
        DType.from_name(name)


@pytest.mark.parametrize("np_type", [np.complex64, np.uint32, np.int16, np.float128 if hasattr(np, "float128") else np.complex128, "U4", object])
def test_unsupported_numpy(np_type):
    with pytest.raises(ValueError, match="no Quill equivalent"):
        DType.from_numpy(np_type)


def test_not_a_numpy_dtype():
    with pytest.raises(ValueError, match="not a numpy dtype"):
        DType.from_numpy("not-a-dtype-at-all")
