# Included by quill/_core/tokens.pyx: the wire codec, tokens and batches to and from bytes (docs/protocol.md sections 2-3).

# ---------------------------------------------------------------------------------------------
# Reading one token, shared by Token.decode and TokenBatch.decode


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
# Writing batches: TokenBatch.encode, TokenBatch.encode_tokens


cdef inline Py_ssize_t _header_size(bint has_sequence_id) noexcept nogil:
    """The size of a batch header: flags u8, [sequence_id u32], token count u16."""
    return 7 if has_sequence_id else 3


cdef inline unsigned char *_write_header(unsigned char *p, bint has_sequence_id, uint32_t sequence_id,
                                         bint is_final, Py_ssize_t count) noexcept nogil:
    """Write a batch header for ``count`` tokens (at most 65,535) at ``p``; return its end."""
    p[0] = (HAS_SEQUENCE_ID if has_sequence_id else 0) | (IS_FINAL if is_final else 0)
    if has_sequence_id:
        quill_store_be32(p + 1, sequence_id)
        p += 4
    quill_store_be16(p + 1, <uint16_t>count)
    return p + 3


cdef bytes _encode_batch(TokenBatch batch):
    """``batch.encode()``: see there."""
    # Small batches are written with the GIL held and nothing that runs Python code (a bytes
    # allocation starts no GC pass): their storage as it is now is a snapshot. Large ones are
    # written without the GIL, from a pin taken before anything is allocated. The header fields
    # are read before the allocation too.
    cdef PinnedBatch pin = _pin_locked(batch) if batch._count >= NOGIL_MIN_TOKENS else None
    cdef TokenColumns now = batch._columns_now()
    cdef const TokenColumns *c = &pin.columns if pin is not None else &now
    cdef bint has_sequence_id = batch._has_sequence_id, is_final = batch._is_final
    cdef uint32_t sequence_id = batch._sequence_id
    cdef Py_ssize_t bad
    cdef unsigned char *p
    if c.count > MAX_BATCH_TOKENS:
        raise EncodeError(f"a token batch carries at most 65535 tokens; this one holds {c.count}")
    out = PyBytes_FromStringAndSize(NULL, _header_size(has_sequence_id) + c.wire_size)
    p = _write_header(<unsigned char *>PyBytes_AS_STRING(out), has_sequence_id, sequence_id, is_final, c.count)
    if pin is not None:
        with nogil:
            bad = _write_tokens(c, p, p + c.wire_size)
    else:
        bad = _write_tokens(c, p, p + c.wire_size)
    if bad >= 0:
        raise EncodeError(f"token {bad} text is {c.text_offsets[bad + 1] - c.text_offsets[bad]} "
                          f"UTF-8 bytes; the wire format carries at most 65535")
    return out


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


cdef bytes _encode_tokens(object tokens, object sequence_id, bint is_final):
    """``TokenBatch.encode_tokens(tokens, sequence_id, is_final)``: see there."""
    cdef list items = tokens if type(tokens) is list else list(tokens)
    cdef Py_ssize_t i, n = len(items), size
    cdef bint has_sequence_id = sequence_id is not None
    cdef uint32_t seq = <uint32_t>_as_u32(sequence_id, "sequence_id") if has_sequence_id else 0
    cdef unsigned char *p
    cdef object item
    if n > MAX_BATCH_TOKENS:
        raise EncodeError(f"a token batch carries at most 65535 tokens; {n} given")
    size = _header_size(has_sequence_id)
    for i in range(n):
        item = items[i]
        if type(item) is not Token:
            raise TypeError(f"TokenBatch.encode_tokens: item {i} is {type(item).__name__}, not Token")
        size += (<Token>item)._wire_size()
    out = PyBytes_FromStringAndSize(NULL, size)
    p = _write_header(<unsigned char *>PyBytes_AS_STRING(out), has_sequence_id, seq, is_final, n)
    for i in range(n):
        p = (<Token>items[i])._write(p)
    return out


# ---------------------------------------------------------------------------------------------
# Reading batches: TokenBatch.decode


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
            status = _read_tokens(batch, data, size, &pos, count, &err)
    else:
        status = _read_tokens(batch, data, size, &pos, count, &err)
    if status != PARSE_OK:
        raise _parse_error(&err, f"token {err.index} of {count} in the batch")
    if pos != size:
        raise DecodeError(f"{size - pos} bytes left over after the {count} tokens of the token batch", offset=pos)
    if not quill_is_ascii(batch._text, batch._text_size):
        _replace_invalid_utf8(batch)
    return batch


cdef ParseStatus _read_tokens(TokenBatch batch, const unsigned char *data, Py_ssize_t size, Py_ssize_t *pos,
                              Py_ssize_t count, ParseError *err) noexcept nogil:
    """Parse ``count`` tokens into the (already reserved) columns and text buffer of a new batch,
    which nothing else references yet."""
    cdef RawToken raw
    cdef Py_ssize_t i, text_size = 0, wire_start = pos[0]
    cdef ParseStatus status
    for i in range(count):
        status = _read_token(data, size, pos, &raw, err)
        if status != PARSE_OK:
            err.index = i
            return status
        batch._ids[i] = raw.id
        batch._positions[i] = raw.position
        batch._logprob_bits[i] = raw.logprob_bits
        batch._flags[i] = raw.flags
        # Keep room for the fixed part of every token still to come; this also bounds the
        # text bytes by the buffer reserved for them.
        if size - pos[0] < (count - i - 1) * TOKEN_FIXED_SIZE:
            err.status, err.offset, err.available = PARSE_SHORT_REST, pos[0], size - pos[0]
            err.declared, err.index = count - i - 1, i
            return PARSE_SHORT_REST
        if raw.text_len:
            quill_copy_text(batch._text + text_size, data + raw.text_start, raw.text_len,
                            size - raw.text_start, batch._text_buffer.capacity - text_size)
            text_size += raw.text_len
        batch._text_offsets[i + 1] = text_size
    batch._count = count
    batch._text_size = text_size
    batch._tokens_wire_size = pos[0] - wire_start
    return PARSE_OK


cdef int _replace_invalid_utf8(TokenBatch batch) except -1:
    """Rewrite the texts of a just-decoded batch that are not valid UTF-8 with U+FFFD
    replacements (maximal subparts)."""
    cdef Py_ssize_t i, start, text_len, old_size = batch._text_size
    cdef list pieces = []
    cdef bint changed = False
    for i in range(batch._count):
        start = batch._text_offsets[i]
        text_len = batch._text_len(i)
        piece = PyBytes_FromStringAndSize(<const char *>batch._text + start, text_len)
        if not quill_is_utf8(batch._text + start, text_len):
            piece = PyUnicode_DecodeUTF8(<const char *>batch._text + start, text_len, "replace").encode()
            changed = True
        pieces.append(piece)
    if not changed:
        return 0
    batch._text_buffer = None
    batch._text = NULL
    batch._text_size = 0
    for i in range(batch._count):
        piece = pieces[i]
        text_len = len(piece)
        batch._reserve_text(text_len)
        if text_len:   # an empty first text leaves the buffer NULL: memcpy(NULL, p, 0) is undefined (UBSan)
            memcpy(batch._text + batch._text_size, PyBytes_AS_STRING(piece), text_len)
        batch._text_size += text_len
        batch._text_offsets[i + 1] = batch._text_size
    batch._tokens_wire_size += batch._text_size - old_size
    return 0
