"""Running workers on threads started together, for the threaded stress tests
(tests/test_threads.py, tests/test_free_threading.py)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Sequence

#: How long each stress worker runs (QUILL_STRESS_SECONDS; docs/bad-inputs.md has long runs).
SECONDS = float(os.environ.get("QUILL_STRESS_SECONDS", "0.5"))


def run_together(workers: Sequence[Callable[[float], Any]]) -> list:
    """Run each ``worker(deadline)`` on its own thread, all released at once, the deadline
    ``SECONDS`` after the release; re-raise the first failure; return the results in order."""
    barrier = threading.Barrier(len(workers))
    results: list = [None] * len(workers)
    failures: list[BaseException] = []

    def run(index: int, worker: Callable[[float], Any]) -> None:
        try:
            barrier.wait()
            results[index] = worker(time.monotonic() + SECONDS)
        except BaseException as exc:   # re-raised below, with its traceback
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return results
