# Included by quill/_core/tokens.pyx: TokenBatch's storage and the rules for sharing it (_BatchStorage, copy-on-write, PinnedBatch).

# ---------------------------------------------------------------------------------------------
# The storage of a TokenBatch


# no_gc: a batch references nothing that can be part of a cycle (the metadata dict holds only
# str). TokenBatch and _BatchColumns add no field, so no_gc covers them, and with this type's
# size they share its freelist (Cython gives a freelist to a base type only, serving its subtypes
# of the same size; tests/test_token_storage.py checks the sizes).
@cython.no_gc
@cython.freelist(64)
@cython.auto_pickle(False)   # TokenBatch pickles itself (__reduce__)
cdef class _BatchStorage:
    """The storage of a TokenBatch (its base class, never used alone) and the rules for it.

    The fixed-size columns live in one ``_Columns`` block and the texts in one ``_TextBuffer``;
    both are small refcounted objects. Readers that need stable pointers (``encode()`` while it
    runs without the GIL, ``tokens()``, pickling, slicing, extending from a batch, and zero-copy
    exporters) take a ``PinnedBatch`` (``pin_batch``): it references both objects, counts itself
    in their ``pins``, and records the count, sizes and pointers of that instant. Pinned storage
    is frozen: no byte of it is written, moved or freed while a pin lives. A mutation of a batch
    whose storage is pinned first moves the batch onto a private copy (copy-on-write, in
    ``_reserve`` / ``_reserve_text``, the only two places that change storage); the pinned
    objects stay with their holders, unchanged. So a mutation never fails because of a reader, a
    reader never sees a torn batch, and an exported column outlives the batch. Unpinned storage
    may grow in place; Tokens handed out share the text buffer without pinning it (they read
    ``_TextBuffer.data`` when asked, and bytes below the text size are never rewritten while
    they hold it). A pointer into storage is taken only after the last call that may reallocate
    (``b.extend(b)``, ``b.add(b[0])``).

    The methods here are final (called directly, not through a vtable) and cdef only: the
    Python API is TokenBatch's.
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
    # The batch header, and local metadata (see TokenBatch).
    cdef uint32_t _sequence_id
    cdef bint _has_sequence_id
    cdef bint _is_final
    cdef dict _metadata                 # str -> str, created on first set_metadata

    @cython.final
    cdef int _reserve(self, Py_ssize_t count) except -1:
        """Make the columns private, unpinned and large enough for ``count`` tokens."""
        cdef _Columns old = self._columns, new
        cdef Py_ssize_t capacity
        cdef char *block
        cdef Py_ssize_t pins = 0 if old is None else quill_atomic_load_ssize(&old.pins)
        if old is not None and pins == 0 and count <= old.capacity:
            return 0
        if old is None:
            capacity = max(count, 8)
        elif pins:   # copy-on-write: the same room as before, unless more is needed
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

    @cython.final
    cdef int _reserve_text(self, Py_ssize_t extra) except -1:
        """Make the text buffer private to appends, unpinned, with room for ``extra`` more bytes.
        Unpinned, it grows in place (tokens sharing it read ``data`` again; free-threaded, only
        when no token shares it); pinned, the batch moves to a copy."""
        cdef _TextBuffer old = self._text_buffer, new
        cdef Py_ssize_t capacity
        cdef unsigned char *text
        cdef Py_ssize_t pins = 0 if old is None else quill_atomic_load_ssize(&old.pins)
        if old is not None and pins == 0 and self._text_size + extra <= old.capacity:
            return 0
        if old is None:
            capacity = max(extra, 64)
        elif pins:
            capacity = max(self._text_size + extra, old.capacity)
        elif QUILL_FREE_THREADED and _borrowed_refcount(<PyObject *>old) > 2:   # the batch's, ``old``'s
            # Free-threaded, a buffer shared with Tokens is not moved: one may be reading ``data``
            # on another thread right now (with the GIL it reads ``data`` again when asked).
            capacity = max(self._text_size + extra, 2 * old.capacity)
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

    @cython.final
    cdef inline Py_ssize_t _text_len(self, Py_ssize_t i) noexcept nogil:
        return <Py_ssize_t>(self._text_offsets[i + 1] - self._text_offsets[i])

    @cython.final
    cdef inline int _reserve_one(self, bint has_text, Py_ssize_t text_len) except -1:
        """``_reserve`` and ``_reserve_text`` for one more token, with the common case inline."""
        cdef _Columns columns = self._columns
        cdef _TextBuffer buffer = self._text_buffer
        if columns is None or quill_atomic_load_ssize(&columns.pins) or self._count >= columns.capacity:
            self._reserve(self._count + 1)
        if has_text and (buffer is None or quill_atomic_load_ssize(&buffer.pins)
                         or self._text_size + text_len > buffer.capacity):
            self._reserve_text(text_len)
        return 0

    @cython.final
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

    @cython.final
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

    @cython.final
    cdef int _push_from(self, const TokenColumns *src, Py_ssize_t i) except -1:
        """Append token ``i`` of pinned columns (which may be this batch's own)."""
        cdef Py_ssize_t text_len = <Py_ssize_t>(src.text_offsets[i + 1] - src.text_offsets[i])
        self._reserve_one(src.flags[i] & HAS_TEXT, text_len)
        self._append(src.ids[i], src.positions[i], src.flags[i], src.logprob_bits[i],
                     src.text + src.text_offsets[i] if text_len else NULL, text_len)
        return 0

    @cython.final
    cdef int _extend(self, object tokens) except -1:
        """Append every token of an iterable or of a TokenBatch (``extend``); all or nothing."""
        cdef Py_ssize_t i, n
        cdef list items
        cdef object item
        cdef PinnedBatch source
        if type(tokens) is TokenBatch:
            # From a pin: when tokens is self, the reservations below move self onto a copy and
            # the pinned original is read, so nothing read is ever written or freed meanwhile.
            source = _pin_locked(self) if tokens is self else pin_batch(tokens)
            return self._extend_columns(&source.columns)
        items = tokens if type(tokens) is list else list(tokens)
        n = len(items)
        for i in range(n):
            item = items[i]
            if type(item) is not Token:
                raise TypeError(f"TokenBatch.extend: item {i} is {type(item).__name__}, not Token")
            # The tokens are read again right below: fetch their texts while checking types
            # (scattered objects otherwise cost one cache miss after another).
            if not QUILL_FREE_THREADED:   # free-threaded, another thread may be swapping it
                quill_prefetch(<void *>(<Token>item)._text)
        self._reserve(self._count + n)
        for i in range(n):
            self._push_token(<Token>items[i])
        return 0

    @cython.final
    cdef int _extend_columns(self, const TokenColumns *source) except -1:
        """Append every token of ``source`` (pinned, or otherwise unchanged until this returns)."""
        cdef Py_ssize_t i
        self._reserve(self._count + source.count)
        if source.text_size:
            self._reserve_text(source.text_size)
        for i in range(source.count):
            self._push_from(source, i)
        return 0

    @cython.final
    cdef void _clear(self) noexcept:
        """Remove every token; a text buffer still shared with tokens or pins is left to them, not
        rewritten."""
        self._count = 0
        self._tokens_wire_size = 0
        if self._text_buffer is not None and _borrowed_refcount(<PyObject *>self._text_buffer) > 1:
            self._text_buffer = None
            self._text = NULL
        self._text_size = 0

    @cython.final
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


@cython.final
@cython.no_gc
@cython.freelist(64)
cdef class _TextBuffer:
    """The UTF-8 text bytes of a TokenBatch, shared with the Tokens it hands out (which decode
    their str from it on first use, reading ``data`` then) and with PinnedBatch objects. Bytes
    below the batch's text size are never rewritten while another object holds the buffer: the
    batch only appends, and detaches on clear(). While ``pins`` > 0 it is not even moved or
    appended to (see _BatchStorage)."""
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
    batch; while ``pins`` > 0 its bytes are neither written nor moved (see _BatchStorage)."""
    cdef char *block
    cdef Py_ssize_t capacity
    cdef Py_ssize_t pins

    def __dealloc__(self):
        free(self.block)


cdef Token _token_from(const TokenColumns *c, _TextBuffer buffer, Py_ssize_t i):
    """Token i of columns ``c`` whose text buffer is ``buffer``; the token's text stays in the
    buffer until first asked for."""
    cdef Token tok = _new_token(c.ids[i], c.positions[i], c.flags[i], c.logprob_bits[i], None)
    cdef int64_t start = c.text_offsets[i]
    cdef Py_ssize_t text_len = <Py_ssize_t>(c.text_offsets[i + 1] - start)
    if tok._flags & HAS_TEXT:
        if text_len == 0:
            tok._text = ""
        elif start + text_len <= 0xFFFFFFFF:
            tok._text = buffer
            tok._text_start = <uint32_t>start
            tok._text_len = <uint32_t>text_len
            tok._lazy_text = 1
        else:
            tok._text = PyUnicode_DecodeUTF8(<const char *>c.text + start, text_len, NULL)
    return tok


# ---------------------------------------------------------------------------------------------
# Pins: storage frozen for GIL-free readers and zero-copy exporters


@cython.final
@cython.no_gc   # references only _Columns and _TextBuffer, which reference nothing
@cython.freelist(64)
cdef class PinnedBatch:
    """A TokenBatch's storage frozen as it was when ``pin_batch(batch)`` was called: ``columns``
    holds that count, those sizes and pointers, and they stay valid and unchanged, with or without
    the GIL, for as long as this object lives, even after the batch is mutated or dropped (the
    batch moves onto a copy instead). For exporters and GIL-free readers; see _BatchStorage.

    ``column(name)`` gives one column as a zero-copy read-only memoryview that keeps this pin
    alive (names: ``ids``, ``positions``, ``logprob_bits``, ``flags``, ``text_offsets``, ``text``).

    >>> from quill._core.tokens import pin_batch
    >>> batch = TokenBatch.from_tokens([Token(7, 0, "hi")])
    >>> pin = pin_batch(batch); batch.clear(); batch.add(Token(8, 0, "yo"))
    >>> len(pin), bytes(pin.column("text")), pin.column("ids").cast("I").tolist()
    (1, b'hi', [7])
    """

    def __dealloc__(self):
        if self._columns_owner is not None:
            quill_atomic_add_ssize(&(<_Columns>self._columns_owner).pins, -1)
        if self._text_owner is not None:
            quill_atomic_add_ssize(&(<_TextBuffer>self._text_owner).pins, -1)

    def __len__(self):
        return self.columns.count

    def column(self, str name not None):
        """Column ``name`` of the pinned storage as a read-only memoryview of its bytes (native
        byte order; ``.cast("I")`` for the u32 columns, ``.cast("q")`` for the offsets)."""
        cdef const TokenColumns *c = &self.columns
        cdef const void *data
        cdef Py_ssize_t size
        if name == "ids":
            data, size = c.ids, c.count * 4
        elif name == "positions":
            data, size = c.positions, c.count * 4
        elif name == "logprob_bits":
            data, size = c.logprob_bits, c.count * 4
        elif name == "flags":
            data, size = c.flags, c.count
        elif name == "text_offsets":
            data, size = (c.text_offsets if c.count else &_ZERO_OFFSET), (c.count + 1) * 8
        elif name == "text":
            data, size = c.text, c.text_size
        else:
            raise ValueError(f"unknown column {name!r}; columns are ids, positions, logprob_bits, "
                             f"flags, text_offsets and text")
        cdef _PinnedBytes view = _PinnedBytes.__new__(_PinnedBytes)
        view.pin = self
        view.data = data if size else &_ZERO_OFFSET   # a zero-length buffer still needs a pointer
        view.size = size
        return memoryview(view)


cdef int64_t _ZERO_OFFSET = 0   # the offsets column of a batch that never held a token


@cython.final
cdef class _PinnedBytes:
    """Exports ``size`` read-only bytes at ``data``, which ``pin`` keeps unchanged."""
    cdef PinnedBatch pin
    cdef const void *data
    cdef Py_ssize_t size

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, <void *>self.data, self.size, 1, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass


cpdef PinnedBatch pin_batch(batch):
    """Pin ``batch``'s storage (see PinnedBatch); TypeError for anything but a TokenBatch."""
    if type(batch) is not TokenBatch:
        raise TypeError(f"pin_batch needs a TokenBatch, not {type(batch).__name__}")
    cdef _BatchStorage b = <_BatchStorage>batch
    with cython.critical_section(b):   # free-threaded: keeps the batch's mutators out meanwhile
        return _pin_locked(b)


cdef PinnedBatch _pin_locked(_BatchStorage b):
    """``pin_batch(b)`` for a caller already in ``b``'s critical section (every TokenBatch method)."""
    cdef PinnedBatch pin = PinnedBatch.__new__(PinnedBatch)
    # From here on nothing allocates, so (with the GIL) no other thread can run until the pin is
    # complete; free-threaded, the caller's critical section on the batch does the same.
    if b._columns is not None:
        quill_atomic_add_ssize(&b._columns.pins, 1)
        pin._columns_owner = b._columns
    if b._text_buffer is not None:
        quill_atomic_add_ssize(&b._text_buffer.pins, 1)
        pin._text_owner = b._text_buffer
    pin.columns = b._columns_now()
    return pin
