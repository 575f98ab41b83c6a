"""Sync generator handlers driven from the event loop (quill.server.sync_iterators): every item in
order, errors raised where the consumer reads, at most RUN_AHEAD items produced ahead, an item
handed over as soon as it exists, the loop never blocked, and an early stop closing the generator
(its finally runs before aclose returns)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from quill.server.sync_iterators import RUN_AHEAD, iterate_in_thread

REQUEST_ID = contextvars.ContextVar("request_id", default=None)


def collect(iterator) -> list:
    async def run():
        return [item async for item in iterate_in_thread(iterator)]

    return asyncio.run(run())


def test_every_item_in_order_none_included():
    items = [None, 0, b"", "x", None] + list(range(1000))
    assert collect(iter(items)) == items


def test_an_error_in_the_generator_is_raised_to_the_consumer_after_the_items_before_it():
    def generator():
        yield 1
        yield 2
        raise KeyError("boom")

    got = []

    async def run():
        async for item in iterate_in_thread(generator()):
            got.append(item)

    with pytest.raises(KeyError, match="boom"):
        asyncio.run(run())
    assert got == [1, 2]


def test_the_generator_runs_at_most_run_ahead_items_ahead():
    produced = []

    def generator():
        for i in range(100):
            produced.append(i)
            yield i

    async def run():
        stream = iterate_in_thread(generator())
        assert await stream.__anext__() == 0
        await asyncio.sleep(0.2)  # plenty of time to run ahead
        ahead = len(produced) - 1
        await stream.aclose()
        return ahead

    assert asyncio.run(run()) <= RUN_AHEAD


def test_an_item_is_handed_over_while_the_generator_is_still_busy_and_the_loop_keeps_running():
    release = threading.Event()

    def generator():
        yield "first"
        release.wait(10)  # a slow model: the next token is far away
        yield "second"

    async def run():
        stream = iterate_in_thread(generator())
        started = time.monotonic()
        first = await asyncio.wait_for(stream.__anext__(), 5)
        ticks = 0
        for _ in range(5):  # other tasks run while the generator blocks in its thread
            await asyncio.sleep(0.01)
            ticks += 1
        release.set()
        second = await asyncio.wait_for(stream.__anext__(), 5)
        return first, second, ticks, time.monotonic() - started

    first, second, ticks, elapsed = asyncio.run(run())
    assert (first, second, ticks) == ("first", "second", 5) and elapsed < 5


def test_stopping_early_closes_the_generator_in_its_thread_before_aclose_returns():
    events = []
    thread_of = {}

    def generator():
        try:
            for i in range(1_000_000):
                yield i
        finally:
            thread_of["finally"] = threading.current_thread().name
            events.append("finally")

    async def run():
        stream = iterate_in_thread(generator())
        assert [await stream.__anext__() for _ in range(3)] == [0, 1, 2]
        await stream.aclose()
        events.append("closed")

    asyncio.run(run())
    assert events == ["finally", "closed"]
    assert thread_of["finally"] == "quill-sync-stream"


def test_a_cancelled_consumer_waits_for_the_running_next_then_closes_the_generator():
    in_next = threading.Event()
    events = []

    def generator():
        try:
            yield 0
            in_next.set()
            time.sleep(0.3)  # cancelled meanwhile: this next finishes, then the generator closes
            yield 1
        finally:
            events.append("finally")

    async def run():
        async def consume():
            async for _ in iterate_in_thread(generator()):
                pass

        task = asyncio.ensure_future(consume())
        while not in_next.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        events.append("cancelled")

    asyncio.run(run())
    assert events == ["finally", "cancelled"]


def test_the_generator_sees_the_callers_context_variables():
    def generator():
        yield REQUEST_ID.get()

    async def run():
        REQUEST_ID.set("abc")
        return [item async for item in iterate_in_thread(generator())]

    assert asyncio.run(run()) == ["abc"]
