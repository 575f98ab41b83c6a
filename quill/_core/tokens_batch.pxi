# Included by quill/_core/tokens.pyx: TokenBatch, the public batch (building, tokens as objects, wire, pickling).


@cython.final
cdef class TokenBatch(_BatchColumns):
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

    The storage, and who may hold it (pins, copy-on-write), is its base class ``_BatchStorage``
    (tokens_storage.pxi); the column accessors and the Arrow export are ``_BatchColumns``
    (tokens_columns.pxi); the wire format is tokens_codec.pxi.
    """

    def __init__(self, sequence_id=None, is_final=False):
        self.sequence_id = sequence_id
        self._is_final = bool(is_final)

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

    @staticmethod
    def encode_tokens(tokens, sequence_id=None, is_final=False):
        """The wire bytes of a batch holding ``tokens`` (a list or other iterable of Token),
        written straight from the Token objects: ``TokenBatch.from_tokens(tokens,
        sequence_id).encode()`` without building the batch. Same errors as ``encode()``.

        >>> TokenBatch.encode_tokens([Token(7, 3)], sequence_id=42, is_final=True).hex()
        '030000002a0001000000070000000300'
        """
        return _encode_tokens(tokens, sequence_id, is_final)

    @cython.critical_section
    def add(self, Token token not None):
        """Append one token.

        >>> b = TokenBatch(); b.add(Token(1, 0)); len(b)
        1
        """
        self._push_token(token)

    @cython.critical_section
    def extend(self, tokens):
        """Append every token of an iterable (or of another TokenBatch). All or nothing: a
        non-Token item raises TypeError before anything is added.

        >>> b = TokenBatch(); b.extend([Token(1, 0), Token(2, 1)]); b.token_ids()
        [1, 2]
        """
        self._extend(tokens)

    @cython.critical_section
    def clear(self):
        """Remove every token (sequence_id, is_final and metadata stay)."""
        self._clear()

    # -- batch properties ---------------------------------------------------------------------

    @property
    @cython.critical_section
    def sequence_id(self):
        """The sequence id (0..2**32-1), or None."""
        return self._sequence_id if self._has_sequence_id else None

    @sequence_id.setter
    @cython.critical_section
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
    @cython.critical_section
    def is_final(self):
        """True on the last batch of a stream (settable)."""
        return self._is_final

    @is_final.setter
    @cython.critical_section
    def is_final(self, value):
        self._is_final = bool(value)

    @cython.critical_section
    def is_empty(self):
        """True when the batch holds no token."""
        return self._count == 0

    @cython.critical_section
    def encoded_size(self):
        """The number of bytes ``encode()`` returns.

        >>> TokenBatch(sequence_id=1).encoded_size()
        7
        """
        return _header_size(self._has_sequence_id) + self._tokens_wire_size

    # -- metadata (local only) ----------------------------------------------------------------

    @cython.critical_section
    def set_metadata(self, str key not None, str value not None):
        """Attach a local string key/value (never encoded).

        >>> b = TokenBatch(); b.set_metadata("model", "llama-7b"); b.get_metadata("model")
        'llama-7b'
        """
        if self._metadata is None:
            self._metadata = {}
        self._metadata[key] = value

    @cython.critical_section
    def get_metadata(self, str key not None, default=None):
        """The metadata value for ``key``, or ``default``."""
        if self._metadata is None:
            return default
        return self._metadata.get(key, default)

    @cython.critical_section
    def metadata_dict(self):
        """A copy of the metadata as a dict."""
        return dict(self._metadata) if self._metadata else {}

    # -- tokens as objects --------------------------------------------------------------------

    @cython.critical_section
    def __len__(self):
        return self._count

    @cython.critical_section
    def tokens(self):
        """Every token as a list of Token objects.

        >>> TokenBatch.from_tokens([Token(1, 0, "a")]).tokens()
        [Token(id=1, text='a', pos=0)]
        """
        cdef Py_ssize_t i
        cdef PinnedBatch pin = _pin_locked(self)   # before allocating: a GC pass may run other threads
        cdef list out = PyList_New(pin.columns.count)
        for i in range(pin.columns.count):
            tok = _token_from(&pin.columns, <_TextBuffer>pin._text_owner, i)
            Py_INCREF(tok)
            PyList_SET_ITEM(out, i, tok)
        return out

    def __iter__(self):
        return iter(self.tokens())

    @cython.critical_section
    def get(self, Py_ssize_t index):
        """The token at ``index`` (negative counts from the end), or None when out of range."""
        if index < 0:
            index += self._count
        if index < 0 or index >= self._count:
            return None
        cdef TokenColumns now = self._columns_now()
        return _token_from(&now, self._text_buffer, index)

    @cython.critical_section
    def __getitem__(self, key):
        """``batch[i]`` is a Token; ``batch[a:b:c]`` is a new TokenBatch with the same sequence_id,
        is_final and a copy of the metadata."""
        cdef Py_ssize_t i, index, start, stop, step, n
        cdef TokenBatch out
        cdef PinnedBatch pin
        cdef TokenColumns now
        if isinstance(key, slice):
            PySlice_Unpack(key, &start, &stop, &step)   # may run __index__ code: before the pin
            pin = _pin_locked(self)
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

    # -- wire (tokens_codec.pxi) ---------------------------------------------------------------

    @cython.critical_section
    def encode(self):
        """The batch's wire bytes (section 3). EncodeError for more than 65,535 tokens or a text
        over 65,535 UTF-8 bytes. Large batches are written without the GIL, from a pin: other
        threads may keep mutating the batch meanwhile, and the bytes are the batch as it was
        when the call began.

        >>> TokenBatch(sequence_id=7).encode().hex()
        '01000000070000'
        """
        return _encode_batch(self)

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

    # -- comparison and pickling --------------------------------------------------------------

    def __eq__(self, other):
        """Batches are equal when their wire content is: sequence_id, is_final and the tokens
        (logprobs compared by their float32 bits). Metadata is not compared."""
        if type(other) is not TokenBatch:
            return NotImplemented
        cdef TokenBatch o = <TokenBatch>other
        with cython.critical_section(self, o):
            return self._equal(o)

    @cython.final
    cdef bint _equal(self, TokenBatch o):
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
