"""quill: the Quill RPC protocol for Python, tensors and LLM tokens on the wire.

>>> import quill
>>> quill.Tensor.zeros([2, 3], quill.DType.bfloat16(), name="kv").meta
TensorMeta(shape=[2, 3], dtype=bfloat16, name='kv')
>>> quill.Token(id=42, position=0, text="hello")
Token(id=42, text='hello', pos=0)

The wire codecs live in :mod:`quill.frames`, the reference server in :mod:`quill.server`.
"""

from . import frames
from ._casts import cast
from ._tokens import Token, TokenBatch, TokenBatchBuilder
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
)
from .tensor import Shape, Tensor, TensorMeta

__version__ = "0.1.0"

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
    "cast",
    "frames",
]


def __getattr__(name: str):
    """The asyncio client is imported on first use, so ``import quill`` stays light."""
    if name in ("AsyncQuillClient", "AsyncMessageStream", "AsyncTokenStream"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'quill' has no attribute {name!r}")
