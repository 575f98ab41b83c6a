"""Asyncio HTTP/2: every call of a client (per event loop) multiplexed over one connection, the
frames parsed by quill's compiled libnghttp2 engine (:mod:`quill._core.h2engine`, sans-IO: this
module owns the socket). Cleartext with prior knowledge (``http://``, ``http+unix://``) and TLS
with ALPN (``https://``; a server that picks ``http/1.1`` is then spoken to over HTTP/1.1).
Same interface as :mod:`quill.transports.aio_http11`; failures leave as
:class:`~quill.protocol.retries.TransportError`.

- Streams beyond the server's ``SETTINGS_MAX_CONCURRENT_STREAMS`` wait for a free one (at most the
  call's timeout); with ``http2_connections=N`` a call that finds every open connection at its limit
  opens another, up to N. Otherwise a new connection replaces one that ended or is drained (GOAWAY).
- ``http2_keepalive_ms``: a connection that heard nothing for that long sends a PING; without its
  ACK within ``http2_keepalive_timeout_ms`` the connection counts as dead and its calls fail.
- Each stream's receive window is 16 MiB, the connection's 64 MiB, and the windows are given back
  as the consumer reads: what is buffered unread is bounded by them.
- ``abort()`` (from any thread) resets one stream (RST_STREAM); the others go on.
- After GOAWAY, the streams above its last stream id were not processed: they fail with
  ``sent=False``, so the retry policy resends them even when they are not idempotent.
- A response header list over 64 KiB resets its stream: LimitExceededError.

>>> from quill.protocol.calls import ClientCore
>>> transport = AsyncHTTP2Transport(ClientCore(dict(base_url="http://127.0.0.1:8080")))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import threading
from typing import Any

from ..errors import FeatureUnavailableError, LimitExceededError, QuillConnectionError, QuillTimeoutError
from ..protocol.retries import TransportError
from .aio_connect import connect, on_loop
from .aio_http11 import AsyncHTTP11Response, AsyncHTTP11Transport

__all__ = ["AsyncHTTP2Transport", "AsyncHTTP2Response", "load_engine", "STREAM_WINDOW", "CONNECTION_WINDOW",
           "MAX_HEADER_LIST"]

STREAM_WINDOW = 16 << 20
CONNECTION_WINDOW = 64 << 20
MAX_HEADER_LIST = 64 << 10
_READ_SIZE = 256 * 1024
_BODY_PENDING = 1 << 20  # a streamed request body waits while this much of it is queued unsent
_REFUSED_STREAM = 7  # RFC 9113: the server did not process the stream; it is safe to resend
_NOT_FORWARDED = {"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}
_ERROR_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
                4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM",
                8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
                12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}


def load_engine() -> Any:
    """The compiled HTTP/2 engine module, or FeatureUnavailableError naming what is missing."""
    try:
        from .._core import h2engine
    except ImportError as exc:
        raise FeatureUnavailableError(
            "HTTP/2 needs quill's compiled HTTP/2 engine (quill._core.h2engine), which this build of quill "
            "lacks: libnghttp2 was not found when it was built. Install libnghttp2's headers (Debian and "
            "Ubuntu: apt-get install libnghttp2-dev) and rebuild quill, or install a quill wheel (wheels carry it)"
        ) from exc
    return h2engine


def request_headers(cache: dict, endpoint: Any, request: Any) -> list:
    """The HTTP/2 header list of ``request``: pseudo-headers, then its headers (lower-case names,
    none of HTTP/1.1's connection headers) and framing; the fixed part cached per ``header_key``."""
    key = request.header_key
    fixed = cache.get(key) if key is not None else None
    if fixed is None:
        authority, fields = endpoint.host_header, []
        for name, value in request.headers:
            lower = name.lower()
            if lower == "host":
                authority = value
            elif lower not in _NOT_FORWARDED:
                fields.append((lower.encode("latin-1"), value.encode("latin-1")))
        fixed = ((b":scheme", endpoint.scheme.encode()), (b":authority", authority.encode("latin-1")), *fields)
        if key is not None:
            if len(cache) > 64:
                cache.clear()
            cache[key] = fixed
    headers = [(b":method", request.method.encode()), (b":path", request.target), *fixed]
    body = request.body
    if body is not None and body.chunks is None:
        headers.append((b"content-length", b"%d" % body.length))
    if body is not None and body.encoding:
        headers.append((b"content-encoding", body.encoding.encode()))
    return headers


class _Stream:
    """One request's stream: its answer's head, the body bytes queued unread, how it ended."""

    __slots__ = ("id", "status", "headers", "head_done", "ended", "closed", "error", "chunks", "waiter",
                 "progress", "sending", "pending")

    def __init__(self, stream_id: int):
        self.id = stream_id
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.ended = False  # END_STREAM arrived: the body is whole
        self.closed = False  # nghttp2 closed the stream (ended both ways, or reset)
        self.error: BaseException | None = None
        self.chunks: collections.deque = collections.deque()
        self.waiter: asyncio.Future | None = None
        self.progress = 0  # bytes moved either way: a wait that saw progress is not timed out
        self.sending = False
        self.pending = 0


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/2 connection: the engine, the socket, and the streams open on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, h2: Any, slot_waiters: collections.deque):
        self.loop = loop
        self.h2 = h2
        self.engine = h2.H2Engine(stream_window=STREAM_WINDOW, connection_window=CONNECTION_WINDOW,
                                  max_header_list=MAX_HEADER_LIST)
        self.transport: Any = None
        self.streams: dict[int, _Stream] = {}
        self.active = 0  # streams holding a slot (opened, not yet released)
        self.slot_waiters = slot_waiters  # the transport's: a slot freed on any connection wakes a waiter
        self.settled = loop.create_future()  # the server's first SETTINGS came (or the connection failed)
        self.heard = loop.time()  # when bytes last arrived (the keepalive's idle clock)
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping = (0.0, 0.0)  # keepalive: (idle seconds before a PING, seconds to wait for its ACK)
        self.lost = False
        self.draining = False  # GOAWAY came (or the session failed): no new streams here
        self._buffer = memoryview(bytearray(_READ_SIZE))
        self._flush_scheduled = False
        self._own_resets = False  # the CLOSED events being handled come from resets the engine sent

    @property
    def usable(self) -> bool:
        return not (self.lost or self.draining)

    def limit(self) -> int:
        return self.engine.max_concurrent_streams

    # -- asyncio.BufferedProtocol ---------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.flush()  # the preface, SETTINGS and the connection's WINDOW_UPDATE

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.heard = self.loop.time()
        self._dispatch(self.engine.receive(self._buffer[:nbytes]))

    def _dispatch(self, events: list) -> None:
        engine = self.engine
        h2, streams = self.h2, self.streams
        for event in events:
            kind = event[0]
            stream = streams.get(event[1]) if kind != h2.GOAWAY else None  # SETTINGS: (SETTINGS, 0)
            if kind == h2.DATA:
                if stream is None:
                    engine.consume(event[1], len(event[2]))
                    continue
                stream.chunks.append(event[2])
                stream.progress += 1
            elif kind == h2.HEADERS and stream is not None:
                self._head(stream, event[2])
            elif kind == h2.END and stream is not None:
                stream.ended = True
            elif kind == h2.CLOSED and stream is not None:
                self._closed(stream, event[2])
            elif kind == h2.HEADERS_TOO_LARGE and stream is not None:
                stream.error = LimitExceededError(
                    f"the response's header list passed {MAX_HEADER_LIST} bytes (HTTP/2 max_header_list): refused")
            elif kind == h2.GOAWAY:
                self._goaway(event[1], event[2])
            elif kind == h2.SETTINGS:
                if not self.settled.done():
                    self.settled.set_result(None)
                self.wake_slots(all_of_them=True)
            elif kind == h2.PING_ACK:
                self._ping_acked()
            if stream is not None:
                _wake(stream)
        for stream in streams.values():
            if stream.sending:
                pending = engine.pending(stream.id)
                if pending != stream.pending:
                    stream.pending, stream.progress = pending, stream.progress + 1
                    _wake(stream)
        self.write_now()  # a GOAWAY the engine queued goes out before the session counts as ended
        if not engine.alive and not self.draining:
            self.fail(TransportError("response", sent=True,
                                     detail=f"HTTP/2 protocol error: {engine.last_error or 'session ended'}"))
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.fail(TransportError("response", sent=True, detail=str(exc or "connection closed")))

    # -- events ---------------------------------------------------------------------------------
    def _head(self, stream: _Stream, fields: list) -> None:
        if stream.head_done:
            return  # trailers: nothing of Quill's lives there
        headers: dict[str, str] = {}
        status = 0
        for name, value in fields:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            if key == ":status":
                status = int(text) if text.isdigit() else 0
            elif not key.startswith(":"):
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if 100 <= status < 200:
            return  # interim (103 Early Hints): the answer follows
        if status < 200:
            stream.error = TransportError("response", sent=True, detail="malformed HTTP/2 response: no :status")
            return
        stream.status, stream.headers, stream.head_done = status, headers, True

    def _closed(self, stream: _Stream, code: int) -> None:
        stream.closed = True
        if stream.ended or stream.error is not None:
            return
        name = _ERROR_NAMES.get(code, str(code))
        stage = "body" if stream.head_done else "response"
        detail = (f"malformed HTTP/2 response (its DATA and content-length disagree, or a header is invalid): "
                  f"the client reset the stream (RST_STREAM {name})") if self._own_resets \
            else f"stream reset by the server (RST_STREAM {name})"
        stream.error = TransportError(stage, sent=code != _REFUSED_STREAM or stream.head_done, detail=detail)

    def _goaway(self, last_stream_id: int, code: int) -> None:
        self.draining = True
        for stream_id, stream in self.streams.items():
            if stream_id > last_stream_id and not stream.ended and stream.error is None:
                stream.error = TransportError(
                    "send", sent=False,
                    detail=f"the server sent GOAWAY ({_ERROR_NAMES.get(code, code)}, last stream {last_stream_id}):"
                           " this request was not processed")
                _wake(stream)
        self.wake_slots(all_of_them=True)

    def fail(self, error: TransportError) -> None:
        """The connection is gone (or its session failed): every stream not whole fails."""
        self.draining = True
        if not self.settled.done():
            self.settled.set_result(None)
        for stream in self.streams.values():
            if not stream.ended and stream.error is None:
                stream.error = TransportError("body" if stream.head_done else error.stage, sent=error.sent,
                                              detail="body cut short" if stream.head_done else error.detail)
            _wake(stream)
        self.wake_slots(all_of_them=True)

    def wake_slots(self, all_of_them: bool = False) -> None:
        while self.slot_waiters:
            waiter = self.slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not all_of_them:
                    return

    # -- keepalive ------------------------------------------------------------------------------
    def keep_alive(self, interval: float, timeout: float) -> None:
        """PING after ``interval`` s without a byte from the server; no ACK within ``timeout``: dead."""
        self._ping = (interval, timeout)
        self._keepalive = self.loop.call_later(interval, self._idle_check)

    def _idle_check(self) -> None:
        interval, timeout = self._ping
        idle = self.loop.time() - self.heard
        if self.lost:
            return
        if idle < interval:
            self._keepalive = self.loop.call_later(interval - idle, self._idle_check)
            return
        self.engine.ping()
        self.write_now()
        self._keepalive = self.loop.call_later(timeout, self._no_ack)

    def _ping_acked(self) -> None:
        if self._keepalive is not None and not self.lost:
            self._keepalive.cancel()
            self._keepalive = self.loop.call_later(self._ping[0], self._idle_check)

    def _no_ack(self) -> None:
        if self.lost:
            return
        interval, timeout = self._ping
        self.fail(TransportError("response", sent=True, detail=f"no answer to a keepalive PING within {timeout:g} s "
                                 f"(sent after {interval:g} s without a byte from the server): connection dead"))
        self.close()

    # -- streams --------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write what the engine has to send, once per turn of the loop: the requests and window
        updates of every task that ran in this turn go out in one write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.write_now)

    def write_now(self) -> None:
        self._flush_scheduled = False
        if self.lost or self.transport is None:
            return
        data = self.engine.data_to_send()
        if data:
            self.transport.write(data)
        events = self.engine.take_events()
        if events:  # a stream the engine reset as it wrote (a response that broke HTTP's rules)
            self._own_resets = True
            try:
                self._dispatch(events)
            finally:
                self._own_resets = False

    def start(self, headers: list, has_body: bool) -> _Stream:
        stream = _Stream(self.engine.submit(headers, has_body))
        self.streams[stream.id] = stream
        return stream

    async def send_body(self, stream: _Stream, body: Any, timeout: float) -> None:
        """Queue a request body: fixed parts at once (the engine frames them as windows open),
        streamed chunks each after the one before is mostly out (at most 1 MiB queued)."""
        engine = self.engine
        if body.chunks is None:
            last = len(body.parts) - 1
            for index, part in enumerate(body.parts):
                engine.send_data(stream.id, part, index == last)
            if last < 0:
                engine.send_data(stream.id, b"", True)
            self.flush()
            return
        stream.sending = True
        try:
            chunks = body.iter_chunks()
            if hasattr(chunks, "__aiter__"):
                async for chunk in chunks:
                    if not await self._send_chunk(stream, chunk, timeout):
                        return
            else:
                for chunk in chunks:
                    if not await self._send_chunk(stream, chunk, timeout):
                        return
                    self.write_now()  # out before the next chunk is asked for: producing it may block this thread
            engine.send_data(stream.id, b"", True)
            self.flush()
        finally:
            stream.sending = False

    async def _send_chunk(self, stream: _Stream, chunk: Any, timeout: float) -> bool:
        if stream.error is not None or stream.closed or stream.ended:
            return False  # answered (or failed) already: the rest is not wanted
        self.engine.send_data(stream.id, chunk)
        self.flush()
        while self.engine.pending(stream.id) > _BODY_PENDING:
            if stream.error is not None:
                raise stream.error
            await self.wait(stream, timeout, "send")
        return True

    async def wait(self, stream: _Stream, timeout: float, stage: str) -> None:
        """Wait for the stream's next event, at most ``timeout`` s without progress."""
        waiter = stream.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, self._time_out, stream, waiter, stage, timeout, stream.progress)
        try:
            await waiter
        finally:
            timer.cancel()
            stream.waiter = None

    def _time_out(self, stream: _Stream, waiter: asyncio.Future, stage: str, timeout: float, seen: int) -> None:
        if waiter.done():
            return
        if stream.progress != seen:
            self.loop.call_later(timeout, self._time_out, stream, waiter, stage, timeout, stream.progress)
            return
        if stream.error is None:
            stream.error = TransportError(stage, sent=True, detail="timed out", timeout=True)
        waiter.set_result(None)

    def consumed(self, stream: _Stream, size: int) -> None:
        self.engine.consume(stream.id, size)
        self.flush()

    def cancel(self, stream: _Stream) -> None:
        """Reset one stream now (RST_STREAM CANCEL); its pending read fails, the others go on."""
        if not stream.closed and stream.id in self.streams:
            self.engine.reset(stream.id)
            self.flush()
        if stream.error is None and not stream.ended:
            stream.error = TransportError("body", sent=True, detail="aborted")
        _wake(stream)

    def finish(self, stream: _Stream) -> None:
        """The caller is done with a stream: reset it if still open, give its slot back."""
        if self.streams.pop(stream.id, None) is None:
            return
        if not stream.closed and not self.lost:
            self.engine.reset(stream.id)
        self.engine.forget(stream.id)
        self.active -= 1
        self.wake_slots()
        if not self.lost:
            self.flush()
        if self.draining and not self.streams:
            self.close()

    def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self.transport is not None and not self.lost:
            self.engine.terminate()
            self.write_now()  # the GOAWAY, before the socket closes
            self.transport.close()
        self.lost = True


def _wake(stream: _Stream) -> None:
    waiter = stream.waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class AsyncHTTP2Response:
    """An answer being read off one HTTP/2 stream (see :mod:`quill.transports`)."""

    __slots__ = ("status", "headers", "_conn", "_stream", "_timeout")

    def __init__(self, conn: _Connection, stream: _Stream, timeout: float):
        self._conn, self._stream, self._timeout = conn, stream, timeout
        self.status = stream.status
        self.headers = stream.headers

    async def _body_ready(self) -> bool:
        stream = self._stream
        while not stream.chunks:
            if stream.ended:
                return False
            if stream.error is not None:
                raise stream.error
            await self._conn.wait(stream, self._timeout, "body")
        return True

    async def read(self) -> bytes:
        if not await self._body_ready():
            return b""
        chunk = self._stream.chunks.popleft()
        self._conn.consumed(self._stream, len(chunk))
        return chunk

    async def read_into(self, window: Any) -> int:
        """Fill ``window`` with the next body bytes; fewer than ``len(window)`` only at the end."""
        chunks = self._stream.chunks
        with memoryview(window) as view:
            view = view.cast("B")
            filled = 0
            while filled < len(view) and await self._body_ready():
                taken = 0
                while chunks and filled < len(view):
                    chunk = chunks[0]
                    take = min(len(view) - filled, len(chunk))
                    view[filled:filled + take] = chunk if take == len(chunk) else memoryview(chunk)[:take]
                    if take == len(chunk):
                        chunks.popleft()
                    else:
                        chunks[0] = memoryview(chunk)[take:]
                    filled += take
                    taken += take
                self._conn.consumed(self._stream, taken)
            return filled

    read_all = AsyncHTTP11Response.read_all  # the same loop over read(), with the same limits

    def release(self, reusable: bool) -> None:
        self._conn.finish(self._stream)

    def abort(self) -> None:
        """Reset this stream now, from any thread: its pending read fails, other streams go on."""
        on_loop(self._conn.loop, self._conn.cancel, self._stream)


class AsyncHTTP2Transport:
    """Asyncio HTTP/2 over multiplexed connections (one unless ``http2_connections``) per event loop."""

    def __init__(self, core: Any):
        self._h2 = load_engine()
        self._core = core
        self._endpoint = core.endpoint
        self._heads: dict = {}
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: list[_Connection] = []
        self._slot_waiters: collections.deque = collections.deque()
        self._connect_lock: asyncio.Lock | None = None
        self._fallback: AsyncHTTP11Transport | None = None
        self._ssl = self._ssl_context() if self._endpoint.scheme == "https" else None
        self._lock = threading.Lock()

    def _ssl_context(self) -> ssl.SSLContext:
        context = AsyncHTTP11Transport._ssl_context(self)  # type: ignore[arg-type]  # the same checks
        context.set_alpn_protocols(["h2", "http/1.1"])
        return context

    @property
    def _config(self) -> dict:
        return self._core.config

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            with self._lock:
                self._loop, self._conns, self._connect_lock = loop, [], asyncio.Lock()
                self._slot_waiters = collections.deque()
        return loop

    async def aclose(self) -> None:
        self._closed = True
        for conn in self._conns:
            conn.close()
        self._conns = []
        if self._fallback is not None:
            await self._fallback.aclose()

    async def _connection(self, timeout: float) -> _Connection | None:
        """A connection with a free stream: an open one, else a new one while there are fewer than
        ``http2_connections``; None when every one allowed is at its server's limit."""
        async with self._connect_lock:
            conns = self._conns = [conn for conn in self._conns if conn.usable]
            for conn in conns:
                if conn.active < conn.limit():
                    return conn
            if len(conns) >= self._config["http2_connections"]:
                return None
            conn = await self._connect(timeout)
            conns.append(conn)
            return conn

    async def _connect(self, timeout: float) -> _Connection:
        conn = _Connection(asyncio.get_running_loop(), self._h2, self._slot_waiters)
        transport = await connect(conn, self._endpoint, self._ssl, self._config["verify"], timeout)
        if self._ssl is not None:
            chosen = transport.get_extra_info("ssl_object").selected_alpn_protocol()
            if chosen != "h2":
                conn.lost = True
                transport.close()
                self._fallback = AsyncHTTP11Transport(self._core)
                raise _FallBack()
        if self._config["http2_keepalive_ms"] is not None:
            conn.keep_alive(self._config["http2_keepalive_ms"] / 1000, self._config["http2_keepalive_timeout_ms"] / 1000)
        if self._conns:  # another is at its limit: learn this one's before streams land on it
            try:
                await asyncio.wait_for(asyncio.shield(conn.settled), timeout)
            except asyncio.TimeoutError:
                conn.close()
                raise TransportError("connect", sent=False, timeout=True, detail="no HTTP/2 SETTINGS from the "
                                     f"server within {timeout:g} s of connecting") from None
            if not conn.usable:
                raise TransportError("connect", sent=False, detail="the connection ended before the server's SETTINGS")
        return conn

    async def _slot(self, request: Any) -> _Connection:
        """A connection with a free stream for ``request``: waits while all are in use."""
        loop = self._bind()
        deadline = loop.time() + request.timeout
        while True:
            conn = await self._connection(max(deadline - loop.time(), 0.001))
            if conn is not None:
                conn.active += 1
                return conn
            remaining = deadline - loop.time()
            waiter = loop.create_future()
            self._slot_waiters.append(waiter)
            timer = loop.call_later(max(remaining, 0), lambda: waiter.done() or waiter.set_result(None))
            try:
                await waiter
            finally:
                timer.cancel()
            if loop.time() >= deadline:
                count = len(self._conns)
                limits = ", ".join(str(conn.limit()) for conn in self._conns)
                raise QuillTimeoutError(
                    f"{request.call.describe()}: no free HTTP/2 stream within {request.timeout:g} s (the server "
                    f"allows {limits} at a time on {'one connection' if count == 1 else f'each of {count} connections'}"
                    f"; http2_connections={self._config['http2_connections']})")

    async def open(self, request: Any) -> Any:
        if self._closed:
            raise QuillConnectionError(f"{request.call.describe()}: the client is closed")
        if self._fallback is None:
            try:
                return await self._open(request)
            except _FallBack:
                pass
        return await self._fallback.open(request)

    async def _open(self, request: Any) -> AsyncHTTP2Response:
        conn = await self._slot(request)
        try:
            stream = conn.start(request_headers(self._heads, self._endpoint, request), request.body is not None)
        except BaseException:
            conn.active -= 1
            conn.wake_slots()
            raise
        try:
            if request.body is not None:
                await conn.send_body(stream, request.body, request.timeout)
            else:
                conn.flush()
            while not stream.head_done:
                if stream.error is not None:
                    raise stream.error
                await conn.wait(stream, request.timeout, "response")
        except BaseException:
            conn.finish(stream)
            raise
        return AsyncHTTP2Response(conn, stream, request.timeout)


class _FallBack(Exception):
    """The TLS server chose HTTP/1.1 (ALPN): the transport speaks that from now on."""
