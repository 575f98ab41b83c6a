# cython: freethreading_compatible = True
# (audited for running without the GIL: docs/memory-safety.md, "Free-threaded CPython")
"""Arrow import without pyarrow: any producer's Arrow C data, checked, into quill's columns.

The way back of quill's Arrow support (export is :mod:`quill._core.arrow`). A source is any object
with the Arrow PyCapsule Interface: ``__arrow_c_stream__`` (read to its end, every chunk) or
else ``__arrow_c_array__``. This is a decoder: the schema is checked first (TypeError naming the
column and the type expected), then every array before a value is read (DecodeError): release
state, lengths and offsets, buffer and child counts, NULL buffers, null counts against the
validity bitmaps, string offsets that never decrease, string views inside their buffers, UTF-8.
What no consumer can check is a buffer's size, which the C data interface does not carry: the
sizes the interface implies (``offset + length`` values, the last string offset) are trusted.

>>> import quill._core.tokens  # TokenBatch.from_arrow and Tensor.from_arrow call in here
"""

from cpython.buffer cimport PyBuffer_FillInfo
from cpython.ref cimport PyObject
from libc.stdint cimport INT32_MAX, INT64_MAX, int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy

import json
import math
import os

from quill.errors import DecodeError

from quill._core.arrow cimport (ArrowArray, ArrowArrayStream, ArrowSchema, TOKEN_HAS_LOGPROB,
                           TOKEN_HAS_TEXT, TOKEN_IS_SPECIAL)


cdef extern from "arrow_abi.h" nogil:
    int quill_bit(const uint8_t *bitmap, int64_t i)
    int64_t quill_count_zero_bits(const uint8_t *bitmap, int64_t start, int64_t n)

cdef extern from "tokens_wire.h" nogil:
    int quill_is_utf8(const unsigned char *p, size_t n)

cdef extern from "Python.h":
    void *PyCapsule_GetPointer(PyObject *capsule, const char *name) noexcept
    int PyCapsule_IsValid(PyObject *capsule, const char *name) noexcept


cdef unsigned char EMPTY_BYTE = 0
cdef int64_t ZERO_OFFSET = 0

TYPE_NAMES = {"n": "null", "b": "bool", "c": "int8", "C": "uint8", "s": "int16", "S": "uint16",
              "i": "int32", "I": "uint32", "l": "int64", "L": "uint64", "e": "float16", "f": "float32",
              "g": "float64", "z": "binary", "Z": "large_binary", "vz": "binary_view", "u": "utf8",
              "U": "large_utf8", "vu": "utf8_view", "+s": "struct", "+l": "list", "+L": "large_list"}
DTYPE_NAMES = {"f": "float32", "g": "float64", "e": "float16", "c": "int8", "i": "int32", "l": "int64",
               "C": "uint8", "b": "bool"}
ELEMENT_SIZES = {"f": 4, "g": 8, "e": 2, "c": 1, "i": 4, "l": 8, "C": 1}
# TokenBatch columns: name -> (accepted formats, required, nullable)
TOKEN_COLUMNS = {"id": (("I",), True, False), "position": (("I",), True, False),
                 "logprob": (("f",), False, True), "text": (("U", "u", "vu"), False, True),
                 "is_special": (("b",), False, False)}


def type_name(str fmt):
    """A readable name for an Arrow format string: 'uint32 (I)'."""
    name = TYPE_NAMES.get(fmt) or ("fixed_size_list" if fmt.startswith("+w:") else None)
    return f"{name} ({fmt!r})" if name else repr(fmt)


# ---------------------------------------------------------------------------------------------
# Owning imported structs: each releases its struct when collected

cdef class _Schema:
    cdef ArrowSchema c

    def __dealloc__(self):
        if self.c.release != NULL:
            self.c.release(&self.c)


cdef class _Array:
    cdef ArrowArray c

    def __dealloc__(self):
        if self.c.release != NULL:
            self.c.release(&self.c)


cdef class _Stream:
    cdef ArrowArrayStream c

    def __dealloc__(self):
        if self.c.release != NULL:
            self.c.release(&self.c)

    cdef object error(self, int code, str call):
        cdef const char *message = self.c.get_last_error(&self.c)
        text = message.decode("utf-8", "replace") if message != NULL else "no message"
        return DecodeError(f"the Arrow stream's {call} failed with error {code} "
                           f"({os.strerror(code)}): {text}")


cdef class ArrowBuffer:
    """A read-only buffer over memory inside an imported Arrow array, which it keeps alive."""
    cdef object _owner
    cdef void *_data
    cdef Py_ssize_t _size

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self._data, self._size, 1, flags)


cdef void *capsule_pointer(object capsule, const char *name, str where) except NULL:
    if not PyCapsule_IsValid(<PyObject *>capsule, name):
        raise TypeError(f"{where} did not return a PyCapsule named {name.decode()!r}")
    return PyCapsule_GetPointer(<PyObject *>capsule, name)


cdef tuple read_source(object source, str who):
    """(_Schema, [_Array, ...]) moved out of the capsules of ``source``."""
    cdef _Schema schema = _Schema.__new__(_Schema)
    cdef _Stream stream
    cdef _Array array
    cdef ArrowArrayStream *stream_ptr
    cdef ArrowSchema *schema_ptr
    cdef ArrowArray *array_ptr
    cdef int code
    cdef list arrays = []
    export_stream = getattr(source, "__arrow_c_stream__", None)
    if export_stream is not None:
        stream = _Stream.__new__(_Stream)
        capsule = export_stream()   # referenced until the struct is moved out of it
        stream_ptr = <ArrowArrayStream *>capsule_pointer(capsule, b"arrow_array_stream", "__arrow_c_stream__()")
        if stream_ptr.release == NULL:
            raise DecodeError("__arrow_c_stream__() returned a released stream")
        stream.c = stream_ptr[0]
        stream_ptr.release = NULL          # moved out of the capsule
        if stream.c.get_schema == NULL or stream.c.get_next == NULL or stream.c.get_last_error == NULL:
            raise DecodeError("the Arrow stream lacks a callback")
        with nogil:
            code = stream.c.get_schema(&stream.c, &schema.c)
        if code:
            raise stream.error(code, "get_schema")
        while True:
            array = _Array.__new__(_Array)
            with nogil:
                code = stream.c.get_next(&stream.c, &array.c)
            if code:
                raise stream.error(code, "get_next")
            if array.c.release == NULL:
                break
            arrays.append(array)
    else:
        export_array = getattr(source, "__arrow_c_array__", None)
        if export_array is None:
            raise TypeError(f"{who} expects an object with the Arrow PyCapsule Interface (__arrow_c_stream__ "
                            f"or __arrow_c_array__: a pyarrow Table, RecordBatch or Array, a polars "
                            f"DataFrame, a DuckDB relation...), got {type(source).__name__}")
        capsules = export_array()
        if not (type(capsules) is tuple and len(capsules) == 2):
            raise TypeError("__arrow_c_array__() must return a (schema, array) pair of capsules")
        schema_ptr = <ArrowSchema *>capsule_pointer(capsules[0], b"arrow_schema", "__arrow_c_array__()")
        array_ptr = <ArrowArray *>capsule_pointer(capsules[1], b"arrow_array", "__arrow_c_array__()")
        array = _Array.__new__(_Array)
        schema.c = schema_ptr[0]
        schema_ptr.release = NULL
        array.c = array_ptr[0]
        array_ptr.release = NULL
        if array.c.release == NULL:
            raise DecodeError("__arrow_c_array__() returned a released array")
        arrays.append(array)
    if schema.c.release == NULL:
        raise DecodeError("the Arrow schema was already released")
    return schema, arrays


# ---------------------------------------------------------------------------------------------
# Checks shared by every column

cdef str schema_format(const ArrowSchema *schema, str what):
    if schema == NULL or schema.release == NULL or schema.format == NULL:
        raise DecodeError(f"{what}: missing or released schema")
    if schema.n_children < 0 or (schema.n_children and schema.children == NULL):
        raise DecodeError(f"{what}: the schema declares {schema.n_children} children it does not have")
    for i in range(schema.n_children):
        if schema.children[i] == NULL:
            raise DecodeError(f"{what}: schema child {i} is NULL")
    return schema.format.decode("utf-8", "replace")


cdef str schema_name(const ArrowSchema *schema):
    return schema.name.decode("utf-8", "replace") if schema.name != NULL else ""


cdef dict schema_metadata(const ArrowSchema *schema, str what):
    """The schema's key/value metadata (Arrow's int32-length encoding), decoded as UTF-8."""
    cdef const char *p = schema.metadata
    cdef int32_t count, size
    cdef dict out = {}
    if p == NULL:
        return out
    memcpy(&count, p, 4)
    p += 4
    if count < 0:
        raise DecodeError(f"{what}: the schema metadata has a negative count {count}")
    for _ in range(count):
        pair = []
        for _ in range(2):
            memcpy(&size, p, 4)
            if size < 0:
                raise DecodeError(f"{what}: a schema metadata entry has negative length {size}")
            pair.append(p[4:4 + size].decode("utf-8", "replace"))
            p += 4 + size
        out[pair[0]] = pair[1]
    return out


cdef int check_node(const ArrowArray *array, str what, int64_t n_buffers, int64_t n_children) except -1:
    """The array's counts and pointers; ``n_buffers`` -1 means three or more (string views)."""
    cdef int64_t i
    if array == NULL or array.release == NULL:
        raise DecodeError(f"{what}: missing or released array")
    if array.length < 0 or array.offset < 0 or array.length > INT64_MAX - array.offset:
        raise DecodeError(f"{what}: invalid length {array.length} at offset {array.offset}")
    if array.null_count < -1 or array.null_count > array.length:
        raise DecodeError(f"{what}: null_count {array.null_count} for {array.length} values")
    if (array.n_buffers != n_buffers) if n_buffers >= 0 else (array.n_buffers < 3):
        raise DecodeError(f"{what}: {array.n_buffers} buffers, not the "
                          f"{n_buffers if n_buffers >= 0 else 'three or more'} its type has")
    if array.n_buffers and array.buffers == NULL:
        raise DecodeError(f"{what}: the buffer list is NULL")
    if array.n_children != n_children or (n_children and array.children == NULL):
        raise DecodeError(f"{what}: {array.n_children} children, not the {n_children} its type has")
    for i in range(n_children):
        if array.children[i] == NULL:
            raise DecodeError(f"{what}: child {i} is NULL")
    if array.dictionary != NULL:
        raise DecodeError(f"{what}: a dictionary where the schema has none")
    return 0


cdef const uint8_t *validity(const ArrowArray *array, str what) except? NULL:
    """The validity bitmap, or NULL when every value is valid."""
    if array.null_count == 0:
        return NULL   # the bitmap may then be absent or stale (as Arrow C++ reads it)
    if array.buffers[0] == NULL:
        if array.null_count > 0:
            raise DecodeError(f"{what}: null_count {array.null_count} but no validity bitmap")
        return NULL
    return <const uint8_t *>array.buffers[0]


cdef int64_t child_start(const ArrowArray *child, int64_t parent_offset, int64_t rows, str what) except -1:
    """Where the parent's rows begin in ``child``'s buffers (a struct's offset applies to its
    children as well as theirs)."""
    if parent_offset + rows > child.length:
        raise DecodeError(f"{what} holds {child.length} values; its parent needs {parent_offset + rows}")
    return child.offset + parent_offset


cdef int check_no_nulls(const ArrowArray *array, int64_t start, int64_t n, str what, str why) except -1:
    cdef const uint8_t *bits = validity(array, what)
    cdef int64_t i
    if bits != NULL and quill_count_zero_bits(bits, start, n):
        for i in range(n):
            if not quill_bit(bits, start + i):
                raise DecodeError(f"{what}: null at row {i}; {why}")
    return 0


cdef const void *data_buffer(const ArrowArray *array, int64_t index, int64_t n, str what) except? NULL:
    """Buffer ``index``; NULL only allowed for an empty range."""
    cdef const void *data = array.buffers[index]
    if data == NULL and n:
        raise DecodeError(f"{what}: buffer {index} is NULL")
    return data


# ---------------------------------------------------------------------------------------------
# TokenBatch

cdef class TokenChunk:
    def __dealloc__(self):
        free(self._flags)
        free(self._logprob_bits)
        free(self._offsets)
        free(self._text)


cdef tuple import_token_chunks(object source):
    """(sequence_id, is_final, [TokenChunk, ...]) from an Arrow record batch source."""
    cdef _Schema schema
    cdef const ArrowSchema *child
    cdef list arrays
    schema, arrays = read_source(source, "TokenBatch.from_arrow")
    fmt = schema_format(&schema.c, "the schema")
    if fmt != "+s":
        raise TypeError(f"TokenBatch.from_arrow expects a record batch (an Arrow struct of columns "
                        f"id, position, logprob, text, is_special), got Arrow type {type_name(fmt)}")
    columns = {}
    for i in range(schema.c.n_children):
        child = schema.c.children[i]
        name = schema_name(child)
        child_fmt = schema_format(child, f"column {name!r}")
        if name not in TOKEN_COLUMNS:
            continue   # other columns are not the batch's
        if name in columns:
            raise TypeError(f"column {name!r} appears twice")
        formats = TOKEN_COLUMNS[name][0]
        if child.dictionary != NULL:
            raise TypeError(f"column {name!r} is dictionary-encoded; decode it to {type_name(formats[0])} first")
        if child_fmt not in formats:
            expected = " or ".join(type_name(f) for f in formats)
            raise TypeError(f"column {name!r} is Arrow type {type_name(child_fmt)}; TokenBatch.from_arrow "
                            f"expects {expected}")
        columns[name] = (i, child_fmt)
    for name, (_, required, _) in TOKEN_COLUMNS.items():
        if required and name not in columns:
            raise TypeError(f"the record batch has no column {name!r} ({type_name(TOKEN_COLUMNS[name][0][0])}); "
                            f"its columns are {[schema_name(schema.c.children[i]) for i in range(schema.c.n_children)]}")
    metadata = schema_metadata(&schema.c, "the schema")
    chunks = [token_chunk(array, columns, schema.c.n_children) for array in arrays]
    return sequence_id_of(metadata), is_final_of(metadata), chunks


cdef object sequence_id_of(dict metadata):
    value = metadata.get("sequence_id")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and int(value) <= 0xFFFFFFFF):
        raise DecodeError(f"schema metadata sequence_id {value[:40]!r} is not an integer in 0..4294967295")
    return int(value)


cdef bint is_final_of(dict metadata) except -1:
    value = metadata.get("is_final", "false")
    if value not in ("true", "false"):
        raise DecodeError(f"schema metadata is_final {value[:40]!r} is not 'true' or 'false'")
    return value == "true"


cdef TokenChunk token_chunk(_Array batch, dict columns, int64_t n_columns):
    cdef const ArrowArray *a = &batch.c
    cdef const ArrowArray *column
    cdef TokenChunk chunk = TokenChunk.__new__(TokenChunk)
    cdef int64_t n, i, start
    cdef const uint8_t *bits
    cdef const uint32_t *values
    check_node(a, "the record batch", 1, n_columns)
    n = a.length
    check_no_nulls(a, a.offset, n, "the record batch", "a token batch has no null rows")
    chunk._source = batch
    chunk.columns.count = n
    chunk._flags = <uint8_t *>calloc(n + 1, 1)
    if chunk._flags == NULL:
        raise MemoryError()
    chunk.columns.flags = chunk._flags
    for name, (index, fmt) in columns.items():
        what = f"column {name!r}"
        column = a.children[index]
        check_node(column, what, -1 if fmt == "vu" else (3 if fmt in ("u", "U") else 2), 0)
        start = child_start(column, a.offset, n, what)
        if name == "text":
            import_texts(chunk, column, start, fmt, what)
            continue
        if not TOKEN_COLUMNS[name][2]:
            check_no_nulls(column, start, n, what, f"every token needs its {name.replace('_', ' ')}")
        if name == "is_special":
            bits = <const uint8_t *>data_buffer(column, 1, n, what)
            for i in range(n):
                chunk._flags[i] |= TOKEN_IS_SPECIAL if quill_bit(bits, start + i) else 0
            continue
        values = <const uint32_t *>data_buffer(column, 1, n, what)
        if values != NULL:
            values += start
        if name == "id":
            chunk.columns.ids = values
        elif name == "position":
            chunk.columns.positions = values
        else:
            import_logprobs(chunk, column, start, values, what)
    if chunk.columns.logprob_bits == NULL:   # no logprob column: none has one
        chunk.columns.logprob_bits = chunk._logprob_bits = <uint32_t *>calloc(n + 1, 4)
    if chunk.columns.text_offsets == NULL:   # no text column: none has text
        chunk.columns.text_offsets = chunk._offsets = <int64_t *>calloc(n + 1, 8)
    if chunk.columns.logprob_bits == NULL or chunk.columns.text_offsets == NULL:
        raise MemoryError()
    return chunk


cdef int import_logprobs(TokenChunk chunk, const ArrowArray *column, int64_t start, const uint32_t *values,
                         str what) except -1:
    """The logprob bits in place when none is null, else a copy with 0 under the nulls (a
    TokenBatch's rule; Arrow leaves values under nulls undefined)."""
    cdef const uint8_t *bits = validity(column, what)
    cdef int64_t i, n = chunk.columns.count
    if bits == NULL:
        for i in range(n):
            chunk._flags[i] |= TOKEN_HAS_LOGPROB
        chunk.columns.logprob_bits = values
        return 0
    chunk._logprob_bits = <uint32_t *>calloc(n + 1, 4)
    if chunk._logprob_bits == NULL:
        raise MemoryError()
    for i in range(n):
        if quill_bit(bits, start + i):
            chunk._flags[i] |= TOKEN_HAS_LOGPROB
            chunk._logprob_bits[i] = values[i]
    chunk.columns.logprob_bits = chunk._logprob_bits
    return 0


cdef int import_texts(TokenChunk chunk, const ArrowArray *column, int64_t start, str fmt, str what) except -1:
    """Fill the chunk's text offsets and bytes, and its HAS_TEXT flags, from a string column."""
    cdef int64_t n = chunk.columns.count, i, length
    cdef const uint8_t *bits = validity(column, what)
    cdef const int64_t *offsets
    if fmt == "vu":
        gather_views(chunk, column, start, bits, what)
    else:
        check_offsets(chunk, column, start, fmt == "U", what)
    offsets = chunk.columns.text_offsets
    chunk.columns.text_size = chunk.columns.text_capacity = offsets[n] - offsets[0]
    for i in range(n):
        if bits == NULL or quill_bit(bits, start + i):
            chunk._flags[i] |= TOKEN_HAS_TEXT
            length = offsets[i + 1] - offsets[i]
            if length and not quill_is_utf8(chunk.columns.text + offsets[i], <size_t>length):
                raise DecodeError(f"{what}: row {i} is not valid UTF-8")
    return 0


cdef int check_offsets(TokenChunk chunk, const ArrowArray *column, int64_t start, bint large, str what) except -1:
    """utf8 / large_utf8: offsets that start at 0 or more and never decrease. large_utf8 offsets
    are used in place; utf8's are widened into an owned int64 copy (rebased to its first)."""
    cdef int64_t n = chunk.columns.count, i, value = 0, first = 0, previous = 0
    cdef const void *offsets
    cdef const unsigned char *data
    if n == 0:
        chunk.columns.text_offsets = &ZERO_OFFSET
        chunk.columns.text = &EMPTY_BYTE
        return 0
    offsets = data_buffer(column, 1, 1, what)
    for i in range(n + 1):
        value = (<const int64_t *>offsets)[start + i] if large else (<const int32_t *>offsets)[start + i]
        if value < previous:
            raise DecodeError(f"{what}: offset {i} is {value}, below " +
                              (f"offset {i - 1} ({previous})" if i else "0"))
        if i == 0:
            first = value
        previous = value
    data = <const unsigned char *>data_buffer(column, 2, previous - first, what)
    if large and data != NULL:
        chunk.columns.text_offsets = <const int64_t *>offsets + start
        chunk.columns.text = data
        return 0
    chunk._offsets = <int64_t *>malloc((n + 1) * 8)
    if chunk._offsets == NULL:
        raise MemoryError()
    for i in range(n + 1):
        value = (<const int64_t *>offsets)[start + i] if large else (<const int32_t *>offsets)[start + i]
        chunk._offsets[i] = value - first
    chunk.columns.text_offsets = chunk._offsets
    chunk.columns.text = data + first if data != NULL else &EMPTY_BYTE
    return 0


cdef int gather_views(TokenChunk chunk, const ArrowArray *column, int64_t start, const uint8_t *bits,
                      str what) except -1:
    """utf8_view: check each valid row's view against its buffer, then copy the texts into one
    owned buffer (views point anywhere; a TokenBatch's texts are contiguous)."""
    cdef int64_t n = chunk.columns.count, i, total = 0
    cdef int64_t n_data = column.n_buffers - 3
    cdef const uint8_t *views = <const uint8_t *>data_buffer(column, 1, n, what)
    cdef const int64_t *sizes = <const int64_t *>data_buffer(column, column.n_buffers - 1, n_data, what)
    cdef const uint8_t *view
    cdef const unsigned char *source
    cdef int32_t length, buffer_index, offset
    cdef int64_t *offsets = <int64_t *>calloc(n + 1, 8)
    chunk._offsets = offsets
    if offsets == NULL:
        raise MemoryError()
    for i in range(n):
        if bits != NULL and not quill_bit(bits, start + i):
            continue
        view = views + 16 * (start + i)
        memcpy(&length, view, 4)
        if length < 0:
            raise DecodeError(f"{what}: row {i} has a negative length {length}")
        if length > 12:
            memcpy(&buffer_index, view + 8, 4)
            memcpy(&offset, view + 12, 4)
            if buffer_index < 0 or buffer_index >= n_data:
                raise DecodeError(f"{what}: row {i} points into data buffer {buffer_index} of {n_data}")
            if offset < 0 or offset + <int64_t>length > sizes[buffer_index] or column.buffers[2 + buffer_index] == NULL:
                raise DecodeError(f"{what}: row {i} ({length} bytes at {offset}) runs past data buffer "
                                  f"{buffer_index} ({sizes[buffer_index]} bytes)")
        total += length
    chunk._text = <unsigned char *>malloc(total if total else 1)
    if chunk._text == NULL:
        raise MemoryError()
    for i in range(n):
        offsets[i + 1] = offsets[i]
        if bits != NULL and not quill_bit(bits, start + i):
            continue
        view = views + 16 * (start + i)
        memcpy(&length, view, 4)
        source = view + 4
        if length > 12:
            memcpy(&buffer_index, view + 8, 4)
            memcpy(&offset, view + 12, 4)
            source = <const unsigned char *>column.buffers[2 + buffer_index] + offset
        memcpy(chunk._text + offsets[i], source, length)
        offsets[i + 1] += length
    chunk.columns.text_offsets = offsets
    chunk.columns.text = chunk._text
    return 0


include "arrow_import_tensor.pxi"
