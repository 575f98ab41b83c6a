"""The service the pipeline tests call (not collected by pytest): four methods, one per step kind,
behind the reference server's idempotency store, a counter of side effects per Idempotency-Key,
and an optional fault injector in front that answers a share of calls 503 with Retry-After:
half of them before the app sees the call, half after it ran (its answer lost on the way back,
as a proxy may lose one)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import threading
from typing import Iterator

import numpy as np

from quill import Tensor
from quill._core.tokens import Token, TokenBatch
from quill.server import IdempotencyStore, QuillApp, serve_in_thread

SERVICE = "pipe.v1.Model"


class CountingService:
    """``handled[key]``: how many times a handler ran with that Idempotency-Key (its side effect)."""

    def __init__(self, fault_rate: float = 0.0, seed: int = 7, model_seconds: float = 0.0):
        self.handled: collections.Counter = collections.Counter()
        self.faults = 0
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self.fault_rate = fault_rate
        self.app = app = QuillApp(idempotency=IdempotencyStore(max_entries=1_000_000, max_bytes=512 << 20))

        def effect(context) -> None:
            with self._lock:
                self.handled[context.headers.get("idempotency-key")] += 1

        @app.unary(f"{SERVICE}/Score")
        async def score(request, context):
            effect(context)
            if model_seconds:
                await asyncio.sleep(model_seconds)
            text = json.loads(request)["text"]
            return json.dumps({"length": len(text), "upper": text.upper()}).encode()

        @app.unary(f"{SERVICE}/Reverse")
        def reverse(request, context):
            effect(context)
            return request[::-1]

        @app.tensor(f"{SERVICE}/Double")
        def double(tensor, context):
            effect(context)
            array = tensor.to_numpy()
            if array.shape == (99,):
                return Tensor.from_numpy(np.zeros(3, np.float32))  # another shape: that row's error
            return Tensor.from_numpy(array * 2)

        @app.token_stream(f"{SERVICE}/Generate")
        def generate(request, context):
            effect(context)
            words = json.loads(request)["prompt"].split()
            yield TokenBatch.from_tokens([Token.with_text(i, w + " ", i, logprob=-0.25 * i) for i, w in enumerate(words)])

    def faulty(self, app):
        """The app behind a fault injector: ``fault_rate`` of the calls get 503 + Retry-After: 0."""

        async def injector(scope, receive, send):
            if scope["type"] != "http" or scope["method"] != "POST" or not self._fault():
                return await app(scope, receive, send)
            with self._lock:
                self.faults += 1
                after = self.faults % 2 == 0
            if after:  # the app runs and its answer is lost
                async def drop(message):
                    pass
                await app(scope, receive, drop)
            else:
                while (await receive()).get("more_body"):
                    pass
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"retry-after", b"0"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

        return injector

    def _fault(self) -> bool:
        with self._lock:
            return self._random.random() < self.fault_rate

    def keys_handled_more_than_once(self) -> dict:
        return {key: n for key, n in self.handled.items() if n != 1}


@contextlib.contextmanager
def serving(fault_rate: float = 0.0, **options) -> Iterator[tuple[CountingService, str]]:
    service = CountingService(fault_rate, **options)
    with serve_in_thread(service.faulty(service.app)) as url:
        yield service, url


def texts_table(n: int):
    """The rows the engine tests send: ``n`` texts, with their row number ``n``."""
    import pyarrow as pa

    return pa.table({"text": [f"row {i} of {n}" for i in range(n)], "n": list(range(n))})


def first_time(marker: str) -> bool:
    """True the first time any process asks about ``marker`` (a file created atomically)."""
    import os

    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class FailOnce:
    """A step whose first run (in any worker process) fails after its calls were made: a task the
    engine runs again, whose calls have reached the server."""

    def __init__(self, step, marker: str):
        self.step, self.marker = step, marker

    def __call__(self, data):
        out = self.step(data)
        if first_time(self.marker):
            raise RuntimeError("the first attempt fails after its calls reached the server")
        return out


def spark_fail_first_attempt(step):
    """For ``mapInArrow``: partition 0's first attempt (``TaskContext.attemptNumber() == 0``)
    processes its batches, then fails."""

    def run(batches):
        from pyspark import TaskContext

        context = TaskContext.get()
        out = list(step(batches))
        if context.attemptNumber() == 0 and context.partitionId() == 0:
            raise RuntimeError("the first attempt fails after its calls reached the server")
        yield from out

    return run


def ray_dying_step(marker: str):
    """A QuillStep class for Ray Data whose actor process dies (``os._exit``) the first time any
    of them has made the calls of a batch, before it hands the batch back: Ray starts the actor
    again and sends the batch anew."""
    from quill.pipelines import QuillStep

    class DyingStep(QuillStep):
        def __call__(self, data):
            out = super().__call__(data)
            if first_time(marker):
                import os

                os._exit(1)
            return out

    return DyingStep
