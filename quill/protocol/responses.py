"""Reading answers without IO: content decoding, the consumers that turn body chunks into results,
and the mapping of a non-2xx answer to its :class:`~quill.errors.RpcError`.

A transport hands each chunk of a response body (after HTTP framing, before content decoding)
to a consumer's ``feed``; ``finish`` gives the result or raises.

>>> consumer = BytesConsumer({}, limit=10, call="s/M at http://h/s/M")
>>> consumer.feed(b"hello"); consumer.finish()
b'hello'
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any, Iterable, Iterator, Mapping

from ..errors import (
    DecodeError,
    IncompleteStreamError,
    LimitExceededError,
    ProblemDetails,
    RpcError,
    WrongKindError,
    rpc_error_for_status,
)
from .compression import ZstdDecoder
from .compression import available as zstd_available
from .constants import media_type
from .kinds import wrong_kind_hint
from .numbers import content_length, parse_real

__all__ = [
    "ERROR_BODY_LIMIT",
    "DECODE_PIECE",
    "WINDOW_MIN",
    "ContentDecoder",
    "BytesConsumer",
    "JsonConsumer",
    "FrameConsumer",
    "TensorConsumer",
    "error_for_response",
    "parse_retry_after",
]

#: At most this much of an error body is read (the rest is dropped with the connection).
ERROR_BODY_LIMIT = 64 * 1024
#: A compressed chunk is decoded in pieces of at most this size.
DECODE_PIECE = 1 << 20
#: A payload with at least this much still to come is read from the socket straight into place
#: (the consumer's ``window()``), instead of being copied out of a read chunk.
WINDOW_MIN = 64 * 1024


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP date); None if absent or bad.

    >>> parse_retry_after("1.5"), parse_retry_after("soon")
    (1.5, None)
    """
    if not value:
        return None
    value = value.strip()
    seconds = parse_real(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class ContentDecoder:
    """Undo a response's Content-Encoding (identity or zstd); ``limit`` bounds the decoded size.

    ``decode(raw)`` iterates over the decoded pieces, each at most :data:`DECODE_PIECE` bytes
    for zstd, produced one at a time as the caller takes them: a small chunk that expands hugely
    never exists decoded in full. A caller that stops early leaves the rest in the decoder
    (``backlog``); ``decode(b"")`` goes on from there.
    """

    __slots__ = ("_zstd",)

    def __init__(self, headers: Mapping[str, str], limit: int | None, what: str):
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            self._zstd = None
        elif encoding == "zstd" and zstd_available():
            self._zstd = ZstdDecoder(limit, what)
        else:
            raise DecodeError(f"{what}: unsupported response Content-Encoding {encoding!r}")

    @property
    def identity(self) -> bool:
        return self._zstd is None

    @property
    def backlog(self) -> bool:
        """True when input already given may still decode into more pieces."""
        return self._zstd is not None and self._zstd.has_output

    def decode(self, raw) -> Iterable:
        if self._zstd is None:
            return (raw,) if raw else ()
        return self._pieces(raw)

    def _pieces(self, raw) -> Iterator:
        zstd = self._zstd
        piece = zstd.decompress(raw, DECODE_PIECE)
        while piece:
            yield piece
            piece = zstd.decompress(b"", DECODE_PIECE) if zstd.has_output else b""

    def finish(self) -> None:
        if self._zstd is not None:
            self._zstd.finish()


class BytesConsumer:
    """A whole response body as bytes, bounded by ``limit`` (wire size and decoded size)."""

    __slots__ = ("_decoder", "_pieces", "_size", "_limit", "_call")

    def __init__(self, headers: Mapping[str, str], limit: int, call: str):
        self._call = call
        self._limit = limit
        declared = content_length(headers, call)
        if declared is not None and declared > limit:
            raise LimitExceededError(f"{call}: response of {declared} bytes exceeds max_response_bytes={limit}")
        self._decoder = ContentDecoder(headers, limit, f"{call}: response body")
        self._pieces: list = []
        self._size = 0

    def feed(self, raw) -> None:
        for piece in self._decoder.decode(raw):
            self._size += len(piece)
            if self._size > self._limit:
                raise LimitExceededError(f"{self._call}: response exceeds max_response_bytes={self._limit}")
            self._pieces.append(piece)

    def finish(self) -> Any:
        self._decoder.finish()
        pieces = self._pieces
        return pieces[0] if len(pieces) == 1 and isinstance(pieces[0], bytes) else b"".join(pieces)


class JsonConsumer(BytesConsumer):
    """A JSON answer, parsed (None for an empty body)."""

    __slots__ = ()

    def finish(self) -> Any:
        data = super().finish()
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"{self._call}: response is not valid JSON ({exc}); starts with {data[:80]!r}") from None


class _BodyConsumer:
    """What the frame and tensor consumers share: the content decoder of a streamed body."""

    __slots__ = ("_decoder", "_call")

    def __init__(self, headers: Mapping[str, str], call: str, what: str):
        content_length(headers, call)  # a malformed one is refused (the sync transport would read on to the close)
        self._decoder = ContentDecoder(headers, None, f"{call}: {what}")
        self._call = call


class FrameConsumer(_BodyConsumer):
    """The items (messages or token batches) a frame decoder finds in a streamed body.

    A compressed chunk is decoded a piece at a time, and ``feed`` returns once a piece has
    completed items, so what one call hands out is bounded by the frame decoder's limit, however
    far the chunk expands. The rest stays in the decoder: ``backlog`` is then True, and
    ``feed(b"")`` must come before more of the body is read.
    """

    __slots__ = ("_frames", "count", "_what", "_identity", "backlog")

    def __init__(self, headers: Mapping[str, str], frames: Any, call: str, what: str):
        super().__init__(headers, call, what)
        self._frames = frames
        self._what = what
        self._identity = self._decoder.identity
        self.count = 0
        self.backlog = False

    @property
    def done(self) -> bool:
        """True once END_STREAM has been seen (only the end of the body may follow)."""
        return self._frames.done

    def feed(self, raw) -> list:
        if self._identity:  # the per-batch path of a token stream, kept lean
            items = self._frames.feed(raw) if raw else []
        else:
            items = self._feed_pieces(raw)
        self.count += len(items)
        return items

    def _feed_pieces(self, raw) -> list:
        items: list = []
        frames = self._frames
        for piece in self._decoder.decode(raw):
            got = frames.feed(piece)
            if got:
                items.extend(got)
                if not frames.done:  # after END_STREAM the next piece is refused at once
                    break
        self.backlog = self._decoder.backlog
        return items

    def window(self) -> Any:
        """Where the next body bytes may be written in place (the rest of a large payload), or
        None: read a chunk and ``feed`` it instead. Only for an identity-encoded body."""
        return self._frames.payload_window(WINDOW_MIN) if self._identity else None

    def commit(self, window: Any, n: int) -> list:
        """``n`` bytes were written into ``window``; the items that completed."""
        items = self._frames.commit(window, n)
        self.count += len(items)
        return items

    def finish(self) -> None:
        """The body ended: raise IncompleteStreamError unless END_STREAM was seen."""
        try:
            self._decoder.finish()
            self._frames.finish()
        except IncompleteStreamError as exc:
            raise IncompleteStreamError(
                f"{self._call}: the {self._what} ended without END_STREAM after {self.count} item(s): {exc.message}",
                exc.offset,
            ) from None


class TensorConsumer(_BodyConsumer):
    """A Tensor received from tensor frames into one allocation (limit ``max_bytes``; from
    ``allocate(size)`` when given: a client's receive pool), or into the caller's ``out`` buffer. A compressed chunk reaches the receiver a piece at a
    time, so its limits (and its refusal of bytes after END_STREAM) apply as output appears."""

    __slots__ = ("_receiver", "_tensor")
    #: Every piece goes to the receiver in the same ``feed``: nothing is held back.
    backlog = False

    def __init__(self, headers: Mapping[str, str], max_bytes: int, call: str, out: Any = None,
                 allocate: Any = None):
        from ..frames import TensorReceiver

        super().__init__(headers, call, "tensor")
        self._receiver = TensorReceiver(max_bytes=max_bytes, out=out, allocate=allocate)
        self._tensor = None

    def feed(self, raw) -> None:
        for piece in self._decoder.decode(raw):
            got = self._receiver.feed(piece)
            if got is not None:
                self._tensor = got

    def window(self) -> Any:
        """Where the next body bytes may be written in place: the rest of the current payload
        frame, inside the tensor's own buffer (see :meth:`FrameConsumer.window`)."""
        return self._receiver.payload_window(WINDOW_MIN) if self._decoder.identity else None

    def commit(self, window: Any, n: int) -> None:
        got = self._receiver.commit(window, n)
        if got is not None:
            self._tensor = got

    def finish(self) -> Any:
        # Always: it raises for a stream without END_STREAM and for bytes after the tensor.
        try:
            self._decoder.finish()
            self._receiver.finish()
        except IncompleteStreamError as exc:
            raise IncompleteStreamError(f"{self._call}: {exc.message}", exc.offset) from None
        return self._tensor


def error_for_response(status: int, headers: Mapping[str, str], body: bytes, call: Any, expect: str | None = None) -> RpcError:
    """The RpcError for a non-2xx answer: Problem Details when the body is one, else the status and
    the start of the body. ``headers`` has lower-case names; ``expect`` is how the call reads its
    answer (a Request's ``expect``): a 406 or 415 naming the method's kind (``quill_method_kind``)
    becomes a :class:`WrongKindError` whose message names the call to make.

    >>> error = error_for_response(404, {"content-type": "text/plain"}, b"nope", None)
    >>> type(error).__name__, error.status
    ('NotFoundError', 404)
    """
    problem = None
    if media_type(headers.get("content-type", "")) in ("application/problem+json", "application/json"):
        try:
            problem = ProblemDetails.from_json(body)
        except DecodeError:
            problem = None
    text = body[:ERROR_BODY_LIMIT].decode("utf-8", "replace")
    where = {
        "call": call.name if call is not None else None,
        "url": call.url if call is not None else None,
        "retry_after": parse_retry_after(headers.get("retry-after")),
    }
    kind = problem.extensions.get("quill_method_kind") if problem is not None else None
    if status in (406, 415) and isinstance(kind, str) and kind:
        method = (where["call"] or "the method").rpartition("/")[2]
        return WrongKindError(status, problem, text, method_kind=kind, expect=expect,
                              hint=wrong_kind_hint(method, kind, expect), **where)
    return rpc_error_for_status(status, problem, text, **where)
