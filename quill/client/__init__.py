"""The Quill RPC clients: :class:`QuillClient` (sync) and :class:`AsyncQuillClient` (asyncio).

Both are thin over the same protocol core (:mod:`quill.protocol`) and differ only where one
blocks and the other awaits: the sync client is generated from the async one
(tools/unasync.py). The async client is imported on first use, so ``import quill`` stays light.

>>> from quill.client import QuillClient
>>> QuillClient("http+unix://%2Ftmp%2Fquill.sock").base_url
'http+unix://%2Ftmp%2Fquill.sock'
"""

from __future__ import annotations

from typing import Any

from ..protocol.discovery import MethodInfo
from ._sync_client import QuillClient
from ._sync_streams import FrameStream, MessageStream, TokenStream

__all__ = ["QuillClient", "AsyncQuillClient", "MessageStream", "TokenStream", "AsyncMessageStream",
           "AsyncTokenStream", "FrameStream", "MethodInfo"]

_ASYNC = {"AsyncQuillClient": "_async_client", "AsyncMessageStream": "_async_streams",
          "AsyncTokenStream": "_async_streams", "AsyncFrameStream": "_async_streams"}


def __getattr__(name: str) -> Any:
    module = _ASYNC.get(name)
    if module is None:
        raise AttributeError(f"module 'quill.client' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
