"""A tensor's metadata: :class:`TensorMeta` (shape, dtype, name, device label) and :class:`Shape`,
with the checks every constructor of a tensor shares. Its wire form is docs/protocol.md
section 4 (TENSOR_META), encoded and decoded by the compiled ``quill._core.tensor``.

>>> meta = TensorMeta((2, 3), "float32", name="x")
>>> meta.shape, meta.size_bytes, TensorMeta.decode(meta.encode()) == meta
([2, 3], 24, True)
"""

from __future__ import annotations

import math
import operator

import numpy as np

from quill._core.tensor import decode_meta, encode_meta
from quill.dtypes import DType

__all__ = ["Shape", "TensorMeta"]

_U64_MAX = 2**64 - 1
_DEVICE_CODES = {"cpu": 0, "cuda": 1}  # docs/protocol.md section 1
_DEVICE_NAMES = tuple(_DEVICE_CODES)


def _as_dtype(dtype) -> DType:
    """A DType from a DType, a quill name ("bfloat16"), or anything ``np.dtype`` accepts."""
    if isinstance(dtype, DType):
        return dtype
    if dtype is None:
        raise TypeError("dtype is required (a quill DType, a name such as 'float32', or a numpy dtype)")
    if isinstance(dtype, str):
        try:
            return DType.from_name(dtype)
        except ValueError:
            pass  # maybe a numpy spelling such as "f4" or "<i8"
    try:
        return DType.from_numpy(dtype)
    except (ValueError, TypeError):
        raise ValueError(
            f"unknown dtype {dtype!r}; use a quill DType, a numpy dtype, or one of the names "
            "float32, float64, float16, bfloat16, int8, int32, int64, uint8, bool"
        ) from None


def _as_shape(shape) -> tuple[int, ...]:
    """A tuple of ints in 0..2**64-1 from any sequence of integers (or a single integer)."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of non-negative integers, got {shape!r}") from None
    checked = []
    for axis, dim in enumerate(dims):
        try:
            if isinstance(dim, (bool, np.bool_)):
                raise TypeError
            dim = operator.index(dim)
        except TypeError:
            raise TypeError(f"dimension {axis} of shape {dims!r} is not an integer: {dim!r}") from None
        if dim < 0:
            raise ValueError(f"dimension {axis} of shape {dims!r} is negative")
        if dim > _U64_MAX:
            raise ValueError(f"dimension {axis} of shape {dims!r} does not fit the wire's u64")
        checked.append(dim)
    return tuple(checked)


class Shape(tuple):
    """A tensor's shape: a tuple of ints that prints, and compares, like the seed API's list.

    The seed API (a Rust binding) gave shapes as lists, so ``print(t.shape)`` shows ``[2, 2]``
    and ``t.shape == [2, 2]`` holds; it is still a tuple, hashable and equal to ``(2, 2)``, as
    numpy shapes are.

    >>> shape = Shape((2, 3))
    >>> shape, shape == (2, 3), shape == [2, 3], isinstance(shape, tuple)
    ([2, 3], True, True, True)
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(list(self))

    def __eq__(self, other):
        if isinstance(other, list):
            return list(self) == other
        return tuple.__eq__(self, other)

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = tuple.__hash__

    def __reduce__(self):
        return (Shape, (tuple(self),))


class TensorMeta:
    """A tensor's shape, dtype, optional name and device label: everything but its data.

    ``shape`` is any sequence of integers (kept as a :class:`Shape` tuple), ``dtype`` a :class:`DType`, a name
    such as ``"float32"`` or a numpy dtype, ``device`` ``"cpu"`` or ``"cuda"`` (a label carried on
    the wire; quill itself keeps data in host memory). An empty name means no name, because the
    wire cannot tell them apart. The byte size must fit u64; TensorMeta is immutable and hashable.

    >>> meta = TensorMeta([2, 3], "float32", name="w")
    >>> meta.shape, meta.ndim, meta.num_elements, meta.size_bytes
    ([2, 3], 2, 6, 24)
    >>> meta.encode().hex()
    '020200000000000000030000000000000001001800000000000000010077'
    """

    __slots__ = ("_shape", "_dtype", "_name", "_device", "_num_elements", "_size_bytes")

    def __init__(self, shape, dtype, name: str | None = None, device: str = "cpu"):
        shape = _as_shape(shape)
        dtype = _as_dtype(dtype)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        if device not in _DEVICE_CODES:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        num_elements = math.prod(shape)
        size_bytes = num_elements * dtype.element_size
        if size_bytes > _U64_MAX:
            raise ValueError(
                f"shape {shape} of {dtype} holds {size_bytes} bytes, more than the 2**64-1 "
                "a tensor meta can describe"
            )
        self._init(shape, dtype, name or None, device, num_elements, size_bytes)

    @classmethod
    def _trusted(cls, shape, dtype, name, device, num_elements, size_bytes) -> "TensorMeta":
        """A meta from fields already checked (by the decoder, or by numpy for an array's shape)."""
        meta = object.__new__(cls)
        meta._init(shape, dtype, name, device, num_elements, size_bytes)
        return meta

    def _init(self, shape, dtype, name, device, num_elements, size_bytes):
        self._shape = Shape(shape)
        self._dtype = dtype
        self._name = name
        self._device = device
        self._num_elements = num_elements
        self._size_bytes = size_bytes

    @classmethod
    def decode(cls, buf, max_bytes: int | None = None) -> "TensorMeta":
        """Decode a TENSOR_META payload; ``buf`` (any bytes-like object) must hold exactly one meta.

        Raises :class:`~quill.errors.LimitExceededError` if the tensor is larger than ``max_bytes``
        (checked before anything is allocated) and :class:`~quill.errors.DecodeError`, with the
        offset, for truncation, unknown dtype/device codes, a shape whose size overflows u64, a
        ``byte_size`` that disagrees with the shape, a name running past the end, or trailing
        bytes (the last three are accepted by the reference; docs/protocol.md section 4, **Ours**).
        Invalid UTF-8 in the name becomes U+FFFD, as in the reference.

        >>> TensorMeta.decode(bytes.fromhex("00010004000000000000000000"))
        TensorMeta(shape=[], dtype=float32)
        """
        shape, code, device_code, num_elements, size_bytes, name = decode_meta(buf, max_bytes)
        return cls._trusted(shape, DType.from_code(code), name, _DEVICE_NAMES[device_code],
                            num_elements, size_bytes)

    def encode(self) -> bytes:
        """The TENSOR_META payload; :class:`~quill.errors.EncodeError` for more than 255 dimensions
        or a name over 65,535 UTF-8 bytes (the reference would silently wrap those fields).

        >>> TensorMeta((), "uint8").encode().hex()
        '00080001000000000000000000'
        """
        return encode_meta(self._shape, self._dtype, self._name, _DEVICE_CODES[self._device])

    @property
    def shape(self) -> Shape:
        return self._shape

    @property
    def dtype(self) -> DType:
        return self._dtype

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def device(self) -> str:
        return self._device

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def num_elements(self) -> int:
        return self._num_elements

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    def _key(self):
        return (self._shape, self._dtype, self._name, self._device)

    def __eq__(self, other) -> bool:
        if not isinstance(other, TensorMeta):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        name = f", name={self._name!r}" if self._name is not None else ""
        device = f", device={self._device!r}" if self._device != "cpu" else ""
        return f"TensorMeta(shape={self._shape}, dtype={self._dtype}{name}{device})"

    def __reduce__(self):
        return (TensorMeta, self._key())
