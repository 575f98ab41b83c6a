"""LLM tokens on the wire: ``Token``, ``TokenBatch`` and ``TokenBatchBuilder`` (PROTOCOL.md sections 2-3).

A ``TokenBatch`` stores its tokens by columns (ids, positions, raw float32 logprob bits, flags,
one UTF-8 text buffer with offsets) and creates ``Token`` objects only when asked for one, so
encoding, decoding and column access (``ids_array()``, ``logprobs_array()``...) never build a
Python object per token.

>>> from quill._tokens import Token, TokenBatch
>>> batch = TokenBatch.from_tokens([Token(7, 0, "Hi", -0.5), Token(8, 1, "!")], sequence_id=3)
>>> TokenBatch.decode(batch.encode()) == batch
True
>>> batch.ids_array()
array([7, 8], dtype=uint32)
"""

cimport cython
cimport numpy as cnp
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
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
from libc.string cimport memcmp, memcpy

import numpy as np

from quill.errors import DecodeError, EncodeError

cnp.import_array()

cdef extern from "_tokens_wire.h" nogil:
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
# Wire parsing shared by Token.decode and TokenBatch.decode


cdef enum ParseStatus:
    PARSE_OK = 0
    PARSE_SHORT_FIXED
    PARSE_SHORT_LOGPROB
    PARSE_SHORT_TEXT_LEN
    PARSE_SHORT_TEXT
    PARSE_SHORT_REST

cdef struct RawToken:
    uint32_t id
    uint32_t position
    uint32_t logprob_bits
    uint8_t flags
    Py_ssize_t text_start
    Py_ssize_t text_len

cdef struct ParseError:
    ParseStatus status
    Py_ssize_t offset       # where the missing field starts
    Py_ssize_t available    # bytes left at that offset
    Py_ssize_t declared     # declared text length (PARSE_SHORT_TEXT)
    Py_ssize_t index        # token index within a batch


cdef inline ParseStatus _read_token(const unsigned char *data, Py_ssize_t size, Py_ssize_t *pos,
                                    RawToken *tok, ParseError *err) noexcept nogil:
    """Read one token at ``pos[0]``; on success advance ``pos``, else fill ``err``."""
    cdef Py_ssize_t p = pos[0]
    cdef uint8_t flags
    if size - p < TOKEN_FIXED_SIZE:
        err.status, err.offset, err.available = PARSE_SHORT_FIXED, p, size - p
        return PARSE_SHORT_FIXED
    tok.id = quill_load_be32(data + p)
    tok.position = quill_load_be32(data + p + 4)
    flags = data[p + 8] & TOKEN_FLAG_MASK
    p += TOKEN_FIXED_SIZE
    tok.logprob_bits = 0
    if flags & HAS_LOGPROB:
        if size - p < 4:
            err.status, err.offset, err.available = PARSE_SHORT_LOGPROB, p, size - p
            return PARSE_SHORT_LOGPROB
        tok.logprob_bits = quill_load_be32(data + p)
        p += 4
    tok.text_len = 0
    if flags & HAS_TEXT:
        if size - p < 2:
            err.status, err.offset, err.available = PARSE_SHORT_TEXT_LEN, p, size - p
            return PARSE_SHORT_TEXT_LEN
        tok.text_len = quill_load_be16(data + p)
        p += 2
        if size - p < tok.text_len:
            err.status, err.offset, err.available = PARSE_SHORT_TEXT, p, size - p
            err.declared = tok.text_len
            return PARSE_SHORT_TEXT
        p += tok.text_len
    tok.text_start = p - tok.text_len
    tok.flags = flags
    pos[0] = p
    return PARSE_OK


cdef object _parse_error(const ParseError *err, str where):
    """The DecodeError for a failed ``_read_token``; ``where`` names the token."""
    if err.status == PARSE_SHORT_FIXED:
        what = f"{where} truncated: id, position and flags need 9 bytes, {err.available} left"
    elif err.status == PARSE_SHORT_LOGPROB:
        what = f"{where} truncated: logprob needs 4 bytes, {err.available} left"
    elif err.status == PARSE_SHORT_TEXT_LEN:
        what = f"{where} truncated: text length needs 2 bytes, {err.available} left"
    elif err.status == PARSE_SHORT_TEXT:
        what = f"{where} truncated: text of {err.declared} bytes declared, {err.available} left"
    else:
        what = (f"token batch truncated: {err.declared} more tokens declared after {where} but only "
                f"{err.available} bytes left (each token needs at least 9)")
    return DecodeError(what, offset=err.offset)


# ---------------------------------------------------------------------------------------------
# Token


@cython.final
@cython.no_gc
@cython.freelist(64)
cdef class _TextBuffer:
    """The UTF-8 text bytes of a TokenBatch, shared with the Tokens it hands out (which decode
    their str from it on first use). Bytes below the batch's text size are never rewritten
    while another object holds the buffer: the batch only appends, and detaches on clear()."""
    cdef unsigned char *data
    cdef Py_ssize_t capacity

    def __dealloc__(self):
        free(self.data)


@cython.final
@cython.no_gc
@cython.freelist(1024)
cdef class Token:
    """One generated token (PROTOCOL.md section 2). Immutable and hashable.

    ``logprob`` is carried as float32: the value read back is the float32 rounding of the one
    given, and tokens compare (and hash) their logprobs by those 32 bits.

    >>> t = Token(id=42, position=0, text="hello", logprob=-0.5)
    >>> t
    Token(id=42, text='hello', pos=0)
    >>> round(t.prob(), 3), t.is_eos(), Token.decode(t.encode()) == t
    (0.607, False, True)
    """

    # 48 bytes in all. A token handed out by a TokenBatch shares the batch's text buffer and
    # decodes its str on first use (``_lazy_text``); until then ``_text`` is that buffer.
    cdef object _text               # str, or _TextBuffer while _lazy_text, or None
    cdef uint32_t _id
    cdef uint32_t _position
    cdef uint32_t _logprob_bits
    cdef uint32_t _text_start       # while _lazy_text: the text's bytes in the buffer
    cdef uint32_t _text_len
    cdef uint8_t _flags
    cdef uint8_t _lazy_text

    def __init__(self, id, position, text=None, logprob=None, is_special=False):
        # Calls of the class itself take _token_vectorcall; this serves explicit __init__ calls.
        _init_token(self, id, position, text, logprob, is_special)

    @staticmethod
    def with_text(id, text, position, logprob=None):
        """A non-special token with text: ``Token.with_text(1, "Hello", 0)``.

        >>> Token.with_text(1, "Hello", 0).text
        'Hello'
        """
        cdef Token tok = Token.__new__(Token)
        _init_token(tok, id, position, text, logprob, False)
        return tok

    @property
    def id(self):
        """The vocabulary id (0..2**32-1)."""
        return self._id

    @property
    def position(self):
        """The position in the generated sequence (0..2**32-1)."""
        return self._position

    @property
    def text(self):
        """The decoded text, or None when the token carries none ("" is distinct from None)."""
        return self._get_text()

    cdef str _get_text(self):
        if self._lazy_text:
            self._text = PyUnicode_DecodeUTF8(
                <const char *>(<_TextBuffer>self._text).data + self._text_start, self._text_len, NULL)
            self._lazy_text = 0
        return <str>self._text

    cdef const unsigned char *_utf8(self, Py_ssize_t *size) except NULL:
        """The text's UTF-8 bytes (HAS_TEXT only); valid while the token lives."""
        if self._lazy_text:
            size[0] = self._text_len
            return (<_TextBuffer>self._text).data + self._text_start
        return _utf8(<str>self._text, size)

    @property
    def logprob(self):
        """The log-probability as a float (the float32 value), or None."""
        if self._flags & HAS_LOGPROB:
            return <double>quill_f32_from_bits(self._logprob_bits)
        return None

    @property
    def logprob_bits(self):
        """The raw float32 bits of the logprob as an int (exact, NaN payloads included), or None."""
        if self._flags & HAS_LOGPROB:
            return self._logprob_bits
        return None

    @property
    def is_special(self):
        """True for special tokens (BOS, EOS, padding...)."""
        return bool(self._flags & IS_SPECIAL)

    def prob(self):
        """``exp(logprob)``, or None without a logprob.

        >>> Token(1, 0, logprob=0.0).prob()
        1.0
        """
        if self._flags & HAS_LOGPROB:
            return exp(<double>quill_f32_from_bits(self._logprob_bits))
        return None

    def is_eos(self):
        """True for a special token with id 0, 1 or 2.

        >>> Token(2, 9, is_special=True).is_eos()
        True
        """
        return bool(self._flags & IS_SPECIAL) and self._id <= 2

    def to_dict(self):
        """The token as a dict of its properties.

        >>> Token(5, 1, "a").to_dict()
        {'id': 5, 'text': 'a', 'logprob': None, 'position': 1, 'is_special': False}
        """
        return {"id": self.id, "text": self._get_text(), "logprob": self.logprob,
                "position": self.position, "is_special": self.is_special}

    cdef Py_ssize_t _wire_size(self) except -1:
        cdef Py_ssize_t size = TOKEN_FIXED_SIZE, text_len
        if self._flags & HAS_LOGPROB:
            size += 4
        if self._flags & HAS_TEXT:
            self._utf8(&text_len)
            if text_len > MAX_TEXT_BYTES:
                raise EncodeError(f"token text is {text_len} UTF-8 bytes; the wire format carries at most 65535")
            size += 2 + text_len
        return size

    cdef unsigned char *_write(self, unsigned char *out) except NULL:
        """Write the token at ``out`` (``_wire_size`` bytes, already checked); return the end."""
        cdef const unsigned char *text
        cdef Py_ssize_t text_len
        quill_store_be32(out, self._id)
        quill_store_be32(out + 4, self._position)
        out[8] = self._flags
        out += TOKEN_FIXED_SIZE
        if self._flags & HAS_LOGPROB:
            quill_store_be32(out, self._logprob_bits)
            out += 4
        if self._flags & HAS_TEXT:
            text = self._utf8(&text_len)
            quill_store_be16(out, <uint16_t>text_len)
            memcpy(out + 2, text, text_len)
            out += 2 + text_len
        return out

    def encode(self):
        """The token's wire bytes (section 2); EncodeError if the text exceeds 65,535 UTF-8 bytes.

        >>> Token(42, 0).encode().hex()
        '0000002a0000000000'
        """
        cdef Py_ssize_t size = self._wire_size()
        out = PyBytes_FromStringAndSize(NULL, size)
        self._write(<unsigned char *>PyBytes_AS_STRING(out))
        return out

    @staticmethod
    def decode(buf):
        """Decode a buffer holding exactly one token; DecodeError (with offset) if truncated or
        followed by extra bytes. Invalid UTF-8 in the text becomes U+FFFD.

        >>> Token.decode(bytes.fromhex("0000002a0000000000"))
        Token(id=42, text=None, pos=0)
        """
        token, consumed, size = _decode_token_prefix(buf)
        if consumed != size:
            raise DecodeError(f"{size - consumed} bytes left over after the token", offset=consumed)
        return token

    @staticmethod
    def decode_prefix(buf):
        """Decode the token at the start of ``buf``; return ``(token, bytes_consumed)``.

        Bytes after the token are left alone, as the reference decoder does.

        >>> Token.decode_prefix(bytes.fromhex("0000002a0000000000ff"))
        (Token(id=42, text=None, pos=0), 9)
        """
        token, consumed, size = _decode_token_prefix(buf)
        return token, consumed

    def __repr__(self):
        return f"Token(id={self._id}, text={self._get_text()!r}, pos={self._position})"

    def __eq__(self, other):
        if type(other) is not Token:
            return NotImplemented
        cdef Token o = <Token>other
        cdef const unsigned char *a
        cdef const unsigned char *b
        cdef Py_ssize_t a_len, b_len
        if (self._id != o._id or self._position != o._position or self._flags != o._flags
                or self._logprob_bits != o._logprob_bits):
            return False
        if not self._flags & HAS_TEXT:
            return True
        if not (self._lazy_text or o._lazy_text):
            return self._text == o._text
        a = self._utf8(&a_len)
        b = o._utf8(&b_len)
        return a_len == b_len and memcmp(a, b, a_len) == 0

    def __hash__(self):
        return hash((self._id, self._position, self._flags, self._logprob_bits, self._get_text()))

    def __reduce__(self):
        return (_restore_token, (self._id, self._position, self._flags, self._logprob_bits, self._get_text()))


cdef Token _new_token(uint32_t id, uint32_t position, uint8_t flags, uint32_t logprob_bits, str text):
    """A Token straight from field values (no argument parsing; text already valid)."""
    cdef Token tok = Token.__new__(Token)
    tok._id = id
    tok._position = position
    tok._flags = flags
    tok._logprob_bits = logprob_bits
    tok._text = text
    return tok


cdef int _init_token(Token tok, object id, object position, object text, object logprob,
                     object is_special) except -1:
    """Fill a new Token from user arguments, checking every one."""
    tok._id = <uint32_t>_as_u32(id, "token id")
    tok._position = <uint32_t>_as_u32(position, "token position")
    tok._flags = IS_SPECIAL if is_special else 0
    tok._logprob_bits = 0
    if logprob is not None:
        tok._logprob_bits = quill_bits_from_f32(<float>(<double>logprob))
        tok._flags |= HAS_LOGPROB
    tok._text = None
    tok._lazy_text = 0
    if text is not None:
        tok._text = _checked_text(text)
        tok._flags |= HAS_TEXT
    return 0


cdef tuple _TOKEN_PARAMETERS = ("id", "position", "text", "logprob", "is_special")


cdef inline Py_ssize_t _parameter_index(object name):
    """The position of keyword ``name`` in Token's signature, or -1 (interned names match by identity)."""
    cdef Py_ssize_t i
    for i in range(5):
        if name is <object>PyTuple_GET_ITEM(_TOKEN_PARAMETERS, i):
            return i
    for i in range(5):
        if name == <object>PyTuple_GET_ITEM(_TOKEN_PARAMETERS, i):
            return i
    return -1


cdef object _token_vectorcall(object cls, PyObject **args, size_t nargsf, PyObject *kwnames):
    """``Token(...)`` without building an argument tuple or dict (installed as tp_vectorcall).

    Same signature as ``Token.__init__``. Cython's own constructor path is as fast for
    positional arguments, but keywords (``Token(id=..., position=...)``, the seed's style)
    cost it ~30 ns more per token, a fifth of building a token."""
    cdef PyObject *values[5]
    cdef Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), i, j, nkw
    if nargs > 5:
        raise TypeError(f"Token() takes at most 5 arguments ({nargs} given)")
    for i in range(5):
        values[i] = args[i] if i < nargs else NULL
    if kwnames != NULL:
        nkw = PyTuple_GET_SIZE(<object>kwnames)
        for j in range(nkw):
            name = <object>PyTuple_GET_ITEM(<object>kwnames, j)
            i = _parameter_index(name)
            if i < 0:
                raise TypeError(f"Token() got an unexpected keyword argument {name!r}")
            if values[i] != NULL:
                raise TypeError(f"Token() got multiple values for argument {name!r}")
            values[i] = args[nargs + j]
    for i in range(2):
        if values[i] == NULL:
            raise TypeError(f"Token() missing required argument {_TOKEN_PARAMETERS[i]!r}")
    cdef Token tok = Token.__new__(Token)
    _init_token(tok, <object>values[0], <object>values[1],
                <object>values[2] if values[2] != NULL else None,
                <object>values[3] if values[3] != NULL else None,
                <object>values[4] if values[4] != NULL else False)
    return tok


(<_TypeWithVectorcall *>Token).tp_vectorcall = <void *>_token_vectorcall


def _restore_token(id, position, flags, logprob_bits, text):
    """Unpickle a Token (private)."""
    cdef uint8_t f = <uint8_t>flags & TOKEN_FLAG_MASK
    if text is not None:
        text = _checked_text(text)
    if (text is not None) != bool(f & HAS_TEXT):
        raise ValueError("inconsistent pickled Token: text and has_text flag disagree")
    return _new_token(<uint32_t>_as_u32(id, "token id"), <uint32_t>_as_u32(position, "token position"),
                      f, <uint32_t>_as_u32(logprob_bits, "logprob bits") if f & HAS_LOGPROB else 0, text)


cdef tuple _decode_token_prefix(object buf):
    """(token, bytes consumed, buffer size) for the token at the start of ``buf``."""
    cdef Py_buffer view
    cdef RawToken raw
    cdef ParseError err
    cdef Py_ssize_t pos = 0
    cdef const unsigned char *data
    cdef str text = None
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        data = <const unsigned char *>view.buf
        if _read_token(data, view.len, &pos, &raw, &err) != PARSE_OK:
            raise _parse_error(&err, "token")
        if raw.flags & HAS_TEXT:
            text = PyUnicode_DecodeUTF8(<const char *>data + raw.text_start, raw.text_len, "replace")
        return (_new_token(raw.id, raw.position, raw.flags, raw.logprob_bits, text), pos, view.len)
    finally:
        PyBuffer_Release(&view)


# ---------------------------------------------------------------------------------------------
# TokenBatch


@cython.final
@cython.no_gc
@cython.freelist(64)
cdef class TokenBatch:
    """A batch of tokens for streaming (PROTOCOL.md section 3), stored by columns.

    Token objects are created only when asked for (``tokens()``, ``batch[i]``, iteration); the
    column accessors (``ids_array()``, ``logprobs_array()``...) return numpy arrays directly.
    Metadata (``set_metadata``) is local to this object: it is pickled but never encoded or
    compared. A batch may hold more than the wire can carry (over 65,535 tokens, or a text over
    65,535 UTF-8 bytes); ``encode()`` refuses such a batch with EncodeError.

    >>> batch = TokenBatch(sequence_id=1)
    >>> batch.add(Token.with_text(1, "Hello", 0)); batch.add(Token.with_text(2, " World", 1))
    >>> batch.text(), batch.token_ids(), len(batch)
    ('Hello World', [1, 2], 2)
    >>> batch[1:]
    TokenBatch(sequence_id=1, is_final=False, tokens=1)
    """

    cdef Py_ssize_t _count
    cdef Py_ssize_t _capacity
    cdef void *_block              # one allocation holding every fixed-size column
    cdef int64_t *_text_offsets    # _count + 1 entries: token i's text is _text[off[i]:off[i+1]]
    cdef uint32_t *_ids
    cdef uint32_t *_positions
    cdef uint32_t *_logprob_bits   # 0 where the token has no logprob
    cdef uint8_t *_flags
    cdef _TextBuffer _text_buffer   # None until the first text byte
    cdef unsigned char *_text       # _text_buffer.data
    cdef Py_ssize_t _text_size
    cdef Py_ssize_t _tokens_wire_size   # encoded size of the tokens (without the batch header)
    cdef uint32_t _sequence_id
    cdef bint _has_sequence_id
    cdef bint _is_final
    cdef dict _metadata                 # str -> str, created on first set_metadata
    cdef int _readers_without_gil       # encodes running with the GIL released: storage is pinned

    def __init__(self, sequence_id=None, is_final=False):
        self.sequence_id = sequence_id
        self._is_final = bool(is_final)

    def __dealloc__(self):
        free(self._block)

    # -- storage ------------------------------------------------------------------------------

    cdef int _reserve(self, Py_ssize_t count) except -1:
        """Make room for ``count`` tokens in the fixed-size columns."""
        cdef Py_ssize_t capacity
        cdef char *block
        if count <= self._capacity:
            return 0
        self._check_storage_unpinned()
        capacity = max(count, 2 * self._capacity, 8)
        # Layout: int64 offsets[capacity + 1], then u32 ids, positions, logprob bits, then u8 flags.
        block = <char *>malloc((capacity + 1) * 8 + capacity * 13)
        if block == NULL:
            raise MemoryError()
        offsets = <int64_t *>block
        ids = <uint32_t *>(block + (capacity + 1) * 8)
        positions = ids + capacity
        logprob_bits = positions + capacity
        flags = <uint8_t *>(logprob_bits + capacity)
        offsets[0] = 0
        if self._block != NULL:
            memcpy(offsets, self._text_offsets, (self._count + 1) * 8)
            memcpy(ids, self._ids, self._count * 4)
            memcpy(positions, self._positions, self._count * 4)
            memcpy(logprob_bits, self._logprob_bits, self._count * 4)
            memcpy(flags, self._flags, self._count)
            free(self._block)
        self._block = block
        self._text_offsets = offsets
        self._ids = ids
        self._positions = positions
        self._logprob_bits = logprob_bits
        self._flags = flags
        self._capacity = capacity
        return 0

    cdef int _reserve_text(self, Py_ssize_t extra) except -1:
        """Make room for ``extra`` more bytes in the text buffer (growing it keeps its bytes, so
        tokens sharing it still read theirs)."""
        cdef Py_ssize_t capacity
        cdef unsigned char *text
        cdef _TextBuffer buffer = self._text_buffer
        if buffer is None:
            buffer = self._text_buffer = _TextBuffer.__new__(_TextBuffer)
        if self._text_size + extra <= buffer.capacity:
            return 0
        self._check_storage_unpinned()
        capacity = max(self._text_size + extra, 2 * buffer.capacity, 64)
        text = <unsigned char *>realloc(buffer.data, capacity)
        if text == NULL:
            raise MemoryError()
        buffer.data = self._text = text
        buffer.capacity = capacity
        return 0

    cdef inline Py_ssize_t _text_len(self, Py_ssize_t i) noexcept nogil:
        return <Py_ssize_t>(self._text_offsets[i + 1] - self._text_offsets[i])

    cdef int _push(self, uint32_t id, uint32_t position, uint8_t flags, uint32_t logprob_bits,
                   const unsigned char *text, Py_ssize_t text_len) except -1:
        """Append one token from field values (text is valid UTF-8, or NULL without HAS_TEXT)."""
        cdef Py_ssize_t i = self._count
        if i == self._capacity:
            self._reserve(i + 1)
        if flags & HAS_TEXT:
            if self._text_buffer is None or self._text_size + text_len > self._text_buffer.capacity:
                self._reserve_text(text_len)
            if text_len:   # "" may leave the text buffer NULL: memcpy(NULL, p, 0) is undefined (UBSan)
                memcpy(self._text + self._text_size, text, text_len)
            self._text_size += text_len
            self._tokens_wire_size += 2 + text_len
        self._ids[i] = id
        self._positions[i] = position
        self._flags[i] = flags
        self._logprob_bits[i] = logprob_bits
        if flags & HAS_LOGPROB:
            self._tokens_wire_size += 4
        self._tokens_wire_size += TOKEN_FIXED_SIZE
        self._text_offsets[i + 1] = self._text_size
        self._count = i + 1
        return 0

    cdef int _push_token(self, Token tok) except -1:
        cdef const unsigned char *text = NULL
        cdef Py_ssize_t text_len = 0
        if tok._flags & HAS_TEXT:
            text = tok._utf8(&text_len)
        return self._push(tok._id, tok._position, tok._flags, tok._logprob_bits, text, text_len)

    cdef int _push_from(self, TokenBatch src, Py_ssize_t i) except -1:
        return self._push(src._ids[i], src._positions[i], src._flags[i], src._logprob_bits[i],
                          src._text + src._text_offsets[i], src._text_len(i))

    cdef Token _token_at(self, Py_ssize_t i):
        """Token i; its text stays in the shared buffer until first asked for."""
        cdef Token tok = _new_token(self._ids[i], self._positions[i], self._flags[i], self._logprob_bits[i], None)
        cdef int64_t start = self._text_offsets[i]
        cdef Py_ssize_t text_len = self._text_len(i)
        if tok._flags & HAS_TEXT:
            if text_len == 0:
                tok._text = ""
            elif start + text_len <= 0xFFFFFFFF:
                tok._text = self._text_buffer
                tok._text_start = <uint32_t>start
                tok._text_len = <uint32_t>text_len
                tok._lazy_text = 1
            else:
                tok._text = PyUnicode_DecodeUTF8(<const char *>self._text + start, text_len, NULL)
        return tok

    cdef TokenBatch _empty_like(self):
        cdef TokenBatch out = TokenBatch.__new__(TokenBatch)
        out._sequence_id = self._sequence_id
        out._has_sequence_id = self._has_sequence_id
        out._is_final = self._is_final
        if self._metadata:
            out._metadata = dict(self._metadata)
        return out

    # -- building -----------------------------------------------------------------------------

    @staticmethod
    def from_tokens(tokens, sequence_id=None):
        """A new batch holding ``tokens`` (any iterable of Token).

        >>> len(TokenBatch.from_tokens([Token(1, 0), Token(2, 1)], sequence_id=9))
        2
        """
        cdef TokenBatch batch = TokenBatch.__new__(TokenBatch)
        batch._set_sequence_id(sequence_id)
        batch._extend(tokens)
        return batch

    @staticmethod
    def encode_tokens(tokens, sequence_id=None, is_final=False):
        """The wire bytes of a batch holding ``tokens`` (a list or other iterable of Token),
        written straight from the Token objects: ``TokenBatch.from_tokens(tokens,
        sequence_id).encode()`` without building the batch. Same errors as ``encode()``.

        >>> TokenBatch.encode_tokens([Token(7, 3)], sequence_id=42, is_final=True).hex()
        '030000002a0001000000070000000300'
        """
        cdef list items = tokens if type(tokens) is list else list(tokens)
        cdef Py_ssize_t i, n = len(items), size
        cdef bint has_sequence_id = sequence_id is not None
        cdef uint32_t seq = <uint32_t>_as_u32(sequence_id, "sequence_id") if has_sequence_id else 0
        cdef unsigned char *p
        cdef object item
        if n > MAX_BATCH_TOKENS:
            raise EncodeError(f"a token batch carries at most 65535 tokens; {n} given")
        size = 7 if has_sequence_id else 3
        for i in range(n):
            item = items[i]
            if type(item) is not Token:
                raise TypeError(f"TokenBatch.encode_tokens: item {i} is {type(item).__name__}, not Token")
            size += (<Token>item)._wire_size()
        out = PyBytes_FromStringAndSize(NULL, size)
        p = <unsigned char *>PyBytes_AS_STRING(out)
        p[0] = (HAS_SEQUENCE_ID if has_sequence_id else 0) | (IS_FINAL if is_final else 0)
        if has_sequence_id:
            quill_store_be32(p + 1, seq)
            p += 4
        quill_store_be16(p + 1, <uint16_t>n)
        p += 3
        for i in range(n):
            p = (<Token>items[i])._write(p)
        return out

    def add(self, Token token not None):
        """Append one token.

        >>> b = TokenBatch(); b.add(Token(1, 0)); len(b)
        1
        """
        self._push_token(token)

    def extend(self, tokens):
        """Append every token of an iterable (or of another TokenBatch). All or nothing: a
        non-Token item raises TypeError before anything is added.

        >>> b = TokenBatch(); b.extend([Token(1, 0), Token(2, 1)]); b.token_ids()
        [1, 2]
        """
        self._extend(tokens)

    cdef int _extend(self, object tokens) except -1:
        cdef Py_ssize_t i, n
        cdef TokenBatch other
        cdef list items
        cdef object item
        if type(tokens) is TokenBatch:
            other = <TokenBatch>tokens
            n = other._count
            self._reserve(self._count + n)
            for i in range(n):
                self._push_from(other, i)
            return 0
        items = tokens if type(tokens) is list else list(tokens)
        n = len(items)
        for i in range(n):
            item = items[i]
            if type(item) is not Token:
                raise TypeError(f"TokenBatch.extend: item {i} is {type(item).__name__}, not Token")
            # The tokens are read again right below: fetch their texts while checking types
            # (scattered objects otherwise cost one cache miss after another).
            quill_prefetch(<void *>(<Token>item)._text)
        self._reserve(self._count + n)
        for i in range(n):
            self._push_token(<Token>items[i])
        return 0

    cdef int _check_storage_unpinned(self) except -1:
        """Refuse to move or rewrite storage that another thread is encoding without the GIL."""
        if self._readers_without_gil:
            raise BufferError("this TokenBatch is being encoded by another thread; "
                              "it cannot grow or be cleared until that finishes")
        return 0

    def clear(self):
        """Remove every token (sequence_id, is_final and metadata stay)."""
        self._check_storage_unpinned()
        self._count = 0
        self._tokens_wire_size = 0
        self._detach_text()

    cdef void _detach_text(self) noexcept:
        """Empty the text; a buffer still shared with tokens is left to them, not rewritten."""
        if self._text_buffer is not None and _borrowed_refcount(<PyObject *>self._text_buffer) > 1:
            self._text_buffer = None
            self._text = NULL
        self._text_size = 0

    # -- batch properties ---------------------------------------------------------------------

    @property
    def sequence_id(self):
        """The sequence id (0..2**32-1), or None."""
        return self._sequence_id if self._has_sequence_id else None

    @sequence_id.setter
    def sequence_id(self, value):
        self._set_sequence_id(value)

    cdef int _set_sequence_id(self, object value) except -1:
        if value is None:
            self._has_sequence_id = False
            self._sequence_id = 0
        else:
            self._sequence_id = <uint32_t>_as_u32(value, "sequence_id")
            self._has_sequence_id = True
        return 0

    @property
    def is_final(self):
        """True on the last batch of a stream (settable)."""
        return self._is_final

    @is_final.setter
    def is_final(self, value):
        self._is_final = bool(value)

    def is_empty(self):
        """True when the batch holds no token."""
        return self._count == 0

    def encoded_size(self):
        """The number of bytes ``encode()`` returns.

        >>> TokenBatch(sequence_id=1).encoded_size()
        7
        """
        return self._header_size() + self._tokens_wire_size

    cdef inline Py_ssize_t _header_size(self) noexcept:
        return 7 if self._has_sequence_id else 3

    # -- metadata (local only) ----------------------------------------------------------------

    def set_metadata(self, str key not None, str value not None):
        """Attach a local string key/value (never encoded).

        >>> b = TokenBatch(); b.set_metadata("model", "llama-7b"); b.get_metadata("model")
        'llama-7b'
        """
        if self._metadata is None:
            self._metadata = {}
        self._metadata[key] = value

    def get_metadata(self, str key not None, default=None):
        """The metadata value for ``key``, or ``default``."""
        if self._metadata is None:
            return default
        return self._metadata.get(key, default)

    def metadata_dict(self):
        """A copy of the metadata as a dict."""
        return dict(self._metadata) if self._metadata else {}

    # -- tokens as objects --------------------------------------------------------------------

    def __len__(self):
        return self._count

    def tokens(self):
        """Every token as a list of Token objects.

        >>> TokenBatch.from_tokens([Token(1, 0, "a")]).tokens()
        [Token(id=1, text='a', pos=0)]
        """
        cdef Py_ssize_t i
        cdef list out = PyList_New(self._count)
        for i in range(self._count):
            tok = self._token_at(i)
            Py_INCREF(tok)
            PyList_SET_ITEM(out, i, tok)
        return out

    def __iter__(self):
        return iter(self.tokens())

    def get(self, Py_ssize_t index):
        """The token at ``index`` (negative counts from the end), or None when out of range."""
        if index < 0:
            index += self._count
        if index < 0 or index >= self._count:
            return None
        return self._token_at(index)

    def __getitem__(self, key):
        """``batch[i]`` is a Token; ``batch[a:b:c]`` is a new TokenBatch with the same sequence_id,
        is_final and a copy of the metadata."""
        cdef Py_ssize_t i, index
        cdef TokenBatch out
        if isinstance(key, slice):
            indices = range(self._count)[key]
            out = self._empty_like()
            out._reserve(len(indices))
            for i in indices:
                out._push_from(self, i)
            return out
        index = key
        if index < 0:
            index += self._count
        if index < 0 or index >= self._count:
            raise IndexError(f"token index {key} out of range for a batch of {self._count}")
        return self._token_at(index)

    def to_dicts(self):
        """Every token as a dict (see ``Token.to_dict``)."""
        return [tok.to_dict() for tok in self.tokens()]

    # -- columns ------------------------------------------------------------------------------

    def text(self):
        """The texts of all tokens concatenated (tokens without text add nothing).

        >>> TokenBatch.from_tokens([Token(1, 0, "Hel"), Token(2, 1), Token(3, 2, "lo")]).text()
        'Hello'
        """
        return PyUnicode_DecodeUTF8(<const char *>self._text, self._text_size, NULL)

    def texts(self):
        """The text of every token (None where absent), without building Token objects."""
        cdef Py_ssize_t i
        cdef list out = PyList_New(self._count)
        for i in range(self._count):
            if self._flags[i] & HAS_TEXT:
                text = PyUnicode_DecodeUTF8(<const char *>self._text + self._text_offsets[i], self._text_len(i), NULL)
            else:
                text = None
            Py_INCREF(text)
            PyList_SET_ITEM(out, i, text)
        return out

    def token_ids(self):
        """The ids as a list of int."""
        return self.ids_array().tolist()

    def positions(self):
        """The positions as a list of int."""
        return self.positions_array().tolist()

    cdef cnp.ndarray _new_array(self, int typenum):
        cdef cnp.npy_intp n = self._count
        return cnp.PyArray_SimpleNew(1, &n, typenum)

    def ids_array(self):
        """The ids as a new uint32 numpy array."""
        arr = self._new_array(cnp.NPY_UINT32)
        if self._count:   # an empty batch may have no columns: memcpy from NULL is undefined (UBSan)
            memcpy(cnp.PyArray_DATA(arr), self._ids, self._count * 4)
        return arr

    def positions_array(self):
        """The positions as a new uint32 numpy array."""
        arr = self._new_array(cnp.NPY_UINT32)
        if self._count:
            memcpy(cnp.PyArray_DATA(arr), self._positions, self._count * 4)
        return arr

    def logprobs_array(self):
        """The logprobs as a new float32 numpy array holding the exact wire bits; NaN where a token
        has no logprob (use ``has_logprob_array()`` when NaN can also be a real value).

        >>> TokenBatch.from_tokens([Token(1, 0, logprob=-0.5), Token(2, 1)]).logprobs_array()
        array([-0.5,  nan], dtype=float32)
        """
        cdef Py_ssize_t i
        arr = self._new_array(cnp.NPY_FLOAT32)
        cdef uint32_t *out = <uint32_t *>cnp.PyArray_DATA(arr)
        for i in range(self._count):
            out[i] = self._logprob_bits[i] if self._flags[i] & HAS_LOGPROB else QUIET_NAN_BITS
        return arr

    cdef cnp.ndarray _flag_array(self, uint8_t flag):
        cdef Py_ssize_t i
        arr = self._new_array(cnp.NPY_BOOL)
        cdef uint8_t *out = <uint8_t *>cnp.PyArray_DATA(arr)
        for i in range(self._count):
            out[i] = (self._flags[i] & flag) != 0
        return arr

    def has_logprob_array(self):
        """A bool numpy array: True where the token carries a logprob."""
        return self._flag_array(HAS_LOGPROB)

    def has_text_array(self):
        """A bool numpy array: True where the token carries a text."""
        return self._flag_array(HAS_TEXT)

    def is_special_array(self):
        """A bool numpy array: True where the token is special."""
        return self._flag_array(IS_SPECIAL)

    def text_offsets_array(self):
        """int64 numpy array of ``len(batch) + 1`` offsets into ``text_bytes()``: token i's text
        is ``text_bytes()[off[i]:off[i + 1]]`` (empty where it has none)."""
        cdef cnp.npy_intp n = self._count + 1
        arr = cnp.PyArray_ZEROS(1, &n, cnp.NPY_INT64, 0)
        if self._count:
            memcpy(cnp.PyArray_DATA(arr), self._text_offsets, n * 8)
        return arr

    def text_bytes(self):
        """All token texts concatenated, as UTF-8 bytes."""
        return PyBytes_FromStringAndSize(<const char *>self._text, self._text_size)

    # -- wire ---------------------------------------------------------------------------------

    def encode(self):
        """The batch's wire bytes (section 3). EncodeError for more than 65,535 tokens or a text
        over 65,535 UTF-8 bytes.

        >>> TokenBatch(sequence_id=7).encode().hex()
        '01000000070000'
        """
        cdef Py_ssize_t header = self._header_size()
        cdef Py_ssize_t bad
        cdef unsigned char *p
        cdef const unsigned char *end
        if self._count > MAX_BATCH_TOKENS:
            raise EncodeError(f"a token batch carries at most 65535 tokens; this one holds {self._count}")
        out = PyBytes_FromStringAndSize(NULL, header + self._tokens_wire_size)
        p = <unsigned char *>PyBytes_AS_STRING(out)
        end = p + header + self._tokens_wire_size
        p[0] = (HAS_SEQUENCE_ID if self._has_sequence_id else 0) | (IS_FINAL if self._is_final else 0)
        if self._has_sequence_id:
            quill_store_be32(p + 1, self._sequence_id)
        quill_store_be16(p + header - 2, <uint16_t>self._count)
        if self._count >= NOGIL_MIN_TOKENS:
            self._readers_without_gil += 1
            try:
                with nogil:
                    bad = self._write_tokens(p + header, end)
            finally:
                self._readers_without_gil -= 1
        else:
            bad = self._write_tokens(p + header, end)
        if bad >= 0:
            raise EncodeError(f"token {bad} text is {self._text_len(bad)} UTF-8 bytes; "
                              f"the wire format carries at most 65535")
        return out

    cdef Py_ssize_t _write_tokens(self, unsigned char *p, const unsigned char *end) noexcept nogil:
        """Write every token at ``p`` (the output ends at ``end``); return -1, or the index of a
        token whose text is too long."""
        cdef Py_ssize_t i, text_len, start
        cdef uint8_t flags
        for i in range(self._count):
            quill_store_be32(p, self._ids[i])
            quill_store_be32(p + 4, self._positions[i])
            flags = self._flags[i]
            p[8] = flags
            p += TOKEN_FIXED_SIZE
            if flags & HAS_LOGPROB:
                quill_store_be32(p, self._logprob_bits[i])
                p += 4
            if flags & HAS_TEXT:
                text_len = self._text_len(i)
                if text_len > MAX_TEXT_BYTES:
                    return i
                quill_store_be16(p, <uint16_t>text_len)
                if text_len:
                    start = self._text_offsets[i]
                    quill_copy_text(p + 2, self._text + start, text_len, self._text_buffer.capacity - start,
                                    end - (p + 2))
                p += 2 + text_len
        return -1

    @staticmethod
    def decode(buf):
        """Decode a buffer holding exactly one batch (any bytes-like object).

        Truncation, a count that the bytes cannot hold, or bytes left over after the last token
        raise DecodeError with the offset (leftovers are an error here; the reference ignores
        them). Invalid UTF-8 in a text becomes U+FFFD.

        >>> TokenBatch.decode(bytes.fromhex("030000002a0001000000070000000300"))[0]
        Token(id=7, text=None, pos=3)
        """
        cdef Py_buffer view
        if PyBytes_CheckExact(buf):  # immutable: no buffer to acquire
            return _decode_batch(<const unsigned char *>PyBytes_AS_STRING(buf), PyBytes_GET_SIZE(buf))
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            return _decode_batch(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef ParseStatus _read_tokens(self, const unsigned char *data, Py_ssize_t size, Py_ssize_t *pos,
                                  Py_ssize_t count, ParseError *err) noexcept nogil:
        """Parse ``count`` tokens into the (already reserved) columns and text buffer."""
        cdef RawToken raw
        cdef Py_ssize_t i, text_size = 0, wire_start = pos[0]
        cdef ParseStatus status
        for i in range(count):
            status = _read_token(data, size, pos, &raw, err)
            if status != PARSE_OK:
                err.index = i
                return status
            self._ids[i] = raw.id
            self._positions[i] = raw.position
            self._logprob_bits[i] = raw.logprob_bits
            self._flags[i] = raw.flags
            # Keep room for the fixed part of every token still to come; this also bounds the
            # text bytes by the buffer reserved for them.
            if size - pos[0] < (count - i - 1) * TOKEN_FIXED_SIZE:
                err.status, err.offset, err.available = PARSE_SHORT_REST, pos[0], size - pos[0]
                err.declared, err.index = count - i - 1, i
                return PARSE_SHORT_REST
            if raw.text_len:
                quill_copy_text(self._text + text_size, data + raw.text_start, raw.text_len,
                                size - raw.text_start, self._text_buffer.capacity - text_size)
                text_size += raw.text_len
            self._text_offsets[i + 1] = text_size
        self._count = count
        self._text_size = text_size
        self._tokens_wire_size = pos[0] - wire_start
        return PARSE_OK

    cdef int _replace_invalid_utf8(self) except -1:
        """Rewrite texts that are not valid UTF-8 with U+FFFD replacements (maximal subparts)."""
        cdef Py_ssize_t i, start, text_len, old_size = self._text_size
        cdef list pieces = []
        cdef bint changed = False
        for i in range(self._count):
            start = self._text_offsets[i]
            text_len = self._text_len(i)
            piece = PyBytes_FromStringAndSize(<const char *>self._text + start, text_len)
            if not quill_is_utf8(self._text + start, text_len):
                piece = PyUnicode_DecodeUTF8(<const char *>self._text + start, text_len, "replace").encode()
                changed = True
            pieces.append(piece)
        if not changed:
            return 0
        self._text_buffer = None
        self._text = NULL
        self._text_size = 0
        for i in range(self._count):
            piece = pieces[i]
            text_len = len(piece)
            self._reserve_text(text_len)
            if text_len:   # an empty first text leaves the buffer NULL: memcpy(NULL, p, 0) is undefined (UBSan)
                memcpy(self._text + self._text_size, PyBytes_AS_STRING(piece), text_len)
            self._text_size += text_len
            self._text_offsets[i + 1] = self._text_size
        self._tokens_wire_size += self._text_size - old_size
        return 0

    # -- comparison and pickling --------------------------------------------------------------

    def __eq__(self, other):
        """Batches are equal when their wire content is: sequence_id, is_final and the tokens
        (logprobs compared by their float32 bits). Metadata is not compared."""
        if type(other) is not TokenBatch:
            return NotImplemented
        cdef TokenBatch o = <TokenBatch>other
        cdef Py_ssize_t n = self._count
        if (n != o._count or self._has_sequence_id != o._has_sequence_id or self._is_final != o._is_final
                or self._sequence_id != o._sequence_id or self._text_size != o._text_size):
            return False
        if n == 0:
            return True
        return (memcmp(self._ids, o._ids, n * 4) == 0
                and memcmp(self._positions, o._positions, n * 4) == 0
                and memcmp(self._logprob_bits, o._logprob_bits, n * 4) == 0
                and memcmp(self._flags, o._flags, n) == 0
                and memcmp(self._text_offsets, o._text_offsets, (n + 1) * 8) == 0
                and (self._text_size == 0 or memcmp(self._text, o._text, self._text_size) == 0))

    __hash__ = None

    def __repr__(self):
        return f"TokenBatch(sequence_id={self.sequence_id}, is_final={self._is_final}, tokens={self._count})"

    def __reduce__(self):
        cdef Py_ssize_t n = self._count
        columns = PyBytes_FromStringAndSize(NULL, n * 13)
        cdef char *p = PyBytes_AS_STRING(columns)
        if n:
            memcpy(p, self._ids, n * 4)
            memcpy(p + n * 4, self._positions, n * 4)
            memcpy(p + n * 8, self._logprob_bits, n * 4)
            memcpy(p + n * 12, self._flags, n)
        offsets = self.text_offsets_array().tobytes()
        return (_restore_batch, (self.sequence_id, self._is_final, n, columns, offsets, self.text_bytes(),
                                 self.metadata_dict()))


cdef inline uint32_t _column_u32(const unsigned char *column, Py_ssize_t i) noexcept:
    """Element ``i`` of a native-order u32 column stored as bytes."""
    cdef uint32_t v
    memcpy(&v, column + i * 4, 4)
    return v


def _restore_batch(sequence_id, is_final, Py_ssize_t count, bytes columns, bytes offsets, bytes text, dict metadata):
    """Unpickle a TokenBatch (private); checks that the pickled columns are consistent."""
    cdef TokenBatch batch = TokenBatch(sequence_id, is_final)
    cdef const unsigned char *c = <const unsigned char *>PyBytes_AS_STRING(columns)
    cdef const int64_t *off
    cdef Py_ssize_t i
    if count < 0 or len(columns) != count * 13 or len(offsets) != (count + 1) * 8:
        raise ValueError("inconsistent pickled TokenBatch: column sizes do not match the count")
    off_array = np.frombuffer(offsets, dtype=np.int64)
    if off_array[0] != 0 or off_array[count] != len(text) or (count and np.any(np.diff(off_array) < 0)):
        raise ValueError("inconsistent pickled TokenBatch: bad text offsets")
    off = <const int64_t *>PyBytes_AS_STRING(offsets)
    batch._reserve(count)
    for i in range(count):
        batch._push(_column_u32(c, i), _column_u32(c + count * 4, i), c[count * 12 + i] & TOKEN_FLAG_MASK,
                    _column_u32(c + count * 8, i), <const unsigned char *>PyBytes_AS_STRING(text) + off[i],
                    off[i + 1] - off[i])
    if not quill_is_utf8(batch._text, batch._text_size):
        raise ValueError("inconsistent pickled TokenBatch: text is not UTF-8")
    for key, value in metadata.items():
        batch.set_metadata(key, value)
    return batch


cdef TokenBatch _decode_batch(const unsigned char *data, Py_ssize_t size):
    cdef Py_ssize_t pos = 1, count, available
    cdef uint8_t flags
    cdef TokenBatch batch
    cdef ParseError err
    cdef ParseStatus status
    if size < 1:
        raise DecodeError("token batch is empty: the flags byte is missing", offset=0)
    flags = data[0]
    batch = TokenBatch.__new__(TokenBatch)
    batch._is_final = (flags & IS_FINAL) != 0
    if flags & HAS_SEQUENCE_ID:
        if size - pos < 4:
            raise DecodeError(f"token batch truncated: sequence_id needs 4 bytes, {size - pos} left", offset=pos)
        batch._sequence_id = quill_load_be32(data + pos)
        batch._has_sequence_id = True
        pos += 4
    if size - pos < 2:
        raise DecodeError(f"token batch truncated: token count needs 2 bytes, {size - pos} left", offset=pos)
    count = quill_load_be16(data + pos)
    pos += 2
    available = size - pos
    # Every token takes at least 9 bytes: refuse an impossible count before allocating for it.
    if count * TOKEN_FIXED_SIZE > available:
        raise DecodeError(f"token batch declares {count} tokens but only {available} bytes follow "
                          f"(each token needs at least 9)", offset=pos)
    if count:
        batch._reserve(count)
        # Every text byte is one of these; the slack lets short texts be copied 16 bytes at once.
        batch._reserve_text(available - count * TOKEN_FIXED_SIZE + QUILL_COPY_SLACK)
    if count >= NOGIL_MIN_TOKENS:
        with nogil:
            status = batch._read_tokens(data, size, &pos, count, &err)
    else:
        status = batch._read_tokens(data, size, &pos, count, &err)
    if status != PARSE_OK:
        raise _parse_error(&err, f"token {err.index} of {count} in the batch")
    if pos != size:
        raise DecodeError(f"{size - pos} bytes left over after the {count} tokens of the token batch", offset=pos)
    if not quill_is_ascii(batch._text, batch._text_size):
        batch._replace_invalid_utf8()
    return batch


# ---------------------------------------------------------------------------------------------
# TokenBatchBuilder


@cython.final
cdef class TokenBatchBuilder:
    """Groups a stream of tokens into batches of at most ``max_size`` tokens.

    ``push`` returns a full batch as soon as it has ``max_size`` tokens, ``flush`` returns the
    pending tokens early (None if there are none), and ``finish`` ends the stream: it returns
    the pending tokens as a batch marked ``is_final`` -- an empty one when nothing is pending,
    so the receiver always sees the end -- and closes the builder (any later call raises
    RuntimeError). Every batch gets the builder's ``sequence_id``.

    >>> builder = TokenBatchBuilder(max_size=2, sequence_id=5)
    >>> builder.push(Token(1, 0)) is None
    True
    >>> builder.push(Token(2, 1))
    TokenBatch(sequence_id=5, is_final=False, tokens=2)
    >>> builder.push(Token(3, 2)); builder.finish()
    TokenBatch(sequence_id=5, is_final=True, tokens=1)
    """

    cdef TokenBatch _pending
    cdef Py_ssize_t _max_size
    cdef object _sequence_id
    cdef bint _finished

    def __init__(self, Py_ssize_t max_size=32, sequence_id=None):
        if max_size < 1 or max_size > MAX_BATCH_TOKENS:
            raise ValueError(f"max_size must be in 1..65535, got {max_size}")
        self._max_size = max_size
        self._sequence_id = sequence_id
        self._pending = TokenBatch(sequence_id)
        self._finished = False

    @property
    def max_size(self):
        """The number of tokens that makes a batch full."""
        return self._max_size

    @property
    def sequence_id(self):
        """The sequence id given to every batch (or None)."""
        return self._sequence_id

    def __len__(self):
        """The number of tokens pending (pushed but not yet returned in a batch)."""
        return self._pending._count

    cdef int _check_open(self) except -1:
        if self._finished:
            raise RuntimeError("TokenBatchBuilder.finish() was already called")
        return 0

    cdef TokenBatch _take(self):
        cdef TokenBatch batch = self._pending
        self._pending = TokenBatch(self._sequence_id)
        return batch

    def push(self, Token token not None):
        """Add a token; return the full batch when this token fills it, else None."""
        self._check_open()
        self._pending._push_token(token)
        if self._pending._count >= self._max_size:
            return self._take()
        return None

    def flush(self):
        """Return the pending tokens as a (non-final) batch, or None when nothing is pending."""
        self._check_open()
        if self._pending._count == 0:
            return None
        return self._take()

    def finish(self):
        """Return the pending tokens (possibly none) as the final batch and close the builder."""
        self._check_open()
        batch = self._take()
        batch._is_final = True
        self._finished = True
        return batch
