"""Arrow for streaming calls: a sync TokenStream is an Arrow C stream (``__arrow_c_stream__``), so
``pyarrow.RecordBatchReader.from_stream(client.stream_tokens(...))`` reads the batches as they
arrive. The async stream cannot be one: the C stream interface pulls synchronously.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TokenArrowExport", "AsyncTokenArrowExport"]


class TokenArrowExport:
    """Mixin of :class:`~quill.TokenStream`: the Arrow PyCapsule stream interface."""

    __slots__ = ()

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """An "arrow_array_stream" capsule reading this stream's TokenBatch objects one by one
        (each exported zero-copy, see ``TokenBatch.__arrow_c_array__``); ``requested_schema`` is
        not honoured (the PyCapsule Interface allows that: the schema is always TokenBatch's)."""
        from .._core.arrow import token_batch_stream

        return token_batch_stream(self)


class AsyncTokenArrowExport:
    """Mixin of :class:`~quill.AsyncTokenStream`: nothing (Arrow's C stream is pull-based and
    synchronous; collect batches with ``async for`` and export each, or use the sync client)."""

    __slots__ = ()
