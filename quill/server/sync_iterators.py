"""A sync iterator (a plain generator handler) driven from the event loop without blocking it.

The iterator runs in a thread of its own, at most :data:`RUN_AHEAD` items ahead of the consumer:
while the loop sends one item the next is being produced, and the loop is woken only when it is
waiting for an item, so a fast generator costs a few wake-ups per stream instead of two
thread-pool round trips per item, and a slow one hands each item over the moment it exists.
The thread runs in a copy of the caller's context (its context variables, the current span).

When the consumer stops early (a client disconnect cancels it), the iterator is closed in its
own thread once its running ``next`` has returned, so its ``finally`` blocks run, and the
consumer's ``aclose`` returns after that.

>>> async def first_two():
...     stream = iterate_in_thread(iter(range(10)))
...     items = [await stream.__anext__(), await stream.__anext__()]
...     await stream.aclose()
...     return items
>>> asyncio.run(first_two())
[0, 1]
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import threading
from typing import Any, AsyncIterator, Iterator

__all__ = ["RUN_AHEAD", "iterate_in_thread"]

#: Items a sync iterator may produce before the consumer has taken the earlier ones.
RUN_AHEAD = 4
_END = object()
_NOTHING = object()


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class _Producer:
    """The thread side: runs the iterator, queues what it yields, wakes a waiting consumer."""

    def __init__(self, iterator: Iterator, loop: asyncio.AbstractEventLoop):
        self.iterator = iterator
        self.loop = loop
        self.ready: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.room = threading.Semaphore(RUN_AHEAD)
        self.stopped = False
        self.waiter: asyncio.Future | None = None  # set (under the lock) while the consumer waits
        self.finished = loop.create_future()

    def run(self) -> None:
        try:
            while True:
                self.room.acquire()
                if self.stopped:
                    close = getattr(self.iterator, "close", None)
                    if close is not None:
                        close()
                    return
                try:
                    item = next(self.iterator, _END)
                except BaseException as exc:  # handed to the consumer, raised there
                    item = _Raised(exc)
                with self.lock:
                    self.ready.append(item)
                    waiter, self.waiter = self.waiter, None
                if waiter is not None:
                    self._call(_resolve, waiter)
                if item is _END or type(item) is _Raised:
                    return
        finally:
            self._call(_resolve, self.finished)

    def _call(self, function: Any, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def stop(self) -> None:
        self.stopped = True
        self.room.release()  # a producer waiting for room wakes, sees the stop and closes


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def iterate_in_thread(iterator: Iterator) -> AsyncIterator:
    """Yield what ``iterator`` yields, produced in a thread of its own (see the module docstring)."""
    loop = asyncio.get_running_loop()
    producer = _Producer(iterator, loop)
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(producer.run,), name="quill-sync-stream", daemon=True).start()
    ended = False
    try:
        while True:
            with producer.lock:
                if producer.ready:
                    item = producer.ready.popleft()
                else:
                    item = _NOTHING
                    producer.waiter = waiter = loop.create_future()
            if item is _NOTHING:
                await waiter
                continue
            if item is _END:
                ended = True
                return
            if type(item) is _Raised:
                ended = True
                raise item.error
            producer.room.release()
            yield item
    finally:
        if not ended:
            producer.stop()
        await asyncio.shield(producer.finished)
