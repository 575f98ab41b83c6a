"""The reference Quill server: an ASGI application speaking PROTOCOL.md section 6.

Register handlers on a :class:`QuillApp` by decorator (or :meth:`QuillApp.add_method`) and
run it under any ASGI server; ``quill serve module:app`` runs it on uvicorn::

    from quill.server import QuillApp

    app = QuillApp()

    @app.unary("echo.v1.EchoService/Echo")
    def echo(request: bytes, context) -> bytes:
        return request

Five handler kinds, sync or async:

===================  ==============================================  ==========================================
kind                 handler                                         response body
===================  ==============================================  ==========================================
``unary``            ``f(request: bytes, ctx) -> bytes``             the message
``server_stream``    ``f(request: bytes, ctx) -> (async) iterator``  message-stream frames, then END_STREAM
``client_stream``    ``async f(messages: AsyncIterator, ctx)``       the message (request: message frames)
``token_stream``     ``f(request: bytes, ctx) -> iter[TokenBatch]``  TOKEN_BATCH frames, then END_STREAM
``tensor``           ``f(request: bytes | Tensor, ctx) -> Tensor``   tensor frames (the Tensor's memory, uncopied)
===================  ==============================================  ==========================================

A tensor handler gets a :class:`~quill.tensor.Tensor` when the request's Content-Type is
``application/proto; frames=tensor`` (:data:`quill.protocol.constants.TENSOR_FRAMES`, what
the client sends with a Tensor), and the body's bytes otherwise: the body's first byte cannot
tell them apart (0x10 is TENSOR_META and also the protobuf tag of field 2).

Errors become ``application/problem+json`` answers: a handler may return a
:class:`~quill.errors.ProblemDetails` or raise a quill error (``RpcError(404, problem)``
answers exactly that); unexpected exceptions answer 500 without leaking the traceback
(it is logged with the ``trace_id`` the client sees). A handler failing after its
stream started ends the stream with a CANCEL frame carrying the reason, so the client
sees an error, never a normal end. The app also answers ``GET /health``, ``/ready`` and
``/metrics`` (Prometheus text); with ``auth`` set, ``/metrics`` needs credentials and the
two probes do not (``public_paths`` changes that).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import inspect
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from http import HTTPStatus
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence

from .errors import (
    DecodeError,
    IncompleteStreamError,
    LimitExceededError,
    ProblemDetails,
    QuillConnectionError,
    QuillTimeoutError,
    RpcError,
    StreamCancelledError,
)
from .metrics import UNMATCHED_METHOD, ServerMetrics
from .protocol import compression
from .protocol.constants import (
    COMPRESSION_THRESHOLD,
    JSON,
    PROBLEM_JSON,
    PROTO,
    is_json,
    is_tensor_frames,
    media_type,
)

__all__ = [
    "QuillApp",
    "Context",
    "BearerAuth",
    "ApiKeyAuth",
    "serve_in_thread",
    "serve",
    "load_app",
    "HANDLER_KINDS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_PUBLIC_PATHS",
]

logger = logging.getLogger("quill.server")

HANDLER_KINDS = ("unary", "server_stream", "client_stream", "token_stream", "tensor")
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
BUILTIN_PATHS = ("/health", "/ready", "/metrics")
#: Paths a QuillApp with ``auth`` still answers without credentials (the health probes).
DEFAULT_PUBLIC_PATHS = ("/health", "/ready")
#: Most bytes one zstd-decoding step hands on: a small compressed chunk that expands hugely
#: reaches the handler (or the frame decoder) piece by piece, within the request limit.
DECODED_PIECE_BYTES = 1 << 20
_END = object()


# --------------------------------------------------------------------------------------
# Per-call context and auth hooks
# --------------------------------------------------------------------------------------
class Context:
    """What a handler knows about its call.

    ``method_path`` is ``"package.Service/Method"``; ``headers`` holds the request
    headers with lower-case names (repeated headers joined by ``", "``); ``client`` is
    the peer's ``(host, port)`` when the ASGI server reports it.

    >>> ctx = Context("echo.v1.EchoService/Echo", {"x-user": "ada"})
    >>> ctx.service, ctx.method, ctx.headers["x-user"]
    ('echo.v1.EchoService', 'Echo', 'ada')
    """

    __slots__ = ("method_path", "headers", "client")

    def __init__(self, method_path: str, headers: dict[str, str], client: tuple[str, int] | None = None):
        self.method_path = method_path
        self.headers = headers
        self.client = client

    @property
    def service(self) -> str:
        return self.method_path.partition("/")[0]

    @property
    def method(self) -> str:
        return self.method_path.partition("/")[2]

    def __repr__(self) -> str:
        return f"Context({self.method_path!r}, client={self.client!r})"


class BearerAuth:
    """Auth hook accepting ``Authorization: Bearer <token>`` for any of ``tokens``.

    >>> auth = BearerAuth("s3cret")
    >>> auth(Context("a.B/C", {"authorization": "Bearer s3cret"})), auth(Context("a.B/C", {}))
    (True, False)
    """

    challenge = 'Bearer realm="quill"'

    def __init__(self, *tokens: str):
        if not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError("BearerAuth needs at least one non-empty token string")
        self._tokens = [t.encode() for t in tokens]

    def __call__(self, context: Context) -> bool:
        scheme, _, token = context.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        offered = token.strip().encode()
        return any(hmac.compare_digest(offered, t) for t in self._tokens)


class ApiKeyAuth:
    """Auth hook accepting any of ``keys`` in the ``header_name`` header (``X-API-Key``).

    >>> auth = ApiKeyAuth("k1", header_name="X-Key")
    >>> auth(Context("a.B/C", {"x-key": "k1"})), auth(Context("a.B/C", {"x-key": "k2"}))
    (True, False)
    """

    challenge = None

    def __init__(self, *keys: str, header_name: str = "X-API-Key"):
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError("ApiKeyAuth needs at least one non-empty key string")
        self._keys = [k.encode() for k in keys]
        self.header_name = header_name.lower()

    def __call__(self, context: Context) -> bool:
        offered = context.headers.get(self.header_name, "").encode()
        return any(hmac.compare_digest(offered, k) for k in self._keys)


AuthHook = Callable[[Context], "bool | Awaitable[bool]"]


# --------------------------------------------------------------------------------------
# Problem Details helpers
# --------------------------------------------------------------------------------------
def _problem(status: int, title: str, detail: str | None = None, **fields) -> ProblemDetails:
    """A Problem Details body in the reference's style (type ``urn:quill:error:<status>``)."""
    return ProblemDetails(status=status, title=title, type=f"urn:quill:error:{status}", detail=detail, **fields)


class _HttpProblem(Exception):
    """Raised inside the app to answer with ``problem`` (and extra response headers)."""

    def __init__(self, problem: ProblemDetails, headers: Sequence[tuple[str, str]] = ()):
        super().__init__(problem.title)
        self.problem = problem
        self.headers = list(headers)


class _ClientGone(Exception):
    """The client disconnected before the request body was read."""


def _problem_for(exc: BaseException, method_path: str) -> tuple[ProblemDetails, list[tuple[str, str]]]:
    """Map an exception from a handler (or from reading the request) to the answer."""
    if isinstance(exc, _HttpProblem):
        return exc.problem, exc.headers
    if isinstance(exc, RpcError):
        headers = [] if exc.retry_after is None else [("retry-after", str(max(0, math.ceil(exc.retry_after))))]
        if exc.problem is not None:
            return exc.problem, headers
        try:
            title = HTTPStatus(exc.status).phrase
        except ValueError:
            title = "Error"
        return _problem(exc.status, title, exc.body or None), headers
    if isinstance(exc, LimitExceededError):
        return _problem(413, "Payload too large", str(exc)), []
    if isinstance(exc, DecodeError):
        return _problem(400, "Invalid request body", str(exc)), []
    if isinstance(exc, StreamCancelledError):
        return _problem(400, "Request stream cancelled", str(exc)), []
    if isinstance(exc, QuillTimeoutError):
        return _problem(504, "Gateway timeout", str(exc)), []
    if isinstance(exc, QuillConnectionError):
        return _problem(502, "Bad gateway", str(exc)), []
    trace_id = uuid.uuid4().hex
    logger.error("handler for %s failed (trace_id %s)", method_path, trace_id, exc_info=exc)
    return _problem(
        500,
        "Internal server error",
        "the handler raised an unexpected error; the server log has the details under this trace_id",
        trace_id=trace_id,
    ), []


def _cancel_reason(exc: BaseException, method_path: str, max_chars: int = 2000) -> str:
    """The text of the CANCEL frame that ends a stream whose handler failed:
    ``"<status> <title>: <detail> (trace_id ...)"``, valid UTF-8, at most ``max_chars``."""
    problem, _ = _problem_for(exc, method_path)
    reason = f"{problem.status} {problem.title}"
    if problem.detail:
        reason += f": {problem.detail}"
    if problem.trace_id:
        reason += f" (trace_id {problem.trace_id})"
    return reason.encode("utf-8", "replace").decode("utf-8")[:max_chars]


# --------------------------------------------------------------------------------------
# Content negotiation and compression
# --------------------------------------------------------------------------------------
def _wants_json(headers: dict[str, str]) -> bool:
    """True when the client asked for JSON and not protobuf (``Accept: application/json``)."""
    accept = headers.get("accept", "").lower()
    return JSON in accept and PROTO not in accept


def _unary_content_type(headers: dict[str, str]) -> str:
    accept = headers.get("accept", "").lower()
    if _wants_json(headers) or (PROTO not in accept and is_json(headers.get("content-type", ""))):
        return JSON
    return PROTO


def _decoded_pieces(decoder: compression.ZstdDecoder, chunk: bytes, last: bool) -> Iterator[bytes]:
    """What ``chunk`` decodes to, in pieces of at most :data:`DECODED_PIECE_BYTES`; after the
    ``last`` chunk, raises IncompleteStreamError if the body ended inside a zstd frame."""
    piece = decoder.decompress(chunk, DECODED_PIECE_BYTES)
    while True:
        if piece:
            yield piece
        if not decoder.has_output:
            break
        piece = decoder.decompress(b"", DECODED_PIECE_BYTES)
    if last:
        decoder.finish()


# --------------------------------------------------------------------------------------
# Calling handlers
# --------------------------------------------------------------------------------------
async def _invoke(function: Callable, *args) -> Any:
    """Call a handler: coroutine functions are awaited, generator functions called
    directly, other sync functions run in the default thread pool (never blocking the loop)."""
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
        return function(*args)
    result = await asyncio.get_running_loop().run_in_executor(None, functools.partial(function, *args))
    if inspect.isawaitable(result):
        result = await result
    return result


async def _iterate_sync(iterator: Iterator) -> AsyncIterator:
    """Drive a sync iterator from the event loop, each ``next`` in the thread pool.

    When the consumer stops early (a client disconnect cancels it), the generator is
    closed in a worker thread once its running ``next`` has returned, so its ``finally``
    blocks run.
    """
    loop = asyncio.get_running_loop()
    try:
        while True:
            pending = loop.run_in_executor(None, next, iterator, _END)
            try:
                item = await asyncio.shield(pending)
            except asyncio.CancelledError:
                await asyncio.wait([pending])
                raise
            if item is _END:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            await loop.run_in_executor(None, close)


def _as_async_iterator(result: Any, method_path: str) -> AsyncIterator:
    if hasattr(result, "__anext__"):
        return result
    if hasattr(result, "__aiter__"):
        return result.__aiter__()
    if isinstance(result, (bytes, bytearray, memoryview, str)) or not hasattr(result, "__iter__"):
        raise TypeError(f"streaming handler for {method_path} returned {type(result).__name__}, expected an iterator")
    return _iterate_sync(iter(result))


async def _close_async_iterator(iterator: Any) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def _as_body(result: Any, method_path: str) -> bytes | bytearray | memoryview:
    if isinstance(result, (bytes, bytearray, memoryview)):
        return result
    raise TypeError(f"handler for {method_path} returned {type(result).__name__}, expected bytes")


class _Route:
    __slots__ = ("path", "kind", "function")

    def __init__(self, path: str, kind: str, function: Callable):
        self.path = path
        self.kind = kind
        self.function = function


# --------------------------------------------------------------------------------------
# One HTTP exchange
# --------------------------------------------------------------------------------------
class _Exchange:
    """The state of one request/response: body reading with limits, sending, counters."""

    def __init__(self, app: "QuillApp", scope: dict, receive: Callable, send: Callable, method_path: str):
        self.app = app
        self.scope = scope
        self._receive = receive
        self._send = send
        self.headers = _header_dict(scope.get("headers", ()))
        self.context = Context(method_path, self.headers, scope.get("client"))
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.body_complete = False
        self.stream_failed = False

    # -- receiving ------------------------------------------------------------------
    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The request body as it arrives, zstd-decoded, within ``max_request_bytes``."""
        limit = self.app.max_request_bytes
        declared = self.headers.get("content-length")
        if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
            raise LimitExceededError(f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
        encoding = media_type(self.headers.get("content-encoding", "identity"))
        if encoding == "zstd" and compression.available():
            decoder = compression.ZstdDecoder(limit=limit, what="request body")
        elif encoding in ("identity", ""):
            decoder = None
        else:
            zstd = compression.available()
            raise _HttpProblem(
                _problem(415, "Unsupported content encoding", f"Content-Encoding {encoding!r} is not supported; "
                         "send identity" + (" or zstd" if zstd else "")),
                [("accept-encoding", "zstd" if zstd else "identity")],
            )
        while not self.body_complete:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            self.bytes_in += len(chunk)
            if limit is not None and self.bytes_in > limit:
                raise LimitExceededError(f"request body exceeds the limit of {limit} bytes")
            self.body_complete = not message.get("more_body", False)
            if decoder is None:
                if chunk:
                    yield chunk
            else:
                for piece in _decoded_pieces(decoder, chunk, last=self.body_complete):
                    yield piece

    async def discard_small_body(self, limit: int = 65536) -> None:
        """Read and drop an unread body of known small size, so the connection stays reusable."""
        declared = self.headers.get("content-length", "" if "transfer-encoding" in self.headers else "0")
        if self.body_complete or not declared.isdigit() or int(declared) > limit:
            return
        while not self.body_complete:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            self.body_complete = not message.get("more_body", False)

    async def read_body(self) -> bytes:
        return b"".join([chunk async for chunk in self.body_chunks()])

    async def read_tensor_or_body(self) -> Any:
        """A Tensor when the Content-Type says the body is tensor frames
        (:data:`~quill.protocol.constants.TENSOR_FRAMES`), else the body's bytes."""
        if not is_tensor_frames(self.headers.get("content-type", "")):
            return await self.read_body()
        from .frames import TensorReceiver

        receiver = TensorReceiver(max_bytes=self.app.max_request_bytes)
        tensor = None
        async for chunk in self.body_chunks():
            result = receiver.feed(chunk)
            if result is not None:
                tensor = result
        receiver.finish()  # raises for a missing END_STREAM, or bytes after it
        if tensor is None:
            raise DecodeError("the request says it is tensor frames (frames=tensor) but holds no tensor")
        return tensor

    async def messages(self) -> AsyncIterator[bytes]:
        """Client-streaming request messages, decoded from message-stream frames."""
        from .frames import MessageStreamDecoder

        decoder = MessageStreamDecoder()
        async for chunk in self.body_chunks():
            for message in decoder.feed(chunk):
                yield message
        decoder.finish()

    async def wait_disconnect(self) -> None:
        """Return when the client goes away (call only once the body is fully read)."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return

    # -- sending --------------------------------------------------------------------
    async def start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        self.status = status
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        if not self.body_complete:
            raw.append((b"connection", b"close"))  # the rest of an unread body is not worth draining
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def body(self, data: bytes | memoryview, more: bool) -> None:
        self.bytes_out += len(data) if not isinstance(data, memoryview) else data.nbytes
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def respond(self, status: int, body: bytes, content_type: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        """A complete response; zstd-compressed when the client accepts it and it is large."""
        headers = [("content-type", content_type), *headers]
        if len(body) >= COMPRESSION_THRESHOLD and compression.accepts_zstd(self.headers.get("accept-encoding")):
            body = compression.compress(body)
            headers.append(("content-encoding", "zstd"))
        headers.append(("content-length", str(len(body))))
        await self.start(status, headers)
        await self.body(body, more=False)

    async def respond_problem(self, problem: ProblemDetails, headers: Iterable[tuple[str, str]] = ()) -> None:
        body = problem.to_dict()  # a copy: a handler's ProblemDetails is never modified
        body.setdefault("instance", self.scope.get("path"))
        status = problem.status
        if not 400 <= status <= 599:
            logger.error("%s answered a ProblemDetails with status %r; sending 500", self.context.method_path, status)
            status = body["status"] = 500
        await self.respond(status, json.dumps(body, separators=(",", ":")).encode(), PROBLEM_JSON, headers)

    async def stream(self, items: AsyncIterator, encode: Callable, end_frame: bytes, cancel_frame: Callable) -> None:
        """Send ``items`` as frames; a failing handler ends the stream with a CANCEL frame.

        The first item is fetched before the response starts, so a handler that fails
        straight away still gets a proper Problem Details status (its exception propagates
        from here). A client that disconnects, even before the first item, cancels the
        handler's iterator: its ``finally`` blocks run and it does no more work.
        """
        pump = asyncio.ensure_future(self._pump(items, encode, end_frame, cancel_frame))
        watcher = asyncio.ensure_future(self.wait_disconnect())
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not pump.done():
                pump.cancel()
                self.stream_failed = True
                logger.info("client left %s mid-stream; handler stopped", self.context.method_path)
            watcher.cancel()
            outcome, _ = await asyncio.gather(pump, watcher, return_exceptions=True)
        if isinstance(outcome, Exception):
            raise outcome

    async def _pump(self, items: AsyncIterator, encode: Callable, end_frame: bytes, cancel_frame: Callable) -> None:
        try:
            try:
                item = await items.__anext__()
            except StopAsyncIteration:
                item = _END
            await self.start(200, [("content-type", PROTO)])
            try:
                while item is not _END:
                    await self.body(encode(item), more=True)
                    try:
                        item = await items.__anext__()
                    except StopAsyncIteration:
                        item = _END
                await self.body(end_frame, more=False)
            except Exception as exc:  # the status is out: end the stream with a CANCEL frame
                self.stream_failed = True
                await self.body(cancel_frame(_cancel_reason(exc, self.context.method_path)), more=False)
        finally:
            await _close_async_iterator(items)


def _header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


# --------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------
class QuillApp:
    """An ASGI application serving Quill RPC methods.

    ``max_request_bytes`` bounds every request body, on the wire and after zstd
    decompression (None: no limit); larger bodies get 413. ``auth`` is an optional
    hook (or a list of hooks, any of which may accept) called with the
    :class:`Context` before routing; returning False answers 401.

    ``public_paths`` are the paths answered without auth: by default the probes
    ``/health`` and ``/ready`` (load balancers and orchestrators call them without
    credentials), while ``/metrics`` needs credentials like any RPC once ``auth`` is set.
    Pass ``DEFAULT_PUBLIC_PATHS + ("/metrics",)`` for an open scrape endpoint, ``()`` to
    protect everything, or add RPC paths (``"/pkg.Service/Method"``) to open them.

    >>> app = QuillApp()
    >>> @app.unary("echo.v1.EchoService/Echo")
    ... def echo(request, context):
    ...     return request
    >>> app.methods()
    {'echo.v1.EchoService/Echo': 'unary'}
    """

    def __init__(
        self,
        *,
        max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES,
        auth: AuthHook | Sequence[AuthHook] | None = None,
        public_paths: Iterable[str] = DEFAULT_PUBLIC_PATHS,
    ):
        public_paths = tuple(public_paths)
        for path in public_paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"public_paths holds request paths starting with '/', got {path!r}")
        self.public_paths = frozenset(public_paths)
        if max_request_bytes is not None and max_request_bytes < 0:
            raise ValueError(f"max_request_bytes must be >= 0 or None, got {max_request_bytes}")
        self.max_request_bytes = max_request_bytes
        self.auth = auth
        self.metrics = ServerMetrics()
        #: ``GET /health`` answers 503 while this is False.
        self.healthy = True
        #: ``GET /ready`` answers 503 while this is False (also during lifespan shutdown).
        self.ready = True
        self._routes: dict[str, _Route] = {}
        self._startup: list[Callable] = []
        self._shutdown: list[Callable] = []
        self._started_at = time.monotonic()

    # -- registration ---------------------------------------------------------------
    def add_method(self, path: str, function: Callable, kind: str = "unary") -> None:
        """Register ``function`` for ``"package.Service/Method"`` as one of :data:`HANDLER_KINDS`.

        >>> app = QuillApp()
        >>> app.add_method("a.v1.S/M", lambda request, context: request)
        """
        if kind not in HANDLER_KINDS:
            raise ValueError(f"unknown handler kind {kind!r}; expected one of {', '.join(HANDLER_KINDS)}")
        path = path.lstrip("/")
        service, slash, method = path.partition("/")
        if not service or not slash or not method or "/" in method:
            raise ValueError(f"method path must look like 'package.Service/Method', got {path!r}")
        if path in self._routes:
            raise ValueError(f"a handler is already registered for {path!r}")
        if kind == "client_stream" and not inspect.iscoroutinefunction(function):
            raise TypeError(f"client_stream handler for {path} must be an async def (it iterates with async for)")
        if not callable(function):
            raise TypeError(f"handler for {path} is not callable")
        self._routes[path] = _Route(path, kind, function)

    def _decorator(self, path: str, kind: str) -> Callable[[Callable], Callable]:
        def register(function: Callable) -> Callable:
            self.add_method(path, function, kind)
            return function

        return register

    def unary(self, path: str) -> Callable[[Callable], Callable]:
        """Decorator: ``f(request: bytes, context) -> bytes | ProblemDetails``."""
        return self._decorator(path, "unary")

    def server_stream(self, path: str) -> Callable[[Callable], Callable]:
        """Decorator: ``f(request: bytes, context)`` returning an iterator or async iterator of bytes."""
        return self._decorator(path, "server_stream")

    def client_stream(self, path: str) -> Callable[[Callable], Callable]:
        """Decorator: ``async f(messages: AsyncIterator[bytes], context) -> bytes``."""
        return self._decorator(path, "client_stream")

    def token_stream(self, path: str) -> Callable[[Callable], Callable]:
        """Decorator: ``f(request: bytes, context)`` yielding :class:`TokenBatch` objects."""
        return self._decorator(path, "token_stream")

    def tensor(self, path: str) -> Callable[[Callable], Callable]:
        """Decorator: ``f(request: bytes | Tensor, context) -> Tensor`` (bytes answer as a unary body)."""
        return self._decorator(path, "tensor")

    def on_startup(self, function: Callable) -> Callable:
        """Run ``function`` (sync or async) at ASGI lifespan startup; usable as a decorator."""
        self._startup.append(function)
        return function

    def on_shutdown(self, function: Callable) -> Callable:
        """Run ``function`` (sync or async) at ASGI lifespan shutdown; usable as a decorator."""
        self._shutdown.append(function)
        return function

    def methods(self) -> dict[str, str]:
        """Registered method paths and their kinds."""
        return {path: route.kind for path, route in self._routes.items()}

    # -- ASGI entry point -------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in self._startup:
                        await _invoke(hook)
                except Exception as exc:
                    logger.exception("startup hook failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                try:
                    for hook in self._shutdown:
                        await _invoke(hook)
                except Exception as exc:
                    logger.exception("shutdown hook failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope["path"]
        http_method = scope["method"]
        if path in BUILTIN_PATHS:
            exchange = _Exchange(self, scope, receive, send, path)
            exchange.body_complete = True  # GET: nothing to drain
            try:
                if http_method not in ("GET", "HEAD"):
                    raise _HttpProblem(_problem(405, "Method not allowed", f"{path} answers GET and HEAD"),
                                       [("allow", "GET, HEAD")])
                await self._check_auth(exchange)
            except _HttpProblem as exc:
                await exchange.respond_problem(exc.problem, exc.headers)
                return
            await self._builtin(exchange, path)
            return
        method_path = path[1:]
        route = self._routes.get(method_path)
        exchange = _Exchange(self, scope, receive, send, method_path if route else UNMATCHED_METHOD)
        started = time.perf_counter()
        self.metrics.request_started()
        try:
            await self._rpc(exchange, route, http_method)
        finally:
            self.metrics.request_finished()
            self.metrics.observe(
                exchange.context.method_path,
                exchange.status or 499,  # 499: the client left before any answer
                time.perf_counter() - started,
                request_bytes=exchange.bytes_in,
                response_bytes=exchange.bytes_out,
                error=exchange.stream_failed or not exchange.status or exchange.status >= 400,
            )

    async def _rpc(self, exchange: _Exchange, route: _Route | None, http_method: str) -> None:
        try:
            if http_method != "POST":
                raise _HttpProblem(
                    _problem(405, "Method not allowed", "Only POST is supported for RPC calls"), [("allow", "POST")]
                )
            await self._check_auth(exchange)
            if route is None:
                raise _HttpProblem(
                    _problem(404, "Method not found", f"No handler registered for path: {exchange.scope['path']}")
                )
            await getattr(self, f"_serve_{route.kind}")(exchange, route)
        except _ClientGone:
            logger.info("client left %s before sending its whole request", exchange.context.method_path)
        except Exception as exc:
            if exchange.status:  # the response had started: nothing more can be said
                logger.error("failure after the response to %s started", exchange.context.method_path, exc_info=exc)
                return
            problem, headers = _problem_for(exc, exchange.context.method_path)
            if not isinstance(exc, LimitExceededError):
                await exchange.discard_small_body()
            await exchange.respond_problem(problem, headers)

    async def _check_auth(self, exchange: _Exchange) -> None:
        """Raise a 401 problem unless auth is off, the path is public, or a hook accepts."""
        if self.auth is None or exchange.scope["path"] in self.public_paths:
            return
        if not await self._authorized(exchange.context):
            challenges = [h.challenge for h in self._auth_hooks() if getattr(h, "challenge", None)]
            raise _HttpProblem(
                _problem(401, "Unauthorized", "missing or invalid credentials"),
                [("www-authenticate", c) for c in challenges],
            )

    def _auth_hooks(self) -> Sequence[AuthHook]:
        return self.auth if isinstance(self.auth, (list, tuple)) else [self.auth]

    async def _authorized(self, context: Context) -> bool:
        for hook in self._auth_hooks():
            verdict = hook(context)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if verdict:
                return True
        return False

    async def _builtin(self, exchange: _Exchange, path: str) -> None:
        if path == "/metrics":
            body = self.metrics.render().encode()
            await exchange.respond(200, body, "text/plain; version=0.0.4; charset=utf-8")
            return
        if path == "/health":
            ok = bool(self.healthy)
            payload = {
                "healthy": ok,
                "methods": len(self._routes),
                "uptime_seconds": round(time.monotonic() - self._started_at, 3),
            }
        else:
            ok = bool(self.ready)
            payload = {"ready": ok}
        await exchange.respond(200 if ok else 503, json.dumps(payload).encode(), JSON)

    # -- the five kinds ---------------------------------------------------------------
    async def _serve_unary(self, exchange: _Exchange, route: _Route) -> None:
        request = await exchange.read_body()
        result = await _invoke(route.function, request, exchange.context)
        await self._answer_message(exchange, route, result)

    async def _serve_client_stream(self, exchange: _Exchange, route: _Route) -> None:
        messages = exchange.messages()
        try:
            result = await route.function(messages, exchange.context)
        finally:
            await messages.aclose()
        await self._answer_message(exchange, route, result)

    async def _answer_message(self, exchange: _Exchange, route: _Route, result: Any) -> None:
        if isinstance(result, ProblemDetails):
            await exchange.respond_problem(result)
            return
        body = _as_body(result, route.path)
        await exchange.respond(200, bytes(body), _unary_content_type(exchange.headers))

    async def _serve_server_stream(self, exchange: _Exchange, route: _Route) -> None:
        from .frames import encode_end_stream, encode_stream_cancel, encode_stream_frame

        request = await exchange.read_body()
        result = await _invoke(route.function, request, exchange.context)
        if isinstance(result, ProblemDetails):
            await exchange.respond_problem(result)
            return

        def encode(message: Any) -> bytes:
            return encode_stream_frame(_as_body(message, route.path))

        items = _as_async_iterator(result, route.path)
        await exchange.stream(items, encode, encode_end_stream(), encode_stream_cancel)

    async def _serve_token_stream(self, exchange: _Exchange, route: _Route) -> None:
        from ._tokens import TokenBatch
        from .frames import END_STREAM_FRAME, encode_cancel_frame, encode_token_batch_frame

        request = await exchange.read_body()
        result = await _invoke(route.function, request, exchange.context)
        if isinstance(result, ProblemDetails):
            await exchange.respond_problem(result)
            return
        items = _as_async_iterator(result, route.path)

        def encode(batch: Any) -> bytes:
            if not isinstance(batch, TokenBatch):
                raise TypeError(f"token_stream handler for {route.path} yielded {type(batch).__name__}, expected TokenBatch")
            return encode_token_batch_frame(batch)

        if _wants_json(exchange.headers):
            await self._answer_tokens_as_json(exchange, items, encode)
            return
        await exchange.stream(items, encode, END_STREAM_FRAME, encode_cancel_frame)

    async def _answer_tokens_as_json(self, exchange: _Exchange, items: AsyncIterator, check: Callable) -> None:
        """``Accept: application/json``: collect the whole generation into one JSON answer."""
        tokens = []
        try:
            async for batch in items:
                check(batch)
                tokens.extend(
                    {"id": t.id, "text": t.text, "logprob": t.logprob, "position": t.position, "is_special": t.is_special}
                    for t in batch
                )
        finally:
            await _close_async_iterator(items)
        text = "".join(t["text"] or "" for t in tokens)
        body = json.dumps({"text": text, "tokens": tokens}, separators=(",", ":")).encode()
        await exchange.respond(200, body, JSON)

    async def _serve_tensor(self, exchange: _Exchange, route: _Route) -> None:
        from .tensor import Tensor

        request = await exchange.read_tensor_or_body()
        result = await _invoke(route.function, request, exchange.context)
        if isinstance(result, ProblemDetails):
            await exchange.respond_problem(result)
        elif isinstance(result, Tensor):
            if _wants_json(exchange.headers):
                await exchange.respond(200, _tensor_json(result), JSON)
            else:
                await self._send_tensor(exchange, result)
        else:
            await exchange.respond(200, bytes(_as_body(result, route.path)), _unary_content_type(exchange.headers))

    async def _send_tensor(self, exchange: _Exchange, tensor: Any) -> None:
        """Tensor frames with a Content-Length; payload frames are views of the tensor's memory."""
        from .frames import encode_tensor_frames

        pieces = list(encode_tensor_frames(tensor))
        total = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in pieces)
        await exchange.start(200, [("content-type", PROTO), ("content-length", str(total))])
        last = len(pieces) - 1
        for index, piece in enumerate(pieces):
            await exchange.body(piece, more=index < last)


def _tensor_json(tensor: Any) -> bytes:
    """A tensor as JSON: name, shape, dtype and the elements as nested lists (floats for half types)."""
    dtype = tensor.dtype
    array = tensor.to_numpy(dtype="float32") if dtype.name in ("bfloat16", "float16") else tensor.to_numpy()
    payload = {"name": tensor.name, "shape": list(tensor.shape), "dtype": dtype.name, "data": array.tolist()}
    return json.dumps(payload, separators=(",", ":")).encode()


# --------------------------------------------------------------------------------------
# Running the app
# --------------------------------------------------------------------------------------
def load_app(spec: str) -> Any:
    """Import ``"package.module:attribute"`` and return the ASGI app it names.

    >>> load_app("quill.demo:app").methods()["inference.v1.LLMService/Generate"]
    'token_stream'
    """
    import importlib

    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"app must be given as 'module:attribute', got {spec!r}")
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{spec} is not an ASGI application (not callable)")
    return target


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it every small response waits ~40 ms for the delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)  # connectable right away; the server accepts the backlog once it runs
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app: Any, log_level: str, graceful_timeout: float, access_log: bool):
    try:
        import uvicorn
    except ImportError:
        raise ImportError("serving needs uvicorn: pip install 'quill[server]'") from None
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="auto",
        timeout_graceful_shutdown=graceful_timeout,
        server_header=False,
    )
    return uvicorn.Server(config)


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    log_level: str = "info",
    access_log: bool = False,
    graceful_timeout: float = 10.0,
    on_listening: Callable[[str], None] | None = None,
    workers: int = 1,
) -> None:
    """Serve ``app`` on uvicorn until SIGINT or SIGTERM, then shut down gracefully.

    In-flight requests get ``graceful_timeout`` seconds to finish. ``on_listening`` is
    called with the base URL once the socket is bound (``port=0`` picks a free port).
    ``workers`` > 1 forks that many worker processes (POSIX only) that share the one
    listening socket, so every worker keeps TCP_NODELAY (see :func:`_bind`).

    >>> serve(app, "127.0.0.1", 8080, workers=4)  # doctest: +SKIP
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    if workers > 1 and not hasattr(os, "fork"):
        raise ValueError("workers > 1 needs os.fork (POSIX); run one process per port instead")
    sock = _bind(host, port)
    try:
        if on_listening is not None:
            on_listening(_url(sock))
        if workers == 1:
            _uvicorn_server(app, log_level, graceful_timeout, access_log).run(sockets=[sock])
        else:
            _run_workers(app, sock, workers, log_level, graceful_timeout, access_log)
    finally:
        sock.close()


def _run_workers(app: Any, sock: socket.socket, workers: int, log_level: str, graceful_timeout: float,
                 access_log: bool) -> None:
    """Fork ``workers`` uvicorn servers on the shared socket; SIGINT/SIGTERM stop them all.

    Forked rather than spawned: the workers inherit ``app`` as built (a QuillApp with its
    handlers and options need not be importable or picklable) and the socket object itself.
    """
    children: list[int] = []

    def stop_children(signum: int, frame: Any) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # SIGTERM: a worker that also got the SIGINT does not force-quit

    previous = {sig: signal.signal(sig, stop_children) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:  # the worker: serve until told to stop, never return into the caller's code
                code = 1
                try:
                    for sig in previous:
                        signal.signal(sig, signal.SIG_DFL)  # uvicorn installs its own while it runs
                    _uvicorn_server(app, log_level, graceful_timeout, access_log).run(sockets=[sock])
                    code = 0
                except BaseException:
                    logging.getLogger("uvicorn.error").exception("quill worker %d failed", os.getpid())
                finally:
                    os._exit(code)
            children.append(pid)
        while children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid in children:
                children.remove(pid)
    finally:
        stop_children(signal.SIGTERM, None)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    graceful_timeout: float = 2.0,
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Run ``app`` on uvicorn in a background thread; yields its base URL.

    A free loopback port is picked unless ``port`` is given. Leaving the block shuts the
    server down (in-flight streams get ``graceful_timeout`` seconds).

    >>> with serve_in_thread(app) as base_url:  # doctest: +SKIP
    ...     QuillClient(base_url).call("echo.v1.EchoService", "Echo", b"hi")
    """
    sock = _bind(host, port)
    server = _uvicorn_server(app, log_level, graceful_timeout, access_log=False)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"quill-server-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(startup_timeout)
            sock.close()
            raise RuntimeError("quill server failed to start") from (failure[0] if failure else None)
        time.sleep(0.005)
    try:
        yield _url(sock)
    finally:
        server.should_exit = True
        thread.join(graceful_timeout + 5.0)
        sock.close()
