"""Requests as data: what to send, built once and sent by any transport (no IO here).

A :class:`Request` carries the method, the target path, the header list (without the framing
headers a transport adds itself), and a :class:`Body`: either a list of buffers of known length
(never joined or copied: a tensor's memory goes out as views) or a factory of a chunk iterator
for a body of unknown length (client streams, compressed tensor frames).

>>> body = Body.of_buffer(b"hi")
>>> body.length, body.replayable
(2, True)
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Iterator

from ..errors import EncodeError
from ..frames import encode_end_stream, stream_frame_header

__all__ = ["Body", "Request", "CallInfo", "as_buffer", "buffer_size", "encode_json", "encode_json_request",
           "frame_messages", "aframe_messages"]


def buffer_size(buffer: Any) -> int:
    """The size in bytes of a bytes-like object."""
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


def as_buffer(data: Any, what: str = "request") -> Any:
    """Any bytes-like object, without copying (bytes, bytearray, memoryview, numpy arrays).

    >>> as_buffer(bytearray(b"ab"))
    bytearray(b'ab')
    """
    if isinstance(data, (bytes, bytearray)):
        return data
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, got {type(data).__name__}") from None
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON; EncodeError for what JSON cannot carry."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise EncodeError(f"request is not JSON serializable: {exc}") from None


def encode_json_request(obj: Any) -> bytes:
    """The body of ``call_json``: ``obj`` as JSON. A str is sent as a JSON string, but not one
    that holds the JSON text of an object or array, nor bytes: those are JSON encoded already,
    by mistake (sent as a JSON string they would arrive encoded twice), EncodeError.

    >>> encode_json_request("hello"), encode_json_request({"prompt": "hello"})
    (b'"hello"', b'{"prompt":"hello"}')
    >>> encode_json_request('{"prompt": "hello"}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    quill.errors.EncodeError: call_json takes the request as a Python object (a dict, a list, ...), not a str ...
    """
    if isinstance(obj, (bytes, bytearray, memoryview)):
        raise EncodeError(f"call_json takes the request as a Python object (a dict, a list, ...), not "
                          f"{type(obj).__name__}: pass json.loads(data) for JSON, or send the bytes as they are with "
                          "call(service, method, data, headers={'Content-Type': 'application/json'})")
    if isinstance(obj, str) and obj.lstrip(" \t\n\r")[:1] in ("{", "[") and _is_json_container(obj):
        raise EncodeError("call_json takes the request as a Python object (a dict, a list, ...), not a str of JSON "
                          "text: pass json.loads(text), or send the text as it is with call(service, method, "
                          "text.encode(), headers={'Content-Type': 'application/json'})")
    return encode_json(obj)


def _is_json_container(text: str) -> bool:
    try:
        return isinstance(json.loads(text), (dict, list))
    except (ValueError, RecursionError):  # not JSON, or nested too deep to tell: a JSON string then
        return False


def frame_messages(messages: Iterable) -> Iterator[Any]:
    """The buffers of a message stream: a frame header and the (uncopied) payload per message,
    then END_STREAM."""
    for message in messages:
        payload = as_buffer(message, "each streamed message")
        yield stream_frame_header(buffer_size(payload))
        yield payload
    yield encode_end_stream()


async def aframe_messages(messages: Any, compressor: Any = None) -> Any:
    """:func:`frame_messages` over an async iterable, zstd-compressed by ``compressor`` if given."""
    def out(piece):
        return compressor.compress(piece) if compressor is not None else piece

    async for message in messages:
        payload = as_buffer(message, "each streamed message")
        yield out(stream_frame_header(buffer_size(payload)))
        yield out(payload)
    yield out(encode_end_stream())
    if compressor is not None:
        yield compressor.flush()


class Body:
    """A request body, built once: a retry sends the very same buffers again (never a copy).

    ``parts`` is a list of bytes-like objects of total ``length``; or ``chunks`` is a zero-argument
    callable returning an iterator of buffers (sent with chunked transfer encoding, or DATA frames).
    ``rewindable`` says whether calling ``chunks`` again yields the same stream: a caller's
    iterator cannot be replayed once started. ``encoding`` is the Content-Encoding (``"zstd"``).
    """

    __slots__ = ("parts", "length", "chunks", "encoding", "rewindable", "started")

    def __init__(self, parts: list | None = None, length: int = 0, chunks: Callable[[], Iterator] | None = None,
                 encoding: str | None = None, rewindable: bool = True):
        self.parts = parts
        self.length = length
        self.chunks = chunks
        self.encoding = encoding
        self.rewindable = rewindable
        self.started = False

    @classmethod
    def of_buffer(cls, data: Any, encoding: str | None = None) -> "Body":
        """A body of one buffer."""
        return cls([data], buffer_size(data), encoding=encoding)

    @property
    def replayable(self) -> bool:
        """Whether the body can be sent again (for a retry)."""
        return self.rewindable or not self.started

    def iter_chunks(self) -> Iterator:
        """Start the chunk stream (marks the body as started)."""
        self.started = True
        return self.chunks()


class CallInfo:
    """What a call is, for error messages (``name``, ``url``) and where it goes (``target``)."""

    __slots__ = ("name", "target", "url", "idempotent")

    def __init__(self, name: str, target: bytes, url: str, idempotent: bool = False):
        self.name = name
        self.target = target
        self.url = url
        self.idempotent = idempotent

    def describe(self) -> str:
        """``"svc/Method at http://host/svc/Method"``, the prefix of every error message."""
        return f"{self.name} at {self.url}"


class Request:
    """One request, ready for a transport.

    ``headers`` is a tuple of ``(name, value)`` pairs without framing headers; ``header_key`` is
    equal for requests whose headers are equal (transports cache their serialization by it).
    ``expect`` names what the answer is read as: bytes, json, messages, tokens or tensor.
    ``tensor`` is the Tensor the body carries as tensor frames (None for other bodies): a
    transport may move it another way (shared memory, :mod:`quill.transports.shm`).
    """

    __slots__ = ("method", "call", "headers", "header_key", "body", "timeout", "idempotent", "expect", "tensor")

    def __init__(self, method: str, call: CallInfo, headers: tuple, header_key: Any, body: Body | None,
                 timeout: float, idempotent: bool, expect: str, tensor: Any = None):
        self.method = method
        self.call = call
        self.headers = headers
        self.header_key = header_key
        self.body = body
        self.timeout = timeout
        self.idempotent = idempotent
        self.expect = expect
        self.tensor = tensor

    @property
    def target(self) -> bytes:
        """The request target (path) as ASCII bytes."""
        return self.call.target

    @property
    def replayable(self) -> bool:
        """Whether the body (if any) can be sent again."""
        return self.body is None or self.body.replayable

    def __repr__(self) -> str:
        return f"Request({self.method} {self.call.url}, expect={self.expect!r})"
