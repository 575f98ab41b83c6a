"""The dtype registry: the nine element types of the Quill wire format.

Each dtype is a single shared :class:`DType` instance carrying its wire code
(docs/protocol.md section 1), its element size and its numpy counterpart.

>>> from quill import DType
>>> DType.float32()
DType.float32
>>> str(DType.bfloat16()), DType.bfloat16().code, DType.bfloat16().element_size
('bfloat16', 3, 2)
>>> DType.from_code(4) is DType.float64()
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["DType"]

_BFLOAT16_HELP = (
    "bfloat16 has no numpy dtype of its own; install ml_dtypes "
    "(pip install 'quill-rpc[bf16]' or pip install ml_dtypes) to use bfloat16 numpy arrays, "
    "or convert with Tensor.astype(DType.float32()) / to_numpy(dtype='float32')"
)


def _ml_dtypes_bfloat16():
    """Return ``ml_dtypes.bfloat16`` as a numpy dtype, or None when ml_dtypes is absent."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


class DType:
    """One tensor element type. Instances are shared: compare with ``==`` or ``is``.

    >>> DType.int8().is_signed(), DType.uint8().is_signed()
    (True, False)
    >>> DType.from_name("float16") == DType.float16()
    True
    """

    __slots__ = ("_name", "_code", "_element_size", "_kind", "_numpy_name")

    _by_code: dict[int, "DType"] = {}
    _by_name: dict[str, "DType"] = {}

    def __init__(self, name: str, code: int, element_size: int, kind: str, numpy_name: str | None):
        self._name = name
        self._code = code
        self._element_size = element_size
        self._kind = kind  # "f" float, "i" signed int, "u" unsigned int, "b" bool
        self._numpy_name = numpy_name

    # -- constructors named as in the seed API ---------------------------------
    @classmethod
    def float32(cls) -> "DType":
        return cls._by_name["float32"]

    @classmethod
    def float64(cls) -> "DType":
        return cls._by_name["float64"]

    @classmethod
    def float16(cls) -> "DType":
        return cls._by_name["float16"]

    @classmethod
    def bfloat16(cls) -> "DType":
        return cls._by_name["bfloat16"]

    @classmethod
    def int8(cls) -> "DType":
        return cls._by_name["int8"]

    @classmethod
    def int32(cls) -> "DType":
        return cls._by_name["int32"]

    @classmethod
    def int64(cls) -> "DType":
        return cls._by_name["int64"]

    @classmethod
    def uint8(cls) -> "DType":
        return cls._by_name["uint8"]

    @classmethod
    def bool_(cls) -> "DType":
        return cls._by_name["bool"]

    # -- lookups ----------------------------------------------------------------
    @classmethod
    def from_code(cls, code: int) -> "DType":
        """The dtype with wire code ``code`` (1..9).

        >>> DType.from_code(3)
        DType.bfloat16
        """
        try:
            return cls._by_code[code]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown dtype code {code!r}; valid codes are "
                + ", ".join(f"{c} ({d.name})" for c, d in sorted(cls._by_code.items()))
            ) from None

    @classmethod
    def from_name(cls, name: str) -> "DType":
        """The dtype called ``name``; accepts ``"bool"`` and ``"bool_"``.

        >>> DType.from_name("int64")
        DType.int64
        """
        key = name[:-1] if name == "bool_" else name
        try:
            return cls._by_name[key]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown dtype name {name!r}; valid names are {', '.join(cls._by_name)}"
            ) from None

    @classmethod
    def from_numpy(cls, dtype) -> "DType":
        """The dtype matching a numpy dtype (or anything ``np.dtype`` accepts).

        Byte order is ignored: a big-endian float32 maps to float32.

        >>> import numpy as np
        >>> DType.from_numpy(np.float16)
        DType.float16
        """
        if isinstance(dtype, DType):
            return dtype
        try:
            npdt = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"{dtype!r} is not a numpy dtype") from None
        if npdt.name == "bfloat16":
            return cls._by_name["bfloat16"]
        for d in cls._by_code.values():
            if d._numpy_name is not None and npdt.kind == np.dtype(d._numpy_name).kind \
                    and npdt.itemsize == d._element_size:
                return d
        raise ValueError(
            f"numpy dtype {npdt} has no Quill equivalent; supported: "
            + ", ".join(cls._by_name)
        )

    # -- properties ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def code(self) -> int:
        """The wire code of docs/protocol.md section 1."""
        return self._code

    @property
    def element_size(self) -> int:
        """Bytes per element."""
        return self._element_size

    @property
    def numpy_dtype(self) -> np.dtype:
        """The little-endian numpy dtype; bfloat16 needs ml_dtypes.

        >>> DType.int32().numpy_dtype
        dtype('int32')
        """
        if self._numpy_name is not None:
            return np.dtype(self._numpy_name)
        bf16 = _ml_dtypes_bfloat16()
        if bf16 is None:
            raise TypeError(_BFLOAT16_HELP)
        return bf16

    def is_float(self) -> bool:
        return self._kind == "f"

    def is_integer(self) -> bool:
        return self._kind in "iu"

    def is_signed(self) -> bool:
        return self._kind in "fi"

    # -- identity ---------------------------------------------------------------
    def __repr__(self) -> str:
        return f"DType.{self._name}"

    def __str__(self) -> str:
        return self._name

    def __eq__(self, other) -> bool:
        return self is other

    def __hash__(self) -> int:
        return hash(("quill.DType", self._code))

    def __reduce__(self):
        return (DType.from_code, (self._code,))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


for _args in (
    ("float32", 1, 4, "f", "<f4"),
    ("float16", 2, 2, "f", "<f2"),
    ("bfloat16", 3, 2, "f", None),
    ("float64", 4, 8, "f", "<f8"),
    ("int8", 5, 1, "i", "i1"),
    ("int32", 6, 4, "i", "<i4"),
    ("int64", 7, 8, "i", "<i8"),
    ("uint8", 8, 1, "u", "u1"),
    ("bool", 9, 1, "b", "?"),
):
    _dtype = DType(*_args)
    DType._by_code[_dtype.code] = _dtype
    DType._by_name[_dtype.name] = _dtype
del _args, _dtype
