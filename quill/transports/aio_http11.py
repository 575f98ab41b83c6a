"""Asyncio HTTP/1.1: a small keep-alive pool of asyncio connections, responses parsed by httptools
(uvicorn's C parser). TCP, TLS and Unix sockets; failures leave as
:class:`~quill.protocol.retries.TransportError`. Same interface as :mod:`quill.transports.http11`,
with ``open``, ``read``, ``read_all`` and ``aclose`` as coroutines.

Reads are flow-controlled (the socket is paused while more than 4 MiB wait unread), every wait is
bounded by the call's timeout, and ``abort()`` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import select
import ssl
import threading
from typing import Any

import httptools

from ..errors import LimitExceededError, QuillConnectionError, QuillTimeoutError
from ..protocol.numbers import is_decimal
from ..protocol.requests import Request, buffer_size
from ..protocol.retries import TransportError
from .aio_connect import connect, on_loop
from .head import request_head

__all__ = ["AsyncHTTP11Transport", "AsyncHTTP11Response"]

_PAUSE_AT = 4 << 20
_RESUME_AT = 1 << 20
_SMALL_BODY = 16 * 1024
_SALVAGE_BYTES = 64 * 1024  # an early answer read after a failed write: an error body, small
_READ_SIZE = 256 * 1024  # larger reads make httptools allocate (and fault in) larger body pieces
_AFTER_SINK_READ = 8 * 1024  # after a filled sink: the next frame's header, little payload behind it


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: writes requests, parses answers into a head and body chunks.

    A buffered protocol: the socket is read into one reused buffer of :data:`_READ_SIZE` bytes
    and parsed at once (httptools copies only the body bytes out of it). Once the head of a
    Content-Length answer is parsed, the rest of its body needs no parsing, only counting: it is
    queued by the connection itself, or read from the socket straight into a reader's buffer
    (:meth:`AsyncHTTP11Response.read_into`), one copy instead of three.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._read_buffer = memoryview(bytearray(_READ_SIZE))
        self.transport: Any = None
        self.parser = None
        self.lost = False
        self.reused = False  # a kept-alive connection from the pool (set at checkout)
        self._waiter: asyncio.Future | None = None
        self._drain: asyncio.Future | None = None
        self._paused_writing = False
        self._paused_reading = False
        self.begin()

    # -- one exchange at a time -----------------------------------------------------------
    def begin(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self._interim = False  # inside an interim (1xx) answer
        self.complete = False
        self.any_byte = False
        self.keep_alive = False
        self.sent_all = False  # the whole request went to the transport (set by the sender)
        self.error: TransportError | None = None
        self.chunks: collections.deque = collections.deque()
        self.buffered = 0
        self.body_seen = 0  # body bytes httptools handed out
        self.body_left: int | None = None  # a Content-Length body's bytes still to come, once counted here
        self.sink: memoryview | None = None  # where counted body bytes go straight from the socket
        self.sink_filled = 0
        self._into_sink = False  # the last get_buffer() returned the sink
        self._after_sink = False  # a sink was just filled: the next read is a small one
        self.progress = 0  # sink reads so far: a wait that saw bytes arrive is not timed out

    @property
    def reusable(self) -> bool:
        """Whether the next request may follow on this connection: the answer ended well, the
        server keeps the connection, and the whole request went out (after an early answer the
        server may still be reading the body, and would take the next request for its rest)."""
        return self.complete and self.keep_alive and self.sent_all and not self.lost

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        sink, left = self.sink, self.body_left
        self._into_sink = bool(sink is not None and left and self.sink_filled < len(sink))
        if self._into_sink:
            return sink[self.sink_filled:self.sink_filled + min(len(sink) - self.sink_filled, left)]
        if self._after_sink:
            self._after_sink = False
            return self._read_buffer[:_AFTER_SINK_READ]
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._into_sink:  # the reader is woken once its buffer is full (or the body ended)
            self.any_byte = True
            self.sink_filled += nbytes
            self.progress += 1
            self.body_left -= nbytes
            if not self.body_left:
                self.complete = True
            if self.complete or self.sink_filled == len(self.sink):
                self._after_sink = True
                self._wake()
            return
        self.data_received(self._read_buffer[:nbytes])

    def _counted(self, size: int) -> None:
        """``size`` bytes of a counted body arrived."""
        self.body_left -= size
        if not self.body_left:
            self.complete = True
        self._wake()

    def data_received(self, data: Any) -> None:
        self.any_byte = True
        if self.complete:  # bytes after the answer (a lying Content-Length): never reuse this connection
            self.keep_alive = False
            return
        if self.body_left is not None:
            take = min(len(data), self.body_left)
            if take < len(data):  # bytes after the answer: never reuse this connection
                self.keep_alive = False
            self.chunks.append(bytes(data[:take]))
            self.buffered += take
            self._counted(take)
        else:
            self._parse(data)
        if self.buffered > _PAUSE_AT and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()

    def _parse(self, data: Any) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(TransportError("response", sent=True, detail="unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            if self.complete:  # the answer was whole; what followed it is garbage
                self.keep_alive = False
                return
            self._fail(TransportError("body" if self.head_done else "response", sent=True,
                                      detail=f"malformed HTTP response: {exc}"))
            return
        declared = self.headers.get("content-length", "")
        if self.head_done and not self.complete and is_decimal(declared) and "transfer-encoding" not in self.headers:
            self.body_left = int(declared) - self.body_seen  # the rest is counted here, not parsed

    def eof_received(self) -> bool:
        if self.head_done and not self.complete and "content-length" not in self.headers \
                and "chunked" not in self.headers.get("transfer-encoding", "").lower():
            self.complete = True  # a body delimited by the end of the connection
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)) and not self.head_done:
            self._salvage()
        self.lost = True
        if not self.complete:
            if self.head_done:
                self._fail(TransportError("body", sent=True, detail="body cut short"))
            else:
                # The request was written (a pooled connection is checked before that): a close or a
                # reset now, kept-alive connection or not, may come after the server acted on it.
                self._fail(TransportError("response", sent=True, detail=str(exc or "connection closed"),
                                          reused=self.reused))
        self._wake()
        self._wake_drain()

    def _salvage(self) -> None:
        """A write failed: the server may have answered early (401, 413, a call of the wrong kind)
        and closed. asyncio stopped reading the socket, but the answer may wait in it (the sync
        transport reads it the same way); read what is there. Plain TCP and Unix sockets only."""
        transport = self.transport
        raw = transport.get_extra_info("socket") if transport is not None else None
        if raw is None or transport.get_extra_info("sslcontext") is not None:
            return
        try:
            sock = raw.dup()
        except OSError:
            return
        with sock:
            sock.setblocking(False)
            while not self.complete:
                try:
                    data = sock.recv(_SALVAGE_BYTES)
                except OSError:  # nothing more (BlockingIOError), or the reset itself
                    return
                if not data:
                    self.eof_received()
                    return
                self.data_received(data)

    def sending_stopped(self) -> bool:
        """Whether a request body must stop: the answer's head came (an early answer), or the
        connection is lost or closing (a failed write; what the server said is salvaged)."""
        return self.head_done or self.lost or self.transport.is_closing()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim (100 Continue, 103 Early Hints): the answer follows
            self.headers = {}
            self._interim = True
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()  # known from the head; kept if the body ends well
        self._wake()
        self._wake_drain()  # an early answer: the sender stops waiting to write the rest

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self.body_seen += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- waiting ----------------------------------------------------------------------------
    def _fail(self, error: TransportError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float, stage: str) -> None:
        """Wait for the next event (head, body bytes, end, loss), at most ``timeout`` s without a byte."""
        waiter = self._waiter = self.loop.create_future()
        self._timer = self.loop.call_later(timeout, self._time_out, waiter, stage, timeout, self.progress)
        try:
            await waiter
        finally:
            self._timer.cancel()
            self._waiter = None

    def _time_out(self, waiter: asyncio.Future, stage: str, timeout: float, seen: int) -> None:
        if waiter.done():
            return
        if self.progress != seen:  # bytes came into the reader's buffer meanwhile: wait on
            self._timer = self.loop.call_later(timeout, self._time_out, waiter, stage, timeout, self.progress)
            return
        self._fail(TransportError(stage, sent=True, detail="timed out", timeout=True))

    async def drain(self, timeout: float) -> None:
        """Wait until the transport takes more, the answer's head arrives, or the connection ends."""
        if self._paused_writing and not self.lost and not self.head_done:
            self._drain = self.loop.create_future()
            try:
                await asyncio.wait_for(self._drain, timeout)
            except asyncio.TimeoutError:
                raise TransportError("send", sent=True, detail="timed out", timeout=True) from None

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self._taken(len(chunk))
        return chunk

    def take_into(self, view: memoryview) -> int:
        """Copy queued body bytes into ``view`` (a part of the first chunk stays queued)."""
        filled = 0
        while self.chunks and filled < len(view):
            chunk = self.chunks[0]
            take = min(len(view) - filled, len(chunk))
            view[filled:filled + take] = chunk if take == len(chunk) else memoryview(chunk)[:take]
            if take == len(chunk):
                self.chunks.popleft()
            else:
                self.chunks[0] = memoryview(chunk)[take:]
            filled += take
        self._taken(filled)
        return filled

    def _taken(self, size: int) -> None:
        self.buffered -= size
        if self._paused_reading and self.buffered < _RESUME_AT and not self.lost:
            self._paused_reading = False
            self.transport.resume_reading()

    def idle_and_open(self) -> bool:
        """Whether a pooled connection can carry a request: not closed, and nothing readable on its
        socket (on an idle keep-alive connection that is the server's close, already in the kernel
        but not yet seen by the loop; the same check urllib3 makes at checkout)."""
        if self.lost or self.transport.is_closing():
            return False
        sock = self.transport.get_extra_info("socket")
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        """Close now (abort: no graceful flush); safe on a closed loop."""
        transport = self.transport
        if transport is None or self.lost and transport.is_closing():
            return
        try:
            transport.abort()
        except RuntimeError:
            # The loop is closed, and asyncio has no way to close a transport after that: close its
            # socket here and detach it, so the transport's finalizer neither leaks nor warns.
            sock = getattr(transport, "_sock", None)
            if sock is not None:
                sock.close()
                transport._sock = None
        self.lost = True


class AsyncHTTP11Response:
    """An answer being read off one pooled asyncio connection (see :mod:`quill.transports`)."""

    __slots__ = ("status", "headers", "_conn", "_pool", "_timeout", "_open")

    def __init__(self, conn: _Connection, pool: "AsyncHTTP11Transport", timeout: float):
        self._conn = conn
        self._pool = pool
        self._timeout = timeout
        self._open = True
        self.status = conn.status
        self.headers = conn.headers

    async def _body_ready(self) -> bool:
        """Wait until body bytes are queued (True) or the body has ended (False)."""
        conn = self._conn
        while not conn.chunks:
            if conn.error is not None and conn.error.stage != "response":
                raise conn.error
            if conn.complete:
                return False
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._timeout, "body")
        return True

    async def read(self) -> bytes:
        return self._conn.take() if await self._body_ready() else b""

    async def read_into(self, window: Any) -> int:
        """Fill ``window`` with the next body bytes; fewer than ``len(window)`` only at the end.
        Bytes of a counted body that are not queued yet go from the socket straight into it."""
        conn = self._conn
        with memoryview(window) as view:
            filled = 0
            while filled < len(view):
                if not conn.chunks and conn.body_left and conn.error is None:
                    filled += await self._receive_into(view[filled:])
                elif await self._body_ready():
                    filled += conn.take_into(view[filled:])
                else:
                    break
            return filled

    async def _receive_into(self, view: memoryview) -> int:
        conn = self._conn
        conn.sink, conn.sink_filled = view, 0
        try:
            while conn.sink_filled < len(view) and conn.body_left and conn.error is None:
                await conn.wait(self._timeout, "body")
            if conn.error is not None:
                raise conn.error
            return conn.sink_filled
        finally:
            conn.sink = None

    async def read_all(self, limit: int, what: str) -> bytes:
        declared = self.headers.get("content-length")
        if declared is not None and is_decimal(declared) and int(declared) > limit:
            raise LimitExceededError(f"{what}: response of {int(declared)} bytes exceeds max_response_bytes={limit}")
        pieces, size = [], 0
        while True:
            piece = await self.read()
            if not piece:
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
            size += len(piece)
            if size > limit:
                raise LimitExceededError(f"{what}: response exceeds max_response_bytes={limit}")
            pieces.append(piece)

    def release(self, reusable: bool) -> None:
        if self._open:
            self._open = False
            self._pool._release(self._conn, reusable and self._conn.reusable)

    def abort(self) -> None:
        """Close the connection now, from any thread: a pending read fails at once."""
        on_loop(self._conn.loop, self._conn.close)


class AsyncHTTP11Transport:
    """Asyncio HTTP/1.1 over a pool of at most ``max_connections`` connections per event loop."""

    def __init__(self, core: Any):
        self._endpoint = core.endpoint
        self._config = core.config
        self._heads: dict = {}
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[_Connection] = []
        self._slots: asyncio.Semaphore | None = None
        self._ssl = self._ssl_context() if self._endpoint.scheme == "https" else None
        self._lock = threading.Lock()

    def _ssl_context(self) -> ssl.SSLContext:
        config = self._config
        context = ssl.create_default_context(cafile=config["ca_file"])
        if not config["verify"]:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if config["client_cert"]:
            context.load_cert_chain(config["client_cert"], config["client_key"])
        context.set_alpn_protocols(["http/1.1"])
        return context

    def _bind(self) -> None:
        """Pools belong to one event loop: a client used from a new loop starts a new pool."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            with self._lock:
                self._loop = loop
                self._idle = []
                self._slots = asyncio.Semaphore(self._config["max_connections"])

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if reusable and not self._closed and conn.loop is self._loop:
            conn.begin()
            self._idle.append(conn)
        else:
            conn.close()
        if conn.loop is self._loop and self._slots is not None:
            self._slots.release()

    async def _connect(self, timeout: float) -> _Connection:
        conn = _Connection(asyncio.get_running_loop())
        await connect(conn, self._endpoint, self._ssl, self._config["verify"], timeout)
        return conn

    async def _checkout(self, request: Request) -> tuple[_Connection, bool]:
        where = request.call.describe()
        if self._closed:
            raise QuillConnectionError(f"{where}: the client is closed")
        self._bind()
        try:
            if self._slots.locked():  # every connection busy: wait, at most the call's timeout
                await asyncio.wait_for(self._slots.acquire(), request.timeout)
            else:
                await self._slots.acquire()
        except asyncio.TimeoutError:
            raise QuillTimeoutError(
                f"{where}: no free connection within {request.timeout:g} s "
                f"(all {self._config['max_connections']} in use; raise max_connections?)"
            ) from None
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_and_open():
                conn.reused = True
                return conn, True
            conn.close()
        try:
            return await self._connect(request.timeout), False
        except BaseException:
            self._slots.release()
            raise

    async def open(self, request: Request) -> AsyncHTTP11Response:
        conn, reused = await self._checkout(request)
        try:
            await self._send(conn, request, reused)
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(request.timeout, "response")
        except BaseException:
            self._release(conn, False)
            raise
        return AsyncHTTP11Response(conn, self, request.timeout)

    async def _send(self, conn: _Connection, request: Request, reused: bool) -> None:
        if conn.lost:
            raise TransportError("send", sent=False, detail="connection closed", reused=reused)
        head = request_head(self._heads, request)
        body = request.body
        if body is None or body.chunks is None and body.length <= _SMALL_BODY and len(body.parts) == 1:
            conn.transport.write(head if body is None else head + body.parts[0])
            conn.sent_all = True
        else:
            conn.transport.write(head)
            conn.sent_all = await self._send_body(conn, body, request.timeout)
        await conn.drain(request.timeout)

    async def _send_body(self, conn: _Connection, body: Any, timeout: float) -> bool:
        """Write the body after the head; False when it stopped early: the server answered (or
        left) before the end, and the connection must not carry another request."""
        if body.chunks is None:
            for part in body.parts:
                if conn.sending_stopped():
                    return False  # the server answered early (or left): stop sending
                conn.transport.write(part)
                await conn.drain(timeout)
            return True
        chunks = body.iter_chunks()
        if hasattr(chunks, "__aiter__"):
            async for chunk in chunks:
                if not await self._write_chunk(conn, chunk, timeout):
                    return False
        else:
            for chunk in chunks:
                if not await self._write_chunk(conn, chunk, timeout):
                    return False
        if conn.lost or conn.transport.is_closing():
            return False
        conn.transport.write(b"0\r\n\r\n")  # every chunk went out: end the body, answered or not
        return True

    @staticmethod
    async def _write_chunk(conn: _Connection, chunk: Any, timeout: float) -> bool:
        if conn.sending_stopped():
            return False  # the server answered early (or left): stop sending
        size = buffer_size(chunk)
        if size:
            conn.transport.writelines([b"%x\r\n" % size, chunk, b"\r\n"])
            await conn.drain(timeout)
        return True
