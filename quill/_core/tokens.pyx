# cython: freethreading_compatible = True
# (audited for running without the GIL: docs/memory-safety.md, "Free-threaded CPython")
"""LLM tokens on the wire: ``Token``, ``TokenBatch`` and ``TokenBatchBuilder`` (docs/protocol.md sections 2-3).

A ``TokenBatch`` stores its tokens by columns (ids, positions, raw float32 logprob bits, flags,
one UTF-8 text buffer with offsets) and creates ``Token`` objects only when asked for one, so
encoding, decoding and column access (``ids_array()``, ``logprobs_array()``...) never build a
Python object per token.

>>> from quill._core.tokens import Token, TokenBatch
>>> batch = TokenBatch.from_tokens([Token(7, 0, "Hi", -0.5), Token(8, 1, "!")], sequence_id=3)
>>> TokenBatch.decode(batch.encode()) == batch
True
>>> batch.ids_array()
array([7, 8], dtype=uint32)
"""

cimport cython
cimport numpy as cnp
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_Check
from cpython.number cimport PyNumber_Index
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.math cimport exp
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

import numpy as np

from quill.errors import DecodeError, EncodeError

from quill._core.arrow cimport export_token_columns, token_schema
from quill._core.arrow_import cimport TokenChunk, import_token_chunks
from quill._core.quill_threads cimport QUILL_FREE_THREADED, quill_atomic_add_ssize, quill_atomic_load_ssize

from quill._core.arrow import token_batch_stream

cnp.import_array()

cdef extern from "tokens_wire.h" nogil:
    uint32_t quill_load_be32(const unsigned char *p)
    uint16_t quill_load_be16(const unsigned char *p)
    void quill_store_be32(unsigned char *p, uint32_t v)
    void quill_store_be16(unsigned char *p, uint16_t v)
    float quill_f32_from_bits(uint32_t bits)
    uint32_t quill_bits_from_f32(float f)
    int quill_is_ascii(const unsigned char *p, size_t n)
    int quill_is_utf8(const unsigned char *p, size_t n)
    void quill_prefetch(const void *p)
    void quill_copy_text(unsigned char *dst, const unsigned char *src, size_t n, size_t src_room, size_t dst_room)
    enum: QUILL_COPY_SLACK

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object text, Py_ssize_t *size) except NULL
    str PyUnicode_DecodeUTF8(const char *data, Py_ssize_t size, const char *errors)
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf)
    int PySlice_Unpack(object slice, Py_ssize_t *start, Py_ssize_t *stop, Py_ssize_t *step) except -1
    Py_ssize_t PySlice_AdjustIndices(Py_ssize_t length, Py_ssize_t *start, Py_ssize_t *stop,
                                     Py_ssize_t step) noexcept
    Py_ssize_t _borrowed_refcount "Py_REFCNT"(PyObject *obj)  # no temporary reference, unlike cpython.ref
    bint PyUnicode_IS_ASCII(object text)
    bint PyUnicode_IS_COMPACT_ASCII(object text)
    Py_ssize_t PyUnicode_GET_LENGTH(object text)
    void *PyUnicode_DATA(object text)
    long long PyLong_AsLongLongAndOverflow(object value, int *overflow) except? -1
    ctypedef struct _TypeWithVectorcall "PyTypeObject":
        void *tp_vectorcall


# Token flags (section 2); other bits are ignored on decode and never emitted.
cdef enum:
    HAS_TEXT = 0x01
    HAS_LOGPROB = 0x02
    IS_SPECIAL = 0x04
    TOKEN_FLAG_MASK = 0x07

# TokenBatch flags (section 3).
cdef enum:
    HAS_SEQUENCE_ID = 0x01
    IS_FINAL = 0x02

cdef enum:
    TOKEN_FIXED_SIZE = 9          # id u32, position u32, flags u8
    MAX_TEXT_BYTES = 65535        # u16 text length
    MAX_BATCH_TOKENS = 65535      # u16 token count
    NOGIL_MIN_TOKENS = 4096       # below this, releasing the GIL costs more than it frees

cdef uint32_t QUIET_NAN_BITS = 0x7FC00000

MAX_TOKEN_TEXT_BYTES = MAX_TEXT_BYTES
MAX_TOKENS_PER_BATCH = MAX_BATCH_TOKENS


# ---------------------------------------------------------------------------------------------
# Value conversion and validation


cdef inline int64_t _as_u32(object value, str what) except -1:
    """``value`` as an integer in 0..2**32-1, or OverflowError naming ``what``."""
    cdef long long v
    cdef int overflow = 0
    if not PyLong_Check(value):
        value = PyNumber_Index(value)  # refuses floats, as range() does
    v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow or v < 0 or v > 0xFFFFFFFF:
        raise OverflowError(f"{what} {value} is outside the u32 range 0..4294967295")
    return v


cdef str _checked_text(object text):
    """``text`` as an exact str that UTF-8 can encode (raises EncodeError for lone surrogates)."""
    cdef Py_ssize_t size
    if type(text) is not str:
        if not isinstance(text, str):
            raise TypeError(f"token text must be str or None, not {type(text).__name__}")
        text = str.__str__(text)
    if PyUnicode_IS_ASCII(text):
        return text
    try:
        PyUnicode_AsUTF8AndSize(text, &size)
    except UnicodeEncodeError as exc:
        raise EncodeError(
            f"token text cannot be encoded as UTF-8: lone surrogate "
            f"U+{ord(text[exc.start]):04X} at index {exc.start}"
        ) from None
    return text


cdef inline const unsigned char *_utf8(str text, Py_ssize_t *size) except NULL:
    # Cannot fail: every stored text passed _checked_text (or came from a UTF-8 decode).
    if PyUnicode_IS_COMPACT_ASCII(text):
        size[0] = PyUnicode_GET_LENGTH(text)
        return <const unsigned char *>PyUnicode_DATA(text)
    return <const unsigned char *>PyUnicode_AsUTF8AndSize(text, size)


# ---------------------------------------------------------------------------------------------
# The parts. TokenBatch is three classes, one a unit: _BatchStorage, the storage and its rules;
# _BatchColumns(_BatchStorage), the column views; TokenBatch(_BatchColumns), the rest.


include "tokens_codec.pxi"     # the wire codec: tokens and batches to and from bytes
include "tokens_token.pxi"     # Token
include "tokens_storage.pxi"   # TokenBatch's storage and its rules (_BatchStorage, PinnedBatch)
include "tokens_columns.pxi"   # _BatchColumns(_BatchStorage): the column views and Arrow export
include "tokens_batch.pxi"     # TokenBatch(_BatchColumns): the public batch
include "tokens_builder.pxi"   # TokenBatchBuilder
