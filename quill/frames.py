"""Tensor frames (docs/protocol.md section 4) and message-stream frames (section 5).

The codecs and incremental parsers are compiled (``quill._core.frames``); this module
re-exports them and defines the frame-type and flag enums.

Tensor frames carry tensors and token streams (9-byte header: type, 4 reserved bytes,
u32 big-endian length)::

    >>> import numpy as np
    >>> from quill.tensor import Tensor
    >>> from quill.frames import TensorReceiver, encode_tensor_frames
    >>> tensor = Tensor.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    >>> receiver = TensorReceiver(max_bytes=1 << 20)
    >>> for piece in encode_tensor_frames(tensor, chunk_size=8):   # bytes and memoryviews
    ...     result = receiver.feed(piece)
    >>> result == tensor, receiver.done
    (True, True)

Message-stream frames carry streamed RPC messages (varint length, flags byte)::

    >>> from quill.frames import MessageStreamDecoder, StreamFlags, encode_stream_frame
    >>> wire = encode_stream_frame(b"one") + encode_stream_frame(b"two", StreamFlags.DATA | StreamFlags.END_STREAM)
    >>> decoder = MessageStreamDecoder()
    >>> [decoder.feed(wire[i:i + 1]) for i in range(len(wire))][-1], decoder.done
    ([b'two'], True)

Every parser raises a :class:`quill.errors.DecodeError` (a ``ValueError``) carrying the
stream offset on bad input, enforces its size limit as soon as a length field is
readable, and keeps raising the same error after a failure. When one ``feed`` completes
frames and then meets an error, it returns those frames and the next ``feed`` or
``finish`` raises the error (nothing complete is lost, whatever the chunking). So call
``finish()`` at the end of the input even after a decoder has handed out its result:
it is what reports, say, garbage that followed END_STREAM in the same chunk.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from quill._core.frames import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_FRAME_PAYLOAD,
    DEFAULT_MAX_TENSOR_BYTES,
    END_STREAM_FRAME,
    MAX_CANCEL_PAYLOAD,
    MAX_META_PAYLOAD,
    MAX_STREAM_FRAME,
    MessageStreamDecoder,
    PayloadWindow,
    StreamFrame,
    StreamFrameParser,
    TensorDataChunk,
    TensorFrame,
    TensorFrameParser,
    TensorReceiver,
    TokenStreamDecoder,
    decode_tensor_frame,
    decode_varint,
    encode_cancel_frame,
    encode_credit_frame,
    encode_end_stream,
    encode_stream_cancel,
    encode_stream_credit,
    encode_stream_frame,
    encode_tensor_frame,
    encode_tensor_frames,
    encode_token_batch_frame,
    encode_varint,
    stream_frame_header,
    tensor_frame_header,
)

__all__ = [
    "TensorFrameType",
    "StreamFlags",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_FRAME_PAYLOAD",
    "DEFAULT_MAX_TENSOR_BYTES",
    "END_STREAM_FRAME",
    "MAX_CANCEL_PAYLOAD",
    "MAX_META_PAYLOAD",
    "MAX_STREAM_FRAME",
    "MessageStreamDecoder",
    "PayloadWindow",
    "StreamFrame",
    "StreamFrameParser",
    "TensorDataChunk",
    "TensorFrame",
    "TensorFrameParser",
    "TensorReceiver",
    "TokenStreamDecoder",
    "decode_tensor_frame",
    "decode_varint",
    "encode_cancel_frame",
    "encode_credit_frame",
    "encode_end_stream",
    "encode_stream_cancel",
    "encode_stream_credit",
    "encode_stream_frame",
    "encode_tensor_frame",
    "encode_tensor_frames",
    "encode_token_batch_frame",
    "encode_varint",
    "stream_frame_header",
    "tensor_frame_header",
]


class TensorFrameType(IntEnum):
    """The type byte of a tensor frame (docs/protocol.md section 4).

    >>> TensorFrameType(0x11).name
    'TENSOR_PAYLOAD'
    """

    PROTO_MSG = 0x01
    END_STREAM = 0x02
    CANCEL = 0x04
    CREDIT = 0x08
    TENSOR_META = 0x10
    TENSOR_PAYLOAD = 0x11
    TOKEN_BATCH = 0x20


class StreamFlags(IntFlag):
    """The flags byte of a message-stream frame (docs/protocol.md section 5).

    Unknown bits are preserved by the parser, so compare with ``&`` rather than ``==``.

    >>> StreamFlags(0x03) == StreamFlags.DATA | StreamFlags.END_STREAM
    True
    """

    DATA = 0x01
    END_STREAM = 0x02
    CANCEL = 0x04
    CREDIT = 0x08
