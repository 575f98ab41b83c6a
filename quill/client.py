"""QuillClient: Quill RPCs over HTTP/1.1 on a urllib3 connection pool (PROTOCOL.md section 6).

One client holds one urllib3 pool of keep-alive connections and is safe to share between
threads, to pickle, and to use on both sides of a ``fork()``. Unary calls send bytes or JSON;
streaming calls yield messages, token batches or tensors as their frames arrive.

>>> client = QuillClient("http://127.0.0.1:8080", timeout_ms=5000)   # doctest: +SKIP
>>> client.set_bearer_token("secret")                                  # doctest: +SKIP
>>> client.call("echo.v1.EchoService", "Echo", b"hi")                  # doctest: +SKIP
b'hi'
>>> for message in client.call_stream("demo.v1.Feed", "Watch", b""):   # doctest: +SKIP
...     print(message)
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import re
import socket
import ssl
import time
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    EmptyPoolError,
    NewConnectionError,
)

from .errors import (
    DecodeError,
    EncodeError,
    IncompleteStreamError,
    LimitExceededError,
    ProblemDetails,
    QuillConnectionError,
    QuillTimeoutError,
    RpcError,
    rpc_error_for_status,
)
from .frames import (
    MessageStreamDecoder,
    TensorReceiver,
    TokenStreamDecoder,
    encode_end_stream,
    encode_tensor_frames,
    stream_frame_header,
)
from .tensor import Tensor

try:  # Python 3.14+; older Pythons get it from urllib3's zstd extra (backports.zstd)
    from compression import zstd as _zstd
except ImportError:  # pragma: no cover - depends on the Python version
    try:
        from backports import zstd as _zstd
    except ImportError:
        _zstd = None

__all__ = ["QuillClient", "MessageStream", "TokenStream"]

PROTO = "application/proto"
JSON = "application/json"
PREFER = "prism=classic"
# What a request sends and accepts, by kind: (Content-Type, Accept).
_KINDS = {
    "proto": (PROTO, PROTO),
    "json": (JSON, JSON),  # call_json
    "json-request": (JSON, PROTO),  # a JSON request to a streaming or tensor method: frames come back
    "get": (None, JSON),  # GET /health
}
COMPRESSION_THRESHOLD = 1024
ZSTD_LEVEL = 3
HEALTH_TIMEOUT_MS = 2000
DEFAULT_MAX_CONNECTIONS = 10
DEFAULT_MAX_RESPONSE_BYTES = 1 << 30
DEFAULT_MAX_TENSOR_BYTES = 4 << 30
TENSOR_CHUNK_SIZE = 64 * 1024
ERROR_BODY_LIMIT = 64 * 1024
STREAM_READ_SIZE = 1 << 20
MAX_BACKOFF_S = 2.0
_SENDMSG_BATCH = 512  # buffers per sendmsg() call (IOV_MAX is 1024 on Linux)
_SMALL_BODY = 16 * 1024  # below this, head and body go out joined in one send

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_NAME_PART = re.compile(r"^[A-Za-z0-9_.\-]+$")
_FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "content-encoding", "connection"))
_STALE_CONNECTION_ERRORS = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


def _user_agent() -> str:
    from . import __version__

    return f"quill-python/{__version__} urllib3/{urllib3.__version__}"


def _check_header(name: str, value: str) -> tuple[str, str]:
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ValueError(f"invalid HTTP header name {name!r}")
    if not isinstance(value, str):
        raise TypeError(f"header {name!r} value must be a str, got {type(value).__name__}")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"header {name!r} value contains CR, LF or NUL: {value!r}")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header {name!r} value is not latin-1 encodable: {value!r}") from None
    if name.lower() in _FRAMING_HEADERS:
        raise ValueError(f"header {name!r} is set by the client itself and cannot be overridden")
    return name, value


def _serialize_headers(headers: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)


def _as_buffer(request: Any, what: str = "request") -> Any:
    """Accept any bytes-like object without copying (bytes, bytearray, memoryview, numpy)."""
    if isinstance(request, (bytes, bytearray)):
        return request
    try:
        view = memoryview(request)
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, got {type(request).__name__}") from None
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


def _encode_json(obj: Any) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"request is not JSON serializable: {exc}") from None


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _send_parts(sock: socket.socket, parts: list) -> None:
    """Write every buffer in ``parts`` to ``sock`` without joining them (scatter/gather I/O)."""
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
            size = len(part) if not isinstance(part, memoryview) else part.nbytes
            if sent >= size:
                sent -= size
                start += 1
                continue
            # Partial write: keep the unsent tail of this buffer and carry on from it.
            parts[start] = memoryview(part).cast("B")[sent:]
            break


class _Body:
    """A request body built once; retries send the very same buffers again (never a rebuilt copy).

    ``parts`` is a list of bytes-like objects (no copies of user memory) with known total
    ``length``. ``chunks`` instead is a zero-argument callable giving an iterator of buffers,
    sent with chunked transfer encoding; ``rewindable`` says whether calling it again gives the
    same stream (a user's iterator cannot be replayed once it has been started).
    """

    __slots__ = ("parts", "length", "chunks", "encoding", "rewindable", "started")

    def __init__(self, parts=None, length=0, chunks=None, encoding=None, rewindable=True):
        self.parts = parts
        self.length = length
        self.chunks = chunks
        self.encoding = encoding
        self.rewindable = rewindable
        self.started = False

    @property
    def replayable(self) -> bool:
        return self.rewindable or not self.started


def _compress(data) -> bytes:
    return _zstd.compress(data, level=ZSTD_LEVEL)


def _compressed_chunks(pieces: Iterable) -> Iterator[bytes]:
    """zstd-compress a stream of buffers into one frame, flushing a block after each piece."""
    compressor = _zstd.ZstdCompressor(level=ZSTD_LEVEL)
    for piece in pieces:
        out = compressor.compress(piece, mode=_zstd.ZstdCompressor.FLUSH_BLOCK)
        if out:
            yield out
    yield compressor.flush(mode=_zstd.ZstdCompressor.FLUSH_FRAME)


class _BodyReader:
    """Reads a response body piece by piece, decompressing zstd, never more than ``size`` per piece."""

    __slots__ = ("_resp", "_size", "_decompressor", "received")

    def __init__(self, resp: http.client.HTTPResponse, size: int = STREAM_READ_SIZE):
        self._resp = resp
        self._size = size
        encoding = (resp.getheader("content-encoding") or "").strip().lower()
        if encoding in ("", "identity"):
            self._decompressor = None
        elif encoding == "zstd" and _zstd is not None:
            self._decompressor = _zstd.ZstdDecompressor()
        else:
            raise DecodeError(f"unsupported response Content-Encoding {encoding!r}")
        self.received = 0

    def read(self) -> bytes:
        """The next piece of the body; b"" at its end. Raises IncompleteRead-derived errors on drops."""
        dec = self._decompressor
        while True:
            if dec is not None and not dec.eof and not dec.needs_input:
                out = dec.decompress(b"", max_length=self._size)
                if out:
                    return out
            raw = self._resp.read1(self._size)
            if not raw:
                if self._resp.length:  # Content-Length promised more than arrived
                    raise http.client.IncompleteRead(b"", self._resp.length)
                if dec is not None and not dec.eof and self.received:
                    raise DecodeError("zstd-compressed response body is truncated", offset=self.received)
                return b""
            self.received += len(raw)
            if dec is None:
                return raw
            if dec.eof:  # another zstd frame follows the first one
                raw = dec.unused_data + raw
                dec = self._decompressor = _zstd.ZstdDecompressor()
            try:
                out = dec.decompress(raw, max_length=self._size)
            except _zstd.ZstdError as exc:
                raise DecodeError(f"response body is not valid zstd: {exc}", offset=self.received) from None
            if out:
                return out


class _CallInfo:
    """What a call is (for error messages) and where it goes."""

    __slots__ = ("name", "path", "url")

    def __init__(self, name: str, path: bytes, url: str):
        self.name = name
        self.path = path
        self.url = url


class QuillClient:
    """A Quill RPC client: unary, JSON, streaming, token and tensor calls over one connection pool.

    ``timeout_ms`` bounds connecting and every wait for the server (per call overridable).
    ``retries`` connection failures (before the request reached the server) are retried with
    exponential backoff starting at ``backoff_ms``; ``status_retries`` opts in to retrying
    429/503 answers, waiting as ``Retry-After`` says. Retries resend the body already built.
    For ``https://``, certificates are verified unless ``verify=False``; ``ca_file`` adds a CA
    bundle, ``client_cert``/``client_key`` present a client certificate.

    >>> with QuillClient("http://127.0.0.1:8080", enable_compression=True) as client:  # doctest: +SKIP
    ...     client.set_api_key("key-123")
    ...     client.call_json("inference.v1.LLMService", "Generate", {"prompt": "Hello"})
    {'text': '...'}
    """

    def __init__(
        self,
        base_url: str,
        timeout_ms: int = 30000,
        enable_compression: bool = False,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        retries: int = 2,
        status_retries: int = 0,
        backoff_ms: int = 50,
        verify: bool = True,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
        tensor_chunk_size: int = TENSOR_CHUNK_SIZE,
        headers: Mapping[str, str] | None = None,
    ):
        self._config = {
            "base_url": base_url,
            "timeout_ms": timeout_ms,
            "enable_compression": enable_compression,
            "max_connections": max_connections,
            "retries": retries,
            "status_retries": status_retries,
            "backoff_ms": backoff_ms,
            "verify": verify,
            "ca_file": ca_file,
            "client_cert": client_cert,
            "client_key": client_key,
            "max_response_bytes": max_response_bytes,
            "max_tensor_bytes": max_tensor_bytes,
            "tensor_chunk_size": tensor_chunk_size,
        }
        self._setup(self._config, dict(headers or {}))

    # ------------------------------------------------------------------ setup, pickling, fork

    def _setup(self, config: dict, headers: Mapping[str, str]) -> None:
        parts = urlsplit(config["base_url"])
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL with a host, got {config['base_url']!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must not have a query or fragment: {config['base_url']!r}")
        if config["timeout_ms"] is None or config["timeout_ms"] <= 0:
            raise ValueError(f"timeout_ms must be positive, got {config['timeout_ms']!r}")
        if config["max_connections"] < 1:
            raise ValueError(f"max_connections must be at least 1, got {config['max_connections']!r}")
        if not 1 <= config["tensor_chunk_size"] <= 0xFFFFFFFF:
            raise ValueError(f"tensor_chunk_size must be 1..2**32-1, got {config['tensor_chunk_size']!r}")
        if config["enable_compression"] and _zstd is None:
            raise ImportError("enable_compression=True needs zstd support: pip install 'urllib3[zstd]'")
        self._config = config
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._base_url = f"{parts.scheme}://{parts.netloc}{self._prefix}"
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = 443 if parts.scheme == "https" else 80
        self._host_header = host if self._port == default_port else f"{host}:{self._port}"
        self._timeout_ms = config["timeout_ms"]
        self._compression = bool(config["enable_compression"])
        self._retries = max(0, int(config["retries"]))
        self._status_retries = max(0, int(config["status_retries"]))
        self._backoff_s = max(0, config["backoff_ms"]) / 1000.0
        self._max_response_bytes = config["max_response_bytes"]
        self._max_tensor_bytes = config["max_tensor_bytes"]
        self._chunk_size = config["tensor_chunk_size"]
        self._headers: dict[str, tuple[str, str]] = {}
        self._head_cache: dict[str, bytes] = {}
        self._paths: dict[tuple[str, str], _CallInfo] = {}
        self._closed = False
        for name, value in headers.items():
            self.set_header(name, value)
        self._pool = self._new_pool()
        self._pid = os.getpid()

    def _new_pool(self) -> urllib3.HTTPConnectionPool:
        common = {"maxsize": self._config["max_connections"], "block": True, "retries": False}
        if self._scheme == "http":
            return urllib3.HTTPConnectionPool(self._host, self._port, **common)
        verify = self._config["verify"]
        return urllib3.HTTPSConnectionPool(
            self._host,
            self._port,
            cert_reqs="CERT_REQUIRED" if verify else "CERT_NONE",
            assert_hostname=None if verify else False,
            ca_certs=self._config["ca_file"],
            cert_file=self._config["client_cert"],
            key_file=self._config["client_key"],
            **common,
        )

    def __getstate__(self) -> dict:
        return {"config": dict(self._config), "headers": self.get_headers()}

    def __setstate__(self, state: dict) -> None:
        self._setup(state["config"], state["headers"])

    def _live_pool(self) -> urllib3.HTTPConnectionPool:
        pid = os.getpid()
        if self._pid != pid:
            # A forked child must never write to the parent's sockets: start a fresh pool.
            # The inherited one is dropped without closing (closing could disturb the parent's TLS).
            self._pool = self._new_pool()
            self._pid = pid
        return self._pool

    def close(self) -> None:
        """Close every pooled connection; later calls raise :class:`QuillConnectionError`.

        >>> client.close()  # doctest: +SKIP
        """
        self._closed = True
        if self._pid == os.getpid():
            self._pool.close()

    def __enter__(self) -> "QuillClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"QuillClient({self._base_url!r}, timeout_ms={self._timeout_ms}, "
            f"enable_compression={self._compression})"
        )

    # ------------------------------------------------------------------ seed API: properties, headers

    @property
    def base_url(self) -> str:
        """The server URL calls go to (without a trailing slash)."""
        return self._base_url

    @property
    def timeout_ms(self) -> int:
        """The default timeout of a call in milliseconds."""
        return self._timeout_ms

    @property
    def compression_enabled(self) -> bool:
        """Whether request bodies of 1,024 bytes or more are sent zstd-compressed."""
        return self._compression

    def set_header(self, name: str, value: str) -> None:
        """Send ``name: value`` with every request (replacing a header of the same name).

        >>> client.set_header("X-Request-Source", "notebook")  # doctest: +SKIP
        """
        name, value = _check_header(name, value)
        headers = dict(self._headers)
        headers[name.lower()] = (name, value)
        self._headers = headers  # copy on write: readers in other threads never see a dict change size
        self._head_cache = {}

    def remove_header(self, name: str) -> None:
        """Stop sending header ``name`` (case-insensitive); absent names are ignored."""
        headers = dict(self._headers)
        headers.pop(name.lower(), None)
        self._headers = headers
        self._head_cache = {}

    def get_headers(self) -> dict[str, str]:
        """The headers set on this client, as {name: value}.

        >>> client.set_bearer_token("t"); client.get_headers()  # doctest: +SKIP
        {'Authorization': 'Bearer t'}
        """
        return dict(self._headers.values())

    def set_bearer_token(self, token: str) -> None:
        """Send ``Authorization: Bearer <token>`` with every request."""
        self.set_header("Authorization", f"Bearer {token}")

    def set_api_key(self, key: str, header_name: str | None = None) -> None:
        """Send the API key in ``header_name`` (default ``X-API-Key``) with every request."""
        self.set_header(header_name or "X-API-Key", key)

    # ------------------------------------------------------------------ request heads

    def _call_info(self, service: str, method: str) -> _CallInfo:
        key = (service, method)
        info = self._paths.get(key)
        if info is None:
            for what, part in (("service", service), ("method", method)):
                if not isinstance(part, str) or not _NAME_PART.match(part):
                    raise ValueError(f"invalid {what} name {part!r}: use letters, digits, '_', '.', '-'")
            path = f"{self._prefix}/{service}/{method}"
            info = _CallInfo(f"{service}/{method}", path.encode("ascii"), self._base_url + f"/{service}/{method}")
            if len(self._paths) < 4096:
                self._paths[key] = info
        return info

    def _fixed_head(self, kind: str) -> bytes:
        """Host, content types, Prefer, Accept-Encoding and the user headers, serialized once."""
        cache = self._head_cache  # taken first: a concurrent set_header() replaces the dict, never edits it
        cached = cache.get(kind)
        if cached is None:
            cached = _serialize_headers(self._merged_headers(kind, None))
            cache[kind] = cached
        return cached

    def _merged_headers(self, kind: str, extra: Mapping[str, str] | None) -> list[tuple[str, str]]:
        content_type, accept = _KINDS[kind]
        merged = {
            "host": ("Host", self._host_header),
            "user-agent": ("User-Agent", _user_agent()),
            "content-type": ("Content-Type", content_type) if content_type else None,
            "accept": ("Accept", accept),
            "prefer": ("Prefer", PREFER),
        }
        if self._compression:
            merged["accept-encoding"] = ("Accept-Encoding", "zstd")
        merged.update(self._headers)
        for name, value in (extra or {}).items():
            name, value = _check_header(name, value)
            merged[name.lower()] = (name, value)
        return [pair for pair in merged.values() if pair is not None]

    def _head(self, method: bytes, info: _CallInfo, kind: str, body: _Body | None, extra) -> bytes:
        fixed = self._fixed_head(kind) if not extra else _serialize_headers(self._merged_headers(kind, extra))
        if body is None:
            framing = b""
        elif body.chunks is not None:
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            framing = b"Content-Length: %d\r\n" % body.length
        if body is not None and body.encoding:
            framing += b"Content-Encoding: " + body.encoding.encode() + b"\r\n"
        return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method, info.path, fixed, framing)

    # ------------------------------------------------------------------ request bodies

    def _bytes_body(self, data) -> _Body:
        length = len(data) if not isinstance(data, memoryview) else data.nbytes
        if self._compression and length >= COMPRESSION_THRESHOLD:
            packed = _compress(data)
            return _Body([packed], len(packed), encoding="zstd")
        return _Body([data], length)

    def _parts_body(self, parts: list) -> _Body:
        """A body made of many buffers (tensor frames); compressed as a chunked stream when on."""
        length = sum(len(p) if not isinstance(p, memoryview) else p.nbytes for p in parts)
        if self._compression and length >= COMPRESSION_THRESHOLD:
            return _Body(chunks=lambda: _compressed_chunks(parts), encoding="zstd")
        return _Body(parts, length)

    def _request_body(self, request) -> tuple[_Body, str]:
        """(body, kind) for a streaming or tensor call: bytes-like -> proto body, Tensor -> tensor
        frames, dict or list -> JSON (the answer is frames either way)."""
        if isinstance(request, Tensor):
            return self._parts_body(list(encode_tensor_frames(request, chunk_size=self._chunk_size))), "proto"
        if isinstance(request, (dict, list)):
            return self._bytes_body(_encode_json(request)), "json-request"
        return self._bytes_body(_as_buffer(request)), "proto"

    # ------------------------------------------------------------------ transport

    def _timeout_s(self, timeout_ms) -> float:
        if timeout_ms is None:
            return self._timeout_ms / 1000.0
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, got {timeout_ms!r}")
        return timeout_ms / 1000.0

    def _checkout(self, pool, timeout: float, info: _CallInfo):
        if self._closed:
            raise QuillConnectionError(f"{info.name} at {info.url}: the client is closed")
        try:
            return pool._get_conn(timeout=timeout)
        except EmptyPoolError:
            raise QuillTimeoutError(
                f"{info.name} at {info.url}: no free connection within {timeout:g} s "
                f"(all {self._config['max_connections']} in use; raise max_connections?)"
            ) from None
        except ClosedPoolError:
            raise QuillConnectionError(f"{info.name} at {info.url}: the client is closed") from None

    @staticmethod
    def _release(pool, conn, resp, reusable: bool) -> None:
        """Return the connection to the pool: as is when reusable, else closed first (the socket's
        file object from the response is closed too, so the server sees the disconnect now)."""
        if not reusable:
            if resp is not None:
                resp.close()
            conn.close()
        pool._put_conn(conn)

    def _backoff(self, attempt: int) -> None:
        time.sleep(min(MAX_BACKOFF_S, self._backoff_s * (2 ** attempt)))

    def _send(self, sock, head: bytes, body: _Body | None) -> None:
        if body is None:
            sock.sendall(head)
        elif body.chunks is not None:
            sock.sendall(head)
            body.started = True
            for chunk in body.chunks():
                size = len(chunk) if not isinstance(chunk, memoryview) else chunk.nbytes
                if size:
                    _send_parts(sock, [b"%x\r\n" % size, chunk, b"\r\n"])
            sock.sendall(b"0\r\n\r\n")
        elif body.length <= _SMALL_BODY and len(body.parts) == 1:
            sock.sendall(head + body.parts[0])
        else:
            _send_parts(sock, [head, *body.parts])

    def _post(self, service: str, method: str, kind: str, body: _Body, timeout_ms, headers):
        """POST ``body`` to service/method: (call info, timeout in s, pool, conn, response)."""
        info = self._call_info(service, method)
        timeout = self._timeout_s(timeout_ms)
        return (info, timeout, *self._exchange(b"POST", info, kind, body, timeout, headers))

    def _exchange(
        self,
        method: bytes,
        info: _CallInfo,
        kind: str,
        body: _Body | None,
        timeout: float,
        extra_headers,
        status_retries: int | None = None,
    ):
        """Send one request and return (pool, conn, response) with the status line and headers read.

        Non-2xx answers raise the matching RpcError; transport failures raise QuillConnectionError
        / QuillTimeoutError. The caller owns the connection and must release it.
        """
        head = self._head(method, info, kind, body, extra_headers)
        status_retries = self._status_retries if status_retries is None else status_retries
        attempt = status_attempt = 0
        while True:
            pool = self._live_pool()
            conn = self._checkout(pool, timeout, info)
            reused = conn.sock is not None
            try:
                if reused:
                    conn.sock.settimeout(timeout)
                else:
                    conn.timeout = timeout
                    conn.connect()
                    conn.sock.settimeout(timeout)
            except Exception as exc:
                self._release(pool, conn, None, False)
                error = self._connect_error(exc, info, timeout)
                if attempt < self._retries and not isinstance(exc, ssl.SSLError) and body_replayable(body):
                    self._backoff(attempt)
                    attempt += 1
                    continue
                raise error from exc
            except BaseException:
                self._release(pool, conn, None, False)
                raise
            resp = None
            try:
                try:
                    self._send(conn.sock, head, body)
                except (BrokenPipeError, ConnectionResetError) as exc:
                    # The server may have answered early (401, 413...) and closed: read that answer.
                    resp = self._salvage_response(conn.sock, method)
                    if resp is None:
                        raise exc
                if resp is None:
                    resp = http.client.HTTPResponse(conn.sock, method=method.decode())
                    resp.begin()
            except _STALE_CONNECTION_ERRORS as exc:
                self._release(pool, conn, resp, False)
                # A kept-alive connection the server had already closed: the request never got
                # an answer, so it is sent again on a fresh connection.
                if reused and attempt < self._retries and body_replayable(body):
                    attempt += 1
                    continue
                raise self._transport_error(exc, info, timeout, "before the response arrived") from exc
            except BaseException as exc:
                self._release(pool, conn, resp, False)
                raise self._transport_error(exc, info, timeout, "before the response arrived") from exc
            if 200 <= resp.status < 300:
                return pool, conn, resp
            error = self._status_error(pool, conn, resp, info)
            if (
                resp.status in (429, 503)
                and status_attempt < status_retries
                and body_replayable(body)
            ):
                wait = error.retry_after if error.retry_after is not None else self._backoff_s * (2 ** status_attempt)
                if wait <= timeout:
                    time.sleep(wait)
                    status_attempt += 1
                    continue
            raise error

    @staticmethod
    def _salvage_response(sock, method: bytes):
        resp = http.client.HTTPResponse(sock, method=method.decode())
        try:
            resp.begin()
        except (OSError, http.client.HTTPException):
            resp.close()
            return None
        return resp

    def _status_error(self, pool, conn, resp, info: _CallInfo) -> RpcError:
        """Read (at most 64 KiB of) an error body, release the connection, build the RpcError."""
        try:
            reader = _BodyReader(resp, ERROR_BODY_LIMIT)
            pieces, size = [], 0
            while size <= ERROR_BODY_LIMIT:
                piece = reader.read()
                if not piece:
                    break
                pieces.append(piece)
                size += len(piece)
            raw = b"".join(pieces)
            complete = size <= ERROR_BODY_LIMIT and not resp.will_close
        except (OSError, http.client.HTTPException, DecodeError):
            raw, complete = b"", False
        self._release(pool, conn, resp, complete)
        ctype = (resp.getheader("content-type") or "").split(";")[0].strip().lower()
        problem = None
        if ctype in ("application/problem+json", "application/json"):
            try:
                problem = ProblemDetails.from_json(raw)
            except DecodeError:
                problem = None
        text = raw[:ERROR_BODY_LIMIT].decode("utf-8", "replace")
        return rpc_error_for_status(
            resp.status,
            problem,
            text,
            call=info.name,
            url=info.url,
            retry_after=_parse_retry_after(resp.getheader("retry-after")),
        )

    @staticmethod
    def _connect_error(exc: BaseException, info: _CallInfo, timeout: float) -> Exception:
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
        if not isinstance(exc, NewConnectionError) and isinstance(exc, (ConnectTimeoutError, socket.timeout)):
            return QuillTimeoutError(f"{info.name} at {info.url}: connecting timed out after {timeout:g} s")
        if isinstance(exc, ssl.SSLError) or isinstance(getattr(exc, "__context__", None), ssl.SSLError):
            return QuillConnectionError(f"{info.name} at {info.url}: TLS handshake failed: {exc}")
        reason = exc.__context__ if isinstance(exc, NewConnectionError) and exc.__context__ else exc
        return QuillConnectionError(f"{info.name} at {info.url}: cannot connect: {reason}")

    @staticmethod
    def _transport_error(exc: BaseException, info: _CallInfo, timeout: float, when: str) -> BaseException:
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return QuillTimeoutError(f"{info.name} at {info.url}: no answer within {timeout:g} s ({when})")
        if isinstance(exc, http.client.IncompleteRead):
            return QuillConnectionError(
                f"{info.name} at {info.url}: connection closed mid-body ({when}; "
                f"{exc.expected if exc.expected is not None else 'some'} more bytes were due)"
            )
        if isinstance(exc, (OSError, http.client.HTTPException)):
            detail = str(exc) or type(exc).__name__
            return QuillConnectionError(f"{info.name} at {info.url}: connection failed {when}: {detail}")
        return exc

    def _read_all(self, pool, conn, resp, info: _CallInfo, timeout: float) -> bytes:
        """Read a whole 2xx body (bounded by max_response_bytes), then release the connection."""
        limit = self._max_response_bytes
        ok = False
        try:
            if resp.length is not None and resp.length > limit:
                raise LimitExceededError(
                    f"{info.name} at {info.url}: response of {resp.length} bytes exceeds "
                    f"max_response_bytes={limit}"
                )
            encoding = resp.getheader("content-encoding")
            if encoding is None and resp.length is not None:
                data = resp.read()
            else:
                reader = _BodyReader(resp)
                pieces, size = [], 0
                while True:
                    piece = reader.read()
                    if not piece:
                        break
                    size += len(piece)
                    if size > limit:
                        raise LimitExceededError(
                            f"{info.name} at {info.url}: response exceeds max_response_bytes={limit}"
                        )
                    pieces.append(piece)
                data = b"".join(pieces)
            ok = not resp.will_close
            return data
        except (OSError, http.client.HTTPException) as exc:
            raise self._transport_error(exc, info, timeout, "while reading the response") from exc
        finally:
            self._release(pool, conn, resp, ok)

    # ------------------------------------------------------------------ unary calls

    def call(
        self,
        service: str,
        method: str,
        request,
        *,
        timeout_ms: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Unary RPC: POST the request bytes, return the response bytes.

        >>> client.call("echo.v1.EchoService", "Echo", b"hello")  # doctest: +SKIP
        b'hello'
        """
        body = self._bytes_body(_as_buffer(request))
        info, timeout, pool, conn, resp = self._post(service, method, "proto", body, timeout_ms, headers)
        return self._read_all(pool, conn, resp, info, timeout)

    def call_json(
        self,
        service: str,
        method: str,
        obj: Any,
        *,
        timeout_ms: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Unary RPC with JSON: ``obj`` goes out as ``application/json``, the JSON answer comes back parsed
        (None for an empty body).

        >>> client.call_json("inference.v1.LLMService", "Generate", {"prompt": "Hi"})  # doctest: +SKIP
        {'text': 'Hello!'}
        """
        body = self._bytes_body(_encode_json(obj))
        info, timeout, pool, conn, resp = self._post(service, method, "json", body, timeout_ms, headers)
        data = self._read_all(pool, conn, resp, info, timeout)
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(
                f"{info.name} at {info.url}: response is not valid JSON ({exc}); starts with {data[:80]!r}"
            ) from None

    def health_check(self, timeout_ms: int = HEALTH_TIMEOUT_MS) -> bool:
        """``GET /health`` with a short timeout: True only for a 2xx answer, False otherwise.

        >>> client.health_check()  # doctest: +SKIP
        True
        """
        info = _CallInfo("health", f"{self._prefix}/health".encode("ascii"), f"{self._base_url}/health")
        timeout = min(self._timeout_s(timeout_ms), self._timeout_ms / 1000.0)
        try:
            pool, conn, resp = self._exchange(b"GET", info, "get", None, timeout, None, status_retries=0)
            self._read_all(pool, conn, resp, info, timeout)
        except (RpcError, QuillConnectionError, QuillTimeoutError, LimitExceededError, DecodeError):
            return False
        return True

    # ------------------------------------------------------------------ streaming calls

    def call_stream(
        self,
        service: str,
        method: str,
        request=b"",
        *,
        timeout_ms: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> "MessageStream":
        """Server-streaming RPC: iterate the response messages as their frames arrive.

        The stream is closeable (``close()``, ``with``) and ``cancel()``-able; leaving the loop early
        discards the connection. ``request`` is bytes (application/proto) or a dict/list (JSON).

        >>> with client.call_stream("demo.v1.Feed", "Watch", b"topic") as stream:  # doctest: +SKIP
        ...     for message in stream:
        ...         handle(message)
        """
        body, kind = self._request_body(request)
        info, timeout, pool, conn, resp = self._post(service, method, kind, body, timeout_ms, headers)
        return MessageStream(self, pool, conn, resp, info, timeout, MessageStreamDecoder())

    def stream_tokens(
        self,
        service: str,
        method: str,
        request=b"",
        *,
        timeout_ms: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> "TokenStream":
        """Token-streaming RPC: yields a TokenBatch for each TOKEN_BATCH frame as it arrives.

        >>> for batch in client.stream_tokens("inference.v1.LLMService", "Generate", {"prompt": "Hi"}):  # doctest: +SKIP
        ...     print(batch.text(), end="")
        """
        body, kind = self._request_body(request)
        info, timeout, pool, conn, resp = self._post(service, method, kind, body, timeout_ms, headers)
        return TokenStream(self, pool, conn, resp, info, timeout, TokenStreamDecoder())

    def call_client_stream(
        self,
        service: str,
        method: str,
        messages: Iterable,
        *,
        timeout_ms: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Client-streaming RPC: send each message of ``messages`` (any iterable of bytes-like objects,
        consumed lazily) as a stream frame over chunked transfer encoding; return the response bytes.

        >>> client.call_client_stream("demo.v1.Upload", "Put", (chunk for chunk in chunks))  # doctest: +SKIP
        b'ok'
        """
        body = self._stream_body(messages)
        info, timeout, pool, conn, resp = self._post(service, method, "proto", body, timeout_ms, headers)
        return self._read_all(pool, conn, resp, info, timeout)

    def _stream_body(self, messages: Iterable) -> _Body:
        frames = _frame_messages(messages)
        if not self._compression:
            return _Body(chunks=lambda: (p for parts in frames for p in parts), rewindable=False)
        # Compress only once at least 1,024 bytes are on their way; a shorter stream goes out plain.
        head, size = [], 0
        for parts in frames:
            head.append(parts)
            size += sum(len(p) if not isinstance(p, memoryview) else p.nbytes for p in parts)
            if size >= COMPRESSION_THRESHOLD:
                break
        else:
            flat = [p for parts in head for p in parts]
            return _Body(flat, size)
        pieces = (p for parts in _chain(head, frames) for p in parts)
        return _Body(chunks=lambda: _compressed_chunks(pieces), encoding="zstd", rewindable=False)

    def call_tensor(
        self,
        service: str,
        method: str,
        request,
        *,
        timeout_ms: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Tensor:
        """Tensor RPC: send ``request`` (a Tensor as tensor frames, bytes, or a dict as JSON) and receive a
        Tensor, written straight into one allocation (limit ``max_tensor_bytes``).

        >>> out = client.call_tensor("demo.v1.Model", "Embed", Tensor.from_numpy(x))  # doctest: +SKIP
        >>> out.to_numpy().shape  # doctest: +SKIP
        (1, 768)
        """
        body, kind = self._request_body(request)
        info, timeout, pool, conn, resp = self._post(service, method, kind, body, timeout_ms, headers)
        return self._receive_tensor(pool, conn, resp, info, timeout)

    def send_tensor(
        self,
        service: str,
        method: str,
        tensor: Tensor,
        *,
        timeout_ms: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Send a Tensor as tensor frames straight from its memory; return the response bytes.

        >>> client.send_tensor("demo.v1.Store", "Put", Tensor.from_numpy(weights))  # doctest: +SKIP
        b'stored'
        """
        if not isinstance(tensor, Tensor):
            raise TypeError(f"send_tensor needs a quill Tensor, got {type(tensor).__name__}")
        body, kind = self._request_body(tensor)
        info, timeout, pool, conn, resp = self._post(service, method, kind, body, timeout_ms, headers)
        return self._read_all(pool, conn, resp, info, timeout)

    def _receive_tensor(self, pool, conn, resp, info: _CallInfo, timeout: float) -> Tensor:
        receiver = TensorReceiver(max_bytes=self._max_tensor_bytes)
        ok = False
        try:
            reader = _BodyReader(resp)
            tensor = None
            while True:
                data = reader.read()
                if not data:
                    break
                got = receiver.feed(data)
                if got is not None:
                    tensor = got
            # Always: it raises for a stream without END_STREAM and for bad bytes that
            # arrived after the tensor in the same chunk.
            try:
                receiver.finish()
            except IncompleteStreamError as exc:
                raise IncompleteStreamError(f"{info.name} at {info.url}: {exc.message}", exc.offset) from None
            ok = not resp.will_close
            return tensor
        except (OSError, http.client.HTTPException) as exc:
            raise self._transport_error(exc, info, timeout, "while receiving the tensor") from exc
        finally:
            self._release(pool, conn, resp, ok)


def body_replayable(body: _Body | None) -> bool:
    return body is None or body.replayable


def _chain(first: list, rest: Iterator) -> Iterator:
    yield from first
    yield from rest


def _frame_messages(messages: Iterable) -> Iterator[list]:
    """Each message as [frame header, payload] (no copy of the payload), then END_STREAM."""
    for message in messages:
        payload = _as_buffer(message, "each streamed message")
        size = len(payload) if not isinstance(payload, memoryview) else payload.nbytes
        yield [stream_frame_header(size), payload]
    yield [encode_end_stream()]


class _FrameStream:
    """Iterates the items a frame decoder produces from a streaming response body.

    Reads with one socket read at a time (``read1``) so each item is handed out as soon as its
    frame is complete; the whole body is never buffered. Closing before the end discards the
    connection (the unread rest of the body makes it unusable); a clean end returns it to the pool.
    """

    _what = "stream"

    def __init__(self, client: QuillClient, pool, conn, resp, info: _CallInfo, timeout: float, decoder):
        self._pool = pool
        self._conn = conn
        self._resp = resp
        self._info = info
        self._timeout = timeout
        self._decoder = decoder
        self._items: list = []
        self._index = 0
        self._count = 0
        self._open = True
        self.cancelled = False
        try:
            self._reader = _BodyReader(resp)
        except DecodeError:
            self._discard()
            raise

    @property
    def headers(self) -> dict[str, str]:
        """The response headers (lower-case names)."""
        return {k.lower(): v for k, v in self._resp.getheaders()}

    def __iter__(self):
        return self

    def __next__(self):
        while self._index >= len(self._items):
            if not self._open:
                raise StopIteration
            self._fill()
        item = self._items[self._index]
        self._index += 1
        self._count += 1
        return item

    def _fill(self) -> None:
        """Read until the decoder hands out items or the stream ends (then release the connection)."""
        self._items, self._index = [], 0
        try:
            while True:
                if self._decoder.done:
                    self._drain()
                    return
                data = self._reader.read()
                if not data:
                    self._decoder.finish()  # raises IncompleteStreamError without END_STREAM
                    self._finish_ok()
                    return
                items = self._decoder.feed(data)
                if items:
                    self._items = items
                    if self._decoder.done:
                        self._drain()
                    return
        except IncompleteStreamError as exc:
            self._discard()
            raise IncompleteStreamError(
                f"{self._info.name} at {self._info.url}: the {self._what} ended without END_STREAM "
                f"after {self._count} item(s): {exc.message}",
                exc.offset,
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            self._discard()
            raise QuillClient._transport_error(
                exc, self._info, self._timeout, f"mid-{self._what} after {self._count} item(s)"
            ) from exc
        except BaseException:
            self._discard()
            raise

    def _drain(self) -> None:
        """After END_STREAM only the end of the HTTP body may follow; read it so the connection is reused."""
        while True:
            data = self._reader.read()
            if not data:
                break
            self._decoder.feed(data)  # raises: data after END_STREAM
        self._finish_ok()

    def _finish_ok(self) -> None:
        if self._open:
            self._open = False
            QuillClient._release(self._pool, self._conn, self._resp, not self._resp.will_close)

    def _discard(self) -> None:
        if self._open:
            self._open = False
            QuillClient._release(self._pool, self._conn, self._resp, False)

    def close(self) -> None:
        """Stop reading; an unfinished stream's connection is closed (the server sees the disconnect)."""
        self._discard()

    def cancel(self) -> None:
        """Cancel the call: the connection is closed so the server stops producing; iteration ends."""
        if self._open:
            self.cancelled = True
        self._items, self._index = [], 0
        self._discard()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        try:
            self._discard()
        except Exception:
            pass


class MessageStream(_FrameStream):
    """The response messages (bytes) of a server-streaming call, in order.

    >>> stream = client.call_stream("demo.v1.Feed", "Watch", b"")  # doctest: +SKIP
    >>> first = next(stream); stream.cancel()                      # doctest: +SKIP
    """

    _what = "message stream"


class TokenStream(_FrameStream):
    """The TokenBatch objects of a token-streaming call, in order.

    >>> ids = [t.id for batch in client.stream_tokens("s", "Generate", b"") for t in batch]  # doctest: +SKIP
    """

    _what = "token stream"
