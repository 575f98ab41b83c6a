"""Tensor calls whose tensors are in shared memory (docs/shared-memory.md): the request tensor
read from its region as a zero-copy view, the answer written into the region the client
offered (or, when the handler answered with its request tensor or a view of it, named where
it already is), announced by ``Quill-Shm-Data`` beside a TENSOR_META-only body.

The handler's request Tensor views the client's memory for the length of the call only: the
client reuses the region once the call is over, so a handler that keeps the tensor must copy
it (``tensor.to_numpy().copy()``). dtype and shape come from the request body, never from
shared memory, and every region is checked against its arena (:meth:`ShmChannel.region`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from ..errors import DecodeError, LimitExceededError
from ..protocol.constants import PROTO
from ..protocol.shm import DATA_HEADER, REPLY_HEADER, SESSION_HEADER, Region, meta_body, read_meta_body
from ..tensor import Tensor

__all__ = ["SharedCall", "shared_call"]

#: Copies at least this large run in a worker thread (numpy releases the GIL), not on the loop.
THREAD_COPY_BYTES = 1 << 20
_SESSION, _DATA, _REPLY = SESSION_HEADER.lower(), DATA_HEADER.lower(), REPLY_HEADER.lower()


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def shared_call(exchange: Any) -> "SharedCall | None":
    """The shared-memory part of a tensor call (None for a plain one); DecodeError for a call
    that names a session when this server offers no shared memory."""
    session = exchange.headers.get(_SESSION)
    if session is None:
        return None
    channel = exchange.shm_channel
    if channel is None:
        raise DecodeError(f"{SESSION_HEADER}: this server does not offer shared memory (see GET "
                          "/.well-known/quill/shm); send the tensor in the body")
    return SharedCall(channel, session, exchange.headers)


class SharedCall:
    """One call's regions: where its request tensor is, where its answer may go."""

    __slots__ = ("_channel", "_session", "_headers", "_request")

    def __init__(self, channel: Any, session: str, headers: dict):
        self._channel = channel
        self._session = session
        self._headers = headers
        self._request: tuple[Region, np.ndarray] | None = None

    def _memory(self, header: str) -> tuple[Region, np.ndarray]:
        region = Region.parse(self._headers[header.lower()], header)
        return region, self._channel.region(self._session, region, header)

    async def read_request(self, exchange: Any) -> Tensor:
        """The request Tensor: its TENSOR_META from the body, its bytes a view of its region."""
        if _DATA not in self._headers:
            raise DecodeError(f"a call with {SESSION_HEADER} names its tensor's region in {DATA_HEADER}")
        meta = read_meta_body(await exchange.read_body(), "request body")
        region, memory = self._memory(DATA_HEADER)
        if meta.size_bytes != region.length:
            raise DecodeError(f"{DATA_HEADER}: the request's TENSOR_META needs {meta.size_bytes} bytes, its region "
                              f"holds {region.length}")
        limit = exchange.max_request_bytes
        if limit is not None and region.length > limit:
            raise LimitExceededError(f"request tensor of {region.length} bytes exceeds the limit of {limit} bytes")
        self._request = (region, memory)
        return Tensor(meta, memory)

    async def answer(self, exchange: Any, tensor: Tensor) -> bool:
        """Answer ``tensor`` through shared memory; False when the client offered no region it
        fits in (the caller then sends it in the body)."""
        size = tensor.size_bytes
        data = np.frombuffer(tensor.data, dtype=np.uint8)
        where = self._inside_request(data, size)
        if where is None:
            if _REPLY not in self._headers:
                return False
            reply, memory = self._memory(REPLY_HEADER)
            if size > reply.length:
                return False
            if size >= THREAD_COPY_BYTES:
                await asyncio.get_running_loop().run_in_executor(None, np.copyto, memory[:size], data)
            else:
                memory[:size] = data
            where = Region(reply.arena, reply.offset, size)
        body = meta_body(tensor.meta)
        await exchange.start(200, [("content-type", PROTO), (DATA_HEADER.lower(), where.format()),
                                   ("content-length", str(len(body)))])
        await exchange.body(body, more=False)
        return True

    def _inside_request(self, data: np.ndarray, size: int) -> Region | None:
        """Where ``data`` lies when it is inside the request's region (an Echo), else None."""
        if self._request is None or _REPLY not in self._headers or not size:
            return None  # without a Reply region the client reads no answer from shared memory
        region, memory = self._request
        delta = _address(data) - _address(memory)
        if 0 <= delta and delta + size <= region.length:
            return Region(region.arena, region.offset + delta, size)
        return None
