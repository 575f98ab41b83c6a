"""What a step keeps in each worker process: one event loop in a thread of its own, one
:class:`~quill.client.AsyncQuillClient` (its connection pool), the window of calls in flight and
the rate limits, shared by every batch and every thread of that process that runs the same step.

>>> bucket = TokenBucket(rate=100.0)
>>> bucket.level
100.0
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, Callable

from ..client import AsyncQuillClient
from ..client._loop_thread import LoopThread
from ..client._map import MapCall
from ._columns import STEP_KINDS

__all__ = ["TokenBucket", "Runtime", "runtime_for"]


class TokenBucket:
    """``rate`` units a second, ``burst`` at once (default: one second's worth). A taker that
    finds the bucket short reserves its units anyway and sleeps off the debt, so concurrent takers
    are served in order and the long-run rate holds."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        if not rate > 0:
            raise ValueError(f"a rate limit must be > 0 a second, got {rate!r}")
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else max(1.0, rate))
        self.level = self.capacity
        self._clock = clock
        self._stamp = clock()

    def charge(self, amount: float) -> float:
        """Take ``amount`` (possibly into debt); the seconds until the bucket is back to zero."""
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate) - amount
        self._stamp = now
        return max(0.0, -self.level / self.rate)

    async def take(self, amount: float = 1.0) -> None:
        """Wait until ``amount`` may be spent (``take(0)`` waits for a debt to be paid off)."""
        wait = self.charge(amount)
        if wait:
            await asyncio.sleep(wait)


class Runtime:
    """One worker's loop, client, window and limits for a step's configuration."""

    def __init__(self, url: str, concurrency: int, rate: float | None, tokens_per_s: float | None,
                 client_options: dict):
        self.pid = os.getpid()
        self._thread = LoopThread("quill-step")  # uvloop's loop where it is installed
        self.concurrency = concurrency
        self.calls = None if rate is None else TokenBucket(rate)
        self.tokens = None if tokens_per_s is None else TokenBucket(tokens_per_s)
        self.rows_done = 0
        self.rows_failed = 0

        async def setup() -> None:
            self.slots = asyncio.Semaphore(concurrency)
            self.client = AsyncQuillClient(url, max_connections=concurrency, **client_options)

        self.submit(setup())

    def submit(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the loop and wait for its result from this (another) thread."""
        return self._thread.submit(coroutine)

    def run(self, service: str, method: str, kind: str, payloads: list, keys: list[str], timeout_s: float,
            headers: dict[str, str]) -> tuple[list, list]:
        """Call once per row, at most ``concurrency`` calls in flight in this process: each row's
        result (None where it failed) and error (None where it did not)."""
        return self.submit(self._run(MapCall(service, method, STEP_KINDS[kind], {}), payloads, keys, timeout_s,
                                     headers))

    async def _run(self, call: MapCall, payloads: list, keys: list[str], timeout_s: float,
                   headers: dict[str, str]) -> tuple[list, list]:
        results: list = [None] * len(payloads)
        errors: list = [None] * len(payloads)
        rows = iter(range(len(payloads)))

        async def one(i: int) -> None:
            name, streaming, args, _ = call.arguments(payloads[i])
            options = {"timeout_ms": max(1, int(timeout_s * 1000)),
                       "headers": {**headers, "Idempotency-Key": keys[i]}}
            if self.calls is not None:
                await self.calls.take(1.0)
            if self.tokens is not None:
                await self.tokens.take(0.0)
            async with asyncio.timeout(timeout_s):
                answer = await getattr(self.client, name)(*args, **options)
                if streaming:
                    async with answer:
                        answer = [item async for item in answer]
                    if self.tokens is not None:
                        self.tokens.charge(sum(len(batch) for batch in answer))
            results[i] = answer

        async def worker() -> None:
            for i in rows:
                async with self.slots:
                    try:
                        await one(i)
                    except Exception as exc:
                        errors[i] = exc
                self.rows_done += 1
                self.rows_failed += errors[i] is not None

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(payloads)))))
        return results, errors


_RUNTIMES: dict[tuple, Runtime] = {}
_LOCK = threading.Lock()


def runtime_for(key: tuple, make: Callable[[], Runtime]) -> Runtime:
    """The process's runtime for a step configuration ``key``, made on first use (and made
    again in a forked child: a loop thread does not survive a fork)."""
    with _LOCK:
        runtime = _RUNTIMES.get(key)
        if runtime is None or runtime.pid != os.getpid():
            runtime = _RUNTIMES[key] = make()
        return runtime
