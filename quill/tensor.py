"""Tensors (their metadata is :mod:`quill.tensor_meta`), with zero-copy NumPy, buffer, DLPack and pickle interop.

A :class:`Tensor` is a :class:`TensorMeta` (shape, dtype, name, device label) plus the tensor's
element bytes exactly as they travel on the wire (docs/protocol.md section 4): little-endian,
row-major, densely packed, bool as one byte 0/1.

Memory sharing (as with ``torch.from_numpy``)
---------------------------------------------
``Tensor.from_numpy(a)`` shares memory with ``a`` when ``a`` is C-contiguous and little-endian:
writes to ``a`` show up in the tensor and in every array ``to_numpy()`` returned, and the tensor
keeps ``a``'s memory alive. Any other array (non-contiguous, big-endian) is copied once.
``Tensor.from_bytes`` likewise wraps any buffer without copying; a tensor over a bytearray or
mmap keeps it exported, so it cannot be resized or closed while the tensor (or a view) lives.

Views of the same memory: ``to_numpy()``, ``np.asarray(t)``, ``np.from_dlpack(t)``, ``.data``
and pickles made with protocol 5 and a ``buffer_callback``. Copies: ``tobytes()``, ``astype()``
and ``to_numpy(dtype=...)`` to another dtype, and pickles with older protocols. Arrays are
writable when the memory is (a writable numpy array, a bytearray, ``Tensor.zeros``) and
read-only over ``bytes``; ``.data`` is always read-only.

>>> import numpy as np
>>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
>>> t = Tensor.from_numpy(a, name="x")
>>> t
Tensor(shape=[2, 3], dtype=float32, name='x', data=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
>>> np.shares_memory(t.to_numpy(), a)
True
>>> TensorMeta.decode(t.meta.encode()) == t.meta
True
"""

from __future__ import annotations

import pickle
import sys

import numpy as np

from quill._core.arrow import export_tensor, tensor_schema
from quill._core.arrow_import import import_tensor
from quill._core.casts import cast
from quill._core.tensor import buffers_equal, export_dlpack
from quill.dtypes import DType
from quill.tensor_meta import Shape, TensorMeta, _as_dtype

__all__ = ["Shape", "Tensor", "TensorMeta"]

_KDL_CPU = 1  # DLPack's DLDeviceType for host memory
_REPR_VALUES = 6

_HALF_FLOATS = (DType.float16(), DType.bfloat16())
_WIDE_FLOATS = (DType.float32(), DType.float64())

# numpy dtype -> quill DType and back, filled on first use (a few dozen entries at most).
_FROM_NUMPY: dict[np.dtype, DType] = {}
_NUMPY_DTYPES: dict[DType, np.dtype] = {}


def _dtype_of_array(array: np.ndarray) -> DType:
    try:
        return _FROM_NUMPY[array.dtype]
    except KeyError:
        pass
    try:
        dtype = DType.from_numpy(array.dtype)
    except ValueError:
        raise TypeError(
            f"cannot make a tensor from a numpy array of dtype {array.dtype}; supported dtypes are "
            "float32, float64, float16, bfloat16 (ml_dtypes), int8, int32, int64, uint8 and bool"
        ) from None
    _FROM_NUMPY[array.dtype] = dtype
    return dtype


def _is_big_endian(npdtype: np.dtype) -> bool:
    order = npdtype.byteorder
    return order == ">" or (order == "=" and sys.byteorder == "big")


def _byte_array(data) -> np.ndarray:
    """A 1-D uint8 array over ``data``'s memory, without copying; it keeps ``data`` exported."""
    if isinstance(data, np.ndarray):
        if data.dtype.hasobject:
            raise TypeError("an object array holds Python references, not tensor element bytes")
        if not data.flags.c_contiguous:
            raise ValueError("data is a non-contiguous numpy array; pass np.ascontiguousarray(data)")
        return data.view(np.ndarray).reshape(-1).view(np.uint8)  # also covers dtypes memoryview cannot describe (bfloat16)
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            "data must be a bytes-like object (bytes, bytearray, memoryview, mmap, numpy array), "
            f"got {type(data).__name__}"
        ) from None
    if not view.c_contiguous:
        raise ValueError("data must be a C-contiguous buffer; copy it first (e.g. bytes(data))")
    return np.frombuffer(view, np.uint8)


def _numpy_dtype(dtype: DType) -> np.dtype:
    """``dtype.numpy_dtype``, cached; bfloat16 is looked up each time (ml_dtypes may come and go)."""
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        pass
    try:
        npdtype = dtype.numpy_dtype
    except TypeError:
        raise TypeError(
            "this tensor is bfloat16, which numpy cannot represent without ml_dtypes: install it "
            "(pip install 'quill-rpc[bf16]'), or use to_numpy(dtype='float32') for a float32 copy, "
            "or .data for the raw little-endian bfloat16 bytes"
        ) from None
    if dtype is not DType.bfloat16():
        _NUMPY_DTYPES[dtype] = npdtype
    return npdtype


class Tensor:
    """A tensor: a :class:`TensorMeta` plus its little-endian element bytes (see the module doc
    for when memory is shared).

    ``Tensor(meta, data)`` wraps ``data`` (any C-contiguous buffer of exactly ``meta.size_bytes``
    bytes) without copying; the class methods are the usual way in. Tensors compare equal when
    their metas and bytes are equal (bitwise: a NaN equals itself, 0.0 differs from -0.0). They
    are not hashable, since their memory may be writable.

    >>> t = Tensor.from_bytes(bytes(8), [2], "float32", name="z")
    >>> t.shape, t.dtype, t.name, t.size_bytes, len(t)
    ([2], DType.float32, 'z', 8, 2)
    >>> t.to_numpy()
    array([0., 0.], dtype=float32)
    """

    __slots__ = ("_meta", "_bytes")  # _bytes: 1-D uint8 ndarray over the element bytes

    def __init__(self, meta: TensorMeta, data):
        if not isinstance(meta, TensorMeta):
            raise TypeError(f"meta must be a TensorMeta, got {type(meta).__name__}")
        raw = _byte_array(data)
        if raw.nbytes != meta.size_bytes:
            raise ValueError(
                f"shape {meta.shape} of {meta.dtype} needs {meta.size_bytes} bytes, "
                f"but the data has {raw.nbytes} bytes"
            )
        self._meta = meta
        self._bytes = raw

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_numpy(cls, array: np.ndarray, name: str | None = None) -> "Tensor":
        """A tensor sharing ``array``'s memory when it is C-contiguous and little-endian (else a copy).

        Accepts the nine quill dtypes, bfloat16 as an ``ml_dtypes.bfloat16`` array; other dtypes
        (object, complex, uint16, ...) raise TypeError.

        >>> import numpy as np
        >>> a = np.zeros(3, np.int32)
        >>> t = Tensor.from_numpy(a)
        >>> a[0] = 7
        >>> t.to_numpy()
        array([7, 0, 0], dtype=int32)
        """
        if not isinstance(array, np.ndarray):
            raise TypeError(f"from_numpy expects a numpy.ndarray, got {type(array).__name__}; "
                            "wrap it with np.asarray(...) first")
        dtype = _dtype_of_array(array)
        array = array.view(np.ndarray)  # subclasses (np.memmap, np.matrix) become plain views
        shape = array.shape
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        if _is_big_endian(array.dtype):
            width = dtype.element_size
            array = np.ascontiguousarray(array.view(f">u{width}"), dtype=f"<u{width}")
        elif not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        tensor = object.__new__(cls)
        tensor._meta = TensorMeta._trusted(shape, dtype, name or None, "cpu", array.size, array.nbytes)
        tensor._bytes = array.reshape(-1).view(np.uint8)
        return tensor

    @classmethod
    def from_bytes(cls, data, shape, dtype, name: str | None = None, *, device: str = "cpu") -> "Tensor":
        """A tensor over ``data`` (bytes, bytearray, memoryview, mmap, numpy array...) without copying.

        ``data`` must be C-contiguous and exactly as long as the shape needs (ValueError naming
        both sizes otherwise).

        >>> Tensor.from_bytes(bytearray(b"\\x01\\x00"), [2], "bool").to_numpy()
        array([ True, False])
        """
        return cls(TensorMeta(shape, dtype, name, device), data)

    @classmethod
    def zeros(cls, shape, dtype, name: str | None = None, *, device: str = "cpu") -> "Tensor":
        """A new, writable tensor of zeros.

        >>> Tensor.zeros([2, 2], "int8").to_numpy()
        array([[0, 0],
               [0, 0]], dtype=int8)
        """
        meta = TensorMeta(shape, dtype, name, device)
        if meta.size_bytes > sys.maxsize:
            raise MemoryError(f"a tensor of {meta.size_bytes} bytes is larger than this machine can address")
        return cls(meta, np.zeros(meta.size_bytes, np.uint8))

    # -- properties ---------------------------------------------------------------------------
    @property
    def meta(self) -> TensorMeta:
        return self._meta

    @property
    def shape(self) -> Shape:
        return self._meta.shape

    @property
    def dtype(self) -> DType:
        return self._meta.dtype

    @property
    def name(self) -> str | None:
        return self._meta.name

    @property
    def device(self) -> str:
        """The device label from the meta; the data itself is always in host memory."""
        return self._meta.device

    @property
    def ndim(self) -> int:
        return self._meta.ndim

    @property
    def num_elements(self) -> int:
        return self._meta.num_elements

    @property
    def size_bytes(self) -> int:
        return self._meta.size_bytes

    @property
    def data(self) -> memoryview:
        """The raw little-endian element bytes: 1-D, format ``"B"``, read-only, zero copy."""
        return memoryview(self._bytes).toreadonly()

    def __len__(self) -> int:
        if not self._meta.shape:
            raise TypeError("len() of a 0-d tensor")
        return self._meta.shape[0]

    # -- conversion ---------------------------------------------------------------------------
    def to_numpy(self, dtype=None) -> np.ndarray:
        """A numpy view of the tensor (zero copy), or with another ``dtype``, a converted copy.

        bfloat16 comes back as an ``ml_dtypes.bfloat16`` array; without ml_dtypes that raises a
        TypeError naming the alternatives (``to_numpy(dtype="float32")``, ``.data``).

        >>> t = Tensor.from_bytes(bytes.fromhex("803f0040"), [2], "bfloat16")
        >>> t.to_numpy(dtype="float32")
        array([1., 2.], dtype=float32)
        """
        if dtype is not None and _as_dtype(dtype) is not self._meta.dtype:
            return self.astype(dtype).to_numpy()
        return self._elements(_numpy_dtype(self._meta.dtype))

    def tobytes(self) -> bytes:
        """A copy of the raw little-endian element bytes.

        >>> Tensor.from_numpy(np.array([1, 2], np.int32)).tobytes().hex()
        '0100000002000000'
        """
        return self._bytes.tobytes()

    def astype(self, dtype) -> "Tensor":
        """A new tensor converted to ``dtype`` (the same tensor if the dtype is unchanged).

        float32/float64 <-> float16/bfloat16 use quill's compiled kernels (round to nearest even,
        rounding float64 once; bit-exact with numpy / ml_dtypes from float32). Other pairs
        through a half go via float32 (from a half, exact) or float64 (to a half: exact for the
        8/32-bit integers and bool, int64 is rounded to float64 first). All other casts are
        numpy's ``astype`` (out-of-range floats to integers give what numpy gives).

        >>> Tensor.from_numpy(np.array([1.0, 2.5], np.float32)).astype("bfloat16").tobytes().hex()
        '803f2040'
        """
        target = _as_dtype(dtype)
        if target is self._meta.dtype:
            return self
        meta = TensorMeta(self._meta.shape, target, self._meta.name, self._meta.device)
        return Tensor(meta, self._converted(target))

    def _elements(self, npdtype: np.dtype) -> np.ndarray:
        """The data as an array of ``npdtype`` elements in the tensor's shape (a view)."""
        return self._bytes.view(npdtype).reshape(self._meta.shape)

    def _converted(self, target: DType) -> np.ndarray:
        """A new C-contiguous array whose bytes are this tensor's elements converted to ``target``."""
        source = self._meta.dtype
        if source in _HALF_FLOATS:
            bits = self._elements(np.dtype("<u2"))
            if target in _WIDE_FLOATS:
                return cast(bits, target, src_dtype=source)
            wide = cast(bits, DType.float32(), src_dtype=source)  # exact: every half is a float32
            if target in _HALF_FLOATS:
                return cast(wide, target, out=np.empty(self._meta.shape, np.uint16))
            return wide.astype(target.numpy_dtype)
        elements = self._elements(_numpy_dtype(source))
        if target in _HALF_FLOATS:
            if source not in _WIDE_FLOATS:
                elements = elements.astype(np.float64)
            return cast(elements, target, out=np.empty(self._meta.shape, np.uint16))
        return elements.astype(target.numpy_dtype)

    # -- interop protocols --------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """``np.asarray(t)`` is a view; a ``dtype`` other than the tensor's means a converted copy."""
        if dtype is not None:
            wanted = np.dtype(dtype)
            try:
                target = DType.from_numpy(wanted)
            except ValueError:
                target = None
            if target is not self._meta.dtype:
                if copy is False:
                    raise ValueError(f"converting a {self._meta.dtype} tensor to {wanted} needs a copy, "
                                     "but copy=False was given")
                if target is not None:
                    return self.to_numpy(target)
                return self.to_numpy().astype(wanted)
        array = self.to_numpy()
        return array.copy() if copy else array

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """Export as a DLPack capsule (zero copy unless ``copy=True``); see :func:`quill._core.tensor.export_dlpack`.

        >>> np.from_dlpack(Tensor.from_numpy(np.arange(3, dtype=np.int64)))
        array([0, 1, 2])
        """
        return export_dlpack(self._bytes, self._meta.shape, self._meta.dtype, stream=stream,
                             max_version=max_version, dl_device=dl_device, copy=copy)

    def __dlpack_device__(self) -> tuple[int, int]:
        """(kDLCPU, 0): quill keeps tensor data in host memory whatever the meta's device label."""
        return (_KDL_CPU, 0)

    def __arrow_c_schema__(self):
        """The Arrow type of ``__arrow_c_array__``'s array, as an "arrow_schema" PyCapsule."""
        return tensor_schema(self._meta.shape, self._meta.dtype, self._meta.name)

    def __arrow_c_array__(self, requested_schema=None):
        """The tensor as an ``arrow.fixed_shape_tensor`` array (Arrow's canonical extension): one
        row per index of the first dimension, each a tensor of ``shape[1:]``, named after the
        tensor. Zero copy (the array holds this tensor's memory) except for bool, which Arrow
        stores as bits. bfloat16 raises TypeError (Arrow has no such type: ``astype("float32")``
        first, exact) and a 0-d tensor ValueError. ``requested_schema`` is not used.

        >>> import pyarrow as pa  # doctest: +SKIP
        >>> pa.array(Tensor.from_numpy(np.zeros((2, 3), np.float32))).type.shape  # doctest: +SKIP
        [3]
        """
        return export_tensor(self._bytes, self._meta.shape, self._meta.dtype, self._meta.name)

    @classmethod
    def from_arrow(cls, source, name: str | None = None) -> "Tensor":
        """A tensor from any object with the Arrow PyCapsule Interface: an ``arrow.fixed_shape_tensor``
        array of n rows of shape S gives shape ``(n, *S)``, a fixed-size list array ``(n, size)``,
        a primitive array ``(n,)``; alone, or as the one column of a table. One chunk is shared
        without a copy (the tensor is read-only and keeps the Arrow memory alive); several chunks,
        and bool bitmaps, are copied. A type with no quill dtype raises TypeError, nulls DecodeError.

        The name is the Arrow field's (a table column's name, or what quill exported), unless
        ``name`` is given. A bare pyarrow array has no field, so ``pa.array(tensor)`` keeps the
        data and shape but not the name: keep the tensor in a named column, or pass ``name``.

        >>> Tensor.from_arrow(Tensor.from_numpy(np.arange(4, dtype=np.int32).reshape(2, 2))).shape
        [2, 2]
        """
        shape, dtype, field_name, data = import_tensor(source)
        return cls(TensorMeta(shape, dtype, field_name if name is None else name), data)

    def __reduce_ex__(self, protocol):
        """Protocol 5 hands the data to pickle as a PickleBuffer (out-of-band with a
        ``buffer_callback``, so nothing is copied); older protocols embed a bytes copy."""
        if protocol >= 5:
            return (Tensor, (self._meta, pickle.PickleBuffer(self._bytes)))
        return (Tensor, (self._meta, self._bytes.tobytes()))

    # -- comparison and display ---------------------------------------------------------------
    def __eq__(self, other) -> bool:
        if not isinstance(other, Tensor):
            return NotImplemented
        return self._meta == other._meta and buffers_equal(self._bytes, other._bytes)

    __hash__ = None

    def __repr__(self) -> str:
        meta = self._meta
        name = f", name={meta.name!r}" if meta.name is not None else ""
        device = f", device={meta.device!r}" if meta.device != "cpu" else ""
        return f"Tensor(shape={meta.shape}, dtype={meta.dtype}{name}{device}, data={self._repr_values()})"

    def _repr_values(self) -> str:
        count = min(self._meta.num_elements, _REPR_VALUES)
        width = self._meta.dtype.element_size
        head = Tensor.from_bytes(self._bytes[: count * width], [count], self._meta.dtype)
        if head.dtype is DType.bfloat16():  # shown as exact float32 values, with or without ml_dtypes
            head = head.astype(DType.float32())
        values = ", ".join(str(value) for value in head.to_numpy())
        more = ", ..." if self._meta.num_elements > count else ""
        return f"[{values}{more}]"
