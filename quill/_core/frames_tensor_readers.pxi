# Included by quill/_core/frames.pyx: the incremental tensor-frame readers (TensorFrameParser, TensorReceiver, TokenStreamDecoder).

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

    cdef object _dest_owner(self):
        """The owner of ``_dest`` when it is not a payload bytes object (a receiver's buffer)."""
        return None

    cdef object _window_owner(self):
        if self._header_len < TENSOR_HEADER_SIZE or self._dest == NULL:
            return None
        return self._payload if self._payload is not None else self._dest_owner()

    cdef char* _window_start(self):
        return self._dest + self._filled

    cdef Py_ssize_t _window_room(self):
        return self._length - self._filled if self._window_owner() is not None else 0

    cdef int _advance(self, Py_ssize_t n) except -1:
        self._filled += n
        self._position += n
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


cdef cnp.ndarray _writable_bytes(buffer, Py_ssize_t size):
    """The first ``size`` bytes of an allocator's ``buffer``, as a writable uint8 array."""
    array = np.frombuffer(buffer, dtype=np.uint8, count=size)
    if not array.flags.writeable:
        raise TypeError("allocate must return a writable buffer")
    return array


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
    ``allocate`` (a callable, without ``out``) is asked at the META frame for a writable buffer of
    at least ``byte_size`` bytes (a client's receive-buffer pool) instead of a fresh allocation.

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
    cdef object _allocate      # size -> a writable buffer of at least size bytes, or None
    cdef Py_ssize_t _expected
    cdef Py_ssize_t _received
    cdef object _tensor

    def __init__(self, max_bytes=DEFAULT_MAX_TENSOR_BYTES, out=None, allocate=None):
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
            raise ValueError(f"max_bytes must be a non-negative int or None, got {max_bytes!r}")
        if allocate is not None and not callable(allocate):
            raise TypeError(f"allocate must be callable, got {type(allocate).__name__}")
        self._max_bytes = max_bytes
        self._allocate = allocate
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
            elif self._allocate is not None:
                self._buffer = _writable_bytes(self._allocate(meta.size_bytes), meta.size_bytes)
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

    cdef object _dest_owner(self):
        return self._buffer

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

    >>> from quill._core.tokens import TokenBatch
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
