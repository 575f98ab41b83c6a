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
    their str from it on first use, reading ``data`` then) and with PinnedBatch objects. Bytes
    below the batch's text size are never rewritten while another object holds the buffer: the
    batch only appends, and detaches on clear(). While ``pins`` > 0 it is not even moved or
    appended to (see TokenBatch)."""
    cdef unsigned char *data
    cdef Py_ssize_t capacity
    cdef Py_ssize_t pins

    def __dealloc__(self):
        free(self.data)


@cython.final
@cython.no_gc
@cython.freelist(64)
cdef class _Columns:
    """The fixed-size columns of a TokenBatch in one allocation: int64 text offsets[capacity + 1],
    then u32 ids, positions and logprob bits [capacity], then u8 flags [capacity]. Owned by one
    batch; while ``pins`` > 0 its bytes are neither written nor moved (see TokenBatch)."""
    cdef char *block
    cdef Py_ssize_t capacity
    cdef Py_ssize_t pins

    def __dealloc__(self):
        free(self.block)


include "tokens_token.pxi"

# ---------------------------------------------------------------------------------------------
# TokenBatch


include "tokens_pins.pxi"

@cython.final
@cython.no_gc
@cython.freelist(64)
cdef class TokenBatch:
    """A batch of tokens for streaming (docs/protocol.md section 3), stored by columns.

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

    Storage, and who may hold it. The fixed-size columns live in one ``_Columns`` block and the
    texts in one ``_TextBuffer``; both are small refcounted objects. Readers that need stable
    pointers (``encode()`` while it runs without the GIL, ``tokens()``, pickling, slicing,
    extending from a batch, and zero-copy exporters) take a ``PinnedBatch`` (``pin_batch``): it
    references both objects, counts itself in their ``pins``, and records the count, sizes and
    pointers of that instant. Pinned storage is frozen: no byte of it is written, moved or freed
    while a pin lives. A mutation of a batch whose storage is pinned first moves the batch onto a
    private copy (copy-on-write, in ``_reserve`` / ``_reserve_text``, the only two places that
    change storage); the pinned objects stay with their holders, unchanged. So a mutation never
    fails because of a reader, a reader never sees a torn batch, and an exported column outlives
    the batch. Unpinned storage may grow in place; Tokens handed out share the text buffer
    without pinning it (they read ``_TextBuffer.data`` when asked, and bytes below the text size
    are never rewritten while they hold it). A pointer into storage is taken only after the last
    call that may reallocate (``b.extend(b)``, ``b.add(b[0])``).
    """

    cdef Py_ssize_t _count
    cdef _Columns _columns          # None until the first token
    cdef int64_t *_text_offsets     # pointers into _columns.block (see _Columns)
    cdef uint32_t *_ids
    cdef uint32_t *_positions
    cdef uint32_t *_logprob_bits   # 0 where the token has no logprob
    cdef uint8_t *_flags
    cdef _TextBuffer _text_buffer   # None until the first text
    cdef unsigned char *_text       # _text_buffer.data
    cdef Py_ssize_t _text_size
    cdef Py_ssize_t _tokens_wire_size   # encoded size of the tokens (without the batch header)
    cdef uint32_t _sequence_id
    cdef bint _has_sequence_id
    cdef bint _is_final
    cdef dict _metadata                 # str -> str, created on first set_metadata

    def __init__(self, sequence_id=None, is_final=False):
        self.sequence_id = sequence_id
        self._is_final = bool(is_final)

    # -- storage ------------------------------------------------------------------------------

    cdef int _reserve(self, Py_ssize_t count) except -1:
        """Make the columns private, unpinned and large enough for ``count`` tokens."""
        cdef _Columns old = self._columns, new
        cdef Py_ssize_t capacity
        cdef char *block
        if old is not None and old.pins == 0 and count <= old.capacity:
            return 0
        if old is None:
            capacity = max(count, 8)
        elif old.pins:   # copy-on-write: the same room as before, unless more is needed
            capacity = max(count, old.capacity)
        else:
            capacity = max(count, 2 * old.capacity)
        block = <char *>malloc((capacity + 1) * 8 + capacity * 13)
        if block == NULL:
            raise MemoryError()
        new = _Columns.__new__(_Columns)
        new.block = block
        new.capacity = capacity
        offsets = <int64_t *>block
        ids = <uint32_t *>(block + (capacity + 1) * 8)
        positions = ids + capacity
        logprob_bits = positions + capacity
        flags = <uint8_t *>(logprob_bits + capacity)
        offsets[0] = 0
        if self._count:
            memcpy(offsets, self._text_offsets, (self._count + 1) * 8)
            memcpy(ids, self._ids, self._count * 4)
            memcpy(positions, self._positions, self._count * 4)
            memcpy(logprob_bits, self._logprob_bits, self._count * 4)
            memcpy(flags, self._flags, self._count)
        self._columns = new   # frees an unpinned old block: no pointer into it is left
        self._text_offsets = offsets
        self._ids = ids
        self._positions = positions
        self._logprob_bits = logprob_bits
        self._flags = flags
        return 0

    cdef int _reserve_text(self, Py_ssize_t extra) except -1:
        """Make the text buffer private to appends, unpinned, with room for ``extra`` more bytes.
        Unpinned, it grows in place (tokens sharing it read ``data`` again); pinned, the batch
        moves to a copy."""
        cdef _TextBuffer old = self._text_buffer, new
        cdef Py_ssize_t capacity
        cdef unsigned char *text
        if old is not None and old.pins == 0 and self._text_size + extra <= old.capacity:
            return 0
        if old is None:
            capacity = max(extra, 64)
        elif old.pins:
            capacity = max(self._text_size + extra, old.capacity)
        else:
            capacity = max(self._text_size + extra, 2 * old.capacity)
            text = <unsigned char *>realloc(old.data, capacity)
            if text == NULL:
                raise MemoryError()
            old.data = self._text = text
            old.capacity = capacity
            return 0
        text = <unsigned char *>malloc(capacity)
        if text == NULL:
            raise MemoryError()
        new = _TextBuffer.__new__(_TextBuffer)
        new.data = text
        new.capacity = capacity
        if self._text_size:
            memcpy(text, self._text, self._text_size)
        self._text_buffer = new
        self._text = text
        return 0

    cdef inline Py_ssize_t _text_len(self, Py_ssize_t i) noexcept nogil:
        return <Py_ssize_t>(self._text_offsets[i + 1] - self._text_offsets[i])

    cdef inline int _reserve_one(self, bint has_text, Py_ssize_t text_len) except -1:
        """``_reserve`` and ``_reserve_text`` for one more token, with the common case inline."""
        cdef _Columns columns = self._columns
        cdef _TextBuffer buffer = self._text_buffer
        if columns is None or columns.pins or self._count >= columns.capacity:
            self._reserve(self._count + 1)
        if has_text and (buffer is None or buffer.pins or self._text_size + text_len > buffer.capacity):
            self._reserve_text(text_len)
        return 0

    cdef inline void _append(self, uint32_t id, uint32_t position, uint8_t flags, uint32_t logprob_bits,
                             const unsigned char *text, Py_ssize_t text_len) noexcept:
        """Append one token into storage already reserved for it (text is valid UTF-8, or NULL
        without HAS_TEXT). Nothing here can reallocate, so ``text`` may point into this batch."""
        cdef Py_ssize_t i = self._count
        if flags & HAS_TEXT:
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

    cdef int _push_token(self, Token tok) except -1:
        cdef const unsigned char *text = NULL
        cdef Py_ssize_t text_len = 0
        cdef bint has_text = tok._flags & HAS_TEXT
        if has_text:
            text = tok._utf8(&text_len)
        self._reserve_one(has_text, text_len)
        if tok._lazy_text:   # its text is in a _TextBuffer (maybe this batch's, just moved): again
            text = tok._utf8(&text_len)
        self._append(tok._id, tok._position, tok._flags, tok._logprob_bits, text, text_len)
        return 0

    cdef int _push_from(self, const TokenColumns *src, Py_ssize_t i) except -1:
        """Append token ``i`` of pinned columns (which may be this batch's own)."""
        cdef Py_ssize_t text_len = <Py_ssize_t>(src.text_offsets[i + 1] - src.text_offsets[i])
        self._reserve_one(src.flags[i] & HAS_TEXT, text_len)
        self._append(src.ids[i], src.positions[i], src.flags[i], src.logprob_bits[i],
                     src.text + src.text_offsets[i] if text_len else NULL, text_len)
        return 0

    cdef TokenColumns _columns_now(self) noexcept:
        """The batch's storage as it is now (valid until the next mutation, unless pinned)."""
        cdef TokenColumns c
        c.count = self._count
        c.text_offsets = self._text_offsets
        c.ids = self._ids
        c.positions = self._positions
        c.logprob_bits = self._logprob_bits
        c.flags = self._flags
        c.text = self._text
        c.text_size = self._text_size
        c.text_capacity = 0 if self._text_buffer is None else self._text_buffer.capacity
        c.wire_size = self._tokens_wire_size
        return c

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
        cdef list items
        cdef object item
        cdef PinnedBatch source
        if type(tokens) is TokenBatch:
            # From a pin: when tokens is self, the reservations below move self onto a copy and
            # the pinned original is read, so nothing read is ever written or freed meanwhile.
            source = pin_batch(tokens)
            return self._extend_columns(&source.columns)
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


    cdef int _extend_columns(self, const TokenColumns *source) except -1:
        """Append every token of ``source`` (pinned, or otherwise unchanged until this returns)."""
        cdef Py_ssize_t i
        self._reserve(self._count + source.count)
        if source.text_size:
            self._reserve_text(source.text_size)
        for i in range(source.count):
            self._push_from(source, i)
        return 0
    def clear(self):
        """Remove every token (sequence_id, is_final and metadata stay)."""
        self._count = 0
        self._tokens_wire_size = 0
        self._detach_text()

    cdef void _detach_text(self) noexcept:
        """Empty the text; a buffer still shared with tokens or pins is left to them, not rewritten."""
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
        cdef PinnedBatch pin = pin_batch(self)   # before allocating: a GC pass may run other threads
        cdef list out = PyList_New(pin.columns.count)
        for i in range(pin.columns.count):
            tok = _token_from(&pin.columns, <_TextBuffer>pin._text_owner, i)
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
        cdef TokenColumns now = self._columns_now()
        return _token_from(&now, self._text_buffer, index)

    def __getitem__(self, key):
        """``batch[i]`` is a Token; ``batch[a:b:c]`` is a new TokenBatch with the same sequence_id,
        is_final and a copy of the metadata."""
        cdef Py_ssize_t i, index, start, stop, step, n
        cdef TokenBatch out
        cdef PinnedBatch pin
        cdef TokenColumns now
        if isinstance(key, slice):
            PySlice_Unpack(key, &start, &stop, &step)   # may run __index__ code: before the pin
            pin = pin_batch(self)
            n = PySlice_AdjustIndices(pin.columns.count, &start, &stop, step)
            out = self._empty_like()
            out._reserve(n)
            for i in range(n):
                out._push_from(&pin.columns, start + i * step)
            return out
        index = key
        if index < 0:
            index += self._count
        if index < 0 or index >= self._count:
            raise IndexError(f"token index {key} out of range for a batch of {self._count}")
        now = self._columns_now()
        return _token_from(&now, self._text_buffer, index)

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
        cdef PinnedBatch pin = pin_batch(self)   # before allocating: a GC pass may run other threads
        cdef const TokenColumns *c = &pin.columns
        cdef list out = PyList_New(c.count)
        for i in range(c.count):
            if c.flags[i] & HAS_TEXT:
                text = PyUnicode_DecodeUTF8(<const char *>c.text + c.text_offsets[i],
                                            c.text_offsets[i + 1] - c.text_offsets[i], NULL)
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

    # -- Arrow (the PyCapsule Interface: quill/_core/arrow.pyx exports, arrow_import.pyx imports) --

    cdef dict _arrow_metadata(self):
        cdef dict metadata = {"is_final": "true" if self._is_final else "false"}
        if self._has_sequence_id:
            metadata["sequence_id"] = str(self._sequence_id)
        return metadata

    def __arrow_c_schema__(self):
        """The batch's Arrow schema (an "arrow_schema" PyCapsule): a record batch of ``id`` uint32,
        ``position`` uint32, ``logprob`` float32 (null where a token has none), ``text``
        large_utf8 (null where a token has none; large because the batch's offsets are int64)
        and ``is_special`` bool, with ``sequence_id`` (when set) and ``is_final`` ("true" or
        "false") as schema metadata."""
        return token_schema(self._arrow_metadata())

    def __arrow_c_array__(self, requested_schema=None):
        """The batch as an Arrow record batch: ("arrow_schema", "arrow_array") PyCapsules.

        Not copied: ids, positions, logprob values, text offsets and text bytes are the batch's
        own memory. Copied: three bitmaps (logprob and text validity, is_special values), which
        Arrow stores as bits. The arrays hold a ``PinnedBatch`` of the batch as it was at this
        call: they stay valid after the batch is dropped, and a later mutation moves the batch
        onto a copy instead of changing them. ``requested_schema`` is accepted and not used (the
        PyCapsule Interface makes it a best-effort request).

        >>> schema, array = TokenBatch.from_tokens([Token(7, 0, "Hi")]).__arrow_c_array__()
        >>> type(array).__name__
        'PyCapsule'
        """
        cdef PinnedBatch pin = pin_batch(self)
        return export_token_columns(&pin.columns, pin, self._arrow_metadata())

    def __arrow_c_stream__(self, requested_schema=None):
        """The batch as a one-batch Arrow stream (an "arrow_array_stream" PyCapsule), exported as
        ``__arrow_c_array__`` exports it: what ``pyarrow.table(batch)``,
        ``polars.DataFrame(batch)`` and DuckDB's ``FROM batch`` read."""
        return token_batch_stream((self,), self._arrow_metadata())

    @staticmethod
    def from_arrow(source):
        """A new batch from any object with the Arrow PyCapsule Interface (a pyarrow Table,
        RecordBatch or RecordBatchReader, a polars DataFrame, a DuckDB relation, a TokenBatch...),
        all its chunks in order, copied into the batch.

        Columns ``id`` and ``position`` (uint32) are required; ``logprob`` (float32), ``text``
        (utf8, large_utf8 or utf8_view) and ``is_special`` (bool) are optional, null meaning "none"
        in the first two; other columns are ignored. ``sequence_id`` and ``is_final`` come from
        the schema metadata. A missing column or a wrong type raises TypeError naming the column
        and the type expected; malformed data (a null id, offsets that decrease, invalid UTF-8,
        wrong buffer counts...) raises DecodeError.

        >>> batch = TokenBatch.from_tokens([Token(7, 0, "Hi", -0.5), Token(8, 1)], sequence_id=3)
        >>> TokenBatch.from_arrow(batch) == batch
        True
        """
        cdef TokenBatch batch = TokenBatch.__new__(TokenBatch)
        sequence_id, batch._is_final, chunks = import_token_chunks(source)
        batch._set_sequence_id(sequence_id)
        for chunk in chunks:
            batch._extend_columns(&(<TokenChunk>chunk).columns)
        return batch

    # -- wire ---------------------------------------------------------------------------------

    def encode(self):
        """The batch's wire bytes (section 3). EncodeError for more than 65,535 tokens or a text
        over 65,535 UTF-8 bytes. Large batches are written without the GIL, from a pin: other
        threads may keep mutating the batch meanwhile, and the bytes are the batch as it was
        when the call began.

        >>> TokenBatch(sequence_id=7).encode().hex()
        '01000000070000'
        """
        # Small batches are written with the GIL held and nothing that runs Python code (a bytes
        # allocation starts no GC pass): their storage as it is now is a snapshot. Large ones are
        # written without the GIL, from a pin taken before anything is allocated.
        cdef PinnedBatch pin = pin_batch(self) if self._count >= NOGIL_MIN_TOKENS else None
        cdef TokenColumns now = self._columns_now()
        cdef const TokenColumns *c = &pin.columns if pin is not None else &now
        cdef uint8_t flags = (HAS_SEQUENCE_ID if self._has_sequence_id else 0) | (IS_FINAL if self._is_final else 0)
        cdef uint32_t sequence_id = self._sequence_id
        cdef Py_ssize_t header = 7 if flags & HAS_SEQUENCE_ID else 3
        cdef Py_ssize_t bad
        cdef unsigned char *p
        if c.count > MAX_BATCH_TOKENS:
            raise EncodeError(f"a token batch carries at most 65535 tokens; this one holds {c.count}")
        out = PyBytes_FromStringAndSize(NULL, header + c.wire_size)
        p = <unsigned char *>PyBytes_AS_STRING(out)
        p[0] = flags
        if flags & HAS_SEQUENCE_ID:
            quill_store_be32(p + 1, sequence_id)
        quill_store_be16(p + header - 2, <uint16_t>c.count)
        if pin is not None:
            with nogil:
                bad = _write_tokens(c, p + header, p + header + c.wire_size)
        else:
            bad = _write_tokens(c, p + header, p + header + c.wire_size)
        if bad >= 0:
            raise EncodeError(f"token {bad} text is {c.text_offsets[bad + 1] - c.text_offsets[bad]} "
                              f"UTF-8 bytes; the wire format carries at most 65535")
        return out

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
        cdef PinnedBatch pin = pin_batch(self)   # one consistent state for every column
        cdef const TokenColumns *c = &pin.columns
        cdef Py_ssize_t n = c.count
        columns = PyBytes_FromStringAndSize(NULL, n * 13)
        offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * 8)
        cdef char *p = PyBytes_AS_STRING(columns)
        memset(PyBytes_AS_STRING(offsets), 0, 8)
        if n:
            memcpy(p, c.ids, n * 4)
            memcpy(p + n * 4, c.positions, n * 4)
            memcpy(p + n * 8, c.logprob_bits, n * 4)
            memcpy(p + n * 12, c.flags, n)
            memcpy(PyBytes_AS_STRING(offsets), c.text_offsets, (n + 1) * 8)
        text = PyBytes_FromStringAndSize(<const char *>c.text, c.text_size)
        return (_restore_batch, (self.sequence_id, self._is_final, n, columns, offsets, text,
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
    cdef uint8_t flags
    batch._reserve(count)
    if len(text):
        batch._reserve_text(len(text))
    for i in range(count):
        flags = c[count * 12 + i] & TOKEN_FLAG_MASK
        if not flags & HAS_TEXT and off[i + 1] != off[i]:
            raise ValueError("inconsistent pickled TokenBatch: text bytes for a token without text")
        batch._append(_column_u32(c, i), _column_u32(c + count * 4, i), flags, _column_u32(c + count * 8, i),
                      <const unsigned char *>PyBytes_AS_STRING(text) + off[i], off[i + 1] - off[i])
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


include "tokens_builder.pxi"
