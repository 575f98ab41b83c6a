# cython: freethreading_compatible = True
# (audited for running without the GIL: docs/memory-safety.md, "Free-threaded CPython")
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
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

from quill._core.quill_threads cimport quill_release_claim, quill_try_claim

cimport numpy as cnp
import numpy as np

from quill._core.tokens import TokenBatch
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


include "frames_tensor.pxi"

# ==========================================================================================
# Incremental reading: shared error handling, payload windows
# ==========================================================================================

@cython.final
cdef class PayloadWindow:
    """A writable buffer over the rest of the payload a parser is filling, from
    ``payload_window()``: a reader writes the stream's next bytes straight into it (one copy,
    from the socket), releases every view of it, then hands it back with ``commit(window, n)``.

    It keeps the memory it exposes alive, and it is single-use: after ``commit`` (or once the
    parser moves on) it exports nothing more. Its state changes in its critical section, so a
    view taken on another thread either comes before the window closes (and keeps it open) or
    is refused with BufferError.
    """

    cdef object _owner        # the object whose memory this is (bytes being filled, an array)
    cdef char* _start         # NULL once committed or abandoned
    cdef Py_ssize_t _size
    cdef Py_ssize_t _exports  # views of it not yet released

    def __len__(self):
        return self._size if self._start != NULL else 0

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        with cython.critical_section(self):
            if self._start == NULL:
                raise BufferError("this payload window was already committed or abandoned")
            PyBuffer_FillInfo(buffer, self, self._start, self._size, 0, flags)
            self._exports += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        with cython.critical_section(self):
            self._exports -= 1

    cdef bint _close(self):
        """Close the window unless a view of it is held; True when closed."""
        with cython.critical_section(self):
            if self._exports:
                return False
            self._start = NULL
            return True

    def __repr__(self):
        return f"<PayloadWindow of {len(self)} bytes>"


cdef class _IncrementalReader:
    """Feed/finish plumbing shared by every parser: sticky and deferred errors, payload windows."""

    cdef object _error        # the first error met; raised again by every later call
    cdef uint64_t _position   # stream offset of the next byte to consume
    cdef bint _done           # END_STREAM seen (decoders only)
    cdef bint _busy           # a feed(), finish(), commit() or payload_window() is running
                              # (claimed atomically: a second thread is refused, never let in)
    cdef PayloadWindow _window  # handed out by payload_window() and not yet committed, or None

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
        if not quill_try_claim(&self._busy):
            raise RuntimeError(f"{type(self).__name__}.{call}() called while another feed() or finish() "
                               f"of the same parser is running; feed one parser from one thread at a time")
        if self._window is not None and call != "commit":
            if not self._window._close():   # abandoned: the bytes fed now take its place
                quill_release_claim(&self._busy)
                raise RuntimeError(f"{type(self).__name__}.{call}() called while a view of its payload "
                                   f"window is held; commit the window first")
            self._window = None
        return 0

    # -- payload windows: subclasses say where the current payload's unfilled bytes are --------
    cdef object _window_owner(self):
        """The object owning the current payload's memory, or None between payloads."""
        return None

    cdef char* _window_start(self):
        return NULL

    cdef Py_ssize_t _window_room(self):
        return 0

    cdef int _advance(self, Py_ssize_t n) except -1:
        """``n`` payload bytes were written in place at ``_window_start()``."""
        raise NotImplementedError

    def payload_window(self, Py_ssize_t min_size=65536):
        """A :class:`PayloadWindow` over the rest of the payload being filled when at least
        ``min_size`` bytes of it are still to come, else None (between payloads, a small
        remainder, after an error).

        The window's bytes are the very next bytes of the stream: write into it what ``feed``
        would have been given, then ``commit(window, n)``. Any ``feed`` or ``finish`` before the
        commit abandons the window (RuntimeError while a view of it is held).

        >>> decoder = MessageStreamDecoder()
        >>> wire = encode_stream_frame(bytes(range(200)) * 500)
        >>> decoder.feed(wire[:4])
        []
        >>> window = decoder.payload_window()
        >>> memoryview(window)[:] = wire[4:4 + len(window)]
        >>> [len(m) for m in decoder.commit(window, len(window))], decoder.feed(encode_end_stream()), decoder.done
        ([100000], [], True)
        """
        if self._error is not None or self._done or not quill_try_claim(&self._busy):
            return None
        try:
            return self._new_window(min_size)
        finally:
            quill_release_claim(&self._busy)

    cdef object _new_window(self, Py_ssize_t min_size):
        if self._window is not None:
            if not self._window._close():
                raise RuntimeError(f"{type(self).__name__}.payload_window() called while a view of "
                                   f"its previous window is held")
            self._window = None
        cdef Py_ssize_t room = self._window_room()
        if room <= 0 or room < min_size:
            return None
        cdef PayloadWindow window = PayloadWindow.__new__(PayloadWindow)
        window._owner = self._window_owner()
        window._start = self._window_start()
        window._size = room
        self._window = window
        return window

    def commit(self, PayloadWindow window not None, Py_ssize_t n):
        """Account for ``n`` bytes written at the start of ``window`` (this parser's current one,
        every view of it released); returns what ``feed`` would have returned for them."""
        self._enter("commit")
        try:
            if window is not self._window or window._start == NULL:
                raise ValueError("commit() needs the window this parser handed out last, uncommitted")
            if n < 0 or n > window._size:
                raise ValueError(f"commit() of {n} bytes into a window of {window._size}")
            if not window._close():
                raise BufferError("commit() while a view of the payload window is still held")
            self._window = None
            try:
                self._advance(n)
            except Exception as exc:
                self._error = exc
                if not self._has_output():
                    raise
            return self._take_output()
        finally:
            quill_release_claim(&self._busy)

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
            quill_release_claim(&self._busy)

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
            quill_release_claim(&self._busy)

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


include "frames_tensor_readers.pxi"

include "frames_stream.pxi"

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
