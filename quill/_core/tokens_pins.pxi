# Included by quill/_core/tokens.pyx: PinnedBatch, TokenBatch storage frozen for GIL-free readers and zero-copy exporters.

@cython.final
@cython.no_gc   # references only _Columns and _TextBuffer, which reference nothing
@cython.freelist(64)
cdef class PinnedBatch:
    """A TokenBatch's storage frozen as it was when ``pin_batch(batch)`` was called: ``columns``
    holds that count, those sizes and pointers, and they stay valid and unchanged, with or without
    the GIL, for as long as this object lives, even after the batch is mutated or dropped (the
    batch moves onto a copy instead). For exporters and GIL-free readers; see TokenBatch.

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
            (<_Columns>self._columns_owner).pins -= 1
        if self._text_owner is not None:
            (<_TextBuffer>self._text_owner).pins -= 1

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
    cdef TokenBatch b = <TokenBatch>batch
    cdef PinnedBatch pin = PinnedBatch.__new__(PinnedBatch)
    # From here on nothing allocates, so no other thread can run until the pin is complete.
    if b._columns is not None:
        b._columns.pins += 1
        pin._columns_owner = b._columns
    if b._text_buffer is not None:
        b._text_buffer.pins += 1
        pin._text_owner = b._text_buffer
    pin.columns = b._columns_now()
    return pin


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


cdef Py_ssize_t _write_tokens(const TokenColumns *c, unsigned char *p, const unsigned char *end) noexcept nogil:
    """Write every token of ``c`` at ``p`` (the output ends at ``end``); return -1, or the index
    of a token whose text is too long."""
    cdef Py_ssize_t i, text_len, start
    cdef uint8_t flags
    for i in range(c.count):
        quill_store_be32(p, c.ids[i])
        quill_store_be32(p + 4, c.positions[i])
        flags = c.flags[i]
        p[8] = flags
        p += TOKEN_FIXED_SIZE
        if flags & HAS_LOGPROB:
            quill_store_be32(p, c.logprob_bits[i])
            p += 4
        if flags & HAS_TEXT:
            start = c.text_offsets[i]
            text_len = c.text_offsets[i + 1] - start
            if text_len > MAX_TEXT_BYTES:
                return i
            quill_store_be16(p, <uint16_t>text_len)
            if text_len:
                quill_copy_text(p + 2, c.text + start, text_len, c.text_capacity - start, end - (p + 2))
            p += 2 + text_len
    return -1
