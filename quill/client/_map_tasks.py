"""The task runner of ``AsyncQuillClient.map``: one task per request on the running loop.

The consumer's ``__anext__`` reads the input and starts a task for each request the window
admits; a semaphore lets ``concurrency`` of them call at once. Closing the results (``aclose()``,
leaving an ``async with``, an item's error, cancelling the consuming task, or dropping the
iterator after ``break``) cancels every task: their calls stop and their connections close.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable

from ._map import END, NOTHING, MapCall, MapWindow, check_concurrency

__all__ = ["AsyncMapResults", "Tasks"]


class AsyncMapResults:
    """The results of ``AsyncQuillClient.map``: an async iterator (and async context manager).

    >>> async with client.map("s.v1.S", "Echo", [b"a", b"b"]) as results:  # doctest: +SKIP
    ...     [result async for result in results]
    [b'a', b'b']
    """

    def __init__(self, client: Any, call: MapCall, requests: Iterable, *, concurrency: int, ordered: bool,
                 return_exceptions: bool, progress: Callable[[int, int], Any] | None):
        concurrency = check_concurrency(concurrency, client._core.config["max_connections"])
        self._window = MapWindow(iter(requests), concurrency, ordered, return_exceptions, progress)
        self._outcomes: asyncio.Queue = asyncio.Queue()
        self._tasks = Tasks(client, call, concurrency, self._outcomes.put_nowait)

    def __aiter__(self) -> "AsyncMapResults":
        return self

    async def __anext__(self) -> Any:
        tasks, window = self._tasks, self._window
        if tasks.closed:
            raise StopAsyncIteration
        try:
            while (result := window.step(tasks.start)) is NOTHING:
                window.finish(*await self._outcomes.get())
        except BaseException:
            await tasks.aclose()
            raise
        if result is END:
            await tasks.aclose()
            raise StopAsyncIteration
        return result

    async def aclose(self) -> None:
        """Stop: read no more input and cancel every call in flight (and wait until they unwind)."""
        await self._tasks.aclose()

    async def __aenter__(self) -> "AsyncMapResults":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:  # dropped unclosed: ``break`` out of ``async for``
        tasks = getattr(self, "_tasks", None)
        if tasks is not None:
            tasks.cancel()


class Tasks:
    """The tasks of a map, on the loop that runs them: each request's call, ``concurrency`` at
    once, each outcome handed to ``deliver((index, value, failed))`` on that loop. They hold this,
    never the results object, so that dropping the results cancels them at once. The thread
    runner of ``QuillClient.map`` (``_map_threads``) drives one on a loop thread of its own."""

    def __init__(self, client: Any, call: MapCall, concurrency: int,
                 deliver: Callable[[tuple[int, Any, bool]], Any]):
        self._client = client
        self._call = call
        self._slots = asyncio.Semaphore(concurrency)
        self._deliver = deliver
        self._running: set[asyncio.Task] = set()
        self.closed = False

    def start(self, index: int, request: Any) -> None:
        task = asyncio.ensure_future(self._run(index, request))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, index: int, request: Any) -> None:
        async with self._slots:
            if self.closed:  # closed while this one waited: a slot freed by a cancelled call starts nothing
                return
            try:
                value, failed = await self._one(request), False
            except asyncio.CancelledError as exc:
                if self.closed:
                    raise
                value, failed = exc, True  # not ours: the call itself was cancelled
            except Exception as exc:
                value, failed = exc, True
        self._deliver((index, value, failed))

    async def _one(self, request: Any) -> Any:
        name, streaming, args, options = self._call.arguments(request)
        answer = await getattr(self._client, name)(*args, **options)
        if not streaming:
            return answer
        async with answer:
            return [item async for item in answer]

    def cancel(self) -> None:
        """Cancel every task, from any thread (each unwinds on its own loop)."""
        self.closed = True
        for task in list(self._running):
            try:
                task.get_loop().call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: nothing runs any more
                pass

    async def aclose(self) -> None:
        self.closed = True
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
