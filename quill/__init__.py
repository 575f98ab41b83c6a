"""quill: the Quill RPC protocol for Python, tensors and LLM tokens on the wire.

>>> import quill
>>> quill.DType.float32()
DType.float32
"""

from .dtypes import DType
from .errors import (
    DecodeError,
    EncodeError,
    IncompleteStreamError,
    LimitExceededError,
    ProblemDetails,
    QuillConnectionError,
    QuillError,
    QuillTimeoutError,
    RpcError,
    StreamCancelledError,
)

__version__ = "0.1.0"

__all__ = [
    "DType",
    "DecodeError",
    "EncodeError",
    "IncompleteStreamError",
    "LimitExceededError",
    "ProblemDetails",
    "QuillConnectionError",
    "QuillError",
    "QuillTimeoutError",
    "RpcError",
    "StreamCancelledError",
]
