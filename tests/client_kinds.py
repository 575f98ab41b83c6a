"""Both clients behind one blocking interface, so one test suite runs over each (not collected).

:class:`BlockingAsyncClient` runs an :class:`~quill.AsyncQuillClient` on an event loop in a
background thread and exposes the sync client's API: every coroutine is awaited there and its
result (or exception) handed back; streams become blocking iterators over the async ones. The
exceptions are the async client's own, so a test's ``pytest.raises`` checks the async client.

Test modules opt in with an autouse fixture (``use_client_kind``); tests that exercise what only
the sync client has (fork, a patched sync transport) carry ``@pytest.mark.sync_only`` and are
generated once, for the sync client.

A module whose tests run against a real server runs them over HTTP/2 as well: its server fixture
takes ``params=list(PROTOCOLS)`` and serves with ``PROTOCOLS[request.param]`` (HTTP/1.1 on the
default engine, h2c on hypercorn and on granian), and its ``client_kind`` fixture installs
``client_for(request)``, the client with ``http2=True`` where the test's server speaks HTTP/2.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from typing import Any

from quill.client import AsyncQuillClient, QuillClient

KINDS = ("sync", "async")


class _Loop:
    """One event loop in a daemon thread, shared by the wrapped clients of a test session."""

    _instance: "_Loop | None" = None

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="async-client-loop", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> "_Loop":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


class BlockingStream:
    """A blocking iterator over an async stream (``close``, ``cancel``, ``with`` as in the sync one)."""

    def __init__(self, stream: Any, loop: _Loop):
        self._stream = stream
        self._loop = loop

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self._loop.run(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    @property
    def cancelled(self) -> bool:
        return self._stream.cancelled

    @property
    def headers(self) -> dict:
        return self._stream.headers

    def cancel(self) -> None:
        self._stream.cancel()  # from this (non-loop) thread: the async stream must cope

    def close(self) -> None:
        self._loop.run(self._stream.aclose())

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class BlockingAsyncClient:
    """The sync client's API over an AsyncQuillClient running on a background loop."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._loop = _Loop.get()
        self._client = self._loop.run(_make(args, kwargs))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name in ("set_header", "remove_header", "get_headers", "set_bearer_token",
                                          "set_api_key"):
            return attr

        def blocking(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):  # not map(), which returns its async iterator at once
                result = self._loop.run(result)
            return BlockingStream(result, self._loop) if hasattr(result, "__anext__") else result

        return blocking

    @property
    def base_url(self) -> str:
        return self._client.base_url

    @property
    def timeout_ms(self) -> int:
        return self._client.timeout_ms

    @property
    def compression_enabled(self) -> bool:
        return self._client.compression_enabled

    def close(self) -> None:
        self._loop.run(self._client.aclose())

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self) -> str:
        return repr(self._client)


async def _make(args: tuple, kwargs: dict) -> AsyncQuillClient:
    return AsyncQuillClient(*args, **kwargs)


CLIENTS = {"sync": QuillClient, "async": BlockingAsyncClient}
#: The protocols of a real-server fixture, each with its ``serve_in_thread`` options.
PROTOCOLS = {"http1": {}, "http2-hypercorn": {"engine": "hypercorn"}, "http2-granian": {"engine": "granian"}}


def protocol_of(request: Any) -> str:
    """The protocol of the server fixture parametrized over PROTOCOLS in this test ("http1" if none)."""
    callspec = getattr(request.node, "callspec", None)
    for value in (callspec.params.values() if callspec is not None else ()):
        if isinstance(value, str) and value in PROTOCOLS:
            return value
    return "http1"


def client_for(request: Any) -> Any:
    """The client class of this test's ``client_kind``, speaking HTTP/2 where its server does."""
    client = CLIENTS[request.param]
    if protocol_of(request) == "http1":
        return client
    import pytest

    pytest.importorskip("quill._core.h2engine", reason="quill was built without libnghttp2 (HTTP/2 engine)")
    return functools.partial(client, http2=True)
