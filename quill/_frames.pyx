"""Tensor frames (docs/protocol.md section 4) and message-stream frames (section 5).

Encoders build exact wire bytes; incremental parsers accept byte chunks of any size
(one byte at a time works) and hand out complete frames only. Public names are
re-exported by :mod:`quill.frames`, which also defines the ``TensorFrameType`` and
``StreamFlags`` enums.

Error handling shared by every parser and decoder here:

* bad input raises a :class:`quill.errors.DecodeError` (a ``ValueError``) whose
  ``offset`` is the byte offset *in the whole stream fed so far*;
* limits are enforced as soon as the length field is readable (**Ours**), before
  anything is allocated;
* when a single ``feed`` call completes some frames and then meets an error, it returns
  those frames and the error is raised by the next ``feed`` or ``finish`` call, so no
  complete frame is lost and the outcome does not depend on how the bytes were split
  (call ``finish()`` at the end of input even after a result was handed out; ``done``
  stays False while such an error is pending);
* after an error every further ``feed``/``finish`` raises that error again.

Parsers are not thread-safe: feed one parser from one thread at a time. A ``feed`` or
``finish`` that starts while another is running on the same parser (another thread, or a
buffer's ``__buffer__`` feeding the parser it is fed to) raises RuntimeError and changes nothing:
large payload copies run without the GIL, into memory the parser owns.

>>> frames = TensorFrameParser().feed(encode_credit_frame(7) + END_STREAM_FRAME)
>>> [(f.type, f.credit) for f in frames]
[(8, 7), (2, None)]
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

cimport numpy as cnp
import numpy as np

from quill._tokens import TokenBatch
from quill.errors import (
    DecodeError,
    EncodeError,
    IncompleteStreamError,
    LimitExceededError,
    StreamCancelledError,
)
from quill.tensor import Tensor, TensorMeta

cnp.import_array()

# -- tensor frame types (section 4) -------------------------------------------------------
cdef enum:
    PROTO_MSG = 0x01
    END_STREAM = 0x02
    CANCEL = 0x04
    CREDIT = 0x08
    TENSOR_META = 0x10
    TENSOR_PAYLOAD = 0x11
    TOKEN_BATCH = 0x20
    TENSOR_HEADER_SIZE = 9

# -- message stream flags (section 5) ----------------------------------------------------
cdef enum:
    FLAG_DATA = 0x01
    FLAG_END_STREAM = 0x02
    FLAG_CANCEL = 0x04
    FLAG_CREDIT = 0x08
    MAX_VARINT_LEN = 10

cdef uint64_t U32_MAX = 0xFFFFFFFFu
# Copies at least this large release the GIL.
cdef Py_ssize_t NOGIL_COPY_THRESHOLD = 65536

MAX_STREAM_FRAME = 4 * 1024 * 1024
"""Largest message-stream frame payload (inclusive), as in the reference."""
DEFAULT_CHUNK_SIZE = 64 * 1024
"""TENSOR_PAYLOAD chunk size used by the reference sender."""
DEFAULT_MAX_FRAME_PAYLOAD = 16 * 1024 * 1024
"""Default limit on one buffered tensor-frame payload (TensorFrameParser, TokenStreamDecoder)."""
DEFAULT_MAX_TENSOR_BYTES = 1024 * 1024 * 1024
"""Default limit on the size of a tensor a TensorReceiver will allocate (1 GiB)."""
MAX_META_PAYLOAD = 1 + 255 * 8 + 1 + 1 + 8 + 2 + 65535
"""Largest possible TENSOR_META payload: 255 dimensions and a 65,535-byte name."""
MAX_CANCEL_PAYLOAD = 65536
"""Largest CANCEL reason a TensorReceiver or TokenStreamDecoder accepts."""

cdef bytes ZERO_RESERVED = b"\0\0\0\0"

_TYPE_NAMES = {
    PROTO_MSG: "PROTO_MSG",
    END_STREAM: "END_STREAM",
    CANCEL: "CANCEL",
    CREDIT: "CREDIT",
    TENSOR_META: "TENSOR_META",
    TENSOR_PAYLOAD: "TENSOR_PAYLOAD",
    TOKEN_BATCH: "TOKEN_BATCH",
}


cdef inline bint _is_known_type(int frame_type) noexcept nogil:
    return (frame_type == PROTO_MSG or frame_type == END_STREAM or frame_type == CANCEL
            or frame_type == CREDIT or frame_type == TENSOR_META
            or frame_type == TENSOR_PAYLOAD or frame_type == TOKEN_BATCH)


cdef str _type_name(int frame_type):
    return _TYPE_NAMES.get(frame_type, f"0x{frame_type:02x}")


cdef bytes _as_bytes(data, str what):
    """``data`` (any C-contiguous buffer) as bytes; no copy when it already is bytes."""
    if type(data) is bytes:
        return <bytes>data
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise TypeError(f"{what} must be a bytes-like object, not {type(data).__name__}") from None


cdef bytes _utf8_strict(str text, str what):
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"{what} is not encodable as UTF-8: {exc.reason} at index {exc.start}") from None


cdef object _replay(exc):
    """A fresh copy of ``exc`` (same type and arguments) so a sticky error can be re-raised."""
    try:
        rebuild, args = exc.__reduce__()[:2]
        return rebuild(*args)
    except Exception:
        return exc


cdef object _relocate(exc, str context, uint64_t base):
    """Re-raise a payload-relative DecodeError with its offset moved into the stream."""
    offset = base if exc.offset is None else base + exc.offset
    return type(exc)(f"{context}: {exc.message}", offset=offset)


cdef inline void _copy(char* dest, const unsigned char* src, Py_ssize_t n) noexcept:
    if n >= NOGIL_COPY_THRESHOLD:
        with nogil:
            memcpy(dest, src, n)
    else:
        memcpy(dest, src, n)


# ==========================================================================================
# Varints (LEB128, protobuf style)
# ==========================================================================================

cdef inline int _write_varint(unsigned char* out, uint64_t value) noexcept nogil:
    cdef int n = 0
    while value >= 0x80:
        out[n] = <unsigned char>((value & 0x7F) | 0x80)
        value >>= 7
        n += 1
    out[n] = <unsigned char>value
    return n + 1


cdef uint64_t _u64(value, str what) except? 0xFFFFFFFFFFFFFFFF:
    if not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0 or value > 0xFFFFFFFFFFFFFFFF:
        raise EncodeError(f"{what} {value} is outside 0..2**64-1")
    return <uint64_t>value


def encode_varint(value):
    """Encode an unsigned integer (0..2**64-1) as a LEB128 varint.

    >>> encode_varint(300).hex()
    'ac02'
    """
    cdef unsigned char out[MAX_VARINT_LEN]
    cdef int n = _write_varint(out, _u64(value, "varint value"))
    return PyBytes_FromStringAndSize(<char*>out, n)


def decode_varint(buf, Py_ssize_t offset=0):
    """Decode the LEB128 varint starting at ``offset``; return ``(value, bytes_read)``.

    Non-canonical encodings (``80 00``) are accepted. **Ours:** more than 10 bytes, or a
    10th byte that carries bits above bit 63, raises DecodeError (the reference drops the
    high bits or waits forever); a truncated varint raises IncompleteStreamError.

    >>> decode_varint(bytes.fromhex("ac02ff"))
    (300, 2)
    """
    cdef Py_buffer view
    cdef const unsigned char* data
    cdef uint64_t value = 0
    cdef Py_ssize_t i = 0
    cdef unsigned char b
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        if offset < 0 or offset > view.len:
            raise ValueError(f"offset {offset} is outside the buffer of {view.len} bytes")
        data = <const unsigned char*>view.buf + offset
        while True:
            if offset + i >= view.len:
                raise IncompleteStreamError(f"varint truncated after {i} bytes", offset=offset)
            b = data[i]
            if i == MAX_VARINT_LEN - 1:
                if b & 0x80:
                    raise DecodeError("varint is longer than 10 bytes", offset=offset)
                if b > 1:
                    raise DecodeError("varint overflows 64 bits", offset=offset)
            value |= (<uint64_t>(b & 0x7F)) << (7 * i)
            i += 1
            if not (b & 0x80):
                return value, i
    finally:
        PyBuffer_Release(&view)


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

    >>> from quill._tokens import TokenBatch
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


# ==========================================================================================
# Incremental reading: shared error handling
# ==========================================================================================

cdef class _IncrementalReader:
    """Feed/finish plumbing shared by every parser: sticky and deferred errors."""

    cdef object _error        # the first error met; raised again by every later call
    cdef uint64_t _position   # stream offset of the next byte to consume
    cdef bint _done           # END_STREAM seen (decoders only)
    cdef bint _busy           # a feed() or finish() is running (it may have released the GIL)

    cdef int _consume(self, const unsigned char* data, Py_ssize_t n) except -1:
        raise NotImplementedError

    cdef bint _has_output(self):
        return False

    cdef object _take_output(self):
        return None

    cdef int _check_complete(self) except -1:
        """Raise IncompleteStreamError when the stream may not end here."""
        return 0

    cdef int _raise_if_failed(self) except -1:
        if self._error is not None:
            raise _replay(self._error)
        return 0

    cdef int _reject_after_end(self, Py_ssize_t n) except -1:
        if self._done and n > 0:
            raise DecodeError("unexpected data after END_STREAM", offset=self._position)
        return 0

    cdef int _enter(self, str call) except -1:
        if self._busy:
            raise RuntimeError(f"{type(self).__name__}.{call}() called while another feed() or finish() "
                               f"of the same parser is running; feed one parser from one thread at a time")
        self._busy = True
        return 0

    cdef object _feed(self, data):
        cdef Py_buffer view
        self._enter("feed")
        try:
            self._raise_if_failed()
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self._reject_after_end(view.len)
                self._consume(<const unsigned char*>view.buf, view.len)
            except Exception as exc:
                self._error = exc
                if not self._has_output():
                    raise
            finally:
                PyBuffer_Release(&view)
            return self._take_output()
        finally:
            self._busy = False

    def finish(self):
        """Declare the end of input: raise if the stream is incomplete or failed earlier."""
        self._enter("finish")
        try:
            self._raise_if_failed()
            try:
                self._check_complete()
            except Exception as exc:
                self._error = exc
                raise
        finally:
            self._busy = False

    @property
    def done(self):
        """True once END_STREAM has been processed without error (always False for plain parsers).

        While an error is pending (see the module docstring) ``done`` is False, so a
        read loop that stops at ``done`` keeps going and meets the error.
        """
        return self._done and self._error is None

    @property
    def position(self):
        """Number of bytes consumed so far (the stream offset of the next byte)."""
        return self._position


# ==========================================================================================
# Incremental tensor frame reading
# ==========================================================================================

cdef class _TensorFrameReader(_IncrementalReader):
    """Splits a byte stream into tensor frames; subclasses decide what a frame means.

    The 9 header bytes collect in a fixed array; when they are complete the subclass's
    ``_start_frame`` validates the frame and points ``_dest`` at the memory the payload
    goes to (a fresh bytes object by default, or the receiver's tensor buffer), so every
    payload byte is copied exactly once whatever the chunking.
    """

    cdef unsigned char _header[TENSOR_HEADER_SIZE]
    cdef Py_ssize_t _header_len
    cdef int _type
    cdef Py_ssize_t _length      # payload length of the current frame
    cdef Py_ssize_t _filled      # payload bytes of the current frame received so far
    cdef uint64_t _frame_start   # stream offset of the current frame's header
    cdef object _payload         # bytes being filled, or None when writing elsewhere
    cdef char* _dest

    cdef int _start_frame(self) except -1:
        raise NotImplementedError

    cdef int _end_frame(self) except -1:
        raise NotImplementedError

    cdef int _buffer_payload(self, Py_ssize_t limit, str what) except -1:
        """Check the payload length against ``limit``, then allocate the bytes to fill."""
        if self._length > limit:
            raise LimitExceededError(
                f"{_type_name(self._type)} frame payload of {self._length} bytes exceeds "
                f"the {what} of {limit} bytes", offset=self._frame_start + 5)
        self._payload = PyBytes_FromStringAndSize(NULL, self._length)
        self._dest = PyBytes_AS_STRING(self._payload)
        return 0

    cdef int _complete_frame(self) except -1:
        self._header_len = 0
        try:
            self._end_frame()
        finally:
            self._payload = None
            self._dest = NULL
        return 0

    cdef int _consume(self, const unsigned char* data, Py_ssize_t n) except -1:
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t take
        while i < n:
            self._reject_after_end(n - i)
            if self._header_len < TENSOR_HEADER_SIZE:
                if self._header_len == 0:
                    self._frame_start = self._position
                take = min(TENSOR_HEADER_SIZE - self._header_len, n - i)
                memcpy(self._header + self._header_len, data + i, take)
                self._header_len += take
                i += take
                self._position += take
                if self._header_len < TENSOR_HEADER_SIZE:
                    break
                self._type = self._header[0]
                self._length = ((<uint32_t>self._header[5] << 24) | (<uint32_t>self._header[6] << 16)
                                | (<uint32_t>self._header[7] << 8) | <uint32_t>self._header[8])
                self._filled = 0
                if not _is_known_type(self._type):
                    raise DecodeError(f"unknown tensor frame type 0x{self._type:02x}",
                                      offset=self._frame_start)
                self._start_frame()
            else:
                take = min(self._length - self._filled, n - i)
                _copy(self._dest + self._filled, data + i, take)
                self._filled += take
                i += take
                self._position += take
            if self._filled == self._length:
                self._complete_frame()
        return 0

    cdef int _check_complete(self) except -1:
        if self._header_len == 0:
            return 0
        if self._header_len < TENSOR_HEADER_SIZE:
            raise IncompleteStreamError(
                f"stream ended inside a tensor frame header ({self._header_len} of "
                f"{TENSOR_HEADER_SIZE} bytes)", offset=self._frame_start)
        raise IncompleteStreamError(
            f"stream ended inside a {_type_name(self._type)} frame ({self._filled} of "
            f"{self._length} payload bytes)", offset=self._frame_start)

    cdef bytes _reserved(self):
        if self._header[1] == 0 and self._header[2] == 0 and self._header[3] == 0 and self._header[4] == 0:
            return ZERO_RESERVED   # the usual case: share one object instead of allocating per frame
        return PyBytes_FromStringAndSize(<char*>self._header + 1, 4)

    @property
    def buffered(self):
        """Bytes of the current, incomplete frame held so far (header and payload)."""
        return self._header_len + (self._filled if self._header_len == TENSOR_HEADER_SIZE else 0)

    # -- control frames shared by the stream decoders ----------------------------------
    cdef int _start_control_frame(self, str stream_kind, str expected) except -1:
        """Validate END_STREAM / CANCEL headers; reject any other type not handled by the caller."""
        if self._type == END_STREAM:
            if self._length:
                raise DecodeError(f"END_STREAM frame carries {self._length} payload bytes; it must be empty",
                                  offset=self._frame_start)
            self._dest = NULL
        elif self._type == CANCEL:
            self._buffer_payload(MAX_CANCEL_PAYLOAD, "CANCEL reason limit")
        else:
            raise DecodeError(f"unexpected {_type_name(self._type)} frame in a {stream_kind} "
                              f"(expected {expected}, END_STREAM or CANCEL)", offset=self._frame_start)
        return 0

    cdef int _raise_cancel(self) except -1:
        raise StreamCancelledError((<bytes>self._payload).decode("utf-8", "replace"))


cdef class TensorFrameParser(_TensorFrameReader):
    """Incremental tensor-frame parser: feed chunks of any size, get complete frames.

    **Ours:** an unknown type byte or a payload length over ``max_payload`` is reported
    as soon as the 9 header bytes have arrived (the reference waits for the payload and
    has no limit). Reserved bytes are preserved; payload contents are not interpreted.

    >>> parser = TensorFrameParser()
    >>> wire = encode_tensor_frame(0x11, b"hello") + END_STREAM_FRAME
    >>> parser.feed(wire[:7]), parser.buffered
    ([], 7)
    >>> parser.feed(wire[7:])
    [TensorFrame(TENSOR_PAYLOAD, b'hello'), TensorFrame(END_STREAM, b'')]
    >>> parser.finish()
    """

    cdef Py_ssize_t _max_payload
    cdef list _frames

    def __init__(self, Py_ssize_t max_payload=DEFAULT_MAX_FRAME_PAYLOAD):
        if max_payload < 0:
            raise ValueError(f"max_payload must be >= 0, got {max_payload}")
        self._max_payload = max_payload
        self._frames = []

    cdef int _start_frame(self) except -1:
        self._buffer_payload(self._max_payload, "parser limit")
        return 0

    cdef int _end_frame(self) except -1:
        self._frames.append(_new_tensor_frame(self._type, self._reserved(), self._payload,
                                              self._frame_start))
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


cdef class TensorReceiver(_TensorFrameReader):
    """Reassembles one tensor from its frames (TENSOR_META, TENSOR_PAYLOAD..., END_STREAM).

    The buffer is allocated once, when the META frame arrives, after its size has been
    checked against ``max_bytes`` (None: no limit); payload bytes are copied straight from the fed chunks
    into it. ``feed`` returns the Tensor when END_STREAM arrives (**Ours:** also for an
    empty tensor, which the reference receiver never completes), else None.
    Errors: payload before meta, a second meta, more bytes than the meta's byte_size
    (reported at the offending frame's header), END_STREAM before byte_size bytes
    (IncompleteStreamError), any frame type other than META, PAYLOAD, END_STREAM and
    CANCEL (as the reference), and bytes after END_STREAM. CANCEL raises
    StreamCancelledError with the reason.

    ``out`` (any writable, C-contiguous buffer: a numpy array, bytearray...) receives the payload
    instead of a fresh allocation, so one destination can be reused across calls without paying
    for new pages each time; the Tensor then shares ``out``'s memory (its first ``byte_size``
    bytes). A tensor larger than ``out`` is refused at its META frame with LimitExceededError.

    >>> import numpy as np
    >>> from quill.tensor import Tensor
    >>> receiver = TensorReceiver()
    >>> wire = b"".join(encode_tensor_frames(Tensor.from_numpy(np.arange(4, dtype=np.int32))))
    >>> receiver.feed(wire[:30]) is None
    True
    >>> receiver.feed(wire[30:]).to_numpy()
    array([0, 1, 2, 3], dtype=int32)
    """

    cdef object _max_bytes
    cdef object _meta
    cdef cnp.ndarray _buffer   # meta.size_bytes uninitialised bytes, filled in place
    cdef object _out           # the caller's destination (a writable byte memoryview), or None
    cdef Py_ssize_t _expected
    cdef Py_ssize_t _received
    cdef object _tensor

    def __init__(self, max_bytes=DEFAULT_MAX_TENSOR_BYTES, out=None):
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
            raise ValueError(f"max_bytes must be a non-negative int or None, got {max_bytes!r}")
        self._max_bytes = max_bytes
        if out is not None:
            try:
                view = memoryview(out)
            except TypeError:
                raise TypeError(f"out must be a writable buffer, got {type(out).__name__}") from None
            if view.readonly or not view.c_contiguous:
                raise ValueError("out must be a writable, C-contiguous buffer")
            self._out = view.cast("B") if view.ndim != 1 or view.format != "B" else view

    cdef int _start_frame(self) except -1:
        cdef int frame_type = self._type
        if frame_type == TENSOR_PAYLOAD:
            if self._meta is None:
                raise DecodeError("TENSOR_PAYLOAD frame before TENSOR_META", offset=self._frame_start)
            if self._length > self._expected - self._received:
                raise DecodeError(
                    f"TENSOR_PAYLOAD frame of {self._length} bytes overruns the tensor: "
                    f"{self._received} of {self._expected} bytes already received",
                    offset=self._frame_start)
            self._dest = <char*>cnp.PyArray_DATA(self._buffer) + self._received
        elif frame_type == TENSOR_META:
            if self._meta is not None:
                raise DecodeError("second TENSOR_META frame in one tensor stream", offset=self._frame_start)
            self._buffer_payload(MAX_META_PAYLOAD, "largest possible tensor meta")
        else:
            self._start_control_frame("tensor stream", "TENSOR_META, TENSOR_PAYLOAD")
        return 0

    cdef int _end_frame(self) except -1:
        cdef int frame_type = self._type
        cdef uint64_t payload_start = self._frame_start + TENSOR_HEADER_SIZE
        if frame_type == TENSOR_PAYLOAD:
            self._received += self._length
        elif frame_type == TENSOR_META:
            try:
                meta = TensorMeta.decode(self._payload, max_bytes=self._max_bytes)
            except DecodeError as exc:   # LimitExceededError included: checked before allocating
                raise _relocate(exc, "TENSOR_META frame", payload_start) from exc
            if self._out is not None:
                if meta.size_bytes > self._out.nbytes:
                    raise LimitExceededError(
                        f"tensor of {meta.size_bytes} bytes does not fit the out buffer of {self._out.nbytes} bytes",
                        offset=payload_start)
                self._buffer = np.frombuffer(self._out, dtype=np.uint8, count=meta.size_bytes)
            else:
                # numpy puts large buffers on transparent huge pages: several times fewer page
                # faults than a bytearray while the payload is written (see bench_frames.py).
                self._buffer = np.empty(meta.size_bytes, dtype=np.uint8)
            self._expected = meta.size_bytes
            self._received = 0
            self._meta = meta
        elif frame_type == END_STREAM:
            if self._meta is None:
                raise DecodeError("END_STREAM before any TENSOR_META", offset=self._frame_start)
            if self._received != self._expected:
                raise IncompleteStreamError(
                    f"END_STREAM after {self._received} of {self._expected} tensor bytes",
                    offset=self._frame_start)
            self._tensor = Tensor(self._meta, self._buffer)
            self._buffer = None
            self._done = True
        else:
            self._raise_cancel()
        return 0

    cdef bint _has_output(self):
        return self._tensor is not None

    cdef object _take_output(self):
        tensor = self._tensor
        self._tensor = None
        return tensor

    cdef int _check_complete(self) except -1:
        _TensorFrameReader._check_complete(self)
        if not self._done:
            raise IncompleteStreamError(
                "tensor stream ended before END_STREAM"
                + ("" if self._meta is None else f" ({self._received} of {self._expected} bytes received)"),
                offset=self._position)
        return 0

    def feed(self, data):
        """Consume a chunk; return the Tensor when END_STREAM completes it, else None."""
        return self._feed(data)

    @property
    def meta(self):
        """The TensorMeta once the META frame has arrived, else None."""
        return self._meta

    @property
    def received(self):
        """Tensor bytes received so far."""
        return self._received


cdef class TokenStreamDecoder(_TensorFrameReader):
    """Decodes a token stream: TOKEN_BATCH tensor frames ended by END_STREAM.

    ``feed`` returns the TokenBatch objects completed by the chunk. CANCEL raises
    StreamCancelledError; any other frame type, a batch that does not decode, or bytes
    after END_STREAM raise DecodeError with the stream offset. A TOKEN_BATCH payload
    over ``max_payload`` is refused as soon as its header arrives.

    >>> from quill._tokens import TokenBatch
    >>> decoder = TokenStreamDecoder()
    >>> batches = decoder.feed(encode_token_batch_frame(TokenBatch(sequence_id=3)) + END_STREAM_FRAME)
    >>> [b.sequence_id for b in batches], decoder.done
    ([3], True)
    """

    cdef Py_ssize_t _max_payload
    cdef list _batches

    def __init__(self, Py_ssize_t max_payload=DEFAULT_MAX_FRAME_PAYLOAD):
        if max_payload < 0:
            raise ValueError(f"max_payload must be >= 0, got {max_payload}")
        self._max_payload = max_payload
        self._batches = []

    cdef int _start_frame(self) except -1:
        if self._type == TOKEN_BATCH:
            self._buffer_payload(self._max_payload, "decoder limit")
        else:
            self._start_control_frame("token stream", "TOKEN_BATCH")
        return 0

    cdef int _end_frame(self) except -1:
        if self._type == TOKEN_BATCH:
            try:
                batch = TokenBatch.decode(self._payload)
            except DecodeError as exc:
                raise _relocate(exc, "TOKEN_BATCH frame", self._frame_start + TENSOR_HEADER_SIZE) from exc
            self._batches.append(batch)
        elif self._type == END_STREAM:
            self._done = True
        else:
            self._raise_cancel()
        return 0

    cdef bint _has_output(self):
        return len(self._batches) > 0

    cdef object _take_output(self):
        batches = self._batches
        self._batches = []
        return batches

    cdef int _check_complete(self) except -1:
        _TensorFrameReader._check_complete(self)
        if not self._done:
            raise IncompleteStreamError("token stream ended before END_STREAM", offset=self._position)
        return 0

    def feed(self, data):
        """Consume a chunk; return the TokenBatch objects it completed."""
        return self._feed(data)


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


# ==========================================================================================
# TensorDataChunk (quill-tensor's chunked transfer record)
# ==========================================================================================

@cython.no_gc  # holds only bytes and ints: it cannot be part of a reference cycle
@cython.freelist(64)
cdef class TensorDataChunk:
    """A TensorDataChunk: sequence u32 LE, total_chunks u32 LE, is_final u8, data to the end.

    Decoding reads any non-zero final byte as True, as the reference does.

    >>> TensorDataChunk(0, 1, True, b"abc").encode().hex()
    '000000000100000001616263'
    >>> TensorDataChunk.decode(bytes.fromhex("000000000100000002aa"))
    TensorDataChunk(sequence=0, total_chunks=1, is_final=True, data=b'\\xaa')
    """

    cdef readonly uint32_t sequence
    cdef readonly uint32_t total_chunks
    cdef readonly bint is_final
    cdef readonly bytes data

    def __init__(self, sequence, total_chunks, is_final, data=b""):
        for what, value in (("sequence", sequence), ("total_chunks", total_chunks)):
            if not isinstance(value, int):
                raise TypeError(f"{what} must be an int, not {type(value).__name__}")
            if not 0 <= value <= U32_MAX:
                raise EncodeError(f"{what} {value} is outside 0..2**32-1")
        self.sequence = sequence
        self.total_chunks = total_chunks
        self.is_final = bool(is_final)
        self.data = _as_bytes(data, "data")

    def encode(self):
        """The chunk's wire bytes (9-byte header then the data)."""
        header = (self.sequence.to_bytes(4, "little") + self.total_chunks.to_bytes(4, "little")
                  + (b"\x01" if self.is_final else b"\x00"))
        return header + self.data

    @staticmethod
    def decode(buf):
        """Decode a whole buffer as one chunk; fewer than 9 bytes raise IncompleteStreamError."""
        raw = _as_bytes(buf, "buf")
        if len(raw) < 9:
            raise IncompleteStreamError(
                f"TensorDataChunk needs a 9-byte header, got {len(raw)} bytes", offset=0)
        return TensorDataChunk(int.from_bytes(raw[0:4], "little"), int.from_bytes(raw[4:8], "little"),
                               raw[8] != 0, raw[9:])

    def __eq__(self, other):
        if not isinstance(other, TensorDataChunk):
            return NotImplemented
        cdef TensorDataChunk o = <TensorDataChunk>other
        return (self.sequence == o.sequence and self.total_chunks == o.total_chunks
                and self.is_final == o.is_final and self.data == o.data)

    def __hash__(self):
        return hash((self.sequence, self.total_chunks, self.is_final, self.data))

    def __repr__(self):
        return (f"TensorDataChunk(sequence={self.sequence}, total_chunks={self.total_chunks}, "
                f"is_final={bool(self.is_final)}, data={self.data!r})")

    def __reduce__(self):
        return (TensorDataChunk, (self.sequence, self.total_chunks, bool(self.is_final), self.data))
