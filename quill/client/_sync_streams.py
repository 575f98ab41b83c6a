# Generated from _async_streams.py by tools/unasync.py: do not edit; edit _async_streams.py and run it again.
"""The iterators of streaming calls (the sync ones are generated from this file by
tools/unasync.py). A stream owns its connection until it ends: a clean end gives the connection
back to the pool, closing or cancelling early discards it (the server sees the disconnect).
"""

from __future__ import annotations

import threading
from typing import Any

from ..errors import StreamCancelledError
from ..protocol.requests import Request
from ..protocol.retries import TransportError, quill_error_for
from ._arrow_export import TokenArrowExport
from ._owners import thread_owner

__all__ = ["FrameStream", "MessageStream", "TokenStream", "read_body"]


def read_body(response: Any, consumer: Any) -> tuple[Any, bool]:
    """Read the next part of a body into ``consumer``: the items it completed, and whether the
    body has ended. The rest of a large payload is read straight into place (the consumer's
    window: one copy, from the socket); anything else is read as a chunk and fed. What a
    compressed chunk still holds (the consumer's backlog) is handed out before the next read."""
    if consumer.backlog:
        return consumer.feed(b""), False
    window = consumer.window()
    if window is None:
        data = response.read()
        return (consumer.feed(data), False) if data else ([], True)
    size = len(window)
    filled = response.read_into(window)
    return consumer.commit(window, filled), filled < size


class FrameStream:
    """Iterates the items a frame consumer produces from a streamed response body.

    Each read hands out the items whose frames are complete, so an item arrives as soon as the
    server sends it; the whole body is never buffered. ``cancel()`` may be called from any task
    or thread: the read pending then, or else the next one, raises StreamCancelledError (once,
    whether or not a read was waiting on the socket at that moment); later iteration ends. The
    connection is closed and given back where the stream lives (an async stream's on its event
    loop), exactly once.
    """

    _what = "stream"

    def __init__(self, response: Any, consumer: Any, request: Request):
        self._response = response
        self._consumer = consumer
        self._request = request
        self._items: list = []
        self._index = 0
        self._open = True
        self._reading = False  # a read is under way (cancel() then leaves the release to it)
        self._lock = threading.Lock()  # guards _open, _reading and cancelled across threads
        self._on_owner = thread_owner()
        self.cancelled = False
        self._cancel_told = False  # StreamCancelledError raised once already

    @property
    def headers(self) -> dict[str, str]:
        """The response headers (lower-case names)."""
        return dict(self._response.headers)

    def __iter__(self) -> "FrameStream":
        return self

    def __next__(self) -> Any:
        while self.cancelled or self._index >= len(self._items):
            if self.cancelled:  # items read before the cancel are dropped
                self._finish(False)
                if not self._cancel_told:
                    raise self._cancelled_error()
                raise StopIteration
            if not self._open:
                raise StopIteration
            self._fill()
        item = self._items[self._index]
        self._index += 1
        return item

    def _fill(self) -> None:
        """Read until the consumer hands out items or the stream ends (then release the connection)."""
        self._items, self._index = [], 0
        with self._lock:
            if self.cancelled:
                return  # the caller raises StreamCancelledError
            self._reading = True
        consumer = self._consumer
        try:
            while True:
                if consumer.done:
                    self._drain()
                    return
                items, ended = read_body(self._response, consumer)
                if ended:
                    consumer.finish()  # raises IncompleteStreamError without END_STREAM
                    self._finish(True)
                    return
                if items:
                    self._items = items
                    if consumer.done:
                        self._drain()
                    return
        except TransportError as failure:
            self._finish(False)
            if self.cancelled:
                raise self._cancelled_error() from None
            when = f"mid-{self._what} after {consumer.count} item(s)"
            raise quill_error_for(failure, self._request.call.describe(), self._request.timeout, when) from failure
        except BaseException:  # IncompleteStreamError, a bad frame, a cancelled task...
            self._finish(False)
            raise
        finally:
            with self._lock:
                self._reading = False
                cancelled = self.cancelled
            if cancelled:
                self._finish(False)

    def _cancelled_error(self) -> StreamCancelledError:
        self._cancel_told = True
        return StreamCancelledError(f"{self._request.call.describe()}: the {self._what} was cancelled")

    def _drain(self) -> None:
        """After END_STREAM only the end of the HTTP body may follow; read it so the connection is reused."""
        while True:
            data = self._response.read()
            if not data:
                break
            self._consumer.feed(data)  # raises: data after END_STREAM
        self._finish(True)

    def _finish(self, reusable: bool) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
        self._response.release(reusable)

    def close(self) -> None:
        """Stop reading; an unfinished stream's connection is closed (the server sees the disconnect)."""
        self._finish(False)

    def cancel(self) -> None:
        """Cancel the call from any task or thread: the connection is closed so the server stops
        producing; the pending (or next) read raises StreamCancelledError, then iteration ends."""
        with self._lock:
            if not self._open or self.cancelled:
                return
            self.cancelled = True
            idle = not self._reading
        self._on_owner(self._close_now, idle)

    def _close_now(self, idle: bool) -> None:
        """With no read under way, close and give back the connection; else abort it: the pending
        read fails at once, and gives it back itself."""
        if idle:
            self._finish(False)
        else:
            self._response.abort()

    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:  # dropped unfinished; the collector may run in any thread
        try:
            if self._open:
                self._open = False
                self._on_owner(self._response.release, False)
        except Exception:
            pass


class MessageStream(FrameStream):
    """The response messages (bytes) of a server-streaming call, in order.

    >>> stream = client.call_stream("demo.v1.Feed", "Watch", b"")  # doctest: +SKIP
    >>> first = stream.__next__(); stream.cancel()                # doctest: +SKIP
    """

    _what = "message stream"


class TokenStream(FrameStream, TokenArrowExport):
    """The TokenBatch objects of a token-streaming call, in order.

    >>> ids = [t.id for batch in client.stream_tokens("s", "Generate", b"") for t in batch]  # doctest: +SKIP
    """

    _what = "token stream"
