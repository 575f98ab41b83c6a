"""The thread runner of ``QuillClient.map``: ``concurrency`` worker threads over the client's pool.

The iterating thread reads the input, hands requests to a thread pool of ``concurrency``
workers (a few more wait queued, so a worker never idles while the consumer is busy), and
collects outcomes; progress is reported in the iterating thread. Closing the results (leaving
the loop, ``close()``, an item's error) stops reading, cancels the queued requests, and cancels
the token and message streams in flight (their connections close, the server sees the
disconnect); a unary call already sent finishes on its own, within its timeout, and its answer
is dropped.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from ._map import END, NOTHING, MapCall, MapWindow, check_concurrency

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
                for outcome in workers.next_outcomes():
                    window.finish(*outcome)
        except BaseException:
            workers.close()
            raise
        if result is END:
            workers.close()
            raise StopIteration
        return result

    def close(self) -> None:
        """Stop: read no more input, drop queued requests, cancel the streams in flight."""
        self._workers.close()

    def __enter__(self) -> "MapResults":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:  # dropped unclosed: ``break`` out of the loop
        workers = getattr(self, "_workers", None)
        if workers is not None:
            workers.close()


class _Workers:
    """The pool side of a map. The worker threads hold this, never the MapResults, so that
    dropping the results closes them at once."""

    def __init__(self, client: Any, call: MapCall, concurrency: int):
        self._client = client
        self._call = call
        self._outcomes: queue.SimpleQueue = queue.SimpleQueue()
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="quill-map")
        self._lock = threading.Lock()
        self._streams: set = set()
        self.closed = False

    def start(self, index: int, request: Any) -> None:
        self._executor.submit(self._run, index, request)

    def next_outcomes(self) -> list[tuple[int, Any, bool]]:
        """Wait for the next (index, value, failed) a worker delivers; with any others already there."""
        outcomes = [self._outcomes.get()]
        while not self._outcomes.empty():
            outcomes.append(self._outcomes.get_nowait())
        return outcomes

    def _run(self, index: int, request: Any) -> None:
        if self.closed:
            return
        try:
            value, failed = self._one(request), False
        except BaseException as exc:  # delivered to the iterating thread, which raises it there
            value, failed = exc, True
        self._outcomes.put((index, value, failed))

    def _one(self, request: Any) -> Any:
        name, streaming, args, options = self._call.arguments(request)
        answer = getattr(self._client, name)(*args, **options)
        if not streaming:
            return answer
        with self._lock:
            if self.closed:
                answer.cancel()
            self._streams.add(answer)
        try:
            return list(answer)
        finally:
            with self._lock:
                self._streams.discard(answer)
            answer.close()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            streams, self._streams = list(self._streams), set()
        for stream in streams:
            stream.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
