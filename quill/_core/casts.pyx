# cython: freethreading_compatible = True
# (audited for running without the GIL: docs/memory-safety.md, "Free-threaded CPython")
"""Compiled float16 / bfloat16 conversions: :func:`cast`.

Rounding is to nearest, ties to even, applied once, on the bits:

* float32 -> bfloat16 is bit-exact with ml_dtypes (NaN -> quiet NaN 0x7fc0
  with the input's sign, overflow -> infinity, subnormals rounded);
* float32 <-> float16 and float16 -> float64 are bit-exact with numpy's
  ``astype``, NaN payloads included;
* bfloat16 -> float32 / float64 are exact (bfloat16 -> float64 quiets NaNs,
  as ml_dtypes does);
* float64 -> float16 / bfloat16 round the float64 value once, directly to
  the target format (float64 -> float16 matches numpy; ml_dtypes rounds
  float64 -> bfloat16 twice, through float32, and can differ in the last
  bit).

The kernels run without the GIL, on the widest instruction set the CPU has
(AVX-512, AVX2 + F16C, or portable auto-vectorised C); every path returns
identical bits. Large results (1 MiB or more) reuse the memory of dropped
earlier results when they can (at most 2 buffers, 256 MiB, are kept): a
fresh array's pages must be faulted in and zeroed by the OS, which costs
about as much as the conversion itself.

>>> import numpy as np
>>> from quill._core.casts import cast
>>> cast(np.array([1.0, 65504.0, 1e6], dtype=np.float32), "float16").tolist()
[1.0, 65504.0, inf]
"""

import numpy as np

cimport cython
cimport numpy as cnp
from cpython.buffer cimport PyBuffer_FillInfo

from quill.dtypes import DType

cnp.import_array()

cdef extern from "casts_kernels.h" nogil:
    ctypedef void (*quill_cast_kernel)(const char *src, char *dst, size_t n)
    enum:
        QUILL_F32_TO_BF16
        QUILL_F32_TO_F16
        QUILL_F64_TO_BF16
        QUILL_F64_TO_F16
        QUILL_BF16_TO_F32
        QUILL_BF16_TO_F64
        QUILL_F16_TO_F32
        QUILL_F16_TO_F64
        QUILL_PATH_PORTABLE
        QUILL_PATH_AVX2
        QUILL_PATH_AVX512
        QUILL_CAST_PATHS
        QUILL_MAX_NDIM
    const unsigned char *quill_source_size
    const unsigned char *quill_target_size
    int quill_path_available(int path)
    quill_cast_kernel quill_get_kernel(int kind, int path)
    void quill_cast_contiguous(int kind, int path, const char *src, char *dst, size_t n,
                               int stream)
    void quill_cast_strided(quill_cast_kernel kernel, const char *src, int ndim,
                            const cnp.npy_intp *shape, const cnp.npy_intp *strides,
                            size_t src_item, char *dst, size_t dst_item)

_KIND_NAMES = {
    ("float32", "bfloat16"): QUILL_F32_TO_BF16,
    ("float32", "float16"): QUILL_F32_TO_F16,
    ("float64", "bfloat16"): QUILL_F64_TO_BF16,
    ("float64", "float16"): QUILL_F64_TO_F16,
    ("bfloat16", "float32"): QUILL_BF16_TO_F32,
    ("bfloat16", "float64"): QUILL_BF16_TO_F64,
    ("float16", "float32"): QUILL_F16_TO_F32,
    ("float16", "float64"): QUILL_F16_TO_F64,
}
cdef dict _KINDS = {(DType.from_name(s), DType.from_name(t)): kind
                    for (s, t), kind in _KIND_NAMES.items()}
_SUPPORTED = ", ".join(f"{s} -> {t}" for s, t in _KIND_NAMES)
_PATH_NAMES = ("portable", "avx2", "avx512")
_PATHS = {name: path for path, name in enumerate(_PATH_NAMES) if quill_path_available(path)}
_BEST_PATH = max(_PATHS.values())

# Resolutions that succeeded, so that a call costs dictionary lookups, not registry scans:
cdef dict _DTYPE_SPECS = {}      # dtype / src_dtype argument -> DType
cdef dict _ARRAY_DTYPES = {}     # numpy dtype of a src array -> DType its memory holds
cdef dict _PLANS = {}            # (numpy dtype of src, dtype argument) -> (kind, target DType)
cdef dict _RESULT_DTYPES = {}    # kind -> numpy dtype of an allocated result
cdef set _GOOD_OUT_DTYPES = set()  # (numpy dtype of out, kind) that passed the dtype checks


def _available_paths():
    """Names of the kernel paths this CPU can run, slowest first (for tests and benchmarks).

    >>> _available_paths()[0]
    'portable'
    """
    return tuple(_PATHS)


cdef object _as_dtype(object spec, str role):
    """A quill DType from a DType, numpy dtype / scalar type, or name."""
    try:
        return _DTYPE_SPECS[spec]
    except (KeyError, TypeError):  # TypeError: unhashable spec
        pass
    if isinstance(spec, DType):
        dtype = spec
    else:
        try:
            dtype = DType.from_name(spec) if isinstance(spec, str) else None
        except ValueError:
            dtype = None
        if dtype is None:
            try:
                dtype = DType.from_numpy(spec)
            except (ValueError, TypeError):
                raise TypeError(
                    f"{role} must be a quill DType, a numpy dtype or a dtype name; got {spec!r}"
                ) from None
    try:
        _DTYPE_SPECS[spec] = dtype
    except TypeError:
        pass
    return dtype


cdef object _source_dtype(object src, object src_dtype):
    """The DType to read src's memory as."""
    array_dtype = src.dtype
    if src_dtype is None:
        dtype = _ARRAY_DTYPES.get(array_dtype)
        if dtype is not None:
            return dtype
    if array_dtype.hasobject or array_dtype.fields is not None:
        raise TypeError(f"cannot convert an array of dtype {array_dtype}: it holds no float bits")
    if src_dtype is not None:
        dtype = _as_dtype(src_dtype, "src_dtype")
        if array_dtype.itemsize != dtype.element_size:
            raise ValueError(
                f"src_dtype {dtype} needs {dtype.element_size}-byte elements, "
                f"but src has dtype {array_dtype} with {array_dtype.itemsize}-byte elements"
            )
        return dtype
    if array_dtype.name == "bfloat16":
        dtype = DType.bfloat16()
    elif array_dtype.kind == "f" and array_dtype.itemsize in (2, 4, 8):
        dtype = DType.from_numpy(array_dtype)
    else:
        raise TypeError(
            f"cannot convert from {array_dtype}; pass src_dtype= to read its memory as "
            f"float16/bfloat16/float32/float64 (supported: {_SUPPORTED})"
        )
    _ARRAY_DTYPES[array_dtype] = dtype
    return dtype


cdef tuple _plan(object src, object dtype, object src_dtype):
    """(kind, target DType) for converting src to dtype."""
    key = None
    if src_dtype is None:
        key = (src.dtype, dtype)
        try:
            return _PLANS[key]
        except (KeyError, TypeError):  # TypeError: unhashable dtype argument
            pass
    source = _source_dtype(src, src_dtype)
    target = _as_dtype(dtype, "dtype")
    kind = _KINDS.get((source, target))
    if kind is None:
        raise TypeError(f"no kernel converts {source} to {target}; supported: {_SUPPORTED}")
    plan = (kind, target)
    if key is not None:
        try:
            _PLANS[key] = plan
        except TypeError:
            pass
    return plan


cdef object _result_dtype(int kind, object target):
    """The numpy dtype of an allocated result (bfloat16 needs ml_dtypes)."""
    numpy_dtype = _RESULT_DTYPES.get(kind)
    if numpy_dtype is None:
        numpy_dtype = _RESULT_DTYPES[kind] = target.numpy_dtype
    return numpy_dtype


cdef _check_out(object src, object out, int kind, object target):
    """Raise unless out can receive the converted src."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != src.shape:
        raise ValueError(f"out has shape {out.shape}, expected the shape of src {src.shape}")
    out_dtype = out.dtype
    if (out_dtype, kind) not in _GOOD_OUT_DTYPES:
        if out_dtype.itemsize != target.element_size:
            raise ValueError(
                f"out has {out_dtype.itemsize}-byte elements ({out_dtype}); "
                f"{target} needs {target.element_size}-byte elements"
            )
        if (out_dtype.kind == "f" or out_dtype.name == "bfloat16") \
                and _as_dtype(out_dtype, "out dtype") is not target:
            raise ValueError(f"out has dtype {out_dtype}, which cannot hold {target} values")
        if out_dtype.kind not in "fuiV" or not out_dtype.isnative:
            raise ValueError(
                f"out has dtype {out_dtype}; use {target}, or a native-order integer "
                f"array of the same element size to receive the raw bits"
            )
        _GOOD_OUT_DTYPES.add((out_dtype, kind))
    if not cnp.PyArray_IS_C_CONTIGUOUS(out):
        raise ValueError("out must be C-contiguous")
    if not cnp.PyArray_ISWRITEABLE(out):
        raise ValueError("out is read-only")


cdef bint _may_overlap(cnp.ndarray a, cnp.ndarray b):
    """True if the memory spans of a and b intersect (np.may_share_memory, cheaper)."""
    cdef char *a_low = <char *>cnp.PyArray_DATA(a)
    cdef char *a_high = a_low + cnp.PyArray_ITEMSIZE(a)
    cdef char *b_low = <char *>cnp.PyArray_DATA(b)
    cdef char *b_high = b_low + cnp.PyArray_ITEMSIZE(b)
    cdef int axis
    cdef cnp.npy_intp extent
    if cnp.PyArray_SIZE(a) == 0 or cnp.PyArray_SIZE(b) == 0:
        return False
    for axis in range(cnp.PyArray_NDIM(a)):
        extent = (cnp.PyArray_DIMS(a)[axis] - 1) * cnp.PyArray_STRIDES(a)[axis]
        if extent < 0:
            a_low += extent
        else:
            a_high += extent
    for axis in range(cnp.PyArray_NDIM(b)):
        extent = (cnp.PyArray_DIMS(b)[axis] - 1) * cnp.PyArray_STRIDES(b)[axis]
        if extent < 0:
            b_low += extent
        else:
            b_high += extent
    return a_low < b_high and b_low < a_high


# Page faults: the operating system faults in and zeroes the pages of a fresh
# result while the conversion loop first writes them, which costs about as much
# as the conversion itself for large arrays (numpy's astype pays the same). The
# memory of dropped results of RECYCLE_MIN_BYTES or more is therefore kept,
# within limits, and reused for the next result of a similar size.
cdef enum:
    RECYCLE_MIN_BYTES = 1 << 20
    RECYCLE_MAX_BYTES = 256 << 20
    RECYCLE_MAX_BUFFERS = 2
cdef list _spare_storage = []    # uint8 arrays from dropped results, oldest first; changed only
                                 # in its critical section (free-threaded, results die anywhere)


cdef class _ResultMemory:
    """Owns the memory of one large result; gives it back for reuse when the result dies."""
    cdef object storage
    cdef Py_ssize_t nbytes

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, cnp.PyArray_DATA(<cnp.ndarray>self.storage), self.nbytes,
                          0, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass

    def __dealloc__(self):
        spare = _spare_storage
        if spare is None or self.storage is None:  # interpreter shutdown
            return
        if self.storage.nbytes > RECYCLE_MAX_BYTES:
            return
        with cython.critical_section(spare):
            spare.append(self.storage)
            while len(spare) > RECYCLE_MAX_BUFFERS or sum(s.nbytes for s in spare) > RECYCLE_MAX_BYTES:
                del spare[0]


cdef object _take_spare(Py_ssize_t nbytes):
    """Remove and return the newest spare buffer of nbytes..2*nbytes bytes, or None."""
    cdef Py_ssize_t index
    cdef list spare = _spare_storage
    with cython.critical_section(spare):
        for index in range(len(spare) - 1, -1, -1):
            candidate = spare[index]
            if nbytes <= candidate.nbytes <= 2 * nbytes:
                del spare[index]
                return candidate
    return None


cdef tuple _new_result(tuple shape, object numpy_dtype):
    """(result array, whether its memory is freshly mapped)."""
    cdef Py_ssize_t nbytes = numpy_dtype.itemsize
    for extent in shape:
        nbytes *= extent
    if nbytes < RECYCLE_MIN_BYTES:
        return np.empty(shape, dtype=numpy_dtype), True
    memory = _ResultMemory()
    memory.nbytes = nbytes
    # Picked and removed in one critical section: two threads never get the same buffer.
    memory.storage = _take_spare(nbytes)
    fresh = memory.storage is None
    if fresh:
        memory.storage = np.empty(nbytes, dtype=np.uint8)
    return np.frombuffer(memory, dtype=numpy_dtype).reshape(shape), fresh


cdef object _cast(object src, object dtype, object out, object src_dtype, int path):
    if isinstance(src, np.generic):
        src = np.asarray(src)
    if not isinstance(src, np.ndarray):
        raise TypeError(f"src must be a numpy array, got {type(src).__name__}")
    cdef int kind
    kind, target = _plan(src, dtype, src_dtype)
    if not src.dtype.isnative:
        src = src.byteswap().view(src.dtype.newbyteorder("="))
    cdef bint fresh = False
    if out is None:
        out, fresh = _new_result(src.shape, _result_dtype(kind, target))
    else:
        _check_out(src, out, kind, target)
        if _may_overlap(src, out):
            out[...] = _cast(src, dtype, None, src_dtype, path).view(out.dtype)
            return out
    _run(<cnp.ndarray>src, <cnp.ndarray>out, kind, path, not fresh)
    return out


cdef int _run(cnp.ndarray src, cnp.ndarray out, int kind, int path, bint stream) except -1:
    """Convert every element of src into the C-contiguous out; stream: out is not freshly mapped
    memory (see quill_cast_contiguous).

    Everything the kernels use is read here, with the GIL, into locals (shape and strides too:
    numpy frees an array's dimension storage when its shape is set) and checked against the
    kernel: Python code that ran since the plan (a GC pass, another thread) may have changed
    src's or out's shape or dtype. A caller's array resized with ``refcheck=False`` while it is
    being converted is as unsafe here as in numpy's own GIL-free loops.
    """
    cdef cnp.npy_intp shape[QUILL_MAX_NDIM]
    cdef cnp.npy_intp strides[QUILL_MAX_NDIM]
    cdef int ndim = cnp.PyArray_NDIM(src), axis
    cdef Py_ssize_t count = cnp.PyArray_SIZE(src)
    cdef bint contiguous = cnp.PyArray_IS_C_CONTIGUOUS(src)
    cdef const char *src_data = <const char *>cnp.PyArray_DATA(src)
    cdef char *out_data = <char *>cnp.PyArray_DATA(out)
    cdef size_t src_item = quill_source_size[kind]
    cdef size_t out_item = quill_target_size[kind]
    if (ndim > QUILL_MAX_NDIM or <size_t>cnp.PyArray_ITEMSIZE(src) != src_item
            or <size_t>cnp.PyArray_ITEMSIZE(out) != out_item or cnp.PyArray_SIZE(out) != count
            or not cnp.PyArray_IS_C_CONTIGUOUS(out) or not cnp.PyArray_ISWRITEABLE(out)):
        raise RuntimeError("src or out changed shape, dtype or flags while the cast was being set up "
                           "(by another thread?)")
    for axis in range(ndim):
        shape[axis] = cnp.PyArray_DIMS(src)[axis]
        strides[axis] = cnp.PyArray_STRIDES(src)[axis]
    if count == 0:
        return 0
    with nogil:
        if contiguous:
            quill_cast_contiguous(kind, path, src_data, out_data, <size_t>count, stream)
        else:
            quill_cast_strided(quill_get_kernel(kind, path), src_data, ndim, shape, strides,
                               src_item, out_data, out_item)
    return 0


def cast(src, dtype, *, out=None, src_dtype=None):
    """Convert ``src`` between float32/float64 and float16/bfloat16.

    src is a numpy array (or numpy scalar) of any shape and strides.
    ``dtype`` and ``src_dtype`` accept a :class:`quill.DType`, a numpy dtype or
    a name; ``src_dtype`` overrides how src's memory is read (for example a
    uint16 array holding bfloat16 bits).
    ``out``, if given, must be C-contiguous, have src's shape and the target's
    element size (a uint16 array can receive float16 or bfloat16 bits); it is
    filled and returned. Without ``out`` the result is a new array of
    ``dtype.numpy_dtype`` (bfloat16 results need ml_dtypes; pass a uint16
    ``out`` otherwise). Results of 1 MiB or more live in memory that is kept
    for reuse once they are dropped (at most two buffers, 256 MiB in all), so
    a loop of casts does not pay the OS for fresh, zeroed pages on every call.

    Rounding is to nearest, ties to even, once: float64 -> float16/bfloat16
    rounds the float64 value directly (no double rounding through float32).
    float32 -> bfloat16 matches ml_dtypes bit for bit; float32 <-> float16 and
    float16 -> float64 match numpy bit for bit, NaN payloads included.
    Runs without the GIL.

    Raises TypeError for a src that is not a numpy array, an unknown dtype or
    a pair without a kernel, and ValueError for an unsuitable ``out`` or a
    ``src_dtype`` whose element size differs from src's.

    >>> import numpy as np
    >>> bits = cast(np.array([1.0, -2.5, np.inf], dtype=np.float32), "bfloat16",
    ...             out=np.empty(3, dtype=np.uint16))
    >>> [hex(b) for b in bits]
    ['0x3f80', '0xc020', '0x7f80']
    >>> cast(bits, np.float32, src_dtype="bfloat16")
    array([ 1. , -2.5,  inf], dtype=float32)
    """
    return _cast(src, dtype, out, src_dtype, _BEST_PATH)


def _cast_using(path, src, dtype, *, out=None, src_dtype=None):
    """:func:`cast` forced onto one kernel path (a name from :func:`_available_paths`).

    >>> import numpy as np
    >>> _cast_using("portable", np.ones(2, np.float32), "float16")
    array([1., 1.], dtype=float16)
    """
    if path not in _PATHS:
        raise ValueError(f"kernel path {path!r} is not available here; available: {tuple(_PATHS)}")
    return _cast(src, dtype, out, src_dtype, _PATHS[path])
