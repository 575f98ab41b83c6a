"""quill.tensor: TensorMeta (fields, checks, wire codec) and Tensor (numpy, buffers, DLPack, pickle).

Independent references: numpy (views, astype, from_dlpack), ml_dtypes (bfloat16), the DLPack
structs as laid out in dlpack.h (read back with ctypes), the pickle module, and torch when it is
installed. Golden wire vectors are in tests/interop/test_tensor_meta_vectors.py.
"""

import array
import copy
import ctypes
import gc
import mmap
import pickle
import sys
import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quill.dtypes import DType
from quill.errors import DecodeError, EncodeError, LimitExceededError
from quill.tensor import Shape, Tensor, TensorMeta

BF16 = np.dtype(ml_dtypes.bfloat16)
# numpy 2 passes copy= to __array__ (copy=False: never copy; numpy 1: copy only if needed)
ARRAY_COPY_KEYWORD = np.lib.NumpyVersion(np.__version__) >= "2.0.0"
# numpy 2.1 asks for versioned DLPack capsules (max_version): writable arrays, a read-only flag,
# copy= and device=; numpy 1 takes legacy capsules and makes every imported array read-only
VERSIONED_DLPACK = np.lib.NumpyVersion(np.__version__) >= "2.1.0"
U64_MAX = 2**64 - 1
# quill dtype name -> numpy dtype, for all nine dtypes
NUMPY_OF = {
    "float32": np.dtype(np.float32), "float64": np.dtype(np.float64), "float16": np.dtype(np.float16),
    "bfloat16": BF16, "int8": np.dtype(np.int8), "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64), "uint8": np.dtype(np.uint8), "bool": np.dtype(np.bool_),
}
NAMES = list(NUMPY_OF)


def sample(name, shape=(2, 3)):
    """A deterministic array of ``name`` with distinct, exactly representable values."""
    count = int(np.prod(shape))
    if name == "bool":
        return (np.arange(count) % 3 == 0).reshape(shape)
    return (np.arange(count) - count // 2).astype(np.float32).astype(NUMPY_OF[name]).reshape(shape) \
        if name not in ("uint8",) else np.arange(count, dtype=np.uint8).reshape(shape)


def bits(a):
    return a.view(f"u{a.dtype.itemsize}")


@pytest.fixture
def without_ml_dtypes(monkeypatch):
    """Make ``import ml_dtypes`` fail, as on a machine without the bf16 extra."""
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)


# ==========================================================================================
# TensorMeta
# ==========================================================================================

def test_shape_is_a_tuple_that_prints_like_the_seed_list():
    shape = TensorMeta([2, 2], "float32").shape
    assert isinstance(shape, tuple) and type(shape) is Shape
    assert f"{shape}" == "[2, 2]" and repr(shape) == "[2, 2]"
    assert shape == (2, 2) and shape == [2, 2] and [2, 2] == shape and (2, 2) == shape
    assert shape != (2, 3) and shape != [2] and shape != "x" and not (shape != [2, 2])
    assert hash(shape) == hash((2, 2)) and {shape: 1}[(2, 2)] == 1
    assert shape + (1,) == (2, 2, 1) and shape[1:] == (2,)
    assert np.zeros(shape).shape == (2, 2)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(shape, protocol))
        assert type(again) is Shape and again == (2, 2)


def test_meta_fields():
    meta = TensorMeta([2, 3, 4], DType.float16(), name="w")
    assert meta.shape == (2, 3, 4) and isinstance(meta.shape, tuple)
    assert (meta.dtype, meta.name, meta.device) == (DType.float16(), "w", "cpu")
    assert (meta.ndim, meta.num_elements, meta.size_bytes) == (3, 24, 48)
    scalar = TensorMeta((), "int64", device="cuda")
    assert (scalar.ndim, scalar.num_elements, scalar.size_bytes, scalar.device) == (0, 1, 8, "cuda")
    assert TensorMeta((0, 5), "float32").size_bytes == 0


@pytest.mark.parametrize("spelling", [DType.int32(), "int32", np.int32, np.dtype("<i4"), "i4"])
def test_meta_dtype_spellings(spelling):
    assert TensorMeta([1], spelling).dtype is DType.int32()


def test_meta_shape_spellings():
    assert TensorMeta(5, "uint8").shape == (5,)
    assert TensorMeta(np.array([2, 3]), "uint8").shape == (2, 3)
    assert TensorMeta((np.int64(4),), "uint8").shape == (4,)
    assert TensorMeta([U64_MAX], "uint8").size_bytes == U64_MAX


def test_meta_empty_name_is_no_name():
    assert TensorMeta([1], "uint8", name="").name is None
    assert TensorMeta([1], "uint8", name="") == TensorMeta([1], "uint8")


@pytest.mark.parametrize("shape,error,message", [
    ([-1], ValueError, "dimension 0 of shape \\(-1,\\) is negative"),
    ([2, -3], ValueError, "dimension 1 .* is negative"),
    ([2**64], ValueError, "does not fit the wire's u64"),
    ([1.5], TypeError, "dimension 0 .* is not an integer"),
    ([True], TypeError, "is not an integer"),
    (["3"], TypeError, "is not an integer"),
    (None, TypeError, "shape must be a sequence"),
    ([2**32, 2**32], ValueError, "holds 73786976294838206464 bytes, more than the 2\\*\\*64-1"),
    ([2**62], ValueError, "more than the 2\\*\\*64-1"),  # 2**62 float32 elements = 2**64 bytes
])
def test_meta_rejects_bad_shapes(shape, error, message):
    with pytest.raises(error, match=message):
        TensorMeta(shape, "float32")


def test_meta_rejects_bad_dtype_name_device():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        TensorMeta([1], "float8")
    with pytest.raises(ValueError, match="unknown dtype"):
        TensorMeta([1], np.complex64)
    with pytest.raises(TypeError, match="dtype is required"):
        TensorMeta([1], None)
    with pytest.raises(TypeError, match="name must be a str"):
        TensorMeta([1], "uint8", name=b"w")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        TensorMeta([1], "uint8", device="gpu")


def test_meta_equality_hash_repr_pickle():
    meta = TensorMeta([2, 3], "float32", name="w")
    same = TensorMeta((2, 3), DType.float32(), "w")
    assert meta == same and hash(meta) == hash(same)
    for other in (TensorMeta([3, 2], "float32", "w"), TensorMeta([2, 3], "float64", "w"),
                  TensorMeta([2, 3], "float32"), TensorMeta([2, 3], "float32", "w", device="cuda")):
        assert meta != other
    assert meta != (2, 3)
    assert repr(meta) == "TensorMeta(shape=[2, 3], dtype=float32, name='w')"
    assert repr(TensorMeta((), "bool", device="cuda")) == "TensorMeta(shape=[], dtype=bool, device='cuda')"
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(meta, protocol)) == meta
    assert copy.deepcopy(meta) == meta
    with pytest.raises(AttributeError):
        meta.shape = (1,)


def test_meta_encode_limits_are_ours():
    """**Ours**: the reference wraps ndim (u8) and name_len (u16); we refuse to encode."""
    assert TensorMeta([1] * 255, "uint8").encode()[0] == 255
    with pytest.raises(EncodeError, match="at most 255 dimensions, this shape has 256"):
        TensorMeta([1] * 256, "uint8").encode()
    longest = TensorMeta([1], "uint8", name="a" * 65535)
    assert TensorMeta.decode(longest.encode()) == longest
    with pytest.raises(EncodeError, match="65536 UTF-8 bytes"):
        TensorMeta([1], "uint8", name="a" * 65536).encode()
    with pytest.raises(EncodeError, match="65536 UTF-8 bytes"):
        TensorMeta([1], "uint8", name="\u00e9" * 32768).encode()  # 32768 chars, 65536 bytes
    with pytest.raises(EncodeError, match="not valid Unicode"):
        TensorMeta([1], "uint8", name="a\ud800").encode()


def meta_bytes(shape, code=1, device=0, byte_size=None, name=b""):
    """A hand-built TENSOR_META payload (docs/protocol.md section 4), independent of the encoder."""
    if byte_size is None:
        byte_size = int(np.prod(shape, dtype=object)) * {1: 4, 2: 2, 3: 2, 4: 8, 5: 1, 6: 4, 7: 8, 8: 1, 9: 1}[code]
    out = bytes([len(shape)]) + b"".join(d.to_bytes(8, "little") for d in shape)
    return out + bytes([code, device]) + byte_size.to_bytes(8, "little") + len(name).to_bytes(2, "little") + name


def test_decode_hand_built_meta():
    meta = TensorMeta.decode(meta_bytes([3, 4], code=6, device=1, name="héllo".encode()))
    assert meta == TensorMeta([3, 4], "int32", name="héllo", device="cuda")
    assert meta.size_bytes == 48 and meta.num_elements == 12


@pytest.mark.parametrize("buffer_type", [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, np.uint8)])
def test_decode_accepts_any_buffer(buffer_type):
    wire = TensorMeta([2], "int8", name="n").encode()
    assert TensorMeta.decode(buffer_type(wire)) == TensorMeta([2], "int8", name="n")
    assert TensorMeta.decode(memoryview(b"xx" + wire)[2:]) == TensorMeta([2], "int8", name="n")


def test_decode_rejects_non_buffers():
    with pytest.raises(TypeError):
        TensorMeta.decode("0001")
    with pytest.raises(TypeError):
        TensorMeta.decode(None)
    with pytest.raises(BufferError):
        TensorMeta.decode(memoryview(meta_bytes([1]) * 2)[::2])


def test_decode_size_limit_is_checked_before_allocation():
    # 2**64-1 bytes declared: refused by the limit, never allocated
    huge = meta_bytes([U64_MAX], code=8)
    with pytest.raises(LimitExceededError, match=f"tensor of {U64_MAX} bytes exceeds the limit of 1024") as info:
        TensorMeta.decode(huge, max_bytes=1024)
    assert info.value.offset == 11  # the byte_size field
    assert isinstance(info.value, DecodeError)
    # without a limit it is only metadata: decoding allocates nothing of that size
    assert TensorMeta.decode(huge).size_bytes == U64_MAX
    assert TensorMeta.decode(meta_bytes([256]), max_bytes=1024).size_bytes == 1024
    with pytest.raises(LimitExceededError):
        TensorMeta.decode(meta_bytes([257]), max_bytes=1024)
    assert TensorMeta.decode(meta_bytes([0, 7]), max_bytes=0).size_bytes == 0
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        TensorMeta.decode(meta_bytes([1]), max_bytes=-1)


@pytest.mark.parametrize("shape,code,offset", [
    ([2**62], 1, 1),            # 2**62 float32 elements: 2**64 bytes, overflows at dimension 0
    ([2**32, 2**32], 8, 9),     # 2**64 uint8 elements: overflows at dimension 1
    ([3, 2**63, 1], 8, 9),
    ([U64_MAX, U64_MAX], 5, 9),
])
def test_decode_detects_u64_overflow(shape, code, offset):
    with pytest.raises(DecodeError, match="holds more than 2\\*\\*64-1 bytes") as info:
        TensorMeta.decode(meta_bytes(shape, code=code, byte_size=0))
    assert info.value.offset == offset


def test_decode_zero_dimension_makes_any_shape_empty():
    meta = TensorMeta.decode(meta_bytes([U64_MAX, 0, U64_MAX], code=7))
    assert (meta.num_elements, meta.size_bytes) == (0, 0)
    assert meta == TensorMeta([U64_MAX, 0, U64_MAX], "int64")


@pytest.mark.parametrize("code", [0, 10, 200, 255])
def test_decode_unknown_dtype_code(code):
    with pytest.raises(DecodeError, match=f"unknown dtype code {code}.*valid codes are 1 \\(float32\\)") as info:
        TensorMeta.decode(meta_bytes([2, 2], code=code, byte_size=0))
    assert info.value.offset == 17


@pytest.mark.parametrize("device", [2, 7, 255])
def test_decode_unknown_device_code(device):
    with pytest.raises(DecodeError, match=f"unknown device code {device}") as info:
        TensorMeta.decode(meta_bytes([1], device=device))
    assert info.value.offset == 10


def test_decode_every_truncation_of_a_valid_meta_fails():
    wire = meta_bytes([5, 6], code=4, name=b"layer.0")
    for cut in range(len(wire)):
        with pytest.raises(DecodeError) as info:
            TensorMeta.decode(wire[:cut])
        assert 0 <= info.value.offset <= cut


metas = st.builds(
    TensorMeta,
    shape=st.one_of(
        st.lists(st.integers(0, 50), max_size=6),
        st.lists(st.integers(0, 2**20), max_size=3),
        st.lists(st.just(1), min_size=200, max_size=255),
    ),
    dtype=st.sampled_from(NAMES),
    name=st.one_of(st.none(), st.text(max_size=40)),
    device=st.sampled_from(["cpu", "cuda"]),
)


@settings(max_examples=300, deadline=None)
@given(metas)
def test_meta_round_trip_property(meta):
    wire = meta.encode()
    assert TensorMeta.decode(wire) == meta
    assert len(wire) == 1 + 8 * meta.ndim + 12 + len((meta.name or "").encode())
    with pytest.raises(DecodeError):
        TensorMeta.decode(wire + b"\0")


def _valid_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.binary(max_size=64),
    st.tuples(metas, st.integers(0, 200), st.integers(1, 255)).map(
        lambda m: bytes(b ^ (m[2] if i == m[1] % max(1, len(w)) else 0)
                        for w in [m[0].encode()] for i, b in enumerate(w))),
))
def test_decode_garbage_property(data):
    """Random and bit-flipped input: either DecodeError inside the input, or a meta that encodes
    back to exactly these bytes (the format has one encoding per meta, except that invalid
    UTF-8 in the name is replaced)."""
    try:
        meta = TensorMeta.decode(data, max_bytes=2**40)
    except DecodeError as exc:
        assert exc.offset is not None and 0 <= exc.offset <= len(data)
        return
    name_bytes = data[1 + 8 * data[0] + 12:]
    if _valid_utf8(name_bytes):
        assert meta.encode() == data
    assert meta.size_bytes <= 2**40


# ==========================================================================================
# Tensor: construction and numpy
# ==========================================================================================

@pytest.mark.parametrize("name", NAMES)
def test_from_numpy_every_dtype_zero_copy(name):
    a = sample(name)
    t = Tensor.from_numpy(a, name="x")
    assert t.dtype is DType.from_name(name)
    assert (t.shape, t.ndim, t.num_elements, t.size_bytes, len(t), t.name) == ((2, 3), 2, 6, 6 * a.itemsize, 2, "x")
    assert t.meta == TensorMeta((2, 3), name, "x")
    back = t.to_numpy()
    assert back.dtype == a.dtype and back.shape == a.shape
    assert np.shares_memory(back, a)
    np.testing.assert_array_equal(bits(back), bits(a))
    assert t.tobytes() == a.tobytes()


def test_memory_sharing_both_ways():
    a = np.zeros(4, np.float32)
    t = Tensor.from_numpy(a)
    a[1] = 2.5
    view = t.to_numpy()
    assert view[1] == 2.5 and view.flags.writeable
    view[2] = -1.0
    assert a[2] == -1.0
    del a
    gc.collect()
    assert t.to_numpy().tolist() == [0.0, 2.5, -1.0, 0.0]  # the tensor keeps the memory alive


@pytest.mark.parametrize("make", [
    lambda: np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],     # strided
    lambda: np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
    lambda: np.arange(10, dtype=np.int32)[::-1],                       # negative stride
    lambda: np.arange(6, dtype=">f4").reshape(2, 3),                   # big-endian
    lambda: np.arange(6, dtype=">i8")[::2],                            # big-endian and strided
    lambda: np.arange(4, dtype=np.float32).astype(BF16).astype(BF16.newbyteorder(">")),
])
def test_from_numpy_copies_only_when_needed(make):
    a = make()
    t = Tensor.from_numpy(a)
    back = t.to_numpy()
    assert not np.shares_memory(back, a)
    assert back.shape == a.shape and back.flags.c_contiguous
    np.testing.assert_array_equal(back.astype(np.float64), a.astype(np.float64))
    little = a.astype(a.dtype.newbyteorder("<"))
    assert t.tobytes() == np.ascontiguousarray(little).tobytes()


def test_from_numpy_scalar_empty_and_readonly():
    t = Tensor.from_numpy(np.array(2.5))
    assert (t.shape, t.dtype, t.to_numpy()[()]) == ((), DType.float64(), 2.5)
    with pytest.raises(TypeError, match="len\\(\\) of a 0-d tensor"):
        len(t)
    empty = Tensor.from_numpy(np.zeros((0, 3), np.int8))
    assert (empty.shape, empty.size_bytes, len(empty)) == ((0, 3), 0, 0)
    assert empty.to_numpy().shape == (0, 3)
    frozen = np.arange(3, dtype=np.int8)
    frozen.flags.writeable = False
    view = Tensor.from_numpy(frozen).to_numpy()
    assert np.shares_memory(view, frozen) and not view.flags.writeable


@pytest.mark.parametrize("bad,error,message", [
    ([1, 2, 3], TypeError, "expects a numpy.ndarray, got list"),
    (np.array([object()]), TypeError, "dtype object"),
    (np.zeros(2, np.complex64), TypeError, "dtype complex64"),
    (np.zeros(2, np.uint16), TypeError, "dtype uint16"),
    (np.zeros(2, np.int16), TypeError, "dtype int16"),
    (np.zeros(2, np.longdouble), TypeError, "dtype float128"),
    (np.array(["ab"]), TypeError, "dtype <U2"),
    (np.zeros(2, "datetime64[s]"), TypeError, "datetime64"),
    (np.zeros(2, [("a", "f4")]), TypeError, "cannot make a tensor"),
    (np.zeros(2, ml_dtypes.float8_e4m3fn), TypeError, "float8_e4m3fn"),
])
def test_from_numpy_rejects_unsupported(bad, error, message):
    with pytest.raises(error, match=message):
        Tensor.from_numpy(bad)


def test_from_numpy_checks_the_name():
    with pytest.raises(TypeError, match="name must be a str or None, got int"):
        Tensor.from_numpy(np.zeros(2), name=3)
    assert Tensor.from_numpy(np.zeros(2), name="").name is None


def test_from_numpy_subclasses_become_plain_views(tmp_path):
    mapped = np.memmap(tmp_path / "weights.bin", dtype=np.float32, mode="w+", shape=(4, 2))
    t = Tensor.from_numpy(mapped, name="mapped")
    mapped[3, 1] = 9.0
    back = t.to_numpy()
    assert type(back) is np.ndarray and back.shape == (4, 2) and back[3, 1] == 9.0
    assert np.shares_memory(back, mapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        matrix = np.matrix([[1, 2], [3, 4]], dtype=np.int8)  # reshape(-1) keeps it 2-d
    assert type(Tensor.from_numpy(matrix).to_numpy()) is np.ndarray
    assert Tensor.from_bytes(matrix, [4], "int8").to_numpy().tolist() == [1, 2, 3, 4]


def test_bool_tensors_are_one_byte_zero_or_one():
    t = Tensor.from_numpy(np.array([True, False, True]))
    assert t.tobytes() == b"\x01\x00\x01" and t.size_bytes == 3
    back = Tensor.from_bytes(b"\x00\x01", [2], DType.bool_()).to_numpy()
    assert back.dtype == np.bool_ and back.tolist() == [False, True]


# -- from_bytes and zeros -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "numpy-uint8", "numpy-f32", "array"])
def test_from_bytes_any_buffer_without_copy(kind):
    raw = np.arange(4, dtype="<f4").tobytes()
    buffer = {
        "bytes": lambda: raw,
        "bytearray": lambda: bytearray(raw),
        "memoryview": lambda: memoryview(bytearray(b"\xff" + raw))[1:],
        "numpy-uint8": lambda: np.frombuffer(bytearray(raw), np.uint8),
        "numpy-f32": lambda: np.arange(4, dtype="<f4").reshape(2, 2),
        "array": lambda: array.array("f", [0, 1, 2, 3]),
    }[kind]()
    t = Tensor.from_bytes(buffer, [2, 2], "float32", name="b")
    assert t.to_numpy().tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert np.shares_memory(t.to_numpy(), np.frombuffer(buffer, np.uint8))
    assert t.to_numpy().flags.writeable == (kind != "bytes")


def test_from_bytes_over_mmap_shares_and_pins():
    region = mmap.mmap(-1, 8)
    t = Tensor.from_bytes(region, [2], "int32")
    region[:4] = (7).to_bytes(4, "little")
    assert t.to_numpy().tolist() == [7, 0]
    with pytest.raises(BufferError):
        region.close()  # the tensor keeps the mapping exported
    del t
    gc.collect()
    region.close()


def test_from_bytes_keeps_bytearray_pinned():
    buffer = bytearray(8)
    t = Tensor.from_bytes(buffer, [8], "uint8")
    with pytest.raises(BufferError):
        buffer.extend(b"x")
    del t
    buffer.extend(b"x")


@pytest.mark.parametrize("size", [15, 17, 0])
def test_from_bytes_size_mismatch_names_both_sizes(size):
    with pytest.raises(ValueError, match=f"needs 16 bytes, but the data has {size} bytes"):
        Tensor.from_bytes(bytes(size), [2, 2], "float32")


@pytest.mark.parametrize("bad,error,message", [
    (12345, TypeError, "bytes-like object .* got int"),
    ("abcd", TypeError, "got str"),
    ([0, 0, 0, 0], TypeError, "got list"),
    (None, TypeError, "got NoneType"),
    (np.array([object()] * 4), TypeError, "object array"),
    (np.zeros((4, 2), np.uint8)[:, 0], ValueError, "non-contiguous numpy array"),
    (memoryview(bytes(8))[::2], ValueError, "C-contiguous"),
])
def test_from_bytes_rejects_non_buffers(bad, error, message):
    with pytest.raises(error, match=message):
        Tensor.from_bytes(bad, [4], "uint8")


def test_tensor_constructor_checks_meta():
    meta = TensorMeta([2], "int8", device="cuda")
    t = Tensor(meta, b"\x01\x02")
    assert t.meta is meta and t.device == "cuda"
    with pytest.raises(TypeError, match="meta must be a TensorMeta"):
        Tensor((2,), b"\x01\x02")


def test_zeros():
    t = Tensor.zeros([3, 4], DType.float32(), name="zeros")
    assert (t.shape, t.dtype, t.name, t.size_bytes) == ((3, 4), DType.float32(), "zeros", 48)
    assert not t.to_numpy().any() and t.to_numpy().flags.writeable
    t.to_numpy()[0, 0] = 5
    assert t.to_numpy()[0, 0] == 5
    assert Tensor.zeros((), "bool").to_numpy()[()] == np.False_
    with pytest.raises(ValueError, match="negative"):
        Tensor.zeros([-1], "int8")
    with pytest.raises(MemoryError, match="larger than this machine can address"):
        Tensor.zeros([2**63], "int8")
    with pytest.raises(ValueError, match="more than the 2\\*\\*64-1"):
        Tensor.zeros([2**40, 2**40], "int8")


# -- to_numpy / astype / conversions --------------------------------------------------------

def test_bfloat16_to_numpy_is_ml_dtypes():
    a = np.array([1.5, -2.0, 3.0e38], dtype=BF16)
    back = Tensor.from_numpy(a).to_numpy()
    assert back.dtype == BF16 and np.shares_memory(back, a)


def test_bfloat16_without_ml_dtypes(without_ml_dtypes):
    t = Tensor.from_bytes(np.array([0x3FC0, 0xC000], np.uint16).tobytes(), [2], "bfloat16", name="b")
    with pytest.raises(TypeError, match="ml_dtypes.*to_numpy\\(dtype='float32'\\).*\\.data"):
        t.to_numpy()
    with pytest.raises(TypeError, match="to_numpy\\(dtype='float32'\\)"):
        np.asarray(t)
    assert t.to_numpy(dtype="float32").tolist() == [1.5, -2.0]
    assert np.asarray(t, dtype=np.float32).tolist() == [1.5, -2.0]
    assert bytes(t.data) == t.tobytes() == bytes.fromhex("c03f00c0")
    assert repr(t) == "Tensor(shape=[2], dtype=bfloat16, name='b', data=[1.5, -2.0])"
    halves = Tensor.from_numpy(np.array([1.0, 0.1], np.float32)).astype("bfloat16")
    assert halves.dtype is DType.bfloat16() and halves.tobytes() == bytes.fromhex("803fcd3d")
    assert halves.astype("float64").to_numpy().tolist() == [1.0, float(np.float32(0.10009765625))]


CONVERSION_VALUES = np.array([0.0, -0.0, 1.0, 0.1, -2.5, 65504.0, 70000.0, 1e-8, 3.0e38, np.inf, -np.inf, np.nan])


@pytest.mark.parametrize("source,target", [
    ("float32", "bfloat16"), ("float32", "float16"), ("float64", "bfloat16"), ("float64", "float16"),
    ("bfloat16", "float32"), ("float16", "float32"), ("bfloat16", "float64"), ("float16", "float64"),
    ("float16", "bfloat16"), ("bfloat16", "float16"),
])
def test_half_conversions_match_numpy_and_ml_dtypes(source, target):
    with np.errstate(all="ignore"):
        a = CONVERSION_VALUES.astype(NUMPY_OF[source])
        # references: numpy for float16, ml_dtypes for bfloat16, both via float32 which is exact
        # for half sources and matches single rounding for the float32 sources used here
        expected = a.astype(np.float32).astype(NUMPY_OF[target]) if source in ("float16", "bfloat16") \
            else a.astype(NUMPY_OF[target])
    t = Tensor.from_numpy(a, name="v")
    converted = t.astype(target)
    assert converted.dtype is DType.from_name(target) and converted.name == "v"
    np.testing.assert_array_equal(bits(converted.to_numpy()), bits(expected))
    np.testing.assert_array_equal(bits(t.to_numpy(dtype=target)), bits(expected))


def test_float64_to_half_rounds_once():
    # 1 + 2**-8 + 2**-30: float64 -> float32 rounds it to 1 + 2**-8 (a bfloat16 tie, which rounds
    # to even: 1.0); rounding the float64 once gives 1 + 2**-7.
    value = np.array([1 + 2**-8 + 2**-30])
    assert Tensor.from_numpy(value).astype("bfloat16").to_numpy(dtype="float64")[0] == 1 + 2**-7
    assert value.astype(np.float32).astype(BF16).astype(np.float64)[0] == 1.0  # ml_dtypes' double rounding


@pytest.mark.parametrize("source,target", [
    ("int32", "bfloat16"), ("uint8", "float16"), ("bool", "bfloat16"), ("int8", "float16"),
    ("bfloat16", "int32"), ("float16", "int8"), ("bfloat16", "bool"),
    ("float32", "int64"), ("int64", "float64"), ("uint8", "bool"), ("bool", "int32"), ("float64", "float32"),
])
def test_other_conversions_match_numpy(source, target):
    a = sample(source, (3, 4))
    expected = a.astype(np.float32).astype(NUMPY_OF[target]) if "16" in source + target else a.astype(NUMPY_OF[target])
    converted = Tensor.from_numpy(a).astype(DType.from_name(target))
    assert converted.shape == (3, 4)
    np.testing.assert_array_equal(bits(converted.to_numpy()), bits(expected))


def test_astype_same_dtype_is_identity_and_to_numpy_same_dtype_is_a_view():
    a = np.arange(3, dtype=np.int32)
    t = Tensor.from_numpy(a)
    assert t.astype("int32") is t
    assert np.shares_memory(t.to_numpy(dtype=np.int32), a)
    assert not np.shares_memory(t.to_numpy(dtype="int64"), a)
    with pytest.raises(ValueError, match="unknown dtype"):
        t.astype("complex64")


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(st.sampled_from([NUMPY_OF[n] for n in NAMES if n != "bfloat16"]),
                  hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_numpy_round_trip_property(a):
    t = Tensor.from_numpy(a)
    back = t.to_numpy()
    np.testing.assert_array_equal(bits(back), bits(np.ascontiguousarray(a)))
    assert t == Tensor.from_bytes(t.tobytes(), a.shape, a.dtype)
    if a.ndim:  # a non-contiguous source is copied, bit for bit
        flipped = a[::-1]
        np.testing.assert_array_equal(bits(Tensor.from_numpy(flipped).to_numpy()), bits(flipped))


# -- data, equality, repr -------------------------------------------------------------------

def test_data_memoryview():
    a = np.arange(6, dtype=np.int16).astype(np.int32).reshape(2, 3)
    t = Tensor.from_numpy(a)
    data = t.data
    assert (data.format, data.ndim, data.nbytes, data.readonly, data.c_contiguous) == ("B", 1, 24, True, True)
    assert np.shares_memory(np.frombuffer(data, np.uint8), a)
    assert bytes(data[4:8]) == (1).to_bytes(4, "little")


def test_equality_is_meta_and_bits():
    a = np.array([1.0, np.nan, 0.0], np.float32)
    t = Tensor.from_numpy(a, name="t")
    assert t == Tensor.from_bytes(a.tobytes(), [3], "float32", name="t")  # NaN bits equal
    assert t != Tensor.from_numpy(a, name="u")
    assert t != Tensor.from_numpy(a.reshape(3, 1), name="t")
    assert t != Tensor.from_numpy(np.array([1.0, np.nan, -0.0], np.float32), name="t")
    assert t != a.tolist() and (t == a.tolist()) is False
    big = np.ones(1 << 18, np.float32)
    assert Tensor.from_numpy(big) == Tensor.from_numpy(big.copy())
    big2 = big.copy()
    big2[-1] = 2
    assert Tensor.from_numpy(big) != Tensor.from_numpy(big2)
    with pytest.raises(TypeError, match="unhashable"):
        hash(t)


def test_repr():
    t = Tensor.from_numpy(np.arange(10, dtype=np.float32).reshape(2, 5), name="w")
    assert repr(t) == "Tensor(shape=[2, 5], dtype=float32, name='w', data=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, ...])"
    assert repr(Tensor.zeros((0,), "int8")) == "Tensor(shape=[0], dtype=int8, data=[])"
    assert repr(Tensor.from_bytes(b"\x01", (), "bool", device="cuda")) == \
        "Tensor(shape=[], dtype=bool, device='cuda', data=[True])"
    assert repr(Tensor.from_numpy(np.array([0.1, 1], BF16))) == \
        "Tensor(shape=[2], dtype=bfloat16, data=[0.100097656, 1.0])"
    assert repr(Tensor.from_numpy(np.array([0.1, 1], np.float16))) == "Tensor(shape=[2], dtype=float16, data=[0.1, 1.0])"


def test_seed_readme_tensor_example():
    arr = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    tensor = Tensor.from_numpy(arr, name="input")
    assert (tensor.shape, str(tensor.dtype), tensor.num_elements, tensor.size_bytes) == ((2, 2), "float32", 4, 16)
    np.testing.assert_array_equal(tensor.to_numpy(), arr)
    zeros = Tensor.zeros([3, 4], DType.float32(), name="zeros")
    assert zeros.shape == (3, 4)
    tensor = Tensor.from_bytes(bytes(16), [2, 2], DType.float32())
    assert tensor.to_numpy().tolist() == [[0.0, 0.0], [0.0, 0.0]]


# ==========================================================================================
# __array__
# ==========================================================================================

def test_array_protocol():
    a = np.arange(4, dtype=np.int32)
    t = Tensor.from_numpy(a)
    assert np.shares_memory(np.asarray(t), a)
    assert np.shares_memory(np.array(t, copy=False), a)
    assert not np.shares_memory(np.array(t), a)
    converted = np.asarray(t, dtype=np.float64)
    assert converted.dtype == np.float64 and converted.tolist() == [0.0, 1.0, 2.0, 3.0]
    if ARRAY_COPY_KEYWORD:
        with pytest.raises(ValueError, match="needs a copy"):
            np.array(t, dtype=np.float64, copy=False)
    else:
        assert np.array(t, dtype=np.float64, copy=False).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert np.asarray(t, dtype=np.complex64).dtype == np.complex64
    assert (np.add(t, 1) == a + 1).all()


# ==========================================================================================
# DLPack
# ==========================================================================================

class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class DLManagedTensor(ctypes.Structure):
    pass


DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                            ("deleter", ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor)))]


class DLManagedTensorVersioned(ctypes.Structure):
    pass


DLManagedTensorVersioned._fields_ = [
    ("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("manager_ctx", ctypes.c_void_p),
    ("deleter", ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensorVersioned))),
    ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]

capsule_api = ctypes.pythonapi
capsule_api.PyCapsule_GetName.restype = ctypes.c_char_p
capsule_api.PyCapsule_GetName.argtypes = [ctypes.py_object]
capsule_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
capsule_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
capsule_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]


def open_capsule(capsule):
    name = capsule_api.PyCapsule_GetName(capsule)
    struct = DLManagedTensorVersioned if name == b"dltensor_versioned" else DLManagedTensor
    return name, struct.from_address(capsule_api.PyCapsule_GetPointer(capsule, name))


# quill dtype name -> (DLDataTypeCode, bits): kDLInt 0, kDLUInt 1, kDLFloat 2, kDLBfloat 4, kDLBool 6
DL_DTYPES = {"float32": (2, 32), "float64": (2, 64), "float16": (2, 16), "bfloat16": (4, 16),
             "int8": (0, 8), "int32": (0, 32), "int64": (0, 64), "uint8": (1, 8), "bool": (6, 8)}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("max_version", [None, (1, 0), (1, 3)])
def test_dlpack_struct_fields(name, max_version):
    a = sample(name, (2, 3))
    t = Tensor.from_numpy(a)
    capsule = t.__dlpack__(max_version=max_version)
    capsule_name, managed = open_capsule(capsule)
    assert capsule_name == (b"dltensor" if max_version is None else b"dltensor_versioned")
    if max_version is not None:
        assert (managed.major, managed.minor, managed.flags) == (1, 0, 0)
    dl = managed.dl_tensor
    assert dl.data == a.ctypes.data and dl.byte_offset == 0
    assert (dl.device.device_type, dl.device.device_id) == (1, 0) == t.__dlpack_device__()
    assert (dl.dtype.code, dl.dtype.bits, dl.dtype.lanes) == (*DL_DTYPES[name], 1)
    assert (dl.ndim, dl.shape[0], dl.shape[1], dl.strides[0], dl.strides[1]) == (2, 2, 3, 3, 1)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "bfloat16"])
def test_np_from_dlpack_shares_memory(name):
    a = sample(name, (3, 2))
    back = np.from_dlpack(Tensor.from_numpy(a))
    assert back.dtype == a.dtype and np.shares_memory(back, a)
    assert back.flags.writeable == VERSIONED_DLPACK
    np.testing.assert_array_equal(back, a)


def test_np_from_dlpack_scalar_empty_readonly_copy():
    assert np.from_dlpack(Tensor.from_numpy(np.array(7, np.int64)))[()] == 7
    assert np.from_dlpack(Tensor.zeros((0, 4), "float32")).shape == (0, 4)
    if not VERSIONED_DLPACK:
        with pytest.raises(BufferError, match="legacy DLPack capsule"):  # no way to say read-only
            np.from_dlpack(Tensor.from_bytes(bytes(8), [2], "float32"))
        return
    readonly = np.from_dlpack(Tensor.from_bytes(bytes(8), [2], "float32"))
    assert not readonly.flags.writeable  # the versioned capsule carries the read-only flag
    a = np.arange(3, dtype=np.float64)
    copied = np.from_dlpack(Tensor.from_numpy(a), copy=True)
    assert not np.shares_memory(copied, a) and copied.tolist() == [0.0, 1.0, 2.0]
    assert np.from_dlpack(Tensor.from_numpy(a), device="cpu").tolist() == [0.0, 1.0, 2.0]


def test_dlpack_arguments():
    t = Tensor.from_bytes(bytes(4), [4], "uint8")
    with pytest.raises(BufferError, match="legacy DLPack capsule.*copy=True"):
        t.__dlpack__()  # read-only memory cannot be signalled without a version
    name, managed = open_capsule(t.__dlpack__(copy=True))
    assert name == b"dltensor"
    name, managed = open_capsule(t.__dlpack__(max_version=(1, 0), copy=True))
    assert managed.flags == 2  # IS_COPIED, writable
    name, managed = open_capsule(t.__dlpack__(max_version=(1, 0)))
    assert managed.flags == 1  # READ_ONLY
    assert name == b"dltensor_versioned"
    assert open_capsule(t.__dlpack__(max_version=(0, 8), copy=True))[0] == b"dltensor"
    assert open_capsule(t.__dlpack__(max_version=(1, 0), dl_device=(1, 0)))[0] == b"dltensor_versioned"
    with pytest.raises(ValueError, match="stream must be None"):
        t.__dlpack__(stream=1)
    with pytest.raises(BufferError, match="cannot export to \\(2, 0\\)"):
        t.__dlpack__(dl_device=(2, 0))
    with pytest.raises(TypeError, match="max_version must be"):
        t.__dlpack__(max_version=1)
    with pytest.raises(TypeError, match="dl_device must be"):
        t.__dlpack__(dl_device="cpu")
    with pytest.raises(ValueError, match="copy must be"):
        t.__dlpack__(copy="yes")


def test_dlpack_export_keeps_memory_until_deleter():
    buffer = bytearray(8)
    t = Tensor.from_bytes(buffer, [2], "float32")
    capsule = t.__dlpack__(max_version=(1, 0))
    del t
    gc.collect()
    with pytest.raises(BufferError):
        buffer.extend(b"x")  # the unconsumed capsule still holds the memory
    del capsule  # its destructor calls the deleter
    buffer.extend(b"x")

    buffer = bytearray(8)
    consumed = np.from_dlpack(Tensor.from_bytes(buffer, [2], "float32"))
    gc.collect()
    with pytest.raises(BufferError):
        buffer.extend(b"x")
    del consumed  # numpy calls the deleter when the array dies
    buffer.extend(b"x")


@pytest.mark.parametrize("max_version,used", [(None, b"used_dltensor"), ((1, 0), b"used_dltensor_versioned")])
def test_dlpack_renamed_capsule_is_left_to_the_consumer(max_version, used):
    """A consumer renames the capsule to "used_..." and calls the deleter itself; the capsule's
    destructor must then leave the memory alone."""
    buffer = bytearray(4)
    capsule = Tensor.from_bytes(buffer, [4], "uint8").__dlpack__(max_version=max_version)
    _name, managed = open_capsule(capsule)
    assert capsule_api.PyCapsule_SetName(capsule, used) == 0
    del capsule
    gc.collect()
    with pytest.raises(BufferError):
        buffer.extend(b"x")  # not released: the "consumer" owns it now
    managed.deleter(ctypes.pointer(managed))
    buffer.extend(b"x")


def test_torch_from_dlpack_including_bfloat16():
    torch = pytest.importorskip("torch")
    a = np.array([1.5, -2.0, 3.0], dtype=BF16)
    x = torch.from_dlpack(Tensor.from_numpy(a))
    assert x.dtype == torch.bfloat16 and x.tolist() == [1.5, -2.0, 3.0]
    a[0] = 7
    assert x[0].item() == 7.0  # shares memory
    y = torch.from_dlpack(Tensor.from_numpy(np.arange(6, dtype=np.int64).reshape(2, 3)))
    assert y.shape == (2, 3) and y.stride() == (3, 1) and y.sum().item() == 15


# ==========================================================================================
# pickle
# ==========================================================================================

def test_pickle_protocol5_out_of_band_does_not_copy():
    a = np.arange(1 << 18, dtype=np.float32)  # 1 MiB
    t = Tensor.from_numpy(a, name="big")
    buffers = []
    payload = pickle.dumps(t, protocol=5, buffer_callback=buffers.append)
    assert len(payload) < 500 and len(buffers) == 1
    assert np.shares_memory(np.frombuffer(buffers[0], np.uint8), a)
    back = pickle.loads(payload, buffers=buffers)
    assert back == t and back.name == "big"
    assert np.shares_memory(back.to_numpy(), a)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("name", ["float32", "bfloat16", "bool"])
def test_pickle_in_band(protocol, name):
    t = Tensor.from_numpy(sample(name), name="p")
    payload = pickle.dumps(t, protocol=protocol)
    back = pickle.loads(payload)
    assert back == t and back.dtype is t.dtype
    assert not np.shares_memory(back.to_numpy(), t.to_numpy())
    assert copy.deepcopy(t) == t


def test_pickle_readonly_and_device():
    t = Tensor.from_bytes(b"\x01\x02", [2], "int8", name="r", device="cuda")
    back = pickle.loads(pickle.dumps(t, protocol=5))
    assert back == t and back.device == "cuda"
