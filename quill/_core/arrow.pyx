# cython: freethreading_compatible = True
# (audited for running without the GIL: docs/memory-safety.md, "Free-threaded CPython")
"""Arrow export without pyarrow: the Arrow C data and C stream interfaces, and PyCapsules.

This module builds ``ArrowSchema``, ``ArrowArray`` and ``ArrowArrayStream`` structs over quill's
own memory and wraps them in the PyCapsules of the Arrow PyCapsule Interface (named
``"arrow_schema"``, ``"arrow_array"`` and ``"arrow_array_stream"``). A capsule's destructor
releases the struct unless a consumer moved it out (and marked it released, as the spec says).
Every exported array holds a reference to the memory it points into, released by its release
callback from whatever thread the consumer calls it, so an array outlives the object it came from.

The import side (reading any producer's structs back) is :mod:`quill._core.arrow_import`.
``TokenBatch`` and ``Tensor`` call in here from their ``__arrow_c_*__`` methods;
:func:`token_batch_stream` is the stream over an iterator of batches.

>>> from quill._core.tokens import Token, TokenBatch
>>> capsule = token_batch_stream(iter([TokenBatch.from_tokens([Token(7, 0, "Hi")])]))
>>> type(capsule).__name__
'PyCapsule'
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.ref cimport PyObject, Py_XDECREF, Py_XINCREF
cimport cython
from libc.errno cimport EINVAL, EIO, ENOMEM
from libc.stdint cimport INT32_MAX, int32_t, int64_t, uint8_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, strcmp, strlen

import json
import sys


cdef extern from "arrow_abi.h" nogil:
    void quill_pack_bits(const uint8_t *values, int64_t n, int k, const uint8_t *masks, uint8_t **bitmaps,
                         int64_t *set)

cdef extern from "Python.h":
    # PyObject* rather than object: capsule destructors run at refcount zero and must not
    # touch reference counts (as in quill/_core/tensor.pyx).
    ctypedef void (*capsule_destructor_t)(PyObject *) noexcept
    object PyCapsule_New(void *pointer, const char *name, capsule_destructor_t destructor)
    void *PyCapsule_GetPointer(PyObject *capsule, const char *name) noexcept
    int PyCapsule_IsValid(PyObject *capsule, const char *name) noexcept
    void PyErr_Fetch(PyObject **type, PyObject **value, PyObject **traceback) noexcept
    void PyErr_Restore(PyObject *type, PyObject *value, PyObject *traceback) noexcept
    void PyErr_WriteUnraisable(PyObject *obj) noexcept
    void PyErr_SetInterrupt() noexcept
    int Py_IsInitialized() noexcept nogil


# Stand-ins for buffers of an empty array: the spec allows NULL only for zero-sized buffers,
# and an offsets buffer always holds one entry.
cdef int64_t ZERO_OFFSET = 0
cdef uint8_t EMPTY_BYTE = 0
cdef uint8_t ALL_BITS = 0xFF
cdef enum:
    NOGIL_MIN_TOKENS = 65536   # below this, releasing the GIL costs more than it frees

# The quill dtype names Arrow can carry, and their format strings.
TENSOR_FORMATS = {"float32": b"f", "float64": b"g", "float16": b"e", "int8": b"c", "int32": b"i",
                  "int64": b"l", "uint8": b"C", "bool": b"b"}
FIXED_SHAPE_TENSOR = "arrow.fixed_shape_tensor"


# ---------------------------------------------------------------------------------------------
# Schemas. A schema is described by a spec tuple (format, name, metadata, flags, child specs),
# formats and names as bytes, metadata as the encoded bytes or None.

cdef struct SchemaPrivate:
    ArrowSchema **child_pointers   # with the child structs after them, in one allocation


cdef void release_schema(ArrowSchema *schema) noexcept nogil:
    cdef int64_t i
    cdef SchemaPrivate *private = <SchemaPrivate *>schema.private_data
    for i in range(schema.n_children):
        if schema.children[i].release != NULL:
            schema.children[i].release(schema.children[i])
    free(private.child_pointers)
    free(private)      # the format, name and metadata strings live in the same block
    schema.release = NULL


cdef int fill_schema(ArrowSchema *out, tuple spec) except -1:
    """Build ``out`` from ``spec``; on error ``out`` is left released."""
    cdef bytes format = spec[0], name = spec[1]
    cdef object metadata = spec[2]
    cdef tuple children = spec[4]
    cdef Py_ssize_t n = len(children), i
    cdef Py_ssize_t meta_len = len(metadata) if metadata is not None else 0
    cdef char *block = <char *>malloc(sizeof(SchemaPrivate) + len(format) + len(name) + 2 + meta_len)
    cdef char *strings
    cdef ArrowSchema *child_structs
    out.release = NULL
    if block == NULL:
        raise MemoryError()
    strings = block + sizeof(SchemaPrivate)
    memcpy(strings, <char *>format, len(format) + 1)
    out.format = strings
    strings += len(format) + 1
    memcpy(strings, <char *>name, len(name) + 1)
    out.name = strings
    out.metadata = NULL
    if metadata is not None:
        memcpy(strings + len(name) + 1, <char *>metadata, meta_len)
        out.metadata = strings + len(name) + 1
    out.flags = spec[3]
    out.n_children = n
    out.children = NULL
    out.dictionary = NULL
    out.private_data = block
    (<SchemaPrivate *>block).child_pointers = NULL
    if n:
        out.children = <ArrowSchema **>malloc(n * (sizeof(ArrowSchema *) + sizeof(ArrowSchema)))
        if out.children == NULL:
            free(block)
            raise MemoryError()
        (<SchemaPrivate *>block).child_pointers = out.children
        child_structs = <ArrowSchema *>(out.children + n)
        for i in range(n):
            out.children[i] = &child_structs[i]
            child_structs[i].release = NULL
    out.release = release_schema
    try:
        for i in range(n):
            fill_schema(out.children[i], children[i])
    except BaseException:
        out.release(out)
        raise
    return 0


cdef bytes encode_metadata(dict metadata):
    """Arrow's metadata encoding: int32 count, then int32 length and bytes of each key and value."""
    cdef list parts = [len(metadata).to_bytes(4, sys.byteorder)]
    for key, value in metadata.items():
        for text in (key, value):
            raw = text.encode()
            parts.append(len(raw).to_bytes(4, sys.byteorder))
            parts.append(raw)
    return b"".join(parts)


cdef void schema_capsule_destructor(PyObject *capsule) noexcept:
    cdef ArrowSchema *schema = <ArrowSchema *>PyCapsule_GetPointer(capsule, b"arrow_schema")
    if schema == NULL:
        PyErr_WriteUnraisable(capsule)
        return
    if schema.release != NULL:    # NULL when a consumer moved the struct out
        schema.release(schema)
    free(schema)


cdef object schema_capsule(tuple spec):
    cdef ArrowSchema *schema = <ArrowSchema *>malloc(sizeof(ArrowSchema))
    if schema == NULL:
        raise MemoryError()
    try:
        fill_schema(schema, spec)
        return PyCapsule_New(schema, b"arrow_schema", schema_capsule_destructor)
    except BaseException:
        if schema.release != NULL:
            schema.release(schema)
        free(schema)
        raise


# ---------------------------------------------------------------------------------------------
# Arrays. Each node's private data holds its buffer pointers, a reference to the Python object
# owning the memory (or a Py_buffer held on it), and a malloc'd buffer it owns (a bitmap).

cdef struct ArrayPrivate:
    PyObject *owner                # a reference keeping borrowed memory alive, or NULL
    Py_buffer view                 # held on the owner's memory when has_view
    bint has_view
    void *owned                    # a malloc'd buffer this node points to, or NULL
    ArrowArray **child_pointers    # with the child structs after them, in one allocation
    const void *buffers[3]


cdef void release_array(ArrowArray *array) noexcept nogil:
    cdef int64_t i
    cdef ArrayPrivate *private = <ArrayPrivate *>array.private_data
    for i in range(array.n_children):
        if array.children[i].release != NULL:
            array.children[i].release(array.children[i])
    if (private.owner != NULL or private.has_view) and Py_IsInitialized():
        with gil:   # consumers release from any thread, with or without the GIL
            if private.has_view:
                PyBuffer_Release(&private.view)
            Py_XDECREF(private.owner)
    free(private.owned)
    free(private.child_pointers)
    free(private)
    array.release = NULL


cdef ArrayPrivate *new_array(ArrowArray *out, int64_t length, int64_t n_buffers, int64_t n_children,
                             object owner) except NULL:
    """Make ``out`` a released-safe node with no nulls and NULL buffers, to be filled in."""
    cdef int64_t i
    cdef ArrayPrivate *private = <ArrayPrivate *>calloc(1, sizeof(ArrayPrivate))
    cdef ArrowArray *child_structs
    if private == NULL:
        raise MemoryError()
    if n_children:
        private.child_pointers = <ArrowArray **>malloc(n_children * (sizeof(ArrowArray *) + sizeof(ArrowArray)))
        if private.child_pointers == NULL:
            free(private)
            raise MemoryError()
        child_structs = <ArrowArray *>(private.child_pointers + n_children)
        for i in range(n_children):
            private.child_pointers[i] = &child_structs[i]
            child_structs[i].release = NULL
    if owner is not None:
        private.owner = <PyObject *>owner
        Py_XINCREF(private.owner)
    out.length = length
    out.null_count = 0
    out.offset = 0
    out.n_buffers = n_buffers
    out.n_children = n_children
    out.buffers = private.buffers
    out.children = private.child_pointers
    out.dictionary = NULL
    out.private_data = private
    out.release = release_array
    return private


cdef uint8_t *own_bitmap(ArrayPrivate *private, int64_t bits) except? NULL:
    """A zeroed bitmap of ``bits`` bits owned by the node (NULL for zero bits)."""
    if bits == 0:
        return NULL
    private.owned = calloc((bits + 7) // 8, 1)
    if private.owned == NULL:
        raise MemoryError()
    return <uint8_t *>private.owned


cdef int fill_values(ArrowArray *out, int64_t length, const void *values, object owner) except -1:
    """A primitive column over ``values`` (not copied); ``owner`` keeps them alive."""
    cdef ArrayPrivate *private = new_array(out, length, 2, 0, owner)
    private.buffers[1] = values
    return 0


# ---------------------------------------------------------------------------------------------
# TokenBatch as a record batch

cdef tuple TOKEN_FIELDS = (
    (b"I", b"id", 0, ()), (b"I", b"position", 0, ()), (b"f", b"logprob", ARROW_FLAG_NULLABLE, ()),
    (b"U", b"text", ARROW_FLAG_NULLABLE, ()), (b"b", b"is_special", 0, ()),
)


cdef object token_schema(dict metadata):
    """An "arrow_schema" capsule: the record batch schema of a TokenBatch."""
    return schema_capsule(token_schema_spec(metadata))


cdef tuple token_schema_spec(dict metadata):
    fields = tuple((fmt, name, None, flags, children) for fmt, name, flags, children in TOKEN_FIELDS)
    return (b"+s", b"", encode_metadata(metadata) if metadata else None, 0, fields)


cdef tuple export_token_columns(const TokenColumns *columns, object owner, dict metadata):
    """("arrow_schema", "arrow_array") capsules of a record batch over ``columns``: the id,
    position, logprob values and text offsets and bytes are not copied (``owner`` keeps them
    alive and unchanged); the validity bitmaps and the is_special bitmap are built here, in one
    pass over the flags."""
    cdef ArrowArray *array = <ArrowArray *>malloc(sizeof(ArrowArray))
    cdef int64_t n = columns.count
    cdef ArrowArray *logprob
    cdef ArrowArray *text
    cdef ArrayPrivate *private[3]
    cdef uint8_t *bitmaps[3]
    cdef uint8_t masks[3]
    cdef int64_t set_bits[3]
    cdef int i
    if array == NULL:
        raise MemoryError()
    array.release = NULL
    try:
        schema = token_schema(metadata)
        new_array(array, n, 1, 5, None)
        fill_values(array.children[0], n, columns.ids, owner)
        fill_values(array.children[1], n, columns.positions, owner)
        logprob, text = array.children[2], array.children[3]
        private[0] = new_array(logprob, n, 2, 0, owner)
        private[1] = new_array(text, n, 3, 0, owner)
        private[2] = new_array(array.children[4], n, 2, 0, None)
        masks[0], masks[1], masks[2] = TOKEN_HAS_LOGPROB, TOKEN_HAS_TEXT, TOKEN_IS_SPECIAL
        for i in range(3):
            bitmaps[i] = own_bitmap(private[i], n)
        if n >= NOGIL_MIN_TOKENS:   # the pinned columns cannot change meanwhile
            with nogil:
                quill_pack_bits(columns.flags, n, 3, masks, bitmaps, set_bits)
        elif n:
            quill_pack_bits(columns.flags, n, 3, masks, bitmaps, set_bits)
        else:
            set_bits[0] = set_bits[1] = set_bits[2] = 0
        logprob.null_count = n - set_bits[0]
        private[0].buffers[0] = bitmaps[0] if logprob.null_count else NULL
        private[0].buffers[1] = columns.logprob_bits
        text.null_count = n - set_bits[1]
        private[1].buffers[0] = bitmaps[1] if text.null_count else NULL
        private[1].buffers[1] = columns.text_offsets if n else <const void *>&ZERO_OFFSET
        private[1].buffers[2] = columns.text if columns.text != NULL else <const void *>&EMPTY_BYTE
        private[2].buffers[1] = bitmaps[2]
        return schema, PyCapsule_New(array, b"arrow_array", array_capsule_destructor)
    except BaseException:
        if array.release != NULL:
            array.release(array)
        free(array)
        raise


cdef void array_capsule_destructor(PyObject *capsule) noexcept:
    cdef ArrowArray *array = <ArrowArray *>PyCapsule_GetPointer(capsule, b"arrow_array")
    if array == NULL:
        PyErr_WriteUnraisable(capsule)
        return
    if array.release != NULL:
        array.release(array)
    free(array)


# ---------------------------------------------------------------------------------------------
# Tensor as arrow.fixed_shape_tensor: rows along the first dimension

cdef tuple tensor_spec(tuple shape, object dtype, object name):
    """The schema spec of a tensor of ``shape``: ``shape[0]`` rows, each a tensor of ``shape[1:]``."""
    cdef object row_size = 1
    fmt = TENSOR_FORMATS.get(dtype.name)
    if fmt is None:
        raise TypeError(f"Arrow has no {dtype.name} type; convert the tensor first, e.g. "
                        "tensor.astype('float32') (exact for bfloat16)")
    if not shape:
        raise ValueError("a 0-d tensor has no rows to export as an Arrow array; reshape it to [1] first")
    for dim in shape[1:]:
        row_size *= dim
    if row_size > INT32_MAX:
        raise ValueError(f"a row of shape {list(shape[1:])} holds {row_size} elements; an Arrow "
                         f"fixed-size list holds at most {INT32_MAX}")
    if shape[0] >= 2**63 or shape[0] * row_size >= 2**63:
        raise ValueError(f"a tensor of shape {list(shape)} holds more elements than Arrow's int64 lengths count")
    extension = {"ARROW:extension:name": FIXED_SHAPE_TENSOR,
                 "ARROW:extension:metadata": json.dumps({"shape": list(shape[1:])}, separators=(",", ":"))}
    item = (fmt, b"item", None, ARROW_FLAG_NULLABLE, ())
    return (b"+w:%d" % row_size, (name or "").encode(), encode_metadata(extension), 0, (item,)), row_size


def tensor_schema(shape, dtype, name):
    """The "arrow_schema" capsule of a tensor (see :func:`export_tensor`)."""
    return schema_capsule(tensor_spec(tuple(shape), dtype, name)[0])


def export_tensor(data, shape, dtype, name):
    """("arrow_schema", "arrow_array") capsules of a tensor as an ``arrow.fixed_shape_tensor``
    array: ``shape[0]`` rows, each a tensor of ``shape[1:]``, over ``data`` (its C-contiguous
    little-endian bytes, not copied: the array holds a buffer export of ``data``). bool tensors
    are the one exception, copied into an Arrow bitmap. bfloat16 raises TypeError (Arrow has no
    such type) and a 0-d tensor ValueError (it has no rows).

    >>> from quill.dtypes import DType
    >>> schema, array = export_tensor(bytearray(4), (2, 2), DType.uint8(), "t")
    """
    cdef ArrowArray *array
    cdef ArrayPrivate *values
    cdef uint8_t *bitmap
    cdef int64_t set_bits
    shape = tuple(shape)
    spec, row_size = tensor_spec(shape, dtype, name)
    cdef int64_t rows = shape[0]
    cdef int64_t elements = rows * row_size
    if sys.byteorder != "little" and dtype.element_size > 1:
        raise BufferError("Arrow arrays are in native byte order; quill tensors are little-endian and this host is not")
    array = <ArrowArray *>malloc(sizeof(ArrowArray))
    if array == NULL:
        raise MemoryError()
    array.release = NULL
    try:
        schema = schema_capsule(spec)
        new_array(array, rows, 1, 1, None)
        values = new_array(array.children[0], elements, 2, 0, None)
        PyObject_GetBuffer(data, &values.view, PyBUF_SIMPLE)
        values.has_view = True
        if values.view.len != elements * dtype.element_size:
            raise ValueError(f"tensor data holds {values.view.len} bytes; shape {list(shape)} of "
                             f"{dtype.name} needs {elements * dtype.element_size}")
        if dtype.name == "bool":
            bitmap = own_bitmap(values, elements)
            if elements:
                quill_pack_bits(<const uint8_t *>values.view.buf, elements, 1, &ALL_BITS, &bitmap, &set_bits)
            PyBuffer_Release(&values.view)   # copied: nothing to keep alive
            values.has_view = False
            values.buffers[1] = bitmap
        else:
            values.buffers[1] = values.view.buf if elements else <const void *>&EMPTY_BYTE
        return schema, PyCapsule_New(array, b"arrow_array", array_capsule_destructor)
    except BaseException:
        if array.release != NULL:
            array.release(array)
        free(array)
        raise


# ---------------------------------------------------------------------------------------------
# A C stream over a Python iterator of record batches (objects with __arrow_c_array__)

cdef struct StreamPrivate:
    PyObject *state        # a _StreamState
    char *error            # the last error message (malloc'd), or NULL
    int error_code         # once non-zero, every get_next returns it


cdef class _StreamState:
    cdef object iterator
    cdef tuple schema_spec
    cdef str item_kind     # what the items must be, for error messages
    cdef Py_ssize_t items_read


cdef int stream_fail(StreamPrivate *private, int code, str message) noexcept:
    """Remember the error (get_last_error returns it) and return its code."""
    cdef bytes raw = message.encode("utf-8", "replace")
    free(private.error)
    private.error = <char *>malloc(len(raw) + 1)
    if private.error != NULL:
        memcpy(private.error, <char *>raw, len(raw) + 1)
    private.error_code = code
    return code


cdef int stream_get_schema(ArrowArrayStream *stream, ArrowSchema *out) noexcept nogil:
    cdef StreamPrivate *private = <StreamPrivate *>stream.private_data
    if not Py_IsInitialized():
        return EIO
    with gil:
        try:
            fill_schema(out, (<_StreamState>private.state).schema_spec)
            return 0
        except MemoryError:
            return stream_fail(private, ENOMEM, "out of memory building the stream's schema")
        except BaseException as exc:
            return stream_fail(private, EIO, f"{type(exc).__name__}: {exc}")


cdef int stream_get_next(ArrowArrayStream *stream, ArrowArray *out) noexcept nogil:
    cdef StreamPrivate *private = <StreamPrivate *>stream.private_data
    if not Py_IsInitialized():
        return EIO
    with gil:
        state = <_StreamState>private.state
        # The C stream interface is one consumer's; calls from two threads at once (free-threaded)
        # are serialised on the state, so items are read, counted and failed one at a time.
        with cython.critical_section(state):
            return stream_next_locked(private, state, out)


cdef int stream_next_locked(StreamPrivate *private, _StreamState state, ArrowArray *out) noexcept:
    if private.error_code:
        return private.error_code
    try:
        item = next(state.iterator)
    except StopIteration:
        out.release = NULL    # the end of the stream
        return 0
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            PyErr_SetInterrupt()   # still delivered once the consumer returns to Python
        return stream_fail(private, EIO, f"the {state.item_kind} iterator raised "
                                         f"{type(exc).__name__}: {exc}")
    try:
        move_record_batch(item, state, out)
    except BaseException as exc:
        return stream_fail(private, EINVAL, f"{type(exc).__name__}: {exc}")
    state.items_read += 1
    return 0


cdef int move_record_batch(object item, _StreamState state, ArrowArray *out) except -1:
    """Export ``item`` into ``out``, checking that its schema is the stream's."""
    cdef ArrowSchema *schema
    cdef ArrowSchema *child
    cdef ArrowArray *array
    cdef tuple spec = state.schema_spec
    cdef Py_ssize_t i
    export = getattr(item, "__arrow_c_array__", None)
    if export is None:
        raise TypeError(f"item {state.items_read} of the stream is a {type(item).__name__}, "
                        f"not a {state.item_kind}")
    schema_cap, array_cap = export()
    if not (PyCapsule_IsValid(<PyObject *>schema_cap, b"arrow_schema")
            and PyCapsule_IsValid(<PyObject *>array_cap, b"arrow_array")):
        raise TypeError(f"item {state.items_read}'s __arrow_c_array__ did not return Arrow capsules")
    schema = <ArrowSchema *>PyCapsule_GetPointer(<PyObject *>schema_cap, b"arrow_schema")
    array = <ArrowArray *>PyCapsule_GetPointer(<PyObject *>array_cap, b"arrow_array")
    if schema.release == NULL or array.release == NULL or schema.format == NULL:
        raise TypeError(f"item {state.items_read}'s __arrow_c_array__ returned released capsules")
    matches = strcmp(schema.format, spec[0]) == 0 and schema.n_children == len(spec[4])
    for i in range(schema.n_children if matches else 0):
        child = schema.children[i]
        matches = (child != NULL and child.format != NULL and child.name != NULL
                   and strcmp(child.format, spec[4][i][0]) == 0 and strcmp(child.name, spec[4][i][1]) == 0)
        if not matches:
            break
    if not matches:
        raise TypeError(f"item {state.items_read} of the stream ({type(item).__name__}) does not have "
                        f"the stream's schema")
    memcpy(out, array, sizeof(ArrowArray))
    array.release = NULL      # moved: the capsule no longer owns it
    return 0


cdef const char *stream_get_last_error(ArrowArrayStream *stream) noexcept nogil:
    return (<StreamPrivate *>stream.private_data).error


cdef void stream_release(ArrowArrayStream *stream) noexcept nogil:
    cdef StreamPrivate *private = <StreamPrivate *>stream.private_data
    if Py_IsInitialized():
        with gil:
            Py_XDECREF(private.state)
    free(private.error)
    free(private)
    stream.release = NULL


cdef void stream_capsule_destructor(PyObject *capsule) noexcept:
    cdef ArrowArrayStream *stream = <ArrowArrayStream *>PyCapsule_GetPointer(capsule, b"arrow_array_stream")
    if stream == NULL:
        PyErr_WriteUnraisable(capsule)
        return
    if stream.release != NULL:
        stream.release(stream)
    free(stream)


cdef object record_batch_stream(object batches, tuple schema_spec, str item_kind):
    """An "arrow_array_stream" capsule reading ``batches`` (an iterable) as the consumer asks."""
    cdef _StreamState state = _StreamState.__new__(_StreamState)
    cdef ArrowArrayStream *stream
    cdef StreamPrivate *private
    state.iterator = iter(batches)
    state.schema_spec = schema_spec
    state.item_kind = item_kind
    stream = <ArrowArrayStream *>malloc(sizeof(ArrowArrayStream))
    private = <StreamPrivate *>calloc(1, sizeof(StreamPrivate))
    if stream == NULL or private == NULL:
        free(stream)
        free(private)
        raise MemoryError()
    private.state = <PyObject *>state
    Py_XINCREF(private.state)
    stream.get_schema = stream_get_schema
    stream.get_next = stream_get_next
    stream.get_last_error = stream_get_last_error
    stream.release = stream_release
    stream.private_data = private
    try:
        return PyCapsule_New(stream, b"arrow_array_stream", stream_capsule_destructor)
    except BaseException:
        stream.release(stream)
        free(stream)
        raise


def token_batch_stream(batches, metadata=None):
    """An "arrow_array_stream" capsule that reads TokenBatch objects from ``batches`` (any
    iterable, e.g. a generator fed by a network stream) one at a time, as the consumer asks.

    Every batch is exported as ``TokenBatch.__arrow_c_array__`` exports it (numeric and text
    columns zero-copy). The stream's schema is the TokenBatch schema with ``metadata`` (a dict of
    str to str, e.g. ``{"sequence_id": "7"}``) as its schema metadata: the C stream interface
    has one schema for all batches, so a batch's own sequence_id and is_final are not carried.
    An item that is not a TokenBatch, or an exception from the iterator, ends the stream with an
    error that the consumer reads through get_last_error (pyarrow raises it as an ArrowException).

    Give an object this stream as its ``__arrow_c_stream__`` and
    ``pyarrow.RecordBatchReader.from_stream(obj)`` reads the batches as they arrive.
    """
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(type(k) is str and type(v) is str for k, v in metadata.items())):
        raise TypeError(f"metadata must be a dict of str to str, got {metadata!r}")
    return record_batch_stream(batches, token_schema_spec(metadata), "TokenBatch")
