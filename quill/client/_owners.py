"""Where a stream's cleanup runs when another thread asks for it (``cancel()``, a finalizer).

An asyncio stream's connection belongs to its event loop: closing it, or giving it back to the
pool, from another thread races the loop (asyncio's debug mode refuses it), so that is
scheduled on the loop. A sync stream's cleanup is safe from any thread and runs at once. The
async streams use :func:`loop_owner`; tools/unasync.py turns that into :func:`thread_owner`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

__all__ = ["loop_owner", "thread_owner"]

Runner = Callable[..., None]


def loop_owner() -> Runner:
    """A runner for the running event loop: ``run(function, *args)`` calls it at once on that
    loop, else schedules it there (or calls it at once if the loop is closed: nothing runs on it)."""
    loop = asyncio.get_running_loop()

    def run(function: Callable[..., Any], *args: Any) -> None:
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if not here:
            try:
                loop.call_soon_threadsafe(function, *args)
                return
            except RuntimeError:  # closed
                pass
        function(*args)

    return run


def thread_owner() -> Runner:
    """The sync twin of :func:`loop_owner`: ``run(function, *args)`` calls it at once."""
    return _at_once


def _at_once(function: Callable[..., Any], *args: Any) -> None:
    function(*args)
