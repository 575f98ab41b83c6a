# Included by quill/_core/frames.pyx: tensor frames, encoding and the one-shot decode.

# ==========================================================================================
# Tensor frames: encoding
# ==========================================================================================

cdef int _check_type(frame_type) except -1:
    if not isinstance(frame_type, int):
        raise TypeError(f"frame type must be an int, not {type(frame_type).__name__}")
    if not (0 <= frame_type <= 0xFF and _is_known_type(<int>frame_type)):
        raise EncodeError(
            f"unknown tensor frame type {frame_type!r}; known types: "
            + ", ".join(f"0x{code:02x} {name}" for code, name in _TYPE_NAMES.items()))
    return <int>frame_type


cdef bytes _check_reserved(reserved):
    cdef bytes raw = _as_bytes(reserved, "reserved")
    if len(raw) != 4:
        raise EncodeError(f"reserved must be exactly 4 bytes, got {len(raw)}")
    return raw


cdef void _write_tensor_header(char* out, int frame_type, const char* reserved,
                               uint32_t payload_len) noexcept:
    out[0] = <char>frame_type
    memcpy(out + 1, reserved, 4)
    out[5] = <char>(payload_len >> 24)
    out[6] = <char>(payload_len >> 16)
    out[7] = <char>(payload_len >> 8)
    out[8] = <char>payload_len


cdef int _check_tensor_payload_len(uint64_t payload_len) except -1:
    if payload_len > U32_MAX:
        raise EncodeError(
            f"tensor frame payload of {payload_len} bytes does not fit the u32 length field "
            f"(max {U32_MAX})")
    return 0


def tensor_frame_header(frame_type, payload_len, reserved=b"\0\0\0\0"):
    """The 9-byte header of a tensor frame carrying ``payload_len`` bytes.

    Send it followed by the payload (scatter-gather friendly).

    >>> tensor_frame_header(0x11, 12).hex()
    '11000000000000000c'
    """
    cdef int code = _check_type(frame_type)
    cdef bytes raw_reserved = _check_reserved(reserved)
    cdef uint64_t length = _u64(payload_len, "payload length")
    _check_tensor_payload_len(length)
    out = PyBytes_FromStringAndSize(NULL, TENSOR_HEADER_SIZE)
    _write_tensor_header(PyBytes_AS_STRING(out), code, raw_reserved, <uint32_t>length)
    return out


def encode_tensor_frame(frame_type, payload=b"", reserved=b"\0\0\0\0"):
    """One complete tensor frame: 9-byte header then ``payload`` (any bytes-like object).

    >>> encode_tensor_frame(0x04, b"timeout").hex()
    '04000000000000000774696d656f7574'
    """
    cdef int code = _check_type(frame_type)
    cdef bytes raw_reserved = _check_reserved(reserved)
    cdef Py_buffer view
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        _check_tensor_payload_len(<uint64_t>view.len)
        out = PyBytes_FromStringAndSize(NULL, TENSOR_HEADER_SIZE + view.len)
        _write_tensor_header(PyBytes_AS_STRING(out), code, raw_reserved, <uint32_t>view.len)
        _copy(PyBytes_AS_STRING(out) + TENSOR_HEADER_SIZE, <const unsigned char*>view.buf, view.len)
        return out
    finally:
        PyBuffer_Release(&view)


END_STREAM_FRAME = encode_tensor_frame(END_STREAM)
"""The END_STREAM tensor frame (``02`` + 8 zero bytes)."""


def encode_cancel_frame(str reason=""):
    """A CANCEL tensor frame whose payload is the UTF-8 ``reason`` (no length prefix).

    >>> encode_cancel_frame("timeout")[9:]
    b'timeout'
    """
    return encode_tensor_frame(CANCEL, _utf8_strict(reason, "cancel reason"))


def encode_credit_frame(n):
    """A CREDIT tensor frame granting ``n`` bytes (u64 little-endian payload).

    >>> encode_credit_frame(1048576).hex()
    '0800000000000000080000100000000000'
    """
    return encode_tensor_frame(CREDIT, _u64(n, "credit").to_bytes(8, "little"))


def encode_token_batch_frame(batch):
    """One TOKEN_BATCH tensor frame carrying ``batch.encode()``.

    >>> from quill._core.tokens import TokenBatch
    >>> encode_token_batch_frame(TokenBatch()).hex()
    '200000000000000003000000'
    """
    return encode_tensor_frame(TOKEN_BATCH, batch.encode())


def encode_tensor_frames(tensor, chunk_size=DEFAULT_CHUNK_SIZE):
    """The frames of one tensor: TENSOR_META, TENSOR_PAYLOAD chunks, END_STREAM.

    Yields the META frame as one bytes object, then for each chunk a 9-byte header
    (bytes) followed by a zero-copy memoryview slice of ``tensor.data``, then
    END_STREAM_FRAME. ``b"".join(...)`` gives the exact wire stream; a socket can send
    the pieces as they are (``sendmsg``). An empty tensor has no payload frame. The
    slices share the tensor's memory: do not modify it while sending.

    >>> import numpy as np
    >>> from quill.tensor import Tensor
    >>> parts = list(encode_tensor_frames(Tensor.from_numpy(np.arange(3, dtype=np.uint8)), chunk_size=2))
    >>> [bytes(p).hex() for p in parts[1:]]
    ['110000000000000002', '0001', '110000000000000001', '02', '020000000000000000']
    """
    if not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, not {type(chunk_size).__name__}")
    if not 1 <= chunk_size <= U32_MAX:
        raise ValueError(f"chunk_size must be between 1 and {U32_MAX}, got {chunk_size}")
    meta_frame = encode_tensor_frame(TENSOR_META, tensor.meta.encode())
    data = tensor.data
    if not isinstance(data, memoryview):
        data = memoryview(data)
    if data.ndim != 1 or data.format != "B":
        data = data.cast("B")
    return _iter_tensor_frames(meta_frame, data, chunk_size)


def _iter_tensor_frames(bytes meta_frame, data, Py_ssize_t chunk_size):
    cdef Py_ssize_t total = len(data)
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t end
    yield meta_frame
    full_header = tensor_frame_header(TENSOR_PAYLOAD, chunk_size) if total >= chunk_size else None
    while start < total:
        end = min(start + chunk_size, total)
        yield full_header if end - start == chunk_size else tensor_frame_header(TENSOR_PAYLOAD, end - start)
        yield data[start:end]
        start = end
    yield END_STREAM_FRAME


# ==========================================================================================
# Tensor frames: value type and one-shot decode
# ==========================================================================================

@cython.no_gc  # holds only bytes and ints: it cannot be part of a reference cycle
@cython.freelist(64)
cdef class TensorFrame:
    """One tensor frame: ``type`` (int), ``reserved`` (4 bytes, preserved), ``payload``.

    ``offset`` is the stream offset of the frame's first header byte when a parser
    produced it (None otherwise). ``credit`` (CREDIT frames) and ``reason`` (CANCEL
    frames) decode the payload; both are None for other types.

    >>> f = TensorFrame(0x08, (5).to_bytes(8, "little"))
    >>> f.credit, f.encode().hex()
    (5, '0800000000000000080500000000000000')
    """

    cdef readonly int type
    cdef readonly bytes reserved
    cdef readonly bytes payload
    cdef readonly object offset

    def __init__(self, frame_type, payload=b"", reserved=b"\0\0\0\0"):
        self.type = _check_type(frame_type)
        self.reserved = _check_reserved(reserved)
        self.payload = _as_bytes(payload, "payload")
        self.offset = None

    @property
    def credit(self):
        """The byte credit of a CREDIT frame (u64 little-endian), else None.

        Raises DecodeError when a CREDIT payload is not exactly 8 bytes.
        """
        if self.type != CREDIT:
            return None
        if len(self.payload) != 8:
            raise DecodeError(
                f"CREDIT frame payload must be 8 bytes (u64 little-endian), got {len(self.payload)}",
                offset=None if self.offset is None else self.offset + TENSOR_HEADER_SIZE)
        return int.from_bytes(self.payload, "little")

    @property
    def reason(self):
        """The reason text of a CANCEL frame (invalid UTF-8 replaced by U+FFFD), else None."""
        if self.type != CANCEL:
            return None
        return self.payload.decode("utf-8", "replace")

    def encode(self):
        """The frame's wire bytes.

        >>> TensorFrame(0x02).encode() == END_STREAM_FRAME
        True
        """
        return encode_tensor_frame(self.type, self.payload, self.reserved)

    def __eq__(self, other):
        if not isinstance(other, TensorFrame):
            return NotImplemented
        cdef TensorFrame o = <TensorFrame>other
        return self.type == o.type and self.reserved == o.reserved and self.payload == o.payload

    def __hash__(self):
        return hash((self.type, self.reserved, self.payload))

    def __repr__(self):
        extra = "" if self.reserved == b"\0\0\0\0" else f", reserved={self.reserved!r}"
        shown = self.payload if len(self.payload) <= 32 else f"<{len(self.payload)} bytes>"
        return f"TensorFrame({_type_name(self.type)}, {shown!r}{extra})"

    def __reduce__(self):
        return (TensorFrame, (self.type, self.payload, self.reserved))


cdef TensorFrame _new_tensor_frame(int frame_type, bytes reserved, bytes payload, uint64_t offset):
    cdef TensorFrame frame = TensorFrame.__new__(TensorFrame)
    frame.type = frame_type
    frame.reserved = reserved
    frame.payload = payload
    frame.offset = offset
    return frame


def decode_tensor_frame(buf, Py_ssize_t offset=0):
    """Decode the tensor frame starting at ``offset``; return ``(frame, bytes_consumed)``.

    Bytes after the frame are left alone. A short buffer raises IncompleteStreamError
    saying how many more bytes are needed; an unknown type byte raises DecodeError.

    >>> frame, used = decode_tensor_frame(bytes.fromhex("020000000000000000ff"))
    >>> frame, used
    (TensorFrame(END_STREAM, b''), 9)
    """
    cdef Py_buffer view
    cdef const unsigned char* data
    cdef Py_ssize_t available
    cdef uint32_t length
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        if offset < 0 or offset > view.len:
            raise ValueError(f"offset {offset} is outside the buffer of {view.len} bytes")
        data = <const unsigned char*>view.buf + offset
        available = view.len - offset
        if available < TENSOR_HEADER_SIZE:
            raise IncompleteStreamError(
                f"incomplete tensor frame header: need {TENSOR_HEADER_SIZE - available} more bytes",
                offset=offset)
        if not _is_known_type(data[0]):
            raise DecodeError(f"unknown tensor frame type 0x{data[0]:02x}", offset=offset)
        length = ((<uint32_t>data[5] << 24) | (<uint32_t>data[6] << 16)
                  | (<uint32_t>data[7] << 8) | <uint32_t>data[8])
        if available - TENSOR_HEADER_SIZE < <Py_ssize_t>length:
            raise IncompleteStreamError(
                f"incomplete {_type_name(data[0])} frame: need "
                f"{<Py_ssize_t>length - (available - TENSOR_HEADER_SIZE)} more payload bytes",
                offset=offset)
        frame = _new_tensor_frame(
            data[0], PyBytes_FromStringAndSize(<const char*>data + 1, 4),
            PyBytes_FromStringAndSize(<const char*>data + TENSOR_HEADER_SIZE, length), offset)
        return frame, TENSOR_HEADER_SIZE + <Py_ssize_t>length
    finally:
        PyBuffer_Release(&view)
