"""Limits on slow and numerous clients, made in quill's layer for the engines that lack one.

Every engine gets a deadline for each request head (``head_timeout``) and a cap on open
connections (``max_connections``), per worker process; :mod:`quill.server.engines` says which
setting of its own each engine uses. Two are missing upstream, and are made here:

- uvicorn has no deadline for a request head: its keep-alive timer runs only between requests
  and the first byte of the next one cancels it, so a client that sends a byte every few seconds
  holds its connection forever (a connection that sends nothing is never timed out at all).
  Its ``limit_concurrency`` counts every open connection, so at the limit the connections
  already open get 503 too. :func:`uvicorn_protocol` subclasses uvicorn's HTTP protocol
  (httptools, or h11 without it) with both, and caps the size of a head, which uvicorn does not
  with httptools (a client could send headers without end within the deadline). It also answers
  an HTTP/2 client with prior knowledge in HTTP/2, with GOAWAY HTTP_1_1_REQUIRED
  (:mod:`quill.server.prior_knowledge`), where uvicorn would close the connection without a word.
- hypercorn has no connection cap (pgjones/hypercorn#81), and asyncio has no public way to stop
  accepting for a while; :class:`CappedListener` is quill's listening socket as hypercorn's
  asyncio loop accepts from it, closing each connection beyond the cap at once.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from . import prior_knowledge

__all__ = ["MAX_HEAD_BYTES", "uvicorn_protocol", "CappedListener"]

#: The largest request head (request line and headers) uvicorn with httptools accepts; a larger
#: one gets 431 and the connection is closed. h11 (400) and hypercorn (431) stop at 16 KiB,
#: granian (hyper) at its 400 KiB read buffer.
MAX_HEAD_BYTES = 64 * 1024
logger = logging.getLogger("quill.server")
HEAD_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def uvicorn_protocol(head_timeout: float, max_connections: int) -> type:
    """uvicorn's HTTP/1.1 protocol class with a head deadline, a connection cap and a head size cap.

    The deadline is armed when the connection opens and at the first byte of each later request;
    the head must be complete ``head_timeout`` seconds after that, or the connection is closed
    (as uvicorn closes an idle kept-alive one: no answer). Between requests uvicorn's own
    keep-alive timeout applies. A connection opened while ``max_connections`` are open gets
    uvicorn's own overload answer once its head is read (503, ``Connection: close``); the others
    go on being served.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class QuillHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _head_deadline: Any = None  # the TimerHandle while a head is awaited
        _head_after: Any = None  # the request cycle that was the last one when it was armed
        _head_bytes = 0
        _first_data = True
        _refused_http2 = False

        def connection_made(self, transport: Any) -> None:
            refused = len(self.connections) >= max_connections  # before uvicorn counts this one
            super().connection_made(transport)
            if refused:
                self.limit_concurrency = 0  # uvicorn's 503 for this connection's requests only
            self._await_head()

        def data_received(self, data: bytes) -> None:
            if self._first_data:
                self._first_data = False
                if prior_knowledge.is_preface(data):
                    self._refuse_http2()
            if self._refused_http2:
                return  # the client's HTTP/2 frames, read so that closing sends no RST over the answer
            if self._head_deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._await_head()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self._head_deadline is None:
                return
            if (self.cycle is not self._head_after or self.transport.get_protocol() is not self
                    or self.transport.is_closing()):
                self._stop_awaiting()  # the head is complete (or upgraded, or refused with 400)
            else:
                self._head_bytes += len(data)  # every byte since the deadline was armed is head
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._stop_awaiting()
                    self.transport.write(HEAD_TOO_LARGE)
                    self.transport.close()

        def _refuse_http2(self) -> None:
            self._refused_http2 = True
            logger.warning("quill: an HTTP/2 client (prior knowledge) connected; uvicorn speaks HTTP/1.1 only: "
                           "it was answered GOAWAY HTTP_1_1_REQUIRED")
            self.transport.write(prior_knowledge.HTTP1_ONLY_ANSWER)
            if self.transport.can_write_eof():
                self.transport.write_eof()  # the head deadline closes it if the client does not

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_awaiting()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self._head_after, self._head_bytes = self.cycle, 0
            self._head_deadline = self.loop.call_later(head_timeout, self._head_timed_out)

        def _stop_awaiting(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_timed_out(self) -> None:
            self._head_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return QuillHTTPProtocol


class CappedListener(socket.socket):
    """A copy of a listening socket whose ``accept()`` keeps at most ``limit`` of the connections
    it accepted open: one beyond that is accepted and closed at once (the client sees the
    connection closed before any answer), so those open go on being served.

    For asyncio's selector event loop (the default on POSIX), which accepts with ``accept()``;
    the loop closes the copy when it stops serving, quill's own socket stays open.
    """

    def __init__(self, listener: socket.socket, limit: int):
        super().__init__(listener.family, listener.type, listener.proto, fileno=os.dup(listener.fileno()))
        self.limit = limit
        self.open = 0

    def accept(self) -> tuple[socket.socket, Any]:
        while True:
            conn, address = super().accept()  # BlockingIOError when none is waiting: the loop stops there
            if self.open < self.limit:
                return _CountedConnection(self, conn), address
            conn.close()


class _CountedConnection(socket.socket):
    """An accepted connection that counts itself open on its listener until it is closed."""

    def __init__(self, listener: CappedListener, conn: socket.socket):
        super().__init__(conn.family, conn.type, conn.proto, fileno=conn.detach())
        self._listener: CappedListener | None = listener
        listener.open += 1

    def close(self) -> None:
        if self._listener is not None:
            self._listener.open -= 1
            self._listener = None
        super().close()
