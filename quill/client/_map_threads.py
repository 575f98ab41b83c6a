"""The runner of ``QuillClient.map``: the calls run as tasks of an async client on an event loop
in a thread of the map's own (``quill-map``), the iterating thread reads, orders and hands out.

The async client is set up on the sync client's own core (its configuration, headers and
receive pool) with a pool of connections of the map's own, opened as the calls need them and
closed when the map ends: at 32 calls in flight, an asyncio call costs about half the CPU time
of one made through the sync client from 32 threads (benchmarks/bench_pipelines.py).

The iterating thread reads the input, hands requests to the loop (as many more wait queued as
run, so the loop never idles while the consumer is busy), and collects outcomes, waking only
when the one it waits for (the next in order, or any when not ordered) has arrived; progress is
reported in the iterating thread as it collects them. Closing the results (leaving the loop,
``close()``, an item's error) stops reading and cancels every call queued or in flight (their
connections close, the server sees the disconnect); the loop's thread then ends.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Iterable

from ._async_client import AsyncQuillClient
from ._loop_thread import LoopThread
from ._map import END, NOTHING, MapCall, MapWindow, check_concurrency
from ._map_tasks import Tasks

__all__ = ["MapResults"]


class MapResults:
    """The results of ``QuillClient.map``: an iterator (and context manager) over them.

    >>> with client.map("s.v1.S", "Echo", [b"a", b"b"]) as results:  # doctest: +SKIP
    ...     list(results)
    [b'a', b'b']
    """

    def __init__(self, client: Any, call: MapCall, requests: Iterable, *, concurrency: int, ordered: bool,
                 return_exceptions: bool, progress: Callable[[int, int], Any] | None):
        concurrency = check_concurrency(concurrency, client._core.config["max_connections"])
        self._window = MapWindow(iter(requests), concurrency, ordered, return_exceptions, progress)
        self._workers = _Workers(client, call, concurrency)

    def __iter__(self) -> "MapResults":
        return self

    def __next__(self) -> Any:
        workers, window = self._workers, self._window
        if workers.closed:
            raise StopIteration
        try:
            while (result := window.step(workers.start)) is NOTHING:
                for outcome in workers.next_outcomes(window.awaited):
                    window.finish(*outcome)
        except BaseException:
            workers.close()
            raise
        if result is END:
            workers.close()
            raise StopIteration
        return result

    def close(self) -> None:
        """Stop: read no more input, cancel the calls queued and in flight (and wait until they unwind)."""
        self._workers.close()

    def __enter__(self) -> "MapResults":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:  # dropped unclosed: ``break`` out of the loop
        workers = getattr(self, "_workers", None)
        if workers is not None:
            workers.close(wait=False)


class _Workers:
    """The loop side of a map. The loop's tasks hold this, never the MapResults, so that
    dropping the results closes them at once."""

    def __init__(self, client: Any, call: MapCall, concurrency: int):
        self._ready = threading.Condition(threading.Lock())
        self._delivered: list = []  # (index, value, failed) not yet collected
        self._awaited: int | None = None  # the index the iterating thread waits for (None: any)
        self._arrived = False
        self._lock = threading.Lock()
        self._queued: list = []  # (index, request) handed over, not yet started on the loop
        self.closed = False
        self._calls = AsyncQuillClient.__new__(AsyncQuillClient)
        self._calls._setup(client._core)
        self._thread = LoopThread("quill-map")
        self._tasks = Tasks(self._calls, call, concurrency, self._deliver)

    def start(self, index: int, request: Any) -> None:
        """Queue a request; the requests queued by one step of the window start in one hand-over."""
        with self._lock:
            self._queued.append((index, request))
            first = len(self._queued) == 1
        if first:
            self._thread.call_soon(self._start_queued)

    def _start_queued(self) -> None:  # on the loop
        with self._lock:
            queued, self._queued = self._queued, []
        if not self._tasks.closed:
            for index, request in queued:
                self._tasks.start(index, request)

    def next_outcomes(self, awaited: int | None) -> list[tuple[int, Any, bool]]:
        """Wait until item ``awaited`` (None: any item) is delivered; every (index, value, failed)
        delivered so far. Items delivered before it do not wake the iterating thread."""
        with self._ready:
            self._awaited = awaited
            self._arrived = any(index == awaited or awaited is None for index, _, _ in self._delivered)
            while not self._arrived:
                self._ready.wait()
            delivered, self._delivered = self._delivered, []
            return delivered

    def _deliver(self, outcome: tuple[int, Any, bool]) -> None:  # on the loop
        with self._ready:
            self._delivered.append(outcome)
            if self._awaited is None or outcome[0] == self._awaited:
                self._arrived = True
                self._ready.notify()

    async def _shut(self) -> None:
        await self._tasks.aclose()
        await self._calls._transport.aclose()  # the map's connections (the core stays the client's)

    def close(self, wait: bool = True) -> None:
        """Cancel every call, close the map's connections and end the loop's thread; ``wait``
        waits for all that (not from the loop's own thread, where it is scheduled only)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        if wait and not self._thread.in_loop():
            self._thread.submit(self._shut())
            self._thread.stop()
        else:
            self._thread.call_soon(self._shut_then_stop)

    def _shut_then_stop(self) -> None:  # on the loop
        asyncio.ensure_future(self._shut()).add_done_callback(lambda _: self._thread.stop(wait=False))
