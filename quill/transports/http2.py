"""Sync HTTP/2: the asyncio HTTP/2 transport (:mod:`quill.transports.aio_http2`) run on one event
loop in a daemon thread, so every thread of a QuillClient shares its one multiplexed connection
safely (the loop is the only place that touches the engine and the socket). Same interface as
:mod:`quill.transports.http11`; each call hands its coroutine to the loop and waits for it.

A request body given as an iterable is iterated on the loop's thread; an async iterable is
refused as on HTTP/1.1. After ``os.fork()`` the child starts a loop and a connection of its own.

>>> from quill.protocol.calls import ClientCore
>>> transport = HTTP2Transport(ClientCore(dict(base_url="http://127.0.0.1:8080")))  # doctest: +SKIP
>>> transport.close()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from ..errors import QuillConnectionError
from .aio_http2 import AsyncHTTP2Transport, load_engine

__all__ = ["HTTP2Transport", "HTTP2Response"]


class HTTP2Response:
    """An answer being read off one HTTP/2 stream, from any thread (see :mod:`quill.transports`)."""

    __slots__ = ("status", "headers", "_response", "_owner")

    def __init__(self, response: Any, owner: "HTTP2Transport"):
        self._response = response
        self._owner = owner
        self.status = response.status
        self.headers = response.headers

    def read(self) -> bytes:
        return self._owner._run(self._response.read())

    def read_into(self, window: Any) -> int:
        return self._owner._run(self._response.read_into(window))

    def read_all(self, limit: int, what: str) -> bytes:
        return self._owner._run(self._response.read_all(limit, what))

    def release(self, reusable: bool) -> None:
        loop = self._owner._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._response.release, reusable)

    def abort(self) -> None:
        """Reset this stream now (from any thread); other streams go on."""
        self._response.abort()


class HTTP2Transport:
    """Sync HTTP/2 over one multiplexed connection, driven by a loop in a daemon thread."""

    def __init__(self, core: Any):
        load_engine()  # a build without the engine fails here, at the client's construction
        self._core = core
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._async: AsyncHTTP2Transport | None = None
        self._pid = os.getpid()
        self._closed = False

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # first use, or a forked child
                self._pid = os.getpid()
                self._loop = asyncio.new_event_loop()
                self._async = AsyncHTTP2Transport(self._core)
                self._thread = threading.Thread(target=self._loop.run_forever, name="quill-http2", daemon=True)
                self._thread.start()
            return self._loop

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._start()).result()

    def open(self, request: Any) -> HTTP2Response:
        body = request.body
        if body is not None and body.chunks is not None and hasattr(body.chunks, "__aiter__"):
            raise TypeError("the sync QuillClient cannot send an async iterable: use AsyncQuillClient")
        if self._closed:
            raise QuillConnectionError(f"{request.call.describe()}: the client is closed")
        self._start()
        return HTTP2Response(self._run(self._async.open(request)), self)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            loop, thread, transport = self._loop, self._thread, self._async
            self._loop = self._thread = None
        if loop is None or self._pid != os.getpid():
            return
        asyncio.run_coroutine_threadsafe(transport.aclose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
