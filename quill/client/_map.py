"""What ``QuillClient.map`` and ``AsyncQuillClient.map`` share: no threads, no event loop.

A map runs one method over an iterable of requests. :class:`MapCall` says which client call
each request goes through (its *kind*); :class:`MapWindow` reads the input as slots free up,
keeps at most ``2 * concurrency`` requests between read and handed out (in flight, queued or
finished and waiting for the consumer), puts results back in input order (or hands them out as
they complete) and counts progress. The sync runner (``_map_threads``: the iterating thread,
tasks on a loop thread) and the task runner (``_map_tasks``) drive it; neither holds more than
the window does.

>>> window = MapWindow(iter([b"a", b"b"]), concurrency=1, ordered=True, return_exceptions=False)
>>> window.take()
[(0, b'a'), (1, b'b')]
>>> window.finish(1, b"B", False); window.pop() is NOTHING   # item 0 comes first
True
>>> window.finish(0, b"A", False); window.pop(), window.pop(), window.step(print) is END
(b'A', b'B', True)
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator, Mapping

from ..tensor import Tensor

__all__ = ["KINDS", "MapCall", "MapWindow", "NOTHING", "END", "check_concurrency"]

#: kind -> the client method each request of a map goes through
KINDS = {
    "unary": "call",  # bytes in, bytes out
    "json": "call_json",  # a JSON value in, the decoded JSON answer out
    "tensor": "call_tensor",  # a Tensor (or bytes, or a dict as JSON) in, a Tensor out
    "tokens": "stream_tokens",  # bytes or a dict in, the list of TokenBatch of the stream out
    "messages": "call_stream",  # bytes or a dict in, the list of messages (bytes) of the stream out
}
STREAMING = frozenset({"tokens", "messages"})
_BYTES = (bytes, bytearray, memoryview)

#: what :meth:`MapWindow.pop` and :meth:`~MapWindow.step` return when no result can be handed out yet
NOTHING = object()
#: what :meth:`MapWindow.step` returns once every result has been handed out
END = object()


def check_concurrency(concurrency: Any, max_connections: int) -> int:
    """``concurrency`` as a positive int no larger than the client's pool (or ValueError)."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
    if concurrency > max_connections:
        raise ValueError(f"concurrency={concurrency} exceeds the client's max_connections={max_connections}: "
                         f"the extra calls would only wait for a connection (raise max_connections)")
    return concurrency


class MapCall:
    """One method and the options of every call of a map; :meth:`kind_of` picks each request's kind.

    ``kind=None`` goes by the request: bytes-like -> ``unary``, :class:`Tensor` -> ``tensor``,
    anything else -> ``json``. Token and message streams must be asked for (``kind="tokens"``).

    >>> spec = MapCall("s.v1.S", "M", None, {})
    >>> spec.kind_of(b"x"), spec.kind_of({"a": 1})
    ('unary', 'json')
    """

    __slots__ = ("service", "method", "kind", "options")

    def __init__(self, service: str, method: str, kind: str | None, options: Mapping[str, Any]):
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))} or None, got {kind!r}")
        self.service = service
        self.method = method
        self.kind = kind
        self.options = dict(options)

    def kind_of(self, request: Any) -> str:
        if self.kind is not None:
            return self.kind
        if isinstance(request, _BYTES):
            return "unary"
        if isinstance(request, Tensor):
            return "tensor"
        return "json"

    def arguments(self, request: Any) -> tuple[str, bool, tuple, dict]:
        """(client method name, whether it streams, positional args, keyword args) for ``request``."""
        kind = self.kind_of(request)
        return KINDS[kind], kind in STREAMING, (self.service, self.method, request), self.options


class MapWindow:
    """The bounded window of a map: reads requests as they may start, orders results, counts.

    ``take()`` gives the (index, request) pairs that may be handed to a runner now; a runner
    reports each outcome with ``finish(index, value, failed)``; ``pop()`` gives the next result
    for the consumer (raising a failed item's exception unless ``return_exceptions``) or
    :data:`NOTHING`; ``finished`` is true once every request read has been handed out and the
    input is exhausted (it raises the input's own exception, if reading it failed).
    ``progress(done, failed)`` is called after each ``finish``; ``awaited`` is the index whose
    outcome a runner must wait for before ``pop`` can hand out anything new.
    """

    def __init__(self, requests: Iterator, concurrency: int, ordered: bool, return_exceptions: bool,
                 progress: Callable[[int, int], Any] | None = None):
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be a callable (done, failed), got {type(progress).__name__}")
        self._requests = requests
        self._limit = 2 * concurrency
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._progress = progress
        self._read = 0  # requests taken from the input
        self._held = 0  # taken, not yet handed out by pop()
        self._exhausted = False
        self._input_error: BaseException | None = None
        self._done_in_order: dict[int, tuple] = {}
        self._done_as_completed: deque = deque()
        self._next = 0  # the index pop() hands out next, in order
        self.done = 0
        self.failed = 0

    @property
    def awaited(self) -> int | None:
        """The index whose outcome lets :meth:`pop` hand out a result (None: any index will)."""
        return self._next if self._ordered else None

    @property
    def held(self) -> int:
        """Requests read but not yet handed out (at most ``2 * concurrency``)."""
        return self._held

    def take(self) -> list[tuple[int, Any]]:
        """The requests that may start now, read from the input only as the window allows."""
        taken = []
        while not self._exhausted and self._held < self._limit:
            try:
                request = next(self._requests)
            except StopIteration:
                self._exhausted = True
                break
            except Exception as exc:  # the input itself failed: raised after the results before it
                self._exhausted = True
                self._input_error = exc
                break
            taken.append((self._read, request))
            self._read += 1
            self._held += 1
        return taken

    def finish(self, index: int, value: Any, failed: bool) -> None:
        """Record item ``index``: its result, or (``failed``) the exception it raised."""
        self.done += 1
        self.failed += failed
        if self._ordered:
            self._done_in_order[index] = (value, failed)
        else:
            self._done_as_completed.append((index, value, failed))
        if self._progress is not None:
            self._progress(self.done, self.failed)

    def pop(self) -> Any:
        """The next result to hand out (``(index, result)`` when not ordered), or :data:`NOTHING`."""
        if self._ordered:
            outcome = self._done_in_order.pop(self._next, None)
            if outcome is None:
                return NOTHING
            index = self._next
            self._next += 1
            value, failed = outcome
        elif self._done_as_completed:
            index, value, failed = self._done_as_completed.popleft()
        else:
            return NOTHING
        self._held -= 1
        if failed and not self._return_exceptions:
            value.add_note(f"(raised by request {index} of the map)")
            raise value
        return value if self._ordered else (index, value)

    def step(self, start: Callable[[int, Any], Any]) -> Any:
        """Start what may start (``start(index, request)``), then the next result, :data:`NOTHING`
        (wait for an outcome and ``finish`` it) or :data:`END`."""
        for index, request in self.take():
            start(index, request)
        result = self.pop()
        if result is NOTHING and self.finished:
            return END
        return result

    @property
    def finished(self) -> bool:
        if not (self._exhausted and self._held == 0):
            return False
        if self._input_error is not None:
            error, self._input_error = self._input_error, None
            raise error
        return True
