# Included by quill/_core/tokens.pyx: Token, one generated token, and its wire helpers.

@cython.final
@cython.no_gc
@cython.freelist(1024)
cdef class Token:
    """One generated token (docs/protocol.md section 2). Immutable and hashable.

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
    cdef uint8_t _initialised       # set once the fields hold a token: they never change again

    def __init__(self, id, position, text=None, logprob=None, is_special=False):
        # Calls of the class itself take _token_vectorcall; this serves explicit __init__ calls,
        # which may only fill a bare Token.__new__(Token): a token is immutable (and hashed).
        if self._initialised:
            raise TypeError("Token is immutable: __init__ cannot re-initialise an existing token")
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
        # Free-threaded, two threads may ask at once: the swap from buffer to str (which drops
        # the token's reference to the buffer) happens once, in the token's critical section.
        with cython.critical_section(self):
            if self._lazy_text:
                self._text = PyUnicode_DecodeUTF8(
                    <const char *>(<_TextBuffer>self._text).data + self._text_start, self._text_len, NULL)
                self._lazy_text = 0
            return <str>self._text

    cdef const unsigned char *_utf8(self, Py_ssize_t *size) except NULL:
        """The text's UTF-8 bytes (HAS_TEXT only); valid while the token lives."""
        if QUILL_FREE_THREADED:
            # Another thread's _get_text may drop the buffer at any moment: point into the str,
            # which the token keeps for good once it has it.
            return _utf8(self._get_text(), size)
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
        if not (QUILL_FREE_THREADED or self._lazy_text or o._lazy_text):
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
    tok._initialised = 1
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
    tok._initialised = 1
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
