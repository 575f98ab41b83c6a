"""Sync HTTP/1.1 on a urllib3 connection pool: keep-alive, TLS, Unix sockets, fork safety.

The request is written straight onto the pooled connection's socket (head and body parts in
one scatter-gather ``sendmsg``, no copy of a tensor's memory) and the answer is parsed by
``http.client``; urllib3 provides the pool, connecting, TLS and the dropped-connection check at
checkout. Failures leave as :class:`~quill.protocol.retries.TransportError`.

>>> from quill.protocol.calls import ClientCore
>>> transport = HTTP11Transport(ClientCore(dict(base_url="http://127.0.0.1:8080")))
>>> transport.close()
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import warnings
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection
from urllib3.exceptions import ClosedPoolError, EmptyPoolError, InsecureRequestWarning, NewConnectionError

from ..errors import LimitExceededError, QuillConnectionError, QuillTimeoutError
from ..protocol.requests import Request, buffer_size
from ..protocol.retries import TransportError
from .head import request_head

__all__ = ["HTTP11Transport", "HTTP11Response", "STREAM_READ_SIZE"]

STREAM_READ_SIZE = 256 * 1024  # larger reads allocate (and fault in) fresh memory per read
#: The read after a payload was read in place: large payloads tend to follow one another, and
#: a small read takes the next frame's header without copying much of the payload behind it.
AFTER_WINDOW_READ_SIZE = 8 * 1024
_SENDMSG_BATCH = 512  # buffers per sendmsg() call (IOV_MAX is 1024 on Linux)
_SMALL_BODY = 16 * 1024  # below this, head and body go out joined in one send


class UnixHTTPConnection(HTTPConnection):
    """A urllib3 connection to a Unix domain socket (``uds`` path) instead of TCP."""

    def __init__(self, *args: Any, uds: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.uds = uds

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if isinstance(self.timeout, (int, float)) else None)
        try:
            sock.connect(self.uds)
        except OSError as exc:
            sock.close()
            raise NewConnectionError(self, f"cannot connect to Unix socket {self.uds!r}: {exc}") from exc
        return sock


class UnixConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = UnixHTTPConnection


def send_parts(sock: socket.socket, parts: list) -> None:
    """Write every buffer in ``parts`` without joining them (scatter/gather I/O)."""
    sendmsg = getattr(sock, "sendmsg", None)
    if sendmsg is None or isinstance(sock, ssl.SSLSocket):
        for part in parts:
            sock.sendall(part)
        return
    start = 0
    while start < len(parts):
        batch = parts[start:start + _SENDMSG_BATCH]
        sent = sendmsg(batch)
        for part in batch:
            size = buffer_size(part)
            if sent >= size:
                sent -= size
                start += 1
                continue
            parts[start] = memoryview(part).cast("B")[sent:]  # partial write: resume from the unsent tail
            break


class _InterimSkippingResponse(http.client.HTTPResponse):
    """http.client skips a 100 Continue before the answer; this skips every interim (1xx) answer,
    103 Early Hints too, which http.client would take for the answer, leaving the real one on the
    connection to be read as the next request's."""

    def _read_status(self) -> tuple[str, int, str]:
        version, status, reason = super()._read_status()
        if 100 < status < 200 and status != 101:
            return version, http.client.CONTINUE, reason  # begin() skips its headers and reads on
        return version, status, reason


class HTTP11Response:
    """An answer being read off one pooled connection (see :mod:`quill.transports`)."""

    __slots__ = ("status", "headers", "_resp", "_conn", "_pool", "_open", "_after_window")

    def __init__(self, resp: http.client.HTTPResponse, conn: Any, pool: Any):
        self._resp = resp
        self._conn = conn
        self._pool = pool
        self._open = True
        self._after_window = False
        self.status = resp.status
        headers: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.headers = headers

    def read(self, size: int = STREAM_READ_SIZE) -> bytes:
        if self._after_window:
            size, self._after_window = min(size, AFTER_WINDOW_READ_SIZE), False
        try:
            data = self._resp.read1(size)
            if not data and self._resp.length:  # Content-Length promised more than arrived
                raise http.client.IncompleteRead(b"", self._resp.length)
            return data
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _body_error(exc) from exc

    def read_into(self, window: Any) -> int:
        """Fill ``window`` (a writable buffer) with the next body bytes, straight from the socket;
        returns how many arrived: fewer than ``len(window)`` only when the body ended."""
        resp = self._resp
        try:
            with memoryview(window) as view:
                filled = resp.readinto(view)
            if filled < len(window) and resp.length:  # Content-Length promised more than arrived
                raise http.client.IncompleteRead(b"", resp.length)
            self._after_window = True
            return filled
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _body_error(exc) from exc

    def read_all(self, limit: int, what: str) -> bytes:
        resp = self._resp
        if resp.length is not None and not resp.chunked:
            if resp.length > limit:
                raise LimitExceededError(f"{what}: response of {resp.length} bytes exceeds max_response_bytes={limit}")
            try:
                return resp.read()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise _body_error(exc) from exc
        pieces, size = [], 0
        while True:
            piece = self.read()
            if not piece:
                return b"".join(pieces)
            size += len(piece)
            if size > limit:
                raise LimitExceededError(f"{what}: response exceeds max_response_bytes={limit}")
            pieces.append(piece)

    def release(self, reusable: bool) -> None:
        if not self._open:
            return
        self._open = False
        if not (reusable and not self._resp.will_close):
            self._resp.close()
            self._conn.close()
        self._pool._put_conn(self._conn)

    def abort(self) -> None:
        """Shut the socket down now (safe from another thread: a blocked read returns at once)."""
        sock = getattr(self._conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _body_error(exc: BaseException) -> TransportError:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return TransportError("body", sent=True, detail="timed out", timeout=True)
    if isinstance(exc, http.client.IncompleteRead):
        return TransportError("body", sent=True, detail="body cut short", expected=exc.expected)
    return TransportError("body", sent=True, detail=str(exc) or type(exc).__name__)


class HTTP11Transport:
    """Sync HTTP/1.1 over one urllib3 pool for a client's endpoint (TCP, TLS or a Unix socket)."""

    def __init__(self, core: Any):
        self._endpoint = core.endpoint
        self._config = core.config
        self._heads: dict = {}
        self._closed = False
        self._pool = self._new_pool()
        self._pid = os.getpid()

    def _new_pool(self) -> urllib3.HTTPConnectionPool:
        endpoint, config = self._endpoint, self._config
        common = {"maxsize": config["max_connections"], "block": True, "retries": False}
        if endpoint.uds is not None:
            return UnixConnectionPool("localhost", None, uds=endpoint.uds, **common)
        if endpoint.scheme == "http":
            return urllib3.HTTPConnectionPool(endpoint.host, endpoint.port, **common)
        verify = config["verify"]
        return urllib3.HTTPSConnectionPool(
            endpoint.host,
            endpoint.port,
            cert_reqs="CERT_REQUIRED" if verify else "CERT_NONE",
            assert_hostname=None if verify else False,
            ca_certs=config["ca_file"],
            cert_file=config["client_cert"],
            key_file=config["client_key"],
            **common,
        )

    @property
    def pool(self) -> urllib3.HTTPConnectionPool:
        """This process's pool: a forked child never writes to its parent's sockets (it gets a
        fresh pool; the inherited one is dropped without closing, which could disturb the parent's TLS)."""
        pid = os.getpid()
        if self._pid != pid:
            self._pool = self._new_pool()
            self._pid = pid
        return self._pool

    def close(self) -> None:
        self._closed = True
        if self._pid == os.getpid():
            self._pool.close()

    def _checkout(self, pool: Any, request: Request) -> Any:
        where = request.call.describe()
        if self._closed:
            raise QuillConnectionError(f"{where}: the client is closed")
        try:
            return pool._get_conn(timeout=request.timeout)
        except EmptyPoolError:
            raise QuillTimeoutError(
                f"{where}: no free connection within {request.timeout:g} s "
                f"(all {self._config['max_connections']} in use; raise max_connections?)"
            ) from None
        except ClosedPoolError:
            raise QuillConnectionError(f"{where}: the client is closed") from None

    def _connect(self, conn: Any, timeout: float) -> None:
        conn.timeout = timeout
        try:
            conn.connect()
        except BaseException as exc:
            tls = isinstance(exc, ssl.SSLError) or isinstance(getattr(exc, "__context__", None), ssl.SSLError)
            if tls:
                raise TransportError("tls", sent=False, detail=str(exc)) from exc
            if isinstance(exc, (socket.timeout, TimeoutError)) and not isinstance(exc, NewConnectionError):
                raise TransportError("connect", sent=False, detail="timed out", timeout=True) from exc
            if isinstance(exc, (OSError, urllib3.exceptions.HTTPError)):
                reason = exc.__context__ if isinstance(exc, NewConnectionError) and exc.__context__ else exc
                raise TransportError("connect", sent=False, detail=str(reason)) from exc
            raise
        if self._endpoint.scheme == "https" and not self._config["verify"]:
            warnings.warn(
                f"Unverified HTTPS request is being made to host '{self._endpoint.host}' (verify=False). "
                "Adding certificate verification is strongly advised.",
                InsecureRequestWarning,
                stacklevel=6,
            )

    def open(self, request: Request) -> HTTP11Response:
        pool = self.pool
        conn = self._checkout(pool, request)
        reused = conn.sock is not None
        try:
            if reused:
                conn.sock.settimeout(request.timeout)
            else:
                self._connect(conn, request.timeout)
                conn.sock.settimeout(request.timeout)
            resp = self._exchange(conn.sock, request, reused)
        except BaseException:
            conn.close()
            pool._put_conn(conn)
            raise
        return HTTP11Response(resp, conn, pool)

    def _exchange(self, sock: socket.socket, request: Request, reused: bool) -> http.client.HTTPResponse:
        head = request_head(self._heads, request)
        method = request.method
        sent = False
        try:
            try:
                sent = self._send(sock, head, request)
            except (BrokenPipeError, ConnectionResetError):
                # The server may have answered early (401, 413...) and closed: read that answer. The
                # request did not go out whole, so the connection never carries another one.
                resp = _salvage_response(sock, method)
                if resp is None:
                    raise
                resp.will_close = True
                return resp
            resp = _InterimSkippingResponse(sock, method=method)
            resp.begin()
            return resp
        except (socket.timeout, TimeoutError) as exc:
            raise TransportError("response", sent=True, detail="timed out", timeout=True, reused=reused) from exc
        except http.client.RemoteDisconnected as exc:
            # A clean close before any answer: the server may have read (and acted on) the request.
            raise TransportError("response", sent=True, detail=str(exc) or "closed", reused=reused) from exc
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
            # A reset is no proof that the request went unread: the server, or a proxy before it, may
            # have acted on it first. Only a first write the kernel refused leaves nothing delivered
            # (a pooled connection the server had closed is dropped at checkout, before any write).
            raise TransportError("send" if not sent else "response", sent=not _nothing_sent(exc),
                                 detail=str(exc) or type(exc).__name__, reused=reused) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError("response", sent=True, detail=str(exc) or type(exc).__name__, reused=reused) from exc

    @staticmethod
    def _send(sock: socket.socket, head: bytes, request: Request) -> bool:
        """Write the request; returns True (the bytes are on their way). A failure of the very first
        write raises with nothing of the request accepted by the kernel."""
        body = request.body
        if body is None:
            first, rest = head, None
        elif body.chunks is None and body.length <= _SMALL_BODY and len(body.parts) == 1:
            first, rest = head + body.parts[0], None
        else:
            first, rest = head, body
        try:
            accepted = sock.send(first)
        except (BrokenPipeError, ConnectionResetError) as exc:
            exc.quill_nothing_sent = True  # type: ignore[attr-defined]
            raise
        if accepted < len(first):
            sock.sendall(memoryview(first)[accepted:])
        if rest is None:
            return True
        if rest.chunks is None:
            send_parts(sock, list(rest.parts))
            return True
        chunks = rest.iter_chunks()
        if hasattr(chunks, "__aiter__"):
            raise TypeError("the sync QuillClient cannot send an async iterable: use AsyncQuillClient")
        for chunk in chunks:
            size = buffer_size(chunk)
            if size:
                send_parts(sock, [b"%x\r\n" % size, chunk, b"\r\n"])
        sock.sendall(b"0\r\n\r\n")
        return True


def _nothing_sent(exc: BaseException) -> bool:
    return bool(getattr(exc, "quill_nothing_sent", False))


def _salvage_response(sock: socket.socket, method: str) -> http.client.HTTPResponse | None:
    resp = _InterimSkippingResponse(sock, method=method)
    try:
        resp.begin()
    except (OSError, http.client.HTTPException):
        resp.close()
        return None
    return resp
