# Included by quill/_core/frames.pyx: message-stream frames (docs/protocol.md section 5).

# ==========================================================================================
# Message-stream frames (section 5)
# ==========================================================================================

cdef int _check_flags(flags) except -1:
    if not isinstance(flags, int):
        raise TypeError(f"flags must be an int, not {type(flags).__name__}")
    if not 0 <= flags <= 0xFF:
        raise EncodeError(f"stream frame flags {flags!r} do not fit in one byte")
    return <int>flags


cdef int _check_stream_size(uint64_t payload_len, max_size) except -1:
    if payload_len > max_size:
        raise EncodeError(
            f"stream frame payload of {payload_len} bytes exceeds the limit of {max_size} bytes")
    return 0


def stream_frame_header(payload_len, flags=FLAG_DATA, max_size=MAX_STREAM_FRAME):
    """The header (length varint + flags byte) of a message-stream frame.

    **Ours:** a payload over ``max_size`` raises EncodeError (the reference encoder does
    not check).

    >>> stream_frame_header(300).hex()
    'ac0201'
    """
    cdef unsigned char out[MAX_VARINT_LEN + 1]
    cdef uint64_t length = _u64(payload_len, "payload length")
    cdef int code = _check_flags(flags)
    _check_stream_size(length, max_size)
    cdef int n = _write_varint(out, length)
    out[n] = <unsigned char>code
    return PyBytes_FromStringAndSize(<char*>out, n + 1)


def encode_stream_frame(payload, flags=FLAG_DATA, max_size=MAX_STREAM_FRAME):
    """One message-stream frame: varint length, flags byte, payload (any bytes-like).

    **Ours:** a payload over ``max_size`` (default 4 MiB) raises EncodeError.

    >>> encode_stream_frame(b"Hello").hex()
    '050148656c6c6f'
    """
    cdef unsigned char header[MAX_VARINT_LEN + 1]
    cdef int code = _check_flags(flags)
    cdef int n
    cdef Py_buffer view
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        _check_stream_size(<uint64_t>view.len, max_size)
        n = _write_varint(header, <uint64_t>view.len)
        header[n] = <unsigned char>code
        n += 1
        out = PyBytes_FromStringAndSize(NULL, n + view.len)
        memcpy(PyBytes_AS_STRING(out), header, n)
        _copy(PyBytes_AS_STRING(out) + n, <const unsigned char*>view.buf, view.len)
        return out
    finally:
        PyBuffer_Release(&view)


def encode_end_stream():
    """The END_STREAM message-stream frame.

    >>> encode_end_stream().hex()
    '0002'
    """
    return b"\x00\x02"


def encode_stream_cancel(str reason=""):
    """A CANCEL message-stream frame; a non-empty ``reason`` travels as UTF-8 payload.

    >>> encode_stream_cancel().hex()
    '0004'
    """
    return encode_stream_frame(_utf8_strict(reason, "cancel reason"), FLAG_CANCEL)


def encode_stream_credit(n):
    """A CREDIT message-stream frame; the payload is ``n`` as a varint.

    >>> encode_stream_credit(42).hex()
    '01082a'
    """
    return encode_stream_frame(encode_varint(n), FLAG_CREDIT)


@cython.no_gc  # holds only bytes and ints: it cannot be part of a reference cycle
@cython.freelist(64)
cdef class StreamFrame:
    """One message-stream frame: ``flags`` (int, unknown bits preserved) and ``payload``.

    ``credit`` is the varint in the payload when the CREDIT bit is set, else None.
    ``offset`` is the stream offset of the frame's first byte when a parser produced it.

    >>> StreamFrame(0x08, bytes.fromhex("ac02")).credit
    300
    """

    cdef readonly int flags
    cdef readonly bytes payload
    cdef readonly object offset
    cdef uint64_t _payload_offset

    def __init__(self, flags=FLAG_DATA, payload=b""):
        self.flags = _check_flags(flags)
        self.payload = _as_bytes(payload, "payload")
        self.offset = None

    @property
    def credit(self):
        """The credit count of a frame with the CREDIT bit, else None.

        **Ours:** the full 64-bit value (the reference truncates to 32 bits); an empty or
        malformed varint, or bytes after it, raise DecodeError (the reference returns
        None or ignores them).
        """
        if not self.flags & FLAG_CREDIT:
            return None
        base = None if self.offset is None else self._payload_offset
        try:
            value, used = decode_varint(self.payload)
        except DecodeError as exc:
            raise type(exc)(f"CREDIT frame payload: {exc.message}", offset=base) from None
        if used != len(self.payload):
            raise DecodeError(f"CREDIT frame payload has {len(self.payload) - used} bytes after the varint",
                              offset=None if base is None else base + used)
        return value

    def encode(self, max_size=MAX_STREAM_FRAME):
        """The frame's wire bytes.

        >>> StreamFrame(0x03, b"bye").encode().hex()
        '0303627965'
        """
        return encode_stream_frame(self.payload, self.flags, max_size)

    def __eq__(self, other):
        if not isinstance(other, StreamFrame):
            return NotImplemented
        cdef StreamFrame o = <StreamFrame>other
        return self.flags == o.flags and self.payload == o.payload

    def __hash__(self):
        return hash((self.flags, self.payload))

    def __repr__(self):
        shown = self.payload if len(self.payload) <= 32 else f"<{len(self.payload)} bytes>"
        return f"StreamFrame(0x{self.flags:02x}, {shown!r})"

    def __reduce__(self):
        return (StreamFrame, (self.flags, self.payload))


cdef class _StreamFrameReader(_IncrementalReader):
    """Splits a byte stream into message-stream frames; subclasses decide what they mean."""

    cdef Py_ssize_t _max_frame_size
    cdef uint64_t _length         # varint value so far, then the payload length
    cdef int _varint_len          # varint bytes read for the current frame
    cdef int _stage               # 0: length varint, 1: flags byte, 2: payload
    cdef int _flags
    cdef Py_ssize_t _filled
    cdef uint64_t _frame_start
    cdef object _payload

    def __init__(self, Py_ssize_t max_frame_size=MAX_STREAM_FRAME):
        if max_frame_size < 0:
            raise ValueError(f"max_frame_size must be >= 0, got {max_frame_size}")
        self._max_frame_size = max_frame_size

    cdef int _end_frame(self) except -1:
        raise NotImplementedError

    cdef int _complete_frame(self) except -1:
        try:
            self._end_frame()
        finally:
            self._stage = 0
            self._varint_len = 0
            self._length = 0
            self._payload = None
        return 0

    cdef int _consume(self, const unsigned char* data, Py_ssize_t n) except -1:
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t take
        cdef unsigned char b
        while i < n:
            self._reject_after_end(n - i)
            if self._stage == 0:
                if self._varint_len == 0:
                    self._frame_start = self._position
                b = data[i]
                i += 1
                self._position += 1
                if self._varint_len == MAX_VARINT_LEN - 1:
                    if b & 0x80:
                        raise DecodeError("stream frame length varint is longer than 10 bytes",
                                          offset=self._frame_start)
                    if b > 1:
                        raise DecodeError("stream frame length varint overflows 64 bits",
                                          offset=self._frame_start)
                self._length |= (<uint64_t>(b & 0x7F)) << (7 * self._varint_len)
                self._varint_len += 1
                if not (b & 0x80):
                    if self._length > <uint64_t>self._max_frame_size:
                        raise LimitExceededError(
                            f"stream frame of {self._length} bytes exceeds the limit of "
                            f"{self._max_frame_size} bytes", offset=self._frame_start)
                    self._stage = 1
            elif self._stage == 1:
                self._flags = data[i]
                i += 1
                self._position += 1
                self._payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>self._length)
                self._filled = 0
                self._stage = 2
                if self._length == 0:
                    self._complete_frame()
            else:
                take = min(<Py_ssize_t>self._length - self._filled, n - i)
                _copy(PyBytes_AS_STRING(self._payload) + self._filled, data + i, take)
                self._filled += take
                i += take
                self._position += take
                if self._filled == <Py_ssize_t>self._length:
                    self._complete_frame()
        return 0

    cdef object _window_owner(self):
        return self._payload if self._stage == 2 else None

    cdef char* _window_start(self):
        return PyBytes_AS_STRING(self._payload) + self._filled

    cdef Py_ssize_t _window_room(self):
        return <Py_ssize_t>self._length - self._filled if self._stage == 2 else 0

    cdef int _advance(self, Py_ssize_t n) except -1:
        self._filled += n
        self._position += n
        if self._filled == <Py_ssize_t>self._length:
            self._complete_frame()
        return 0

    cdef int _check_complete(self) except -1:
        if self._stage == 0 and self._varint_len == 0:
            return 0
        if self._stage == 0:
            what = f"its length varint ({self._varint_len} bytes)"
        elif self._stage == 1:
            what = "its header (flags byte missing)"
        else:
            what = f"its payload ({self._filled} of {self._length} bytes)"
        raise IncompleteStreamError(f"stream ended inside a stream frame, in {what}",
                                    offset=self._frame_start)

    cdef StreamFrame _current_frame(self):
        cdef StreamFrame frame = StreamFrame.__new__(StreamFrame)
        frame.flags = self._flags
        frame.payload = self._payload
        frame.offset = self._frame_start
        frame._payload_offset = self._position - <uint64_t>self._length
        return frame

    @property
    def buffered(self):
        """Bytes of the current, incomplete frame held so far."""
        if self._stage == 2:
            return self._varint_len + 1 + self._filled
        return self._varint_len


cdef class StreamFrameParser(_StreamFrameReader):
    """Incremental message-stream frame parser (varint length, flags, payload).

    A length over ``max_frame_size`` (default 4 MiB, inclusive) is refused as soon as the
    varint is readable. **Ours:** a varint longer than 10 bytes or overflowing 64 bits is
    an error (the reference waits forever or drops the high bits). Unknown flag bits are
    preserved.

    >>> parser = StreamFrameParser()
    >>> parser.feed(bytes.fromhex("050148656c6c6f01082a03"))
    [StreamFrame(0x01, b'Hello'), StreamFrame(0x08, b'*')]
    >>> parser.feed(b"\\x03bye"), parser.buffered
    ([StreamFrame(0x03, b'bye')], 0)
    """

    cdef list _frames

    def __init__(self, Py_ssize_t max_frame_size=MAX_STREAM_FRAME):
        _StreamFrameReader.__init__(self, max_frame_size)
        self._frames = []

    cdef int _end_frame(self) except -1:
        self._frames.append(self._current_frame())
        return 0

    cdef bint _has_output(self):
        return len(self._frames) > 0

    cdef object _take_output(self):
        frames = self._frames
        self._frames = []
        return frames

    def feed(self, data):
        """Consume a chunk (any bytes-like object); return the frames it completed."""
        return self._feed(data)


cdef class MessageStreamDecoder(_StreamFrameReader):
    """Turns message-stream frames into the messages they carry.

    ``feed`` returns the payloads of DATA frames in order. **Ours:** DATA|END_STREAM
    (0x03) delivers its payload and then ends the stream (the reference drops that
    payload). END_STREAM ends the stream; CANCEL raises StreamCancelledError (its
    payload, if any, is the reason); CREDIT frames are validated and otherwise ignored,
    as are frames with no known flag. Bytes after END_STREAM raise DecodeError, and
    ``finish()`` raises IncompleteStreamError unless END_STREAM was seen.

    >>> decoder = MessageStreamDecoder()
    >>> decoder.feed(encode_stream_frame(b"a") + encode_stream_frame(b"b", flags=0x03))
    [b'a', b'b']
    >>> decoder.done
    True
    """

    cdef list _messages

    def __init__(self, Py_ssize_t max_frame_size=MAX_STREAM_FRAME):
        _StreamFrameReader.__init__(self, max_frame_size)
        self._messages = []

    cdef int _end_frame(self) except -1:
        cdef int flags = self._flags
        if flags & FLAG_CANCEL:
            raise StreamCancelledError((<bytes>self._payload).decode("utf-8", "replace"))
        if flags & FLAG_DATA:
            self._messages.append(self._payload)
        elif flags & FLAG_CREDIT:
            self._current_frame().credit
        if flags & FLAG_END_STREAM:
            self._done = True
        return 0

    cdef bint _has_output(self):
        return len(self._messages) > 0

    cdef object _take_output(self):
        messages = self._messages
        self._messages = []
        return messages

    cdef int _check_complete(self) except -1:
        _StreamFrameReader._check_complete(self)
        if not self._done:
            raise IncompleteStreamError("message stream ended before END_STREAM", offset=self._position)
        return 0

    def feed(self, data):
        """Consume a chunk; return the DATA payloads (bytes) it completed."""
        return self._feed(data)
