"""The optional idempotency store: a call repeated with the same ``Idempotency-Key`` gets the
answer of its first run, and its handler runs once (docs/protocol.md, "Idempotency keys").

A key is scoped by the method and the caller's identity (the credentials the auth hooks read), so
two callers' keys never meet. The first run of a key records its answer as the engine is sent it;
a repeat that arrives while it runs waits for it. Only a complete 2xx answer is stored: a first run
that fails (an exception, a 4xx or 5xx Problem, a stream ended by CANCEL, a client gone) leaves
nothing behind, and the next call with that key runs the handler again. The same key with another
request (body, Content-Type, Accept, Accept-Encoding) is refused with 422.

The store is bounded (``max_entries`` answers, ``max_bytes`` of them in all; the oldest go first)
and forgets an answer ``ttl_seconds`` after it was stored. It lives in the process: with several
server workers each has its own.

>>> store = IdempotencyStore(max_entries=100, max_bytes=1 << 20, ttl_seconds=60)
>>> len(store), store.stored_bytes
(0, 0)
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from typing import Awaitable, Callable

from ..errors import LimitExceededError
from ..protocol.problems import problem
from ..protocol.retries import IDEMPOTENCY_KEY
from .exchange import Exchange
from .problems import ClientGone, HttpProblem

__all__ = ["IdempotencyStore", "REPLAYED_HEADER", "MAX_KEY_LENGTH", "caller_identity"]

#: The header a replayed answer carries (``true``), beside the first run's own headers.
REPLAYED_HEADER = "idempotent-replayed"
#: The longest ``Idempotency-Key`` accepted (longer ones get 400).
MAX_KEY_LENGTH = 255
#: Request headers that shape the answer: a repeat must carry the same ones as the first run.
_SHAPING = ("content-type", "content-encoding", "accept", "accept-encoding")


class _Entry:
    """One key: running (``done`` not set yet) or its stored answer."""

    __slots__ = ("fingerprint", "done", "messages", "size", "expires")

    def __init__(self, fingerprint: bytes):
        self.fingerprint = fingerprint
        self.done = asyncio.Event()
        self.messages: list[dict] | None = None  # the ASGI messages of a stored answer
        self.size = 0
        self.expires = 0.0


class IdempotencyStore:
    """Answers of calls that carried an ``Idempotency-Key``, bounded and expiring.

    ``max_entries`` and ``max_bytes`` bound the stored answers (an answer larger than
    ``max_bytes`` is sent but not stored); ``ttl_seconds`` is how long one is kept.
    ``runs`` counts handler runs started under a key, ``replays`` the answers served from the
    store.
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 << 20, ttl_seconds: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")
        self.max_entries, self.max_bytes, self.ttl_seconds = max_entries, max_bytes, ttl_seconds
        self._clock = clock
        self._stored: OrderedDict[tuple, _Entry] = OrderedDict()  # oldest first
        self._running: dict[tuple, _Entry] = {}
        self.stored_bytes = 0
        self.runs = 0
        self.replays = 0

    def __len__(self) -> int:
        return len(self._stored)

    # -- serving a call ---------------------------------------------------------------
    async def serve(self, exchange: Exchange, identity: str, run: Callable[[], Awaitable[None]]) -> None:
        """Serve a call that carries an ``Idempotency-Key``: replay its stored answer, wait for
        the run in progress, or ``run()`` it and record the answer."""
        key = exchange.headers[IDEMPOTENCY_KEY].strip()
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise HttpProblem(problem(400, "Invalid Idempotency-Key",
                                      f"an Idempotency-Key is 1 to {MAX_KEY_LENGTH} printable characters"))
        body = await _read_raw_body(exchange)
        exchange.body_complete, exchange.bytes_in = True, len(body)
        fingerprint = _fingerprint(exchange, body)
        scope = (exchange.context.method_path, identity, key)
        while True:
            self._expire()
            entry = self._stored.get(scope) or self._running.get(scope)
            if entry is None:
                break
            if entry.fingerprint != fingerprint:
                raise HttpProblem(problem(422, "Idempotency-Key reused",
                                          "this Idempotency-Key was used with another request to this method"))
            if entry.messages is not None:
                self.replays += 1
                await _replay(exchange, entry.messages)
                return
            await entry.done.wait()  # its first run; stored, or dropped (then run again here)
        entry = self._running[scope] = _Entry(fingerprint)
        self.runs += 1
        exchange.take_body(body)  # the handler reads it (with the limit and zstd) as usual
        exchange.body_complete, exchange.bytes_in = False, 0
        recorder = _Recorder(exchange, self.max_bytes)
        try:
            await run()
        finally:
            exchange.replace_send(recorder.send)
            del self._running[scope]
            if recorder.complete and 200 <= exchange.status < 300 and not exchange.stream_failed:
                self._store(scope, entry, recorder)
            entry.done.set()

    # -- the bounded store -------------------------------------------------------------
    def _store(self, scope: tuple, entry: _Entry, recorder: "_Recorder") -> None:
        entry.messages, entry.size = recorder.messages, recorder.size
        entry.expires = self._clock() + self.ttl_seconds
        self._stored[scope] = entry
        self.stored_bytes += entry.size
        while len(self._stored) > self.max_entries or self.stored_bytes > self.max_bytes:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, entry = self._stored.popitem(last=False)
        self.stored_bytes -= entry.size

    def _expire(self) -> None:
        now = self._clock()
        while self._stored and next(iter(self._stored.values())).expires <= now:
            self._drop_oldest()


class _Recorder:
    """Sends the exchange's answer on and keeps a copy of its ASGI messages, up to ``limit``
    bytes of body (past it the answer is sent, not kept: ``complete`` is False)."""

    def __init__(self, exchange: Exchange, limit: int):
        self.messages: list[dict] = []
        self.size = 0
        self.complete = False
        self._limit = limit
        self.send = exchange.replace_send(self._send)
        self._keeping = True

    async def _send(self, message: dict) -> None:
        await self.send(message)
        if not self._keeping:
            return
        if message["type"] == "http.response.body":
            body = bytes(message.get("body", b""))
            self.size += len(body)
            if self.size > self._limit:
                self._keeping, self.messages = False, []
                return
            message = {"type": message["type"], "body": body, "more_body": message.get("more_body", False)}
            self.complete = not message["more_body"]
        else:
            message = dict(message)
        self.messages.append(message)


async def _replay(exchange: Exchange, messages: list[dict]) -> None:
    start, *bodies = messages
    exchange.status = start["status"]
    await exchange.send_raw({**start, "headers": [*start["headers"], (REPLAYED_HEADER.encode(), b"true")]})
    for message in bodies:
        exchange.bytes_out += len(message["body"])
        await exchange.send_raw(message)


async def _read_raw_body(exchange: Exchange) -> bytes:
    """The request body as it came on the wire (still zstd-encoded, if it was), within the
    app's limit: the call's fingerprint, and what the handler reads after it."""
    limit, chunks, size = exchange.max_request_bytes, [], 0
    more = True
    while more:
        message = await exchange.receive_raw()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise LimitExceededError(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def caller_identity(headers: dict[str, str], header_names: list[str]) -> str:
    """Who calls, as a digest of the credentials they send (Authorization and ``header_names``,
    the headers the auth hooks read): the scope of their keys.

    >>> caller_identity({"authorization": "Bearer a"}, []) != caller_identity({"authorization": "Bearer b"}, [])
    True
    """
    names = ["authorization", *(name.lower() for name in header_names)]
    return hashlib.sha256("\0".join(headers.get(name, "") for name in names).encode("latin-1")).hexdigest()


def _fingerprint(exchange: Exchange, body: bytes) -> bytes:
    digest = hashlib.sha256()
    for name in _SHAPING:
        digest.update(exchange.headers.get(name, "").encode("latin-1") + b"\0")
    digest.update(body)
    return digest.digest()
