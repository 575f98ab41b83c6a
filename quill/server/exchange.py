"""One HTTP exchange on the ASGI interface: the request body read within its limit (zstd
decoded, as bytes, messages or a tensor), and the answer sent (whole, or as a stream of frames
that a CANCEL frame ends when the handler fails midway).

Content negotiation lives here too: ``Accept: application/json`` asks for JSON answers, and a
tensor request says so in its Content-Type (``application/proto; frames=tensor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import types
from typing import Any, AsyncIterator, Callable, Iterable

from ..errors import DecodeError, LimitExceededError, ProblemDetails
from ..protocol import compression
from ..protocol.constants import COMPRESSION_THRESHOLD, JSON, PROBLEM_JSON, PROTO, is_json, is_tensor_frames
from ..protocol.numbers import content_length, is_decimal
from ..protocol.problems import problem
from ..protocol.responses import ContentDecoder
from .context import Context
from .handlers import close_async_iterator
from .problems import ClientGone, HttpProblem

__all__ = ["Exchange", "SEND_BYTES_EXTENSION", "header_dict", "wants_json", "unary_content_type"]

logger = logging.getLogger("quill.server")
_END = object()

#: Frames of items that a handler makes back to back are joined into one body message of
#: about this size at most: one engine send (one socket write) instead of one per frame.
JOIN_BYTES = 64 * 1024
#: A frame waits to be joined with the next one only when its item was ready within this
#: time of being asked for. A handler that awaits between items, or computes between them
#: without awaiting, gets each frame sent as soon as it is made.
QUICK_ITEM_SECONDS = 50e-6


@types.coroutine
def _resume(step: Any, signal: Any) -> Any:
    """Await the rest of an awaitable whose first step (``step.send(None)``) ran and yielded
    ``signal``: what ``yield from`` does, less the first step."""
    while True:
        try:
            value = yield signal
        except GeneratorExit:
            step.close()
            raise
        except BaseException as exc:  # cancellation, thrown into the handler where it waits
            try:
                signal = step.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                signal = step.send(value)
            except StopIteration as done:
                return done.value


def header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI headers as a dict of lower-case names; repeated headers joined by ``", "``.

    >>> header_dict([(b"X-A", b"1"), (b"x-a", b"2")])
    {'x-a': '1, 2'}
    """
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _peer(client: Any) -> tuple[str, int] | None:
    """The ASGI ``client`` as ``(host, port)`` with an int port (granian reports it as a str).

    >>> _peer(["127.0.0.1", "41110"]), _peer(None)
    (('127.0.0.1', 41110), None)
    """
    if not client:
        return None
    host, port = client[0], client[1]
    return host, int(port) if isinstance(port, str) and is_decimal(port) else port


def wants_json(headers: dict[str, str]) -> bool:
    """True when the client asked for JSON and not protobuf (``Accept: application/json``)."""
    accept = headers.get("accept", "").lower()
    return JSON in accept and PROTO not in accept


def unary_content_type(headers: dict[str, str]) -> str:
    """The Content-Type of a message answer: JSON when asked for, or for a JSON request that
    did not ask for protobuf; protobuf otherwise."""
    accept = headers.get("accept", "").lower()
    if wants_json(headers) or (PROTO not in accept and is_json(headers.get("content-type", ""))):
        return JSON
    return PROTO


#: The ASGI scope extension by which an engine says that it takes response bodies fast only as
#: ``bytes`` (granian converts a memoryview element by element: 76 MB/s against 1.6 GB/s).
SEND_BYTES_EXTENSION = "quill.send_bytes"


class Exchange:
    """The state of one request/response: body reading with limits, sending, counters.

    ``max_request_bytes`` bounds the body on the wire and after decompression (None: no limit).
    ``send_bytes`` is True when the engine announced :data:`SEND_BYTES_EXTENSION`.
    ``shm_channel`` is the app's shared-memory channel (:mod:`quill.server.shm_channel`), if any.
    """

    shm_channel: Any = None

    def __init__(self, scope: dict, receive: Callable, send: Callable, method_path: str,
                 max_request_bytes: int | None):
        self.scope = scope
        self._receive = receive
        self._send = send
        self.max_request_bytes = max_request_bytes
        self.headers = header_dict(scope.get("headers", ()))
        self.context = Context(method_path, self.headers, _peer(scope.get("client")))
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.items_out = 0
        self.body_complete = False
        self.stream_failed = False
        self.send_bytes = SEND_BYTES_EXTENSION in (scope.get("extensions") or ())

    # -- receiving ------------------------------------------------------------------
    def _content_decoder(self) -> ContentDecoder:
        encoding = self.headers.get("content-encoding", "").strip().lower()
        zstd = compression.available()
        if encoding not in ("", "identity") and not (encoding == "zstd" and zstd):
            raise HttpProblem(
                problem(415, "Unsupported content encoding", f"Content-Encoding {encoding!r} is not supported; "
                        "send identity" + (" or zstd" if zstd else "")),
                [("accept-encoding", "zstd" if zstd else "identity")],
            )
        return ContentDecoder(self.headers, self.max_request_bytes, "request body")

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The request body as it arrives, zstd-decoded (in pieces of at most 1 MiB), within
        ``max_request_bytes``."""
        limit = self.max_request_bytes
        declared = content_length(self.headers, "request")  # DecodeError (400) when malformed
        if limit is not None and declared is not None and declared > limit:
            raise LimitExceededError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        decoder = self._content_decoder()
        while not self.body_complete:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            self.bytes_in += len(chunk)
            if limit is not None and self.bytes_in > limit:
                raise LimitExceededError(f"request body exceeds the limit of {limit} bytes")
            self.body_complete = not message.get("more_body", False)
            for piece in decoder.decode(chunk):
                yield piece
        decoder.finish()

    async def discard_small_body(self, limit: int = 65536) -> None:
        """Read and drop an unread body of known small size, so the connection stays reusable."""
        declared = self.headers.get("content-length", "" if "transfer-encoding" in self.headers else "0")
        if self.body_complete or not is_decimal(declared) or int(declared) > limit:
            return
        while not self.body_complete:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            self.body_complete = not message.get("more_body", False)

    async def linger_after_early_answer(self, timeout: float = 1.0) -> None:
        """After an answer sent before the request body was read, on HTTP/2: keep the stream open
        (dropping what arrives) until the client stops sending, at most ``timeout`` seconds.

        An HTTP/1.1 answer says ``Connection: close`` instead. On HTTP/2 an engine may reset the
        stream as soon as the app returns with the body unread, before the answer is flushed
        (granian 2.8 does, so the client never sees the 413).
        """
        if self.body_complete or self.scope.get("http_version", "1.1").startswith("1"):
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wait_disconnect(), timeout)

    async def read_body(self) -> bytes:
        return b"".join([chunk async for chunk in self.body_chunks()])

    async def read_tensor_or_body(self) -> Any:
        """A Tensor when the Content-Type says the body is tensor frames
        (:data:`~quill.protocol.constants.TENSOR_FRAMES`), else the body's bytes."""
        if not is_tensor_frames(self.headers.get("content-type", "")):
            return await self.read_body()
        from ..frames import TensorReceiver

        receiver = TensorReceiver(max_bytes=self.max_request_bytes)
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
        from ..frames import MessageStreamDecoder

        decoder = MessageStreamDecoder()
        async for chunk in self.body_chunks():
            for message in decoder.feed(chunk):
                yield message
        decoder.finish()

    def take_body(self, body: bytes) -> None:
        """Read ``body`` as the request body (a GET call whose request came in its query); what
        the engine delivers after it (the disconnect) still arrives."""
        receive, first = self._receive, {"type": "http.request", "body": body, "more_body": False}

        async def replay() -> dict:
            nonlocal first
            if first is None:
                return await receive()
            message, first = first, None
            return message

        self._receive = replay

    async def wait_disconnect(self) -> None:
        """Return when the client goes away (call only once the body is fully read)."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return

    async def receive_raw(self) -> dict:
        """The next ASGI receive message as the engine gives it (no limit, no decoding)."""
        return await self._receive()

    # -- sending --------------------------------------------------------------------
    def replace_send(self, send: Callable) -> Callable:
        """Send every ASGI message of the answer through ``send`` from now on; the previous one."""
        previous, self._send = self._send, send
        return previous

    async def send_raw(self, message: dict) -> None:
        """Send one ASGI message as it is (a recorded answer replayed)."""
        await self._send(message)

    async def start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        self.status = status
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        if not self.body_complete and self.scope.get("http_version", "1.1").startswith("1"):
            # HTTP/1.x: the rest of an unread body is not worth draining. (HTTP/2 forbids the
            # header, and the engine resets just the stream.)
            raw.append((b"connection", b"close"))
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

    async def respond_problem(self, answer: ProblemDetails, headers: Iterable[tuple[str, str]] = ()) -> None:
        body = answer.to_dict()  # a copy: a handler's ProblemDetails is never modified
        body.setdefault("instance", self.scope.get("path"))
        status = answer.status
        if not 400 <= status <= 599:
            logger.error("%s answered a ProblemDetails with status %r; sending 500", self.context.method_path, status)
            status = body["status"] = 500
        await self.respond(status, json.dumps(body, separators=(",", ":")).encode(), PROBLEM_JSON, headers)

    async def stream(self, items: AsyncIterator, encode: Callable, end_frame: bytes, cancel_frame: Callable,
                     headers: list[tuple[str, str]] | None = None) -> None:
        """Send ``items`` as frames; a failing handler ends the stream with ``cancel_frame(exc)``
        (a CANCEL frame).

        ``encode(item)`` gives a frame's bytes, or a tuple of buffers (a frame header, then the
        item's own payload) that are sent one after another without being joined. Frames of
        items the handler has ready back to back go out joined (see :data:`JOIN_BYTES`).
        ``headers`` replace the answer's usual ones (``application/proto``, zstd when accepted)
        and then nothing is compressed.

        The first item is fetched before the response starts, so a handler that fails
        straight away still gets a proper Problem Details status (its exception propagates
        from here). A client that disconnects, even before the first item, cancels the
        handler's iterator: its ``finally`` blocks run and it does no more work.
        """
        pump = asyncio.ensure_future(self._pump(items, encode, end_frame, cancel_frame, headers))
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

    async def _pump(self, items: AsyncIterator, encode: Callable, end_frame: bytes, cancel_frame: Callable,
                    headers: list[tuple[str, str]] | None) -> None:
        try:
            try:
                item = await items.__anext__()
            except StopAsyncIteration:
                item = _END
            zstd = self.answer_compressor() if headers is None else None
            await self.start(200, headers if headers is not None else
                             [("content-type", PROTO), *(() if zstd is None else [("content-encoding", "zstd")])])
            next_item, compress, clock = items.__anext__, None if zstd is None else zstd.compress, time.perf_counter
            pending: list = []  # frames of items that came back to back, sent joined (see JOIN_BYTES)
            held = 0  # their bytes
            quick = False  # whether ``item`` was ready the moment it was asked for
            try:
                # The per-item path, kept lean (a token stream sends one message per batch).
                while item is not _END:
                    frame = encode(item)
                    self.items_out += 1
                    if type(frame) is tuple:  # (header, payload): a large message
                        await self._send_large(pending, frame, compress)
                        held = 0
                    else:
                        pending.append(frame)
                        held += frame.nbytes if type(frame) is memoryview else len(frame)
                        if not quick or held >= JOIN_BYTES:
                            await self._send_joined(pending, compress)
                            held = 0
                    started = clock()
                    if not pending:  # nothing held: the next item simply awaited
                        try:
                            item = await next_item()
                        except StopAsyncIteration:
                            break
                        quick = clock() - started < QUICK_ITEM_SECONDS
                        continue
                    # Frames held: the next item taken as it is when the handler has it ready...
                    step = next_item().__await__()
                    try:
                        signal = step.send(None)
                    except StopIteration as ready:
                        item = ready.value
                        quick = clock() - started < QUICK_ITEM_SECONDS
                        continue
                    except StopAsyncIteration:
                        break
                    # ...else it waits for something: what is held goes out first.
                    await self._send_joined(pending, compress)
                    held, quick = 0, False
                    try:
                        item = await _resume(step, signal)
                    except StopAsyncIteration:
                        item = _END
                last = end_frame
            except Exception as exc:  # the status is out: end the stream with a CANCEL frame
                self.stream_failed = True
                last = cancel_frame(exc)
            pending.append(last)
            last = b"".join(pending)
            await self.body(last if zstd is None else zstd.compress(last) + zstd.flush(), more=False)
        finally:
            await close_async_iterator(items)

    async def _send_large(self, frames: list, message: tuple, compress: Callable | None) -> None:
        """Send ``frames`` (held) and a large message's ``(header, payload)``; the payload is
        sent, or compressed, straight from the handler's buffer."""
        header, payload = message
        frames.append(header)
        if compress is None:
            await self._send_joined(frames, None)
            await self._send_joined([payload], None)
        else:  # the held frames and the header as one zstd block, the payload as the next
            frames[:] = [compress(b"".join(frames)), compress(payload)]
            await self._send_joined(frames, None)

    async def _send_joined(self, frames: list, compress: Callable | None) -> None:
        """Send ``frames`` as one body message (compressed as one zstd block with ``compress``),
        and empty the list."""
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        frames.clear()
        if compress is not None:
            data = compress(data)
        self.bytes_out += data.nbytes if type(data) is memoryview else len(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    def answer_compressor(self) -> compression.StreamCompressor | None:
        """A zstd compressor for a streamed answer when the client accepts zstd, else None.

        Streamed answers (message streams, token streams, tensors) are compressed whatever
        their size: each body message sent (a frame, or frames joined) is flushed as a zstd
        block of its own, so the client decodes it as soon as it arrives (the stream stays a
        stream; nothing is buffered).
        """
        if compression.accepts_zstd(self.headers.get("accept-encoding")):
            return compression.StreamCompressor()
        return None
