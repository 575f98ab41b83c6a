# cython: freethreading_compatible = True
# (audited for running without the GIL: docs/memory-safety.md, "Free-threaded CPython")
"""Compiled core of :mod:`quill.tensor`: the TENSOR_META wire codec, DLPack export, byte equality.

The public classes live in ``quill/tensor.py``; this module holds only the parts that touch raw
memory. Every length is checked before a byte is read (docs/protocol.md section 4 and its **Ours**
rules), and bad input raises :class:`~quill.errors.DecodeError` with the offset of the bad field.

>>> from quill._core.tensor import encode_meta, decode_meta
>>> from quill.dtypes import DType
>>> wire = encode_meta((2, 3), DType.float32(), "w", 0)
>>> wire.hex()
'020200000000000000030000000000000001001800000000000000010077'
>>> decode_meta(wire)
((2, 3), 1, 0, 6, 24, 'w')
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint64_t, UINT64_MAX
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

import sys

from quill.dtypes import DType
from quill.errors import DecodeError, EncodeError, LimitExceededError


cdef extern from "tensor_dlpack.h" nogil:
    int QUILL_DLPACK_MAJOR
    int QUILL_DLPACK_MINOR
    int QUILL_kDLCPU
    int QUILL_kDLInt
    int QUILL_kDLUInt
    int QUILL_kDLFloat
    int QUILL_kDLBfloat
    int QUILL_kDLBool
    uint64_t QUILL_DLPACK_FLAG_READ_ONLY
    uint64_t QUILL_DLPACK_FLAG_IS_COPIED

    ctypedef struct DLPackVersion:
        unsigned int major
        unsigned int minor

    ctypedef struct DLDevice:
        int device_type
        int device_id

    ctypedef struct DLDataType:
        uint8_t code
        uint8_t bits
        uint16_t lanes

    ctypedef struct DLTensor:
        void *data
        DLDevice device
        int ndim
        DLDataType dtype
        int64_t *shape
        int64_t *strides
        uint64_t byte_offset

    ctypedef struct DLManagedTensor:
        DLTensor dl_tensor
        void *manager_ctx
        void (*deleter)(DLManagedTensor *) noexcept nogil

    ctypedef struct DLManagedTensorVersioned:
        DLPackVersion version
        void *manager_ctx
        void (*deleter)(DLManagedTensorVersioned *) noexcept nogil
        uint64_t flags
        DLTensor dl_tensor


cdef extern from "Python.h":
    # Declared with PyObject* (not object) so that capsule destructors, which run while the
    # capsule's refcount is already zero, never touch reference counts.
    ctypedef void (*capsule_destructor_t)(PyObject *) noexcept
    object PyCapsule_New(void *pointer, const char *name, capsule_destructor_t destructor)
    int PyCapsule_IsValid(PyObject *capsule, const char *name) noexcept
    void *PyCapsule_GetPointer(PyObject *capsule, const char *name) noexcept
    void PyErr_Fetch(PyObject **type, PyObject **value, PyObject **traceback) noexcept
    void PyErr_Restore(PyObject *type, PyObject *value, PyObject *traceback) noexcept
    void PyErr_WriteUnraisable(PyObject *obj) noexcept
    int Py_IsInitialized() noexcept nogil


cdef enum:
    MAX_NDIM = 255              # ndim is a u8 on the wire
    MAX_NAME_BYTES = 65535      # name_len is a u16 on the wire
    EQUAL_NOGIL_THRESHOLD = 65536

# Element size per wire dtype code, 0 for codes the registry does not know; filled from
# quill.dtypes at import so the registry stays the single source of truth.
cdef uint8_t ELEMENT_SIZES[256]
memset(ELEMENT_SIZES, 0, sizeof(ELEMENT_SIZES))
for _code in range(1, 256):
    try:
        ELEMENT_SIZES[_code] = DType.from_code(_code).element_size
    except ValueError:
        pass

_VALID_CODES = ", ".join(f"{c} ({DType.from_code(c).name})" for c in range(256) if ELEMENT_SIZES[c])


# -- little-endian field access ----------------------------------------------------------------

cdef inline uint64_t load_u64le(const uint8_t *p) noexcept nogil:
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
            | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48)
            | (<uint64_t>p[7] << 56))


cdef inline void store_u64le(uint8_t *p, uint64_t value) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(value >> (8 * i))


cdef inline Py_ssize_t checked_byte_size(const uint64_t *dims, Py_ssize_t ndim,
                                         uint64_t element_size, uint64_t *out) noexcept nogil:
    """Store product(dims) * element_size in ``out`` and return -1, or return the index of the
    dimension at which that product leaves u64. Any zero dimension makes the size 0."""
    cdef Py_ssize_t i
    cdef uint64_t total = element_size
    for i in range(ndim):
        if dims[i] == 0:
            out[0] = 0
            return -1
    for i in range(ndim):
        if dims[i] > UINT64_MAX / total:
            return i
        total *= dims[i]
    out[0] = total
    return -1


# -- TENSOR_META codec ---------------------------------------------------------------------------

def encode_meta(shape, dtype, name, int device_code):
    """The TENSOR_META payload (docs/protocol.md section 4) for ``shape`` of ``dtype`` on ``device_code``.

    Raises :class:`~quill.errors.EncodeError` where the reference would silently wrap a field:
    more than 255 dimensions, a name over 65,535 UTF-8 bytes, a name that is not valid Unicode,
    or a shape whose byte size does not fit u64.

    >>> encode_meta((), DType.uint8(), None, 0).hex()
    '00080001000000000000000000'
    """
    shape = tuple(shape)
    cdef Py_ssize_t ndim = len(shape), i, pos
    cdef uint64_t dims[MAX_NDIM]
    cdef uint64_t byte_size = 0
    cdef uint8_t element_size = ELEMENT_SIZES[<uint8_t>dtype.code]
    cdef bytes name_bytes, out
    cdef uint8_t *p
    if ndim > MAX_NDIM:
        raise EncodeError(f"a tensor meta carries at most {MAX_NDIM} dimensions, this shape has {ndim} "
                          "(the reference would wrap the u8 count and corrupt the stream)")
    if device_code != 0 and device_code != 1:
        raise EncodeError(f"unknown device code {device_code}; valid codes are 0 (cpu) and 1 (cuda)")
    if name is None:
        name_bytes = b""
    else:
        try:
            name_bytes = name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodeError(f"tensor name {name!r} is not valid Unicode: {exc.reason} "
                              f"at position {exc.start}") from None
    if len(name_bytes) > MAX_NAME_BYTES:
        raise EncodeError(f"tensor name is {len(name_bytes)} UTF-8 bytes; the wire format allows at most "
                          f"{MAX_NAME_BYTES} (the reference would wrap the u16 length)")
    for i in range(ndim):
        try:
            dims[i] = shape[i]
        except OverflowError:
            raise EncodeError(f"dimension {i} of shape {shape} is outside 0..2**64-1") from None
    if checked_byte_size(dims, ndim, element_size, &byte_size) >= 0:
        raise EncodeError(f"shape {shape} of {dtype.name} holds more than 2**64-1 bytes")

    out = PyBytes_FromStringAndSize(NULL, 1 + 8 * ndim + 1 + 1 + 8 + 2 + len(name_bytes))
    p = <uint8_t *>PyBytes_AS_STRING(out)
    p[0] = <uint8_t>ndim
    pos = 1
    for i in range(ndim):
        store_u64le(p + pos, dims[i])
        pos += 8
    p[pos] = <uint8_t>dtype.code
    p[pos + 1] = <uint8_t>device_code
    store_u64le(p + pos + 2, byte_size)
    p[pos + 10] = <uint8_t>(len(name_bytes) & 0xFF)
    p[pos + 11] = <uint8_t>(len(name_bytes) >> 8)
    memcpy(p + pos + 12, PyBytes_AS_STRING(name_bytes), len(name_bytes))
    return out


def decode_meta(buf, max_bytes=None):
    """Decode one TENSOR_META payload: ``(shape, dtype_code, device_code, num_elements, byte_size, name)``.

    ``buf`` is any C-contiguous bytes-like object and must hold exactly one meta. Raises
    :class:`~quill.errors.DecodeError` (with ``.offset``) for truncation, unknown dtype or device
    codes, a shape whose byte size overflows u64, a ``byte_size`` field that disagrees with the
    shape, a name running past the end, or bytes left after the name; raises
    :class:`~quill.errors.LimitExceededError` when the tensor is larger than ``max_bytes``, before
    anything is allocated. Invalid UTF-8 in the name becomes U+FFFD, as in the reference.

    >>> decode_meta(bytes.fromhex("00010004000000000000000000"))
    ((), 1, 0, 1, 4, None)
    """
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        return _decode_meta(<const uint8_t *>view.buf, view.len, max_bytes)
    finally:
        PyBuffer_Release(&view)


cdef tuple _decode_meta(const uint8_t *p, Py_ssize_t n, object max_bytes):
    cdef uint64_t dims[MAX_NDIM]
    cdef uint64_t declared, byte_size = 0
    cdef Py_ssize_t ndim, i, pos, overflow_at, name_len, name_pos, end
    cdef uint8_t code, device, element_size
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0 or None, got {max_bytes!r}")
    if n == 0:
        raise DecodeError("empty tensor meta (a meta is at least 13 bytes)", 0)
    ndim = p[0]
    if n < 1 + 8 * ndim + 12:
        raise DecodeError(f"truncated tensor meta: {ndim} dimension(s) need at least {1 + 8 * ndim + 12} "
                          f"bytes, got {n}", n)
    pos = 1
    for i in range(ndim):
        dims[i] = load_u64le(p + pos + 8 * i)
    pos += 8 * ndim
    code = p[pos]
    element_size = ELEMENT_SIZES[code]
    if element_size == 0:
        hint = " (0 means unspecified)" if code == 0 else ""
        raise DecodeError(f"unknown dtype code {code}{hint}; valid codes are {_VALID_CODES}", pos)
    device = p[pos + 1]
    if device > 1:
        raise DecodeError(f"unknown device code {device}; valid codes are 0 (cpu) and 1 (cuda)", pos + 1)
    pos += 2
    declared = load_u64le(p + pos)
    overflow_at = checked_byte_size(dims, ndim, element_size, &byte_size)
    if overflow_at >= 0:
        shape = tuple([dims[i] for i in range(ndim)])
        raise DecodeError(f"shape {shape} of {DType.from_code(code).name} holds more than 2**64-1 bytes "
                          f"(overflows at dimension {overflow_at})", 1 + 8 * overflow_at)
    if declared != byte_size:
        shape = tuple([dims[i] for i in range(ndim)])
        raise DecodeError(f"byte_size field says {declared} bytes but shape {shape} of "
                          f"{DType.from_code(code).name} needs {byte_size}", pos)
    if max_bytes is not None and byte_size > max_bytes:
        raise LimitExceededError(f"tensor of {byte_size} bytes exceeds the limit of {max_bytes} bytes", pos)
    pos += 8
    name_len = p[pos] | (<Py_ssize_t>p[pos + 1] << 8)
    name_pos = pos + 2
    if n - name_pos < name_len:
        raise DecodeError(f"truncated tensor meta: the name is {name_len} bytes but only "
                          f"{n - name_pos} remain", name_pos)
    end = name_pos + name_len
    if end != n:
        raise DecodeError(f"{n - end} unexpected byte(s) after the tensor meta, which ends at offset {end}",
                          end)
    name = PyUnicode_DecodeUTF8(<const char *>p + name_pos, name_len, "replace") if name_len else None
    shape = tuple([dims[i] for i in range(ndim)])
    return shape, code, device, byte_size // element_size, byte_size, name


# -- byte equality -----------------------------------------------------------------------------

def buffers_equal(a, b):
    """True when two C-contiguous buffers hold the same bytes (memcmp, GIL released when large).

    >>> buffers_equal(b"ab", bytearray(b"ab")), buffers_equal(b"ab", b"abc")
    (True, False)
    """
    cdef Py_buffer va, vb
    cdef int diff
    PyObject_GetBuffer(a, &va, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(b, &vb, PyBUF_SIMPLE)
        try:
            if va.len != vb.len:
                return False
            if va.len < EQUAL_NOGIL_THRESHOLD:
                diff = memcmp(va.buf, vb.buf, va.len)
            else:
                with nogil:
                    diff = memcmp(va.buf, vb.buf, va.len)
            return diff == 0
        finally:
            PyBuffer_Release(&vb)
    finally:
        PyBuffer_Release(&va)


# -- DLPack export -----------------------------------------------------------------------------
#
# One malloc'd block per export: the managed tensor struct, the Py_buffer that keeps the
# tensor's memory alive (and, for bytearray/mmap owners, pinned), then shape and strides.
# The consumer calls the struct's deleter when it is done, from any thread; the capsule's
# destructor calls it only if no consumer ever renamed the capsule to "used_...".

cdef struct LegacyExport:
    DLManagedTensor managed
    Py_buffer view

cdef struct VersionedExport:
    DLManagedTensorVersioned managed
    Py_buffer view


cdef void legacy_deleter(DLManagedTensor *managed) noexcept nogil:
    if not Py_IsInitialized():
        return  # interpreter gone: leak rather than touch Python objects
    with gil:
        PyBuffer_Release(&(<LegacyExport *>managed).view)
    free(managed)


cdef void versioned_deleter(DLManagedTensorVersioned *managed) noexcept nogil:
    if not Py_IsInitialized():
        return
    with gil:
        PyBuffer_Release(&(<VersionedExport *>managed).view)
    free(managed)


cdef void legacy_capsule_destructor(PyObject *capsule) noexcept:
    cdef PyObject *exc_type = NULL
    cdef PyObject *exc_value = NULL
    cdef PyObject *exc_tb = NULL
    cdef DLManagedTensor *managed
    if PyCapsule_IsValid(capsule, b"used_dltensor"):
        return  # a consumer took ownership and will call the deleter
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb)
    managed = <DLManagedTensor *>PyCapsule_GetPointer(capsule, b"dltensor")
    if managed == NULL:
        PyErr_WriteUnraisable(capsule)
    elif managed.deleter != NULL:
        managed.deleter(managed)
    PyErr_Restore(exc_type, exc_value, exc_tb)


cdef void versioned_capsule_destructor(PyObject *capsule) noexcept:
    cdef PyObject *exc_type = NULL
    cdef PyObject *exc_value = NULL
    cdef PyObject *exc_tb = NULL
    cdef DLManagedTensorVersioned *managed
    if PyCapsule_IsValid(capsule, b"used_dltensor_versioned"):
        return
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb)
    managed = <DLManagedTensorVersioned *>PyCapsule_GetPointer(capsule, b"dltensor_versioned")
    if managed == NULL:
        PyErr_WriteUnraisable(capsule)
    elif managed.deleter != NULL:
        managed.deleter(managed)
    PyErr_Restore(exc_type, exc_value, exc_tb)


cdef DLDataType dl_dtype(dtype) except *:
    cdef DLDataType result
    if dtype.name == "bfloat16":
        result.code = QUILL_kDLBfloat
    elif dtype.is_float():
        result.code = QUILL_kDLFloat
    elif dtype.name == "bool":
        result.code = QUILL_kDLBool
    elif dtype.is_signed():
        result.code = QUILL_kDLInt
    else:
        result.code = QUILL_kDLUInt
    result.bits = 8 * dtype.element_size
    result.lanes = 1
    return result


cdef int fill_dl_tensor(DLTensor *tensor, tuple shape, int64_t *dims, DLDataType dtype) except -1:
    """Describe a C-contiguous CPU array of ``shape``; shape and strides go in ``dims`` (2 x ndim)."""
    cdef Py_ssize_t ndim = len(shape), i
    cdef int64_t stride = 1
    tensor.data = NULL
    tensor.device.device_type = QUILL_kDLCPU
    tensor.device.device_id = 0
    tensor.ndim = <int>ndim
    tensor.dtype = dtype
    tensor.shape = dims
    tensor.strides = dims + ndim
    tensor.byte_offset = 0  # data is not 256-byte aligned; byte_offset 0 is what consumers expect
    for i in range(ndim - 1, -1, -1):
        dims[i] = shape[i]
        dims[ndim + i] = stride
        stride *= dims[i] if dims[i] > 1 else 1
    return 0


def _parse_max_version(max_version):
    if max_version is None:
        return 0
    if not isinstance(max_version, tuple) or len(max_version) != 2:
        raise TypeError(f"max_version must be None or a (major, minor) tuple, got {max_version!r}")
    return int(max_version[0])


def export_dlpack(data, shape, dtype, *, stream=None, max_version=None, dl_device=None, copy=None):
    """A DLPack capsule over ``data``, the C-contiguous little-endian bytes of a ``shape`` x ``dtype`` tensor.

    Follows the Python array API ``__dlpack__`` rules as numpy does: a versioned (DLPack 1.0)
    capsule named ``"dltensor_versioned"`` when ``max_version`` allows major version 1, else a
    legacy ``"dltensor"`` capsule; the consumer renames it to ``"used_..."`` and then owns the
    deleter. bfloat16 is exported as kDLBfloat and bool as kDLBool. Read-only memory can only be
    exported in a versioned capsule (which carries the read-only flag) or with ``copy=True``.
    ``copy=True`` exports a private copy; ``copy=False`` and ``None`` never copy. ValueError when
    ``data`` does not hold exactly the shape's bytes (a consumer would read past its end).

    >>> capsule = export_dlpack(bytearray(4), (2, 2), DType.uint8())
    >>> type(capsule).__name__
    'PyCapsule'
    """
    shape = tuple(shape)
    cdef Py_ssize_t ndim = len(shape), i
    cdef uint64_t dims[MAX_NDIM]
    cdef uint64_t byte_size = 0
    cdef size_t head
    cdef char *block
    cdef LegacyExport *legacy
    cdef VersionedExport *versioned
    cdef Py_buffer *view
    cdef DLTensor *tensor
    cdef DLDataType dtype_dl = dl_dtype(dtype)
    cdef bint use_versioned = _parse_max_version(max_version) >= 1
    if stream is not None:
        raise ValueError(f"quill tensors live in host memory: stream must be None, got {stream!r}")
    if dl_device is not None:
        if not isinstance(dl_device, tuple) or len(dl_device) != 2:
            raise TypeError(f"dl_device must be None or a (device_type, device_id) tuple, got {dl_device!r}")
        if tuple(dl_device) != (QUILL_kDLCPU, 0):
            raise BufferError(f"quill tensors live in host memory (kDLCPU, 0); cannot export to {dl_device!r}")
    if copy is not None and copy is not True and copy is not False:
        raise ValueError(f"copy must be True, False or None, got {copy!r}")
    if sys.byteorder != "little" and dtype.element_size > 1:
        raise BufferError("DLPack needs native byte order; quill tensors are little-endian and this host is not")
    if ndim > MAX_NDIM:
        raise ValueError(f"a quill tensor has at most {MAX_NDIM} dimensions, this shape has {ndim}")
    for i in range(ndim):
        if shape[i] < 0:
            raise ValueError(f"dimension {i} of shape {shape} is negative")
        if shape[i] > 0x7FFFFFFFFFFFFFFF:
            raise BufferError(f"dimension {i} of shape {shape} does not fit DLPack's int64")
        dims[i] = shape[i]
    if checked_byte_size(dims, ndim, dtype.element_size, &byte_size) >= 0:
        raise ValueError(f"shape {shape} of {dtype.name} holds more than 2**64-1 bytes")
    if copy:
        data = bytearray(data)
    if not use_versioned and memoryview(data).readonly:
        raise BufferError("cannot export a read-only tensor in a legacy DLPack capsule, which cannot signal "
                          "read-only memory; ask for max_version=(1, 0) or pass copy=True")

    head = sizeof(VersionedExport) if use_versioned else sizeof(LegacyExport)
    block = <char *>malloc(head + 2 * ndim * sizeof(int64_t))
    if block == NULL:
        raise MemoryError()
    versioned = <VersionedExport *>block
    legacy = <LegacyExport *>block
    tensor = &versioned.managed.dl_tensor if use_versioned else &legacy.managed.dl_tensor
    view = &versioned.view if use_versioned else &legacy.view
    try:
        fill_dl_tensor(tensor, shape, <int64_t *>(block + head), dtype_dl)
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    except BaseException:
        free(block)
        raise
    if <uint64_t>view.len != byte_size:   # checked on the view itself: the bytes the consumer gets
        PyBuffer_Release(view)
        free(block)
        raise ValueError(f"data holds {view.len} bytes but shape {shape} of {dtype.name} needs {byte_size}")
    tensor.data = view.buf
    if use_versioned:
        versioned.managed.version.major = QUILL_DLPACK_MAJOR
        versioned.managed.version.minor = QUILL_DLPACK_MINOR
        versioned.managed.manager_ctx = block
        versioned.managed.deleter = versioned_deleter
        versioned.managed.flags = ((QUILL_DLPACK_FLAG_READ_ONLY if view.readonly else 0)
                                   | (QUILL_DLPACK_FLAG_IS_COPIED if copy else 0))
        try:
            return PyCapsule_New(block, b"dltensor_versioned", versioned_capsule_destructor)
        except BaseException:
            versioned_deleter(&versioned.managed)
            raise
    legacy.managed.manager_ctx = block
    legacy.managed.deleter = legacy_deleter
    try:
        return PyCapsule_New(block, b"dltensor", legacy_capsule_destructor)
    except BaseException:
        legacy_deleter(&legacy.managed)
        raise
