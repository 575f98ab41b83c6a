"""quill: the Quill RPC protocol for Python, tensors and LLM tokens on the wire.

>>> import quill
>>> quill.Tensor.zeros([2, 3], quill.DType.bfloat16(), name="kv").meta
TensorMeta(shape=[2, 3], dtype=bfloat16, name='kv')
>>> quill.Token(id=42, position=0, text="hello")
Token(id=42, text='hello', pos=0)

The wire codecs live in :mod:`quill.frames`, the reference server in :mod:`quill.server`.
"""

import sys as _sys

from . import _core, frames
from ._core import frames as _core_frames
from ._core import tokens as _core_tokens
from ._core.casts import cast
from ._version import __version__
from ._core.tokens import Token, TokenBatch, TokenBatchBuilder
from .client import MessageStream, QuillClient, TokenStream
from .dtypes import DType
from .errors import (
    BadRequestError,
    ConflictError,
    DecodeError,
    EncodeError,
    IncompleteStreamError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
    ProblemDetails,
    QuillConnectionError,
    QuillError,
    QuillTimeoutError,
    RateLimitedError,
    RpcError,
    ServerError,
    ServiceUnavailableError,
    StreamCancelledError,
    UnauthorizedError,
    WrongKindError,
)
from .protocol.discovery import MethodInfo
from .tensor import Shape, Tensor, TensorMeta


# Pickles written by quill 0.1, before the compiled core moved into quill._core, name
# quill._tokens (Token, TokenBatch) and quill._frames (the frame objects); they load through these
# aliases of the modules that now hold those names (tests/test_pickle_compat.py).
_sys.modules.setdefault(__name__ + "._tokens", _core_tokens)
_sys.modules.setdefault(__name__ + "._frames", _core_frames)
del _sys, _core_frames, _core_tokens

__all__ = [
    "AsyncMessageStream",
    "AsyncQuillClient",
    "AsyncTokenStream",
    "BadRequestError",
    "ConflictError",
    "DType",
    "DecodeError",
    "EncodeError",
    "IncompleteStreamError",
    "LimitExceededError",
    "MessageStream",
    "MethodInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "ProblemDetails",
    "QuillClient",
    "QuillConnectionError",
    "QuillError",
    "QuillTimeoutError",
    "RateLimitedError",
    "RpcError",
    "ServerError",
    "ServiceUnavailableError",
    "Shape",
    "StreamCancelledError",
    "Tensor",
    "TensorMeta",
    "Token",
    "TokenBatch",
    "TokenBatchBuilder",
    "TokenStream",
    "UnauthorizedError",
    "WrongKindError",
    "cast",
    "frames",
]


def __getattr__(name: str):
    """The asyncio client is imported on first use, so ``import quill`` stays light."""
    if name in ("AsyncQuillClient", "AsyncMessageStream", "AsyncTokenStream"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'quill' has no attribute {name!r}")
