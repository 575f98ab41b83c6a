"""A client's pool of tensor receive buffers: a fresh large allocation faults in (and the kernel
zeroes) every one of its pages while the payload is written into it, which costs about as much
as receiving it; a buffer a finished Tensor no longer uses has its pages mapped already.

A buffer is lent out as a view (``buffer[:size]``), and every object that sees its memory (the
Tensor, its numpy arrays and memoryviews, a DLPack capsule, a pickle's out-of-band buffer)
holds a reference to it, directly or through the object it came from. So a buffer is free
exactly when the pool holds the only reference to it, and only then is it lent again: a
Tensor's memory never changes under its user, however long it is kept. Buffers are kept by
size class (eighths of a power of two: at most 12.5% larger than asked), at most ``limit`` bytes
in all, lent or free; past that, tensors get fresh memory as without the pool.

The same pool lends shared-memory arenas (:mod:`quill.transports.shm`): ``new_buffer(size)``
makes a buffer (None when it cannot), ``on_drop(buffer)`` hears of each one the pool forgets,
``lend`` answers None where ``allocate`` would give fresh memory, ``owner`` finds the buffer
holding some memory, and ``retire`` forgets the buffer of a view that must never be lent again.

>>> pool = ReceivePool(64 << 20)
>>> first = pool.allocate(4 << 20); address = first.ctypes.data
>>> pool.allocate(4 << 20).ctypes.data == address   # the first is in use: another buffer
False
>>> del first
>>> pool.allocate(4 << 20).ctypes.data == address   # free again: reused
True
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable

import numpy as np

__all__ = ["ReceivePool", "POOL_MIN_BYTES", "size_class"]

#: Smaller tensors get fresh memory: the allocator recycles small blocks without new pages.
POOL_MIN_BYTES = 1 << 20
_PAGE = 4096
# getrefcount(items[i]) of an object referenced only by the list ``items``: the list's
# reference and the argument's (measured, not assumed).
_probe = [object()]
_ONLY_THE_POOL = sys.getrefcount(_probe[0])
del _probe


def size_class(size: int) -> int:
    """``size`` rounded up to an eighth of the power of two below it (whole pages).

    >>> size_class(256 << 20) == 256 << 20, size_class((256 << 20) + 1) == 288 << 20
    (True, True)
    """
    step = max(_PAGE, 1 << max(0, size.bit_length() - 4))
    return -(-size // step) * step


class ReceivePool:
    """Receive buffers of one client, at most ``limit`` bytes in all (0: no pool). Thread-safe."""

    __slots__ = ("_limit", "_buffers", "_held", "_lock", "_new", "_on_drop", "_min")

    def __init__(self, limit: int, *, new_buffer: Callable[[int], Any] | None = None,
                 on_drop: Callable[[np.ndarray], None] | None = None, min_bytes: int = POOL_MIN_BYTES,
                 what: str = "tensor_pool_bytes"):
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"{what} must be a non-negative int, got {limit!r}")
        self._limit = limit
        self._buffers: list = []  # least recently lent first
        self._held = 0
        self._lock = threading.Lock()
        self._new = new_buffer or _fresh
        self._on_drop = on_drop
        self._min = min_bytes

    @property
    def held_bytes(self) -> int:
        """The bytes of every buffer the pool keeps, lent or free."""
        return self._held

    def allocate(self, size: int) -> np.ndarray:
        """A writable uint8 array of ``size`` bytes: a free pooled buffer's start, a new pooled
        buffer, or fresh memory (small sizes, or a pool whose buffers are all in use)."""
        lent = self.lend(size)
        return np.empty(size, dtype=np.uint8) if lent is None else lent

    def lend(self, size: int) -> np.ndarray | None:
        """A free pooled buffer's start, or a new pooled buffer, of ``size`` bytes; None for a size
        below ``min_bytes`` or when the bound (or ``new_buffer``) allows no buffer."""
        wanted = size_class(size)
        if size < self._min or wanted > self._limit:
            return None
        with self._lock:
            buffers = self._buffers
            for i in range(len(buffers)):
                if buffers[i].nbytes == wanted and sys.getrefcount(buffers[i]) == _ONLY_THE_POOL:
                    buffers.append(buffers.pop(i))
                    return buffers[-1][:size]
            i = 0
            while self._held + wanted > self._limit and i < len(buffers):  # drop free ones, oldest first
                if sys.getrefcount(buffers[i]) == _ONLY_THE_POOL:
                    self._forget(i)
                else:
                    i += 1
            if self._held + wanted > self._limit:
                return None
            buffer = self._new(wanted)
            if buffer is None:
                return None
            buffers.append(buffer)
            del buffer
            self._held += wanted
            return buffers[-1][:size]

    def _forget(self, i: int) -> None:
        buffer = self._buffers.pop(i)
        self._held -= buffer.nbytes
        if self._on_drop is not None:
            self._on_drop(buffer)

    def owner(self, address: int, size: int) -> tuple[np.ndarray, int] | None:
        """The pooled buffer holding the ``size`` bytes at ``address``, and their offset in it."""
        with self._lock:
            for buffer in self._buffers:
                delta = address - buffer.__array_interface__["data"][0]
                if 0 <= delta and delta + size <= buffer.nbytes:
                    return buffer, delta
        return None

    def retire(self, view: np.ndarray) -> None:
        """Forget the pooled buffer ``view`` is part of: it is never lent again."""
        found = self.owner(view.__array_interface__["data"][0], view.nbytes)
        if found is None:
            return
        with self._lock:
            for i in range(len(self._buffers)):
                if self._buffers[i] is found[0]:
                    self._forget(i)
                    return

    def clear(self) -> None:
        """Forget every buffer (those still in use live on with their tensors)."""
        with self._lock:
            self._buffers = []
            self._held = 0


def _fresh(size: int) -> np.ndarray:
    return np.empty(size, dtype=np.uint8)
