"""Shared-memory tensor calls over a Unix socket (Linux; docs/shared-memory.md): a transport
that wraps the HTTP/1.1 one and moves the tensors of ``call_tensor`` and ``send_tensor``
through memfd arenas instead of the HTTP body.

The client learns whether the server offers it (``GET /.well-known/quill/shm``) on its first
tensor call, connects to the descriptor channel the answer names, and registers arenas there
as it needs them (each a sealed memfd whose descriptor goes over ``SCM_RIGHTS``). Arenas come
from a :class:`~quill.protocol.receive_pool.ReceivePool` of ``shared_memory_bytes``: an arena
is lent to one call or one array and is lent again only once nothing refers to its memory.

A call's tensor is copied into an arena once (numpy releases the GIL), or not at all when it
already lives in one (:meth:`SharedMemoryTransport.empty`). The server writes the answer into
a second arena the call offers, sized by the last answer of the method; the answer Tensor is a
view of that arena (an Echo's answer is a view of the request's arena: no copy either way).
A call that fails retires its arenas (never lent again: the server may still touch them). Any
tensor below ``MIN_BYTES``, a server that does not offer it, or a pool with no arena free
gives the plain HTTP body, and other calls pass through untouched.

>>> from quill.protocol.calls import ClientCore
>>> from quill.transports.http11 import HTTP11Transport
>>> core = ClientCore(dict(base_url="http://127.0.0.1:8080"))
>>> shared_memory_wanted(core)       # TCP: never
False
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import select
import socket
import sys
import threading
from typing import Any

import numpy as np

from ..errors import LimitExceededError, QuillConnectionError
from ..protocol.receive_pool import ReceivePool
from ..protocol.requests import Body, Request
from ..protocol.retries import TransportError
from ..protocol.shm import DATA_HEADER, MAX_MESSAGE, MIN_BYTES, REPLY_HEADER, SESSION_HEADER, VERSION, Region, \
    decode_message, encode_message, meta_body

__all__ = ["SharedMemoryTransport", "AsyncSharedMemoryTransport", "Arenas", "shared_memory_wanted", "THREAD_COPY_BYTES"]

#: Copies into an arena at least this large run off the event loop (AsyncSharedMemoryTransport).
THREAD_COPY_BYTES = 1 << 20
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_CHANNEL_TIMEOUT = 5.0


def shared_memory_wanted(core: Any) -> bool:
    """Whether a client of ``core`` tries shared memory: ``shared_memory`` not False, a Unix
    socket URL, and Linux (elsewhere tensors go in HTTP bodies)."""
    return (core.config["shared_memory"] is not False and core.endpoint.uds is not None
            and sys.platform.startswith("linux"))


class Arenas:
    """One descriptor-channel connection and the arenas registered on it (thread-safe)."""

    def __init__(self, path: str, limit: int):
        self.path = path
        self.pid = os.getpid()  # a forked child never speaks on its parent's channel
        self._lock = threading.Lock()
        self._ids: dict[int, int] = {}  # id(pooled buffer) -> arena number (the pool holds the buffers)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.settimeout(_CHANNEL_TIMEOUT)
        try:
            self._sock.connect(path)
            hello = self._receive()
        except BaseException:
            self._sock.close()
            raise
        if hello["op"] != "hello" or hello.get("version") != VERSION:
            self._sock.close()
            raise QuillConnectionError(f"shared memory at {path}: {hello.get('error') or 'unexpected greeting'}")
        self.session = str(hello["session"])
        self.pool = ReceivePool(limit, new_buffer=self._register, on_drop=self._drop, min_bytes=MIN_BYTES,
                                what="shared_memory_bytes")

    def _receive(self) -> dict:
        data = self._sock.recv(MAX_MESSAGE + 1)
        if not data:
            raise QuillConnectionError(f"shared memory at {self.path}: the server closed the descriptor channel")
        return decode_message(data, f"shared memory at {self.path}")

    def _ask(self, message: dict, fds: tuple = ()) -> dict:
        with self._lock:
            if fds:
                socket.send_fds(self._sock, [encode_message(message)], list(fds))
            else:
                self._sock.send(encode_message(message))
            return self._receive()

    def _register(self, size: int) -> np.ndarray | None:
        """A new arena of ``size`` bytes, registered; None when the server refuses it."""
        try:
            fd = os.memfd_create("quill-arena", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError:
            return None
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            memory = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            reply = self._ask({"op": "register", "size": size}, (fd,))
        except (OSError, QuillConnectionError, ValueError):  # ValueError: a garbled reply (DecodeError)
            return None
        finally:
            os.close(fd)
        if reply["op"] != "registered":
            return None
        buffer = np.frombuffer(memory, dtype=np.uint8)
        self._ids[id(buffer)] = reply["arena"]
        return buffer

    def _drop(self, buffer: np.ndarray) -> None:
        number = self._ids.pop(id(buffer), None)
        if number is not None:
            with contextlib.suppress(OSError, QuillConnectionError):
                self._ask({"op": "drop", "arena": number})

    def region_of(self, array: np.ndarray) -> tuple[Region, np.ndarray] | None:
        """Where the bytes of ``array`` (contiguous uint8) are in an arena, and that arena."""
        found = self.pool.owner(array.__array_interface__["data"][0], array.nbytes)
        if found is None:
            return None
        buffer, offset = found
        number = self._ids.get(id(buffer))
        return None if number is None else (Region(number, offset, array.nbytes), buffer)

    def alive(self) -> bool:
        """False once the server closed the channel (it exited: every arena is void)."""
        if not self._lock.acquire(blocking=False):
            return True  # an exchange is under way: it finds out if the channel closed
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            # The server never speaks unasked: with no exchange under way, readable means closed.
            return not readable
        except (OSError, ValueError):
            return False
        finally:
            self._lock.release()

    def close(self) -> None:
        self.pool.clear()
        self._ids.clear()
        self._sock.close()


class _Staged:
    """One call's arenas: the request region, the reply region, and the views that hold them."""

    __slots__ = ("request", "reply", "views", "copy")

    def __init__(self):
        self.request: Region | None = None
        self.reply: Region | None = None
        self.views: list = []  # (region, arena memory view): kept until the call is over
        self.copy: tuple | None = None  # (destination, source) still to be copied in


class _SharedMemory:
    """What the sync and async transports share: the offer, the arenas, staging a request."""

    def __init__(self, core: Any, inner: Any):
        self._core = core
        self._inner = inner
        self._required = core.config["shared_memory"] is True
        self._limit = core.config["shared_memory_bytes"]
        self._arenas: Arenas | None = None
        self._offered: bool | None = None  # None: not asked yet
        self._sizes: dict[bytes, int] = {}  # the last answer size of each call target
        self._lock = threading.Lock()

    def _offer_answer(self, status: int, body: bytes) -> None:
        """Take the server's answer to ``GET /.well-known/quill/shm``."""
        offer = None
        if status == 200:
            with contextlib.suppress(ValueError):
                offer = json.loads(body)
        if not isinstance(offer, dict) or offer.get("version") != VERSION or not isinstance(offer.get("socket"), str):
            self._offered = False
            if self._required:
                raise QuillConnectionError(f"{self._core.endpoint.base_url}: the server does not offer shared memory "
                                           f"(GET /.well-known/quill/shm answered {status}); shared_memory=True needs it")
            return
        try:
            arenas = Arenas(offer["socket"], self._limit)
        except (OSError, QuillConnectionError) as exc:
            self._offered = False
            if self._required:
                raise QuillConnectionError(f"shared memory at {offer['socket']}: {exc}") from exc
            return
        with self._lock:
            won = self._arenas is None  # calls that asked at once: the first answer's channel is kept
            if won:
                self._arenas, self._offered = arenas, True
        if not won:
            arenas.close()

    def _usable(self) -> Arenas | None:
        arenas = self._arenas
        if arenas is not None and arenas.pid != os.getpid():  # a forked child: its own channel, later
            with self._lock:
                self._arenas, self._offered, self._sizes = None, None, {}
            return None
        if arenas is not None and not arenas.alive():  # the server went away: ask again on the next call
            with self._lock:
                if self._arenas is arenas:
                    self._arenas, self._offered = None, None
            arenas.close()
            return None
        return arenas

    def _stage(self, request: Request) -> tuple[Request, _Staged] | None:
        """The request moved to shared memory, and its arenas; None to send it as it is."""
        tensor = request.tensor
        arenas = self._arenas
        if tensor is None or arenas is None or tensor.size_bytes < MIN_BYTES:
            return None
        data = np.frombuffer(tensor.data, dtype=np.uint8)
        staged = _Staged()
        found = arenas.region_of(data)
        if found is None:
            view = arenas.pool.lend(data.nbytes)
            if view is None:
                return None
            found = arenas.region_of(view)
            staged.copy = (view, data)
            staged.views.append((found[0], view))
        else:
            staged.views.append((found[0], found[1][found[0].offset:found[0].offset + found[0].length]))
        staged.request = found[0]
        headers = request.headers + ((SESSION_HEADER, arenas.session), (DATA_HEADER, found[0].format()))
        if request.expect == "tensor":
            reply = arenas.pool.lend(max(MIN_BYTES, self._sizes.get(request.target, data.nbytes)))
            where = arenas.region_of(reply) if reply is not None else None
            if where is not None:
                staged.reply = where[0]
                staged.views.append((where[0], reply))
                headers += ((REPLY_HEADER, where[0].format()),)
        body = Body.of_buffer(meta_body(tensor.meta))
        return Request(request.method, request.call, headers, None, body, request.timeout, request.idempotent,
                       request.expect), staged

    def _retire(self, staged: _Staged) -> None:
        arenas = self._arenas
        if arenas is not None:
            for _, view in staged.views:
                arenas.pool.retire(view)
        staged.views.clear()

    def _learn(self, request: Request, headers: dict) -> None:
        """Remember how large the answer was (the next call's reply region is made to fit it)."""
        size = None
        if DATA_HEADER.lower() in headers:
            with contextlib.suppress(ValueError):
                size = Region.parse(headers[DATA_HEADER.lower()], DATA_HEADER).length
        elif headers.get("content-length", "").isdigit():
            size = int(headers["content-length"])
        if size is not None and len(self._sizes) < 4096:
            self._sizes[request.target] = size

    def _empty(self, shape: Any, dtype: Any) -> np.ndarray:
        npdtype = np.dtype(dtype)
        count = 1
        for dim in (shape,) if isinstance(shape, int) else tuple(shape):
            count *= int(dim)
        arenas = self._usable()
        view = arenas.pool.lend(count * npdtype.itemsize) if arenas is not None else None
        if view is None:
            return np.empty(shape, dtype=npdtype)
        return view.view(npdtype).reshape(shape)


class _Answer:
    """A response whose answer may be in this call's arenas: ``shared(region)`` gives its memory."""

    __slots__ = ("_inner", "_owner", "_request", "_staged", "status", "headers")

    def __init__(self, inner: Any, owner: _SharedMemory, request: Request, staged: _Staged):
        self._inner, self._owner, self._request, self._staged = inner, owner, request, staged
        self.status, self.headers = inner.status, inner.headers

    def shared(self, region: Region) -> np.ndarray:
        for offered, view in self._staged.views:
            if region.arena == offered.arena and offered.offset <= region.offset and \
                    region.offset + region.length <= offered.offset + offered.length:
                start = region.offset - offered.offset
                return view[start:start + region.length]
        raise LimitExceededError(f"{self._request.call.describe()}: the server answered in region "
                                 f"{region.format()}, which this call did not offer")

    def release(self, reusable: bool) -> None:
        self._inner.release(reusable)
        if reusable:
            self._owner._learn(self._request, self.headers)
            self._staged.views.clear()  # the arenas return to the pool when their tensors die
        else:
            self._owner._retire(self._staged)

    def abort(self) -> None:
        self._inner.abort()


class SharedMemoryResponse(_Answer):
    __slots__ = ()

    def read(self, *args: Any) -> bytes:
        return self._inner.read(*args)

    def read_into(self, window: Any) -> int:
        return self._inner.read_into(window)

    def read_all(self, limit: int, what: str) -> bytes:
        return self._inner.read_all(limit, what)


class AsyncSharedMemoryResponse(_Answer):
    __slots__ = ()

    async def read(self) -> bytes:
        return await self._inner.read()

    async def read_into(self, window: Any) -> int:
        return await self._inner.read_into(window)

    async def read_all(self, limit: int, what: str) -> bytes:
        return await self._inner.read_all(limit, what)


class SharedMemoryTransport(_SharedMemory):
    """The sync transport: :class:`~quill.transports.http11.HTTP11Transport` plus shared memory."""

    def _ask_offer(self) -> None:
        request = self._core.shm_request()
        try:
            response = self._inner.open(request)
        except TransportError:
            return  # the call itself will fail and say why; ask again next time
        try:
            body = response.read_all(64 * 1024, "shared memory offer")
        except (TransportError, LimitExceededError):
            response.release(False)
            return
        response.release(True)
        self._offer_answer(response.status, body)

    def open(self, request: Request) -> Any:
        if request.tensor is not None and self._usable() is None and self._offered is None:
            self._ask_offer()
        moved = self._stage(request)
        if moved is None:
            return self._inner.open(request)
        shared_request, staged = moved
        try:
            if staged.copy is not None:
                np.copyto(*staged.copy)
            response = self._inner.open(shared_request)
        except BaseException:
            self._retire(staged)
            raise
        return SharedMemoryResponse(response, self, shared_request, staged)

    def empty(self, shape: Any, dtype: Any) -> np.ndarray:
        if self._offered is None:
            self._ask_offer()
        return self._empty(shape, dtype)

    def close(self) -> None:
        self._inner.close()
        if self._arenas is not None:
            self._arenas.close()


class AsyncSharedMemoryTransport(_SharedMemory):
    """The asyncio transport: :class:`~quill.transports.aio_http11.AsyncHTTP11Transport` plus
    shared memory (the descriptor channel's short exchanges block the loop for a round trip)."""

    async def _ask_offer(self) -> None:
        request = self._core.shm_request()
        try:
            response = await self._inner.open(request)
        except TransportError:
            return
        try:
            body = await response.read_all(64 * 1024, "shared memory offer")
        except (TransportError, LimitExceededError):
            response.release(False)
            return
        response.release(True)
        self._offer_answer(response.status, body)

    async def open(self, request: Request) -> Any:
        if request.tensor is not None and self._usable() is None and self._offered is None:
            await self._ask_offer()
        moved = self._stage(request)
        if moved is None:
            return await self._inner.open(request)
        shared_request, staged = moved
        try:
            if staged.copy is not None:
                await _copy(*staged.copy)
            response = await self._inner.open(shared_request)
        except BaseException:
            self._retire(staged)
            raise
        return AsyncSharedMemoryResponse(response, self, shared_request, staged)

    async def empty(self, shape: Any, dtype: Any) -> np.ndarray:
        if self._offered is None:
            await self._ask_offer()
        return self._empty(shape, dtype)

    async def aclose(self) -> None:
        await self._inner.aclose()
        if self._arenas is not None:
            self._arenas.close()


async def _copy(target: np.ndarray, source: np.ndarray) -> None:
    if target.nbytes < THREAD_COPY_BYTES:
        target[:] = source
        return
    import asyncio

    await asyncio.get_running_loop().run_in_executor(None, np.copyto, target, source)
