"""``QuillStep``: one Arrow-in, Arrow-out step that calls a Quill method once per row, for
pyarrow, polars and DuckDB on one machine and for Ray Data, Dask and Spark on a cluster.

>>> step = QuillStep("http://127.0.0.1:8080", "inference.v1.LLMService", "Generate", input_column="prompt",
...                  kind="tokens", request_field="prompt")
>>> import pickle; pickle.loads(pickle.dumps(step)).method
'Generate'
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa

from ..errors import QuillError
from ._columns import ColumnSpec, StepInputError
from ._runtime import Runtime, runtime_for

__all__ = ["QuillStep", "RowError", "StepInputError"]


class RowError(QuillError, RuntimeError):
    """A row's call failed and the step was made with ``on_error="raise"`` (the call's own
    exception is the ``__cause__``)."""


class QuillStep:
    """Call ``service/method`` once per row of a batch; the batch comes back with its columns
    unchanged, the answers in ``output_column`` and per-row failures in ``error_column``.

    ``kind``: ``"json"`` (a JSON text or struct column, or any column with ``request_field``
    naming the request member each value fills; answers as JSON text with ``output="string"`` or
    structs of ``output_type`` with ``output="struct"``), ``"binary"`` (a binary column, binary
    answers), ``"tensor"`` (a ``fixed_shape_tensor`` column, optionally checked against
    ``tensor_shape`` and ``tensor_dtype``; answers as ``fixed_shape_tensor`` of ``output_shape``
    and ``output_dtype``) or ``"tokens"`` (requests as for json, the token stream as its joined
    text, or with ``tokens_output="columns"`` a list of ``{id, text, logprob}``).

    Each row is sent with an ``Idempotency-Key``: the value of ``key_column``, or a hash of the
    method and the row's request (identical rows share a key; name a key column when each must
    run). A server with an idempotency store answers a repeated key once, so a retried call or a
    re-executed task does not repeat the work. Calls that the server answers 429/503 are retried
    as its ``Retry-After`` says (``status_retries`` times).

    In each worker process one client and one window of ``concurrency`` calls in flight serve
    every batch (made at the first batch and kept by the process, so the step pickles as its
    configuration alone); ``rate`` bounds the calls a second and
    ``tokens_per_s`` the generated tokens a second, in that process. ``timeout_ms`` bounds each
    row, retries included. ``on_error="raise"`` raises :class:`RowError` for the first failed
    row instead of filling the error column. A batch whose input does not fit (a missing
    column, a wrong type, a null) raises :class:`StepInputError` before any call.
    """

    def __init__(self, url: str, service: str, method: str, *, input_column: str, kind: str = "json",
                 output_column: str = "result", error_column: str = "error", key_column: str | None = None,
                 request_field: str | None = None, output: str = "string", output_type: pa.DataType | None = None,
                 tokens_output: str = "text", tensor_shape: Sequence[int] | None = None,
                 tensor_dtype: str | None = None, output_shape: Sequence[int] | None = None,
                 output_dtype: str | None = None, on_error: str = "column", concurrency: int = 32,
                 rate: float | None = None, tokens_per_s: float | None = None, timeout_ms: int = 30_000,
                 status_retries: int = 5, headers: Mapping[str, str] | None = None,
                 client_options: Mapping[str, Any] | None = None):
        if on_error not in ("column", "raise"):
            raise ValueError(f"on_error must be 'column' or 'raise', got {on_error!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
        if not timeout_ms > 0:
            raise ValueError(f"timeout_ms must be > 0, got {timeout_ms!r}")
        for name, value in (("rate", rate), ("tokens_per_s", tokens_per_s)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 (or None: no limit), got {value!r}")
        self.url, self.service, self.method = url, service, method
        self.columns = ColumnSpec(service, method, kind, input_column, output_column=output_column,
                                  error_column=error_column, key_column=key_column, request_field=request_field,
                                  output=output, output_type=output_type, tokens_output=tokens_output,
                                  tensor_shape=tensor_shape, tensor_dtype=tensor_dtype, output_shape=output_shape,
                                  output_dtype=output_dtype)
        self.on_error, self.concurrency, self.rate, self.tokens_per_s = on_error, concurrency, rate, tokens_per_s
        self.timeout_ms = timeout_ms
        self.headers = dict(headers or {})
        self.client_options = {"status_retries": status_retries, "timeout_ms": timeout_ms, **(client_options or {})}

    # -- one worker's client --------------------------------------------------------------
    def _runtime(self) -> Runtime:
        key = (self.url, self.concurrency, self.rate, self.tokens_per_s, tuple(sorted(self.client_options.items())))
        return runtime_for(key, lambda: Runtime(self.url, self.concurrency, self.rate, self.tokens_per_s,
                                                self.client_options))

    @property
    def progress(self) -> tuple[int, int]:
        """(rows done, rows failed) by this step's configuration in this process so far."""
        runtime = self._runtime()
        return runtime.rows_done, runtime.rows_failed

    # -- batches --------------------------------------------------------------------------
    def process_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """One record batch: its columns, then the answers and the error column."""
        rows = self.columns.requests(batch)  # StepInputError before any call
        if batch.num_rows == 0:
            results, errors = [], []
        else:
            results, errors = self._runtime().run(self.service, self.method, self.columns.kind, rows.payloads,
                                                  rows.keys, self.timeout_ms / 1000, self.headers)
        answers = self.columns.answers(results, errors)
        if self.on_error == "raise":
            failed = next((i for i, e in enumerate(errors) if e is not None), None)
            if failed is not None:
                raise RowError(f"row {failed} of the batch failed ({sum(e is not None for e in errors)} of "
                               f"{len(errors)}): {errors[failed]}") from errors[failed]
        messages = pa.array([None if e is None else f"{type(e).__name__}: {e}" for e in errors], pa.string())
        fields = [pa.field(self.columns.output_column, answers.type), pa.field(self.columns.error_column, pa.string())]
        return pa.RecordBatch.from_arrays([*batch.columns, answers, messages],
                                          schema=pa.schema([*batch.schema, *fields], metadata=batch.schema.metadata))

    def process_batches(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Each batch of ``batches`` processed, lazily (Spark's ``mapInArrow`` calls the step so)."""
        for batch in batches:
            yield self.process_batch(batch)

    def __call__(self, data: Any) -> Any:
        """``data`` processed, returned in its own kind: a pyarrow ``RecordBatch``, ``Table`` or
        ``RecordBatchReader`` (lazily), a pandas DataFrame (with pyarrow-backed columns: Dask's
        partitions), a polars DataFrame, an iterator of record batches (Spark's mapInArrow), or
        any object with ``__arrow_c_stream__`` (a DuckDB relation) as a pyarrow Table."""
        if isinstance(data, pa.RecordBatch):
            return self.process_batch(data)
        if isinstance(data, pa.Table):
            return self._table(data)
        if isinstance(data, pa.RecordBatchReader):
            return pa.RecordBatchReader.from_batches(self.output_schema(data.schema), self.process_batches(data))
        module = type(data).__module__.partition(".")[0]
        if module == "pandas":
            return self._pandas(data)
        if module == "polars":
            import polars

            return polars.from_arrow(self._table(data.to_arrow()))
        if hasattr(data, "__arrow_c_stream__"):
            return self._table(pa.RecordBatchReader.from_stream(data).read_all())
        if hasattr(data, "__iter__") and not isinstance(data, (str, bytes, Mapping)):
            return self.process_batches(iter(data))
        raise TypeError(f"a QuillStep takes Arrow data (RecordBatch, Table, a reader, an iterator of batches, a "
                        f"pandas or polars DataFrame, an __arrow_c_stream__ object), got {type(data).__name__}")

    def _table(self, table: pa.Table) -> pa.Table:
        batches = table.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]
        return pa.Table.from_batches([self.process_batch(batch) for batch in batches])

    def _pandas(self, frame: Any) -> Any:
        import pandas

        table = pa.Table.from_pandas(frame, preserve_index=False)
        out = self._table(table).to_pandas(types_mapper=pandas.ArrowDtype)
        out.index = frame.index
        return out

    # -- schemas for the engines ----------------------------------------------------------
    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """The schema of the step's output for input of ``schema`` (the answers' types must be
        known: ``output_type`` for structs, ``output_shape``/``output_dtype`` for tensors)."""
        self.columns.check(schema)
        return pa.schema([*schema, *self.columns.output_fields()])

    def meta(self, like: Any) -> Any:
        """Dask's ``meta=`` for ``ddf.map_partitions(step, meta=step.meta(ddf))``: an empty pandas
        frame with pyarrow-backed columns (``like``: a Dask or pandas frame, or a pyarrow schema)."""
        import pandas

        schema = like if isinstance(like, pa.Schema) else pa.Schema.from_pandas(
            getattr(like, "_meta", like), preserve_index=False)
        return self.output_schema(schema).empty_table().to_pandas(types_mapper=pandas.ArrowDtype)

    def spark_schema(self, like: Any) -> Any:
        """Spark's schema for ``df.mapInArrow(step, step.spark_schema(df))`` (``like``: a Spark
        DataFrame or StructType, or a pyarrow schema)."""
        from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

        schema = like if isinstance(like, pa.Schema) else to_arrow_schema(getattr(like, "schema", like))
        return from_arrow_schema(self.output_schema(schema))

    def __repr__(self) -> str:
        return (f"QuillStep({self.url!r}, {self.service!r}, {self.method!r}, input_column="
                f"{self.columns.input_column!r}, kind={self.columns.kind!r}, concurrency={self.concurrency})")

