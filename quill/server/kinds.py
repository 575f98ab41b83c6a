"""Serving each handler kind: read the request as the kind expects, call the handler, send
its answer (a message, a stream of frames, or a tensor).

============================  ======================================================
kind                          answer
============================  ======================================================
``unary``, ``client_stream``  the message (JSON when the call asked for JSON)
``server_stream``             message-stream frames, then END_STREAM
``token_stream``              TOKEN_BATCH frames, then END_STREAM (one JSON answer
                              with ``Accept: application/json``)
both streams                  SSE or NDJSON with ``Accept: text/event-stream`` or
                              ``application/x-ndjson`` (:mod:`.event_streams`)
``tensor``                    tensor frames whose payloads are views of the Tensor
============================  ======================================================

A handler may answer a :class:`~quill.errors.ProblemDetails` instead, in every kind. A tensor
answer (or a message) that the request's Accept declared it does not read is refused with 406
(:func:`~quill.server.discovery.check_answer_form`).
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

from ..errors import ProblemDetails
from ..protocol.constants import JSON, PROTO
from ..protocol.json_answers import batch_json, dumps, finite_floats, token_dicts
from .discovery import check_answer_form
from .event_streams import event_format, message_json, send_event_stream
from .exchange import Exchange, unary_content_type, wants_json
from .handlers import Route, as_async_iterator, as_body, close_async_iterator, invoke
from .problems import cancel_reason

__all__ = ["SERVE_KIND"]


async def _serve_unary(exchange: Exchange, route: Route) -> None:
    request = await exchange.read_body()
    result = await invoke(route.function, request, exchange.context)
    await _answer_message(exchange, route, result)


async def _serve_client_stream(exchange: Exchange, route: Route) -> None:
    messages = exchange.messages()
    try:
        result = await route.function(messages, exchange.context)
    finally:
        await messages.aclose()
    await _answer_message(exchange, route, result)


async def _answer_message(exchange: Exchange, route: Route, result: Any) -> None:
    if isinstance(result, ProblemDetails):
        await exchange.respond_problem(result)
        return
    body = as_body(result, route.path)
    await exchange.respond(200, bytes(body), unary_content_type(exchange.headers))


async def _stream_items(exchange: Exchange, route: Route) -> AsyncIterator | None:
    """Call a streaming handler with the request body: its items, or None once a
    ProblemDetails it returned has been answered."""
    request = await exchange.read_body()
    result = await invoke(route.function, request, exchange.context)
    if isinstance(result, ProblemDetails):
        await exchange.respond_problem(result)
        return None
    return as_async_iterator(result, route.path)


#: Messages of at least this size are sent as their frame header, then the handler's own
#: buffer (no copy into a joined frame), unless the engine wants ``bytes`` bodies.
SPLIT_MESSAGE_BYTES = 64 * 1024


async def _serve_server_stream(exchange: Exchange, route: Route) -> None:
    from ..frames import encode_end_stream, encode_stream_cancel, encode_stream_frame, stream_frame_header

    items = await _stream_items(exchange, route)
    if items is None:
        return
    form = event_format(exchange.headers)
    if form is not None:
        await send_event_stream(exchange, items, form, lambda message: message_json(as_body(message, route.path)))
        return
    split = SPLIT_MESSAGE_BYTES if not exchange.send_bytes else None

    def encode(message: Any) -> Any:
        body = as_body(message, route.path)
        size = body.nbytes if isinstance(body, memoryview) else len(body)
        if split is not None and size >= split:
            return stream_frame_header(size), body if not isinstance(body, memoryview) else body.cast("B")
        return encode_stream_frame(body)

    await exchange.stream(items, encode, encode_end_stream(),
                          lambda exc: encode_stream_cancel(cancel_reason(exc, route.path)))


async def _serve_token_stream(exchange: Exchange, route: Route) -> None:
    from .._core.tokens import TokenBatch
    from ..frames import END_STREAM_FRAME, encode_cancel_frame, encode_token_batch_frame

    items = await _stream_items(exchange, route)
    if items is None:
        return

    def checked(batch: Any) -> TokenBatch:
        if not isinstance(batch, TokenBatch):
            raise TypeError(f"token_stream handler for {route.path} yielded {type(batch).__name__}, expected TokenBatch")
        return batch

    def encode(batch: Any) -> bytes:  # the per-batch path of binary streams: one call
        return encode_token_batch_frame(batch if isinstance(batch, TokenBatch) else checked(batch))

    form = event_format(exchange.headers)
    if form is not None:
        await send_event_stream(exchange, items, form, lambda batch: batch_json(checked(batch)))
        return
    if wants_json(exchange.headers):
        await _answer_tokens_as_json(exchange, items, checked)
        return
    await exchange.stream(items, encode, END_STREAM_FRAME,
                          lambda exc: encode_cancel_frame(cancel_reason(exc, route.path)))


async def _answer_tokens_as_json(exchange: Exchange, items: AsyncIterator, check: Callable) -> None:
    """``Accept: application/json``: collect the whole generation into one JSON answer."""
    tokens = []
    try:
        async for batch in items:
            tokens.extend(token_dicts(check(batch)))
    finally:
        await close_async_iterator(items)
    text = "".join(t["text"] or "" for t in tokens)
    await exchange.respond(200, dumps({"text": text, "tokens": tokens}), JSON)


async def _serve_tensor(exchange: Exchange, route: Route) -> None:
    from ..tensor import Tensor
    from .shm_calls import shared_call

    shared = shared_call(exchange)
    request = await (exchange.read_tensor_or_body() if shared is None else shared.read_request(exchange))
    result = await invoke(route.function, request, exchange.context)
    if isinstance(result, ProblemDetails):
        await exchange.respond_problem(result)
    elif isinstance(result, Tensor):
        if wants_json(exchange.headers):
            await exchange.respond(200, _tensor_json(result), JSON)
        else:
            check_answer_form(exchange.headers, route, "tensor")
            if shared is None or not await shared.answer(exchange, result):
                await _send_tensor(exchange, result)
    else:
        body = bytes(as_body(result, route.path))
        if not wants_json(exchange.headers):
            check_answer_form(exchange.headers, route, "none")
        await exchange.respond(200, body, unary_content_type(exchange.headers))


async def _send_tensor(exchange: Exchange, tensor: Any) -> None:
    """Tensor frames. Payload frames are views of the tensor's memory, sent as they are with a
    Content-Length; compressed (zstd accepted) they go through the compressor view by view and
    leave in chunked blocks of about :data:`SEND_BLOCK_BYTES`. An engine that takes only
    ``bytes`` bodies at speed (``send_bytes``, see :class:`~quill.server.exchange.Exchange`)
    gets uncompressed frames joined into such blocks: one copy, a block at a time, never the
    whole tensor."""
    from ..frames import encode_tensor_frames

    pieces = list(encode_tensor_frames(tensor, chunk_size=TENSOR_ANSWER_FRAME_BYTES))
    zstd = exchange.answer_compressor()
    if zstd is not None:
        await exchange.start(200, [("content-type", PROTO), ("content-encoding", "zstd")])
        pending: list[bytes] = []
        size = 0
        for piece in pieces:
            out = zstd.compress(piece)
            pending.append(out)
            size += len(out)
            if size >= SEND_BLOCK_BYTES:
                await exchange.body(b"".join(pending), more=True)
                pending, size = [], 0
        pending.append(zstd.flush())
        await exchange.body(b"".join(pending), more=False)
        return
    total = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in pieces)
    # joined lazily, each block as it is sent (a list of them was a copy of the whole tensor)
    body = _blocks(pieces, SEND_BLOCK_BYTES) if exchange.send_bytes else iter(pieces)
    await exchange.start(200, [("content-type", PROTO), ("content-length", str(total))])
    held = next(body)  # the META frame, at least
    for piece in body:
        await exchange.body(held, more=True)
        held = piece
    await exchange.body(held, more=False)


#: The payload frame size of tensor answers: 1 MiB instead of the reference's 64 KiB default halves
#: uvicorn's CPU per tensor (each frame is two ASGI sends: 8,192 of them for 256 MiB in 64 KiB
#: frames, 512 in 1 MiB ones) and took a 256 MiB answer from ~2.2 to ~4.3 GB/s. Receivers accept
#: any frame size (quill's, and the reference's).
TENSOR_ANSWER_FRAME_BYTES = 1 << 20


#: The size of the blocks a tensor answer is joined into for engines that want bytes bodies (a
#: 1 MiB payload frame and its header; measured on granian: 76 MB/s with views, 1.6 GB/s with
#: 1 MiB blocks, 0.9 GB/s with 4 MiB ones, when frames were 64 KiB).
SEND_BLOCK_BYTES = 1 << 20


def _blocks(pieces: list, size: int) -> Any:
    """``pieces`` (bytes and memoryviews) joined into bytes of at least ``size`` (the last may be
    shorter), in order."""
    run: list = []
    length = 0
    for piece in pieces:
        run.append(piece)
        length += piece.nbytes if isinstance(piece, memoryview) else len(piece)
        if length >= size:
            yield b"".join(run)
            run, length = [], 0
    if run:
        yield b"".join(run)


def _tensor_json(tensor: Any) -> bytes:
    """A tensor as JSON: name, shape, dtype and the elements as nested lists (floats for half types;
    NaN and the infinities as strings, see :mod:`quill.protocol.json_answers`)."""
    import numpy as np

    dtype = tensor.dtype
    array = tensor.to_numpy(dtype="float32") if dtype.name in ("bfloat16", "float16") else tensor.to_numpy()
    data = array.tolist()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        data = finite_floats(data)
    return dumps({"name": tensor.name, "shape": list(tensor.shape), "dtype": dtype.name, "data": data})


#: How each handler kind is served.
SERVE_KIND: dict[str, Callable[[Exchange, Route], Awaitable[None]]] = {
    "unary": _serve_unary,
    "server_stream": _serve_server_stream,
    "client_stream": _serve_client_stream,
    "token_stream": _serve_token_stream,
    "tensor": _serve_tensor,
}
