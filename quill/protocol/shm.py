"""The shared-memory tensor extension (docs/shared-memory.md), without IO: its names, the region
descriptors HTTP requests carry, the meta-only tensor body, the descriptor channel's messages,
and the consumer that makes a Tensor of an answer left in shared memory.

A region is ``(arena, offset, length)``: bytes of an arena (a sealed memfd the client
registered on the descriptor channel). It travels as three decimal numbers::

    >>> region = Region.parse("3 4096 1048576", "Quill-Shm-Data")
    >>> region, region.format()
    (Region(arena=3, offset=4096, length=1048576), '3 4096 1048576')
    >>> region.check(1 << 20, "Quill-Shm-Data")
    Traceback (most recent call last):
    quill.errors.DecodeError: Quill-Shm-Data: region 3 4096 1048576 ends at byte 1052672, past the end of arena 3 (1048576 bytes)

The tensor's dtype and shape travel in the body as a TENSOR_META frame, then END_STREAM::

    >>> from quill.tensor import TensorMeta
    >>> meta = TensorMeta((2, 3), "float32", name="x")
    >>> read_meta_body(meta_body(meta), "call") == meta
    True
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import DecodeError, LimitExceededError
from ..frames import END_STREAM_FRAME, MAX_META_PAYLOAD, TensorFrameParser, TensorFrameType, encode_tensor_frame
from ..tensor import Tensor, TensorMeta

__all__ = [
    "SHM_PATH", "SESSION_HEADER", "DATA_HEADER", "REPLY_HEADER", "VERSION", "MIN_BYTES", "MAX_MESSAGE",
    "Region", "meta_body", "read_meta_body", "encode_message", "decode_message", "ShmTensorConsumer",
]

#: Where a server says whether, and where, it offers shared memory (``GET``, JSON).
SHM_PATH = "/.well-known/quill/shm"
VERSION = 1
#: The session a request's regions belong to (the hex token the descriptor channel gave).
SESSION_HEADER = "Quill-Shm-Session"
#: Request: where the request tensor's bytes are. Answer: where the answer tensor's bytes are.
DATA_HEADER = "Quill-Shm-Data"
#: Request: where the server may write the answer tensor (at most ``length`` bytes).
REPLY_HEADER = "Quill-Shm-Reply"
#: Tensors smaller than this go as HTTP bodies: a registration, two headers and a mapping cost
#: more than copying a few KiB through the socket.
MIN_BYTES = 64 * 1024
#: The largest message on the descriptor channel (a JSON object).
MAX_MESSAGE = 4096
_MAX_DIGITS = 20  # u64
_META_BODY_LIMIT = MAX_META_PAYLOAD + 2 * 9 + 64


class Region:
    """``length`` bytes at ``offset`` of arena ``arena`` (all non-negative ints)."""

    __slots__ = ("arena", "offset", "length")

    def __init__(self, arena: int, offset: int, length: int):
        self.arena, self.offset, self.length = arena, offset, length

    @classmethod
    def parse(cls, text: str, what: str) -> "Region":
        """The region in a header value: three decimal numbers of at most 20 digits (DecodeError
        naming ``what`` otherwise)."""
        fields = str(text).split(" ")
        if len(fields) != 3 or not all(f.isascii() and f.isdigit() and len(f) <= _MAX_DIGITS for f in fields):
            raise DecodeError(f"{what}: expected 'arena offset length' (three decimal numbers), got {text[:80]!r}")
        return cls(*(int(f) for f in fields))

    def format(self) -> str:
        return f"{self.arena} {self.offset} {self.length}"

    def check(self, arena_size: int, what: str) -> None:
        """DecodeError unless the region lies inside an arena of ``arena_size`` bytes (Python ints:
        no sum wraps around)."""
        end = self.offset + self.length
        if end > arena_size:
            raise DecodeError(f"{what}: region {self.format()} ends at byte {end}, past the end of arena "
                              f"{self.arena} ({arena_size} bytes)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Region) and (self.arena, self.offset, self.length) == (
            other.arena, other.offset, other.length)

    def __repr__(self) -> str:
        return f"Region(arena={self.arena}, offset={self.offset}, length={self.length})"


def meta_body(meta: TensorMeta) -> bytes:
    """The body of a request or answer whose tensor bytes are in shared memory."""
    return encode_tensor_frame(TensorFrameType.TENSOR_META, meta.encode()) + END_STREAM_FRAME


def read_meta_body(body: bytes, what: str) -> TensorMeta:
    """The TensorMeta of a meta-only body (exactly TENSOR_META, then END_STREAM; DecodeError else)."""
    if len(body) > _META_BODY_LIMIT:
        raise LimitExceededError(f"{what}: a shared-memory tensor's body is {len(body)} bytes; only TENSOR_META "
                                 "and END_STREAM belong there")
    parser = TensorFrameParser(max_payload=MAX_META_PAYLOAD)
    frames = parser.feed(body)
    parser.finish()
    kinds = [frame.type for frame in frames]
    if kinds != [TensorFrameType.TENSOR_META, TensorFrameType.END_STREAM]:
        raise DecodeError(f"{what}: a shared-memory tensor's body holds TENSOR_META then END_STREAM, got frame "
                          f"types {[hex(k) for k in kinds]}")
    return TensorMeta.decode(frames[0].payload)


def encode_message(message: Mapping[str, Any]) -> bytes:
    """A descriptor-channel message (compact JSON)."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"descriptor-channel message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode_message(data: bytes, what: str) -> dict:
    """A descriptor-channel message: a JSON object with a str ``op`` (DecodeError otherwise).

    >>> decode_message(b'{"op":"drop","arena":2}', "peer")
    {'op': 'drop', 'arena': 2}
    """
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):
        raise DecodeError(f"{what}: descriptor-channel message is not JSON: {bytes(data[:60])!r}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise DecodeError(f"{what}: descriptor-channel message is not an object with an 'op': {bytes(data[:60])!r}")
    return message


def int_field(message: Mapping[str, Any], name: str, what: str) -> int:
    """``message[name]`` as a non-negative int (DecodeError otherwise)."""
    value = message.get(name)
    if type(value) is not int or value < 0:
        raise DecodeError(f"{what}: '{name}' must be a non-negative integer, got {value!r}")
    return value


class ShmTensorConsumer:
    """An answer whose tensor bytes are in shared memory: the body holds its TENSOR_META; the
    ``Quill-Shm-Data`` header says where the bytes are; ``resolve(region)`` (the transport's)
    gives the memory, only for a region the call offered. ``finish()`` returns a Tensor over it,
    or over ``out`` (a writable buffer) after one copy into it."""

    __slots__ = ("_region", "_resolve", "_call", "_body", "_out")
    backlog = False

    def __init__(self, headers: Mapping[str, str], call: str, resolve: Callable[[Region], Any], out: Any = None):
        self._region = Region.parse(headers.get(DATA_HEADER.lower(), ""), f"{call}: {DATA_HEADER}")
        self._resolve = resolve
        self._call = call
        self._body = bytearray()
        self._out = out

    def window(self) -> None:
        return None

    def feed(self, raw: Any) -> list:
        self._body += raw
        if len(self._body) > _META_BODY_LIMIT:
            raise LimitExceededError(f"{self._call}: a shared-memory answer's body exceeds {_META_BODY_LIMIT} bytes")
        return []

    def finish(self) -> Tensor:
        meta = read_meta_body(bytes(self._body), self._call)
        if meta.size_bytes != self._region.length:
            raise DecodeError(f"{self._call}: the answer's TENSOR_META needs {meta.size_bytes} bytes, its "
                              f"{DATA_HEADER} region holds {self._region.length}")
        memory = self._resolve(self._region)
        if self._out is None:
            return Tensor(meta, memory)
        target = np.frombuffer(self._out, dtype=np.uint8)
        if target.nbytes < meta.size_bytes:
            raise LimitExceededError(f"{self._call}: the answer's {meta.size_bytes} bytes do not fit out= "
                                     f"({target.nbytes} bytes)")
        np.copyto(target[:meta.size_bytes], memory)
        return Tensor(meta, target[:meta.size_bytes])
