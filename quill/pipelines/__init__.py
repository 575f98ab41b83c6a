"""Arrow in, Arrow out: :class:`QuillStep` calls a Quill method once per row of a batch, on one
machine (pyarrow, polars, DuckDB) or as a step of Ray Data, Dask or Spark (docs/pipelines.md).
Needs pyarrow (``pip install 'quill-rpc[pipelines]'``).

>>> from quill.pipelines import QuillStep
>>> QuillStep("http://127.0.0.1:8080", "echo.v1.EchoService", "Echo", input_column="body", kind="binary")
QuillStep('http://127.0.0.1:8080', 'echo.v1.EchoService', 'Echo', input_column='body', kind='binary', concurrency=32)
"""

from __future__ import annotations

try:
    import pyarrow  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("quill.pipelines needs pyarrow: pip install 'quill-rpc[pipelines]'") from exc

from ._columns import TOKEN_TYPE, StepInputError
from ._runtime import TokenBucket
from ._step import QuillStep, RowError

__all__ = ["QuillStep", "StepInputError", "RowError", "TokenBucket", "TOKEN_TYPE"]
