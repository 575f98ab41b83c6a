"""An event loop running in a daemon thread of its own, for sync code that drives async calls
(``QuillClient.map``, the pipelines' ``QuillStep``). It is uvloop's loop where uvloop is
installed (a dependency of quill on CPython outside Windows), whose callbacks, timers and
socket writes are compiled; asyncio's own loop elsewhere.

>>> thread = LoopThread("quill-example")
>>> async def two(): return 2
>>> thread.submit(two())
2
>>> thread.stop(); thread.is_alive()
False
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

__all__ = ["LoopThread", "new_event_loop"]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop if it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    """A loop in a daemon thread named ``name``: ``submit`` a coroutine and wait for its result,
    ``call_soon`` a function on it from any thread, ``stop`` it (and close the loop)."""

    def __init__(self, name: str):
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def submit(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the loop and wait for its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def call_soon(self, function: Callable, *args: Any) -> None:
        """Call ``function(*args)`` on the loop, from any thread; nothing once the loop is closed."""
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: nothing runs there any more
            pass

    def in_loop(self) -> bool:
        """Whether the calling thread is the loop's."""
        return threading.current_thread() is self._thread

    def stop(self, wait: bool = True) -> None:
        """Stop the loop once what is scheduled has run; ``wait`` joins the thread (not from the
        loop's own thread, where it returns at once)."""
        self.call_soon(self.loop.stop)
        if wait and not self.in_loop():
            self._thread.join()

    def is_alive(self) -> bool:
        return self._thread.is_alive()
