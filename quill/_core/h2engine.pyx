"""A sans-IO HTTP/2 client engine on libnghttp2: :class:`H2Engine`.

The engine owns no socket. The transport feeds it the bytes that arrived (:meth:`H2Engine.receive`,
which returns the events they made) and writes out what it has to send
(:meth:`H2Engine.data_to_send`). Events are tuples whose first item says what happened:

=====================================  ============================================================
``(HEADERS, stream_id, headers)``      a header block (the response head, an interim 1xx, trailers):
                                       ``headers`` a list of ``(name, value)`` bytes pairs
``(DATA, stream_id, data)``            body bytes (``bytes``); give the window back with :meth:`consume`
``(END, stream_id)``                   the peer ended the stream (END_STREAM)
``(CLOSED, stream_id, error_code)``    the stream is closed; ``error_code`` 0 after a clean end,
                                       else the RST_STREAM code (sent or received)
``(HEADERS_TOO_LARGE, stream_id, n)``  a header list passed ``max_header_list`` bytes: the stream is
                                       reset, ``n`` is what had arrived when it was refused
``(GOAWAY, last_stream_id, code)``     the peer is closing: streams above ``last_stream_id`` were
                                       never processed
``(SETTINGS, 0)``                      the peer's SETTINGS arrived (see :attr:`max_concurrent_streams`)
``(PING_ACK, 0)``                      the peer acknowledged a PING sent by :meth:`ping`
=====================================  ============================================================

Window updates are not automatic: the connection and the stream get their window back as the
consumer takes the bytes (:meth:`consume`), so a slow reader stops the sender instead of
buffering without bound. A request body is queued with :meth:`send_data` (the engine keeps a
reference to each buffer and copies it into DATA frames as the peer's windows allow).

>>> from quill._core.h2engine import H2Engine
>>> engine = H2Engine()
>>> engine.data_to_send()[:24]
b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'
>>> engine.submit([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h"), (b":path", b"/")])
1
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.string cimport memcpy

from collections import deque

cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session
    ctypedef struct nghttp2_session_callbacks
    ctypedef struct nghttp2_option
    ctypedef ptrdiff_t ssize_t

    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags

    ctypedef struct nghttp2_headers:
        nghttp2_frame_hd hd
        int cat

    ctypedef struct nghttp2_goaway:
        nghttp2_frame_hd hd
        int32_t last_stream_id
        uint32_t error_code

    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_headers headers
        nghttp2_goaway goaway

    ctypedef struct nghttp2_nv:
        uint8_t *name
        uint8_t *value
        size_t namelen
        size_t valuelen
        uint8_t flags

    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value

    ctypedef union nghttp2_data_source:
        int fd
        void *ptr

    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
        uint32_t *data_flags, nghttp2_data_source *source, void *user_data) noexcept

    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback

    enum:
        NGHTTP2_ERR_DEFERRED
        NGHTTP2_ERR_CALLBACK_FAILURE
        NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        NGHTTP2_ERR_INVALID_ARGUMENT
        NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE
        NGHTTP2_FLAG_NONE
        NGHTTP2_FLAG_END_STREAM
        NGHTTP2_FLAG_ACK
        NGHTTP2_DATA_FLAG_EOF
        NGHTTP2_NV_FLAG_NONE
        NGHTTP2_DATA
        NGHTTP2_HEADERS
        NGHTTP2_SETTINGS
        NGHTTP2_GOAWAY
        NGHTTP2_PING
        NGHTTP2_SETTINGS_ENABLE_PUSH
        NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        NGHTTP2_SETTINGS_MAX_FRAME_SIZE
        NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        NGHTTP2_CANCEL
        NGHTTP2_NO_ERROR
        NGHTTP2_PROTOCOL_ERROR

    ctypedef int (*on_frame_recv_cb)(nghttp2_session *, const nghttp2_frame *, void *) noexcept
    ctypedef int (*on_begin_headers_cb)(nghttp2_session *, const nghttp2_frame *, void *) noexcept
    ctypedef int (*on_header_cb)(nghttp2_session *, const nghttp2_frame *, const uint8_t *, size_t,
                                 const uint8_t *, size_t, uint8_t, void *) noexcept
    ctypedef int (*on_data_chunk_recv_cb)(nghttp2_session *, uint8_t, int32_t, const uint8_t *, size_t,
                                          void *) noexcept
    ctypedef int (*on_stream_close_cb)(nghttp2_session *, int32_t, uint32_t, void *) noexcept
    ctypedef int (*on_invalid_frame_recv_cb)(nghttp2_session *, const nghttp2_frame *, int, void *) noexcept
    ctypedef int (*error_cb2)(nghttp2_session *, int, const char *, size_t, void *) noexcept

    int nghttp2_session_callbacks_new(nghttp2_session_callbacks **callbacks_ptr)
    void nghttp2_session_callbacks_del(nghttp2_session_callbacks *callbacks)
    void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *, on_frame_recv_cb)
    void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *, on_begin_headers_cb)
    void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *, on_header_cb)
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *,
                                                                   on_data_chunk_recv_cb)
    void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *, on_stream_close_cb)
    void nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(nghttp2_session_callbacks *,
                                                                      on_invalid_frame_recv_cb)
    void nghttp2_session_callbacks_set_error_callback2(nghttp2_session_callbacks *, error_cb2)

    int nghttp2_option_new(nghttp2_option **option_ptr)
    void nghttp2_option_del(nghttp2_option *option)
    void nghttp2_option_set_no_auto_window_update(nghttp2_option *option, int val)
    void nghttp2_option_set_max_settings(nghttp2_option *option, size_t val)

    int nghttp2_session_client_new2(nghttp2_session **session_ptr, const nghttp2_session_callbacks *callbacks,
                                    void *user_data, const nghttp2_option *option)
    void nghttp2_session_del(nghttp2_session *session)
    ssize_t nghttp2_session_mem_recv(nghttp2_session *session, const uint8_t *data, size_t inlen)
    ssize_t nghttp2_session_mem_send(nghttp2_session *session, const uint8_t **data_ptr)
    int nghttp2_session_want_read(nghttp2_session *session)
    int nghttp2_session_want_write(nghttp2_session *session)
    int nghttp2_submit_settings(nghttp2_session *session, uint8_t flags, const nghttp2_settings_entry *iv,
                                size_t niv)
    int nghttp2_session_set_local_window_size(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                                              int32_t window_size)
    int32_t nghttp2_submit_request(nghttp2_session *session, const void *pri_spec, const nghttp2_nv *nva,
                                   size_t nvlen, const nghttp2_data_provider *data_prd, void *stream_user_data)
    int nghttp2_submit_rst_stream(nghttp2_session *session, uint8_t flags, int32_t stream_id, uint32_t error_code)
    int nghttp2_session_resume_data(nghttp2_session *session, int32_t stream_id)
    int nghttp2_session_consume_connection(nghttp2_session *session, size_t size)
    int nghttp2_session_consume_stream(nghttp2_session *session, int32_t stream_id, size_t size)
    int nghttp2_submit_ping(nghttp2_session *session, uint8_t flags, const uint8_t *opaque_data)
    int nghttp2_session_terminate_session(nghttp2_session *session, uint32_t error_code)
    uint32_t nghttp2_session_get_remote_settings(nghttp2_session *session, int id)
    int32_t nghttp2_session_get_stream_remote_window_size(nghttp2_session *session, int32_t stream_id)
    int32_t nghttp2_session_get_remote_window_size(nghttp2_session *session)
    const char *nghttp2_strerror(int lib_error_code)

cdef extern from "nghttp2/nghttp2ver.h":
    const char *NGHTTP2_VERSION

__all__ = ["H2Engine", "HEADERS", "DATA", "END", "CLOSED", "HEADERS_TOO_LARGE", "GOAWAY", "SETTINGS",
           "PING_ACK", "CANCEL", "NGHTTP2_VERSION_TEXT"]

HEADERS = 1
DATA = 2
END = 3
CLOSED = 4
HEADERS_TOO_LARGE = 5
GOAWAY = 6
SETTINGS = 7
PING_ACK = 8
CANCEL = NGHTTP2_CANCEL
NGHTTP2_VERSION_TEXT = NGHTTP2_VERSION.decode()

cdef int64_t _MAX_WINDOW = (1 << 31) - 1


cdef class _Outgoing:
    """A request body being sent: the buffers queued and not yet copied into DATA frames."""
    cdef object parts  # deque of memoryviews (bytes, cast to "B")
    cdef Py_ssize_t offset  # into parts[0]
    cdef Py_ssize_t pending  # bytes queued, not yet framed
    cdef bint ended  # no more buffers will come: END_STREAM after the last
    cdef bint deferred  # the read callback found nothing and deferred the stream
    cdef bint cancelled  # reset: later buffers are dropped

    def __cinit__(self):
        self.parts = deque()


cdef class _Incoming:
    """A response's header block being received, and what is still unconsumed of its body."""
    cdef list headers
    cdef Py_ssize_t header_bytes
    cdef bint refused
    cdef Py_ssize_t unconsumed

    def __cinit__(self):
        self.headers = []


cdef class H2Engine:
    """The client side of one HTTP/2 connection, as a state machine fed bytes (see the module).

    ``stream_window``: the receive window of each stream (SETTINGS_INITIAL_WINDOW_SIZE);
    ``connection_window``: the connection's; ``max_frame_size``: the largest DATA frame the peer
    may send; ``max_header_list``: the largest header list accepted (name + value + 32 per field,
    as RFC 9113 counts it; a larger one resets its stream), also announced to the peer.
    """

    cdef nghttp2_session *session
    cdef list events
    cdef dict outgoing  # stream id -> _Outgoing, until nghttp2 closes the stream (it points at them)
    cdef dict incoming
    cdef Py_ssize_t max_header_list
    cdef object callback_error
    cdef public str last_error

    def __cinit__(self, *, Py_ssize_t stream_window=16 << 20, Py_ssize_t connection_window=64 << 20,
                  Py_ssize_t max_frame_size=1 << 20, Py_ssize_t max_header_list=256 << 10):
        cdef nghttp2_session_callbacks *callbacks
        cdef nghttp2_option *option
        cdef nghttp2_settings_entry settings[4]
        if not (65535 <= stream_window <= _MAX_WINDOW) or not (65535 <= connection_window <= _MAX_WINDOW):
            raise ValueError(f"HTTP/2 windows must lie in 65535..{_MAX_WINDOW}: got {stream_window}, "
                             f"{connection_window}")
        if not (16384 <= max_frame_size <= (1 << 24) - 1):
            raise ValueError(f"max_frame_size must lie in 16384..16777215: got {max_frame_size}")
        if max_header_list < 1024:
            raise ValueError(f"max_header_list must be at least 1024: got {max_header_list}")
        self.events = []
        self.outgoing = {}
        self.incoming = {}
        self.max_header_list = max_header_list
        self.last_error = ""
        if nghttp2_session_callbacks_new(&callbacks) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, _on_frame_recv)
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, _on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, _on_header)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, _on_data_chunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, _on_stream_close)
        nghttp2_session_callbacks_set_error_callback2(callbacks, _on_error)
        nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks, _on_invalid_frame)
        if nghttp2_option_new(&option) != 0:
            nghttp2_session_callbacks_del(callbacks)
            raise MemoryError()
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_max_settings(option, 32)
        rv = nghttp2_session_client_new2(&self.session, callbacks, <void *>self, option)
        nghttp2_option_del(option)
        nghttp2_session_callbacks_del(callbacks)
        if rv != 0:
            raise MemoryError(f"nghttp2_session_client_new2: {nghttp2_strerror(rv).decode()}")
        settings[0].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        settings[0].value = 0
        settings[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        settings[1].value = <uint32_t>stream_window
        settings[2].settings_id = NGHTTP2_SETTINGS_MAX_FRAME_SIZE
        settings[2].value = <uint32_t>max_frame_size
        settings[3].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        settings[3].value = <uint32_t>max_header_list
        _check(nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, settings, 4), "SETTINGS")
        _check(nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0,
                                                     <int32_t>connection_window), "WINDOW_UPDATE")

    def __dealloc__(self):
        if self.session is not NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    # -- bytes in, bytes out ------------------------------------------------------------------
    def receive(self, data) -> list:
        """Feed bytes that arrived; the events they completed, in order (see the module).
        A connection error (malformed frames, a flow-control violation) queues a GOAWAY and
        ends the session: :attr:`alive` turns False and :attr:`last_error` says why."""
        cdef const uint8_t[::1] view = data
        cdef ssize_t done
        cdef list events
        self.callback_error = None
        done = nghttp2_session_mem_recv(self.session, &view[0] if len(view) else NULL, len(view))
        events, self.events = self.events, []
        if self.callback_error is not None:
            error, self.callback_error = self.callback_error, None
            raise error
        if done < 0:
            self.last_error = self.last_error or nghttp2_strerror(<int>done).decode()
            nghttp2_session_terminate_session(self.session, NGHTTP2_PROTOCOL_ERROR)
        return events

    def take_events(self) -> list:
        """Events that writing made (:meth:`data_to_send`: a stream closed by the RST_STREAM the
        engine itself sent, for a response that broke HTTP's rules); usually none."""
        events, self.events = self.events, []
        return events

    def data_to_send(self) -> bytes:
        """Every byte the engine has to write now (frames, acknowledgements, window updates)."""
        cdef const uint8_t *chunk
        cdef ssize_t size
        cdef list pieces = []
        self.callback_error = None
        while True:
            size = nghttp2_session_mem_send(self.session, &chunk)
            if size < 0:
                raise RuntimeError(f"nghttp2_session_mem_send: {nghttp2_strerror(<int>size).decode()}")
            if size == 0:
                break
            pieces.append(PyBytes_FromStringAndSize(<const char *>chunk, size))
        if self.callback_error is not None:
            error, self.callback_error = self.callback_error, None
            raise error
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    @property
    def alive(self) -> bool:
        """Whether the session still reads or writes (False once either side ended it)."""
        return bool(nghttp2_session_want_read(self.session) or nghttp2_session_want_write(self.session))

    @property
    def max_concurrent_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until its SETTINGS: 2**32-1)."""
        return nghttp2_session_get_remote_settings(self.session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)

    # -- requests -----------------------------------------------------------------------------
    def submit(self, list headers, bint has_body=False) -> int:
        """Queue a request's HEADERS (pseudo-headers first, names lower-case bytes); its stream id.
        With ``has_body``, its DATA comes from :meth:`send_data`; else the HEADERS end the stream."""
        cdef Py_ssize_t n = len(headers), i
        cdef nghttp2_nv *nva
        cdef nghttp2_data_provider provider
        cdef int32_t stream_id
        cdef bytes name, value
        cdef _Outgoing out = None
        nva = <nghttp2_nv *>PyMem_Malloc(max(n, 1) * sizeof(nghttp2_nv))
        if nva is NULL:
            raise MemoryError()
        try:
            for i in range(n):
                name, value = headers[i]
                nva[i].name = <uint8_t *><char *>name
                nva[i].namelen = len(name)
                nva[i].value = <uint8_t *><char *>value
                nva[i].valuelen = len(value)
                nva[i].flags = NGHTTP2_NV_FLAG_NONE
            if has_body:
                out = _Outgoing()
                provider.source.ptr = <void *>out
                provider.read_callback = _read_body
                stream_id = nghttp2_submit_request(self.session, NULL, nva, n, &provider, NULL)
            else:
                stream_id = nghttp2_submit_request(self.session, NULL, nva, n, NULL, NULL)
        finally:
            PyMem_Free(nva)
        if stream_id < 0:
            raise RuntimeError(f"HTTP/2 request not submitted: {nghttp2_strerror(stream_id).decode()}")
        if out is not None:
            self.outgoing[stream_id] = out
        self.incoming[stream_id] = _Incoming()
        return stream_id

    def send_data(self, int32_t stream_id, data=b"", bint end=False) -> None:
        """Queue ``data`` (any bytes-like object, referenced, not copied) on a request stream;
        ``end`` ends the body after it. A stream already closed ignores it."""
        cdef _Outgoing out = self.outgoing.get(stream_id)
        if out is None or out.cancelled:
            return
        if out.ended:
            raise RuntimeError(f"HTTP/2 stream {stream_id}: the request body has ended already")
        view = memoryview(data).cast("B")
        if len(view):
            out.parts.append(view)
            out.pending += len(view)
        out.ended = end
        if out.deferred:
            out.deferred = False
            nghttp2_session_resume_data(self.session, stream_id)

    def pending(self, int32_t stream_id) -> int:
        """The bytes of a request body queued and not yet framed (0 for a closed stream)."""
        cdef _Outgoing out = self.outgoing.get(stream_id)
        return 0 if out is None else out.pending

    def send_window(self, int32_t stream_id) -> int:
        """How many body bytes the peer accepts on this stream now (its window and the connection's)."""
        stream = nghttp2_session_get_stream_remote_window_size(self.session, stream_id)
        return max(0, min(stream, nghttp2_session_get_remote_window_size(self.session)))

    def reset(self, int32_t stream_id, uint32_t error_code=NGHTTP2_CANCEL) -> None:
        """Queue RST_STREAM (CANCEL by default) for a stream; other streams go on."""
        cdef _Outgoing out = self.outgoing.get(stream_id)
        if out is not None:  # nothing more of its body goes out (nghttp2 holds it until closed)
            out.parts.clear()
            out.pending = 0
            out.ended = out.cancelled = True
        nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream_id, error_code)

    def consume(self, int32_t stream_id, Py_ssize_t size) -> None:
        """The consumer took ``size`` body bytes of a stream: give them back to the windows."""
        cdef _Incoming incoming = self.incoming.get(stream_id)
        if incoming is not None:
            size = min(size, incoming.unconsumed)
            incoming.unconsumed -= size
            nghttp2_session_consume_stream(self.session, stream_id, size)
        if size > 0:
            nghttp2_session_consume_connection(self.session, size)

    def forget(self, int32_t stream_id) -> None:
        """The transport is done with a stream: what it left unconsumed goes back to the
        connection window, and body bytes arriving for it later are consumed at once."""
        cdef _Incoming incoming = self.incoming.pop(stream_id, None)
        if incoming is not None and incoming.unconsumed:
            nghttp2_session_consume_connection(self.session, incoming.unconsumed)

    def ping(self) -> None:
        """Queue a PING (keepalive); the peer's answer comes as a ``(PING_ACK, 0)`` event."""
        _check(nghttp2_submit_ping(self.session, NGHTTP2_FLAG_NONE, NULL), "PING")

    def terminate(self, uint32_t error_code=NGHTTP2_NO_ERROR) -> None:
        """Queue GOAWAY and end the session (write :meth:`data_to_send` before closing the socket)."""
        nghttp2_session_terminate_session(self.session, error_code)


cdef inline void _check(int rv, str what) except *:
    if rv != 0:
        raise RuntimeError(f"nghttp2 {what}: {nghttp2_strerror(rv).decode()}")


# -- callbacks (called inside mem_recv / mem_send, with the GIL held) ------------------------------
cdef int _on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) noexcept:
    cdef H2Engine engine = <H2Engine>user_data
    cdef _Incoming incoming = engine.incoming.get(frame.hd.stream_id)
    if incoming is not None:
        incoming.headers = []
        incoming.header_bytes = 0
        incoming.refused = False
    return 0


cdef int _on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                    const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) noexcept:
    cdef H2Engine engine = <H2Engine>user_data
    cdef _Incoming incoming
    try:
        incoming = engine.incoming.get(frame.hd.stream_id)
        if incoming is None or incoming.refused:
            return 0
        incoming.header_bytes += namelen + valuelen + 32
        if incoming.header_bytes > engine.max_header_list:
            incoming.refused = True
            engine.events.append((HEADERS_TOO_LARGE, frame.hd.stream_id, incoming.header_bytes))
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE  # nghttp2 resets the stream
        incoming.headers.append((PyBytes_FromStringAndSize(<const char *>name, namelen),
                                 PyBytes_FromStringAndSize(<const char *>value, valuelen)))
        return 0
    except BaseException as exc:
        engine.callback_error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) noexcept:
    cdef H2Engine engine = <H2Engine>user_data
    cdef _Incoming incoming
    cdef int32_t stream_id = frame.hd.stream_id
    try:
        if frame.hd.type == NGHTTP2_HEADERS:
            incoming = engine.incoming.get(stream_id)
            if incoming is None or incoming.refused:
                return 0
            engine.events.append((HEADERS, stream_id, incoming.headers))
            incoming.headers = []
            if frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
                engine.events.append((END, stream_id))
        elif frame.hd.type == NGHTTP2_DATA:
            if frame.hd.flags & NGHTTP2_FLAG_END_STREAM and stream_id in engine.incoming:
                engine.events.append((END, stream_id))
        elif frame.hd.type == NGHTTP2_GOAWAY:
            engine.events.append((GOAWAY, frame.goaway.last_stream_id, frame.goaway.error_code))
        elif frame.hd.type == NGHTTP2_SETTINGS:
            engine.events.append((SETTINGS, 0))
        elif frame.hd.type == NGHTTP2_PING and frame.hd.flags & NGHTTP2_FLAG_ACK:
            engine.events.append((PING_ACK, 0))
        return 0
    except BaseException as exc:
        engine.callback_error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data,
                        size_t size, void *user_data) noexcept:
    cdef H2Engine engine = <H2Engine>user_data
    cdef _Incoming incoming
    try:
        incoming = engine.incoming.get(stream_id)
        if incoming is None:  # a stream the transport is done with: its bytes go straight back
            nghttp2_session_consume_connection(session, size)
            return 0
        incoming.unconsumed += size
        engine.events.append((DATA, stream_id, PyBytes_FromStringAndSize(<const char *>data, size)))
        return 0
    except BaseException as exc:
        engine.callback_error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                          void *user_data) noexcept:
    cdef H2Engine engine = <H2Engine>user_data
    try:
        engine.outgoing.pop(stream_id, None)
        if stream_id in engine.incoming:
            engine.events.append((CLOSED, stream_id, error_code))
        return 0
    except BaseException as exc:
        engine.callback_error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_error(nghttp2_session *session, int lib_error_code, const char *msg, size_t size,
                   void *user_data) noexcept:
    cdef H2Engine engine = <H2Engine>user_data
    try:
        engine.last_error = msg[:size].decode("utf-8", "replace")
    except BaseException:
        pass
    return 0


cdef int _on_invalid_frame(nghttp2_session *session, const nghttp2_frame *frame, int lib_error_code,
                           void *user_data) noexcept:
    cdef H2Engine engine = <H2Engine>user_data
    try:
        engine.last_error = (f"invalid frame (type {frame.hd.type}) on stream {frame.hd.stream_id}: "
                             f"{nghttp2_strerror(lib_error_code).decode()}")
    except BaseException:
        pass
    return 0


cdef ssize_t _read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source, void *user_data) noexcept:
    cdef _Outgoing out = <_Outgoing>source.ptr
    cdef const uint8_t[::1] part
    cdef size_t filled = 0, take
    try:
        while filled < length and out.parts:
            part = out.parts[0]
            take = min(length - filled, <size_t>(part.shape[0] - out.offset))
            if take:
                memcpy(buf + filled, &part[out.offset], take)
            filled += take
            out.offset += take
            if out.offset == part.shape[0]:
                out.parts.popleft()
                out.offset = 0
        out.pending -= filled
        if not out.parts and out.ended:
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
        elif filled == 0:
            out.deferred = True
            return NGHTTP2_ERR_DEFERRED
        return filled
    except BaseException as exc:
        (<H2Engine>user_data).callback_error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
