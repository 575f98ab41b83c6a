"""Handler kinds and how a handler is called from the event loop.

Coroutine functions are awaited; generator functions (sync or async) are called directly;
other sync functions run in the default thread pool, so a slow handler never blocks the loop.
A sync iterator runs in a thread of its own, a few items ahead of the loop
(:mod:`quill.server.sync_iterators`).

>>> route = Route("a.v1.S/M", "unary", lambda request, context: request)
>>> route.kind in HANDLER_KINDS
True
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from typing import Any, AsyncIterator, Callable

from ..protocol.kinds import METHOD_KINDS
from .sync_iterators import iterate_in_thread

__all__ = [
    "HANDLER_KINDS",
    "Route",
    "invoke",
    "as_async_iterator",
    "close_async_iterator",
    "as_body",
]

#: The kinds of handler (the protocol's method kinds).
HANDLER_KINDS = METHOD_KINDS


class Route:
    """A registered method: its path (``"package.Service/Method"``), kind and handler."""

    __slots__ = ("path", "kind", "function")

    def __init__(self, path: str, kind: str, function: Callable):
        self.path = path
        self.kind = kind
        self.function = function


async def invoke(function: Callable, *args) -> Any:
    """Call a handler: coroutine functions are awaited, generator functions called
    directly, other sync functions run in the default thread pool (never blocking the loop),
    in a copy of the caller's context (its context variables, the current span, as
    :func:`asyncio.to_thread` does)."""
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
        return function(*args)
    call = functools.partial(contextvars.copy_context().run, function, *args)
    result = await asyncio.get_running_loop().run_in_executor(None, call)
    if inspect.isawaitable(result):
        result = await result
    return result


def as_async_iterator(result: Any, method_path: str) -> AsyncIterator:
    """What a streaming handler returned, as an async iterator (TypeError for bytes or a
    non-iterable)."""
    if hasattr(result, "__anext__"):
        return result
    if hasattr(result, "__aiter__"):
        return result.__aiter__()
    if isinstance(result, (bytes, bytearray, memoryview, str)) or not hasattr(result, "__iter__"):
        raise TypeError(f"streaming handler for {method_path} returned {type(result).__name__}, expected an iterator")
    return iterate_in_thread(iter(result))


async def close_async_iterator(iterator: Any) -> None:
    """Close a handler's iterator so its ``finally`` blocks run (a no-op for plain iterators)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def as_body(result: Any, method_path: str) -> bytes | bytearray | memoryview:
    """A handler's answer if it is bytes-like, else TypeError naming the method."""
    if isinstance(result, (bytes, bytearray, memoryview)):
        return result
    raise TypeError(f"handler for {method_path} returned {type(result).__name__}, expected bytes")
