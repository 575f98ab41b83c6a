"""Columns in, columns out: a step's input checked and turned into one request per row, with its
idempotency key, and the answers turned back into Arrow columns (no IO here).

>>> import pyarrow as pa
>>> spec = ColumnSpec("s.v1.S", "M", "json", "prompt", request_field="prompt")
>>> rows = spec.requests(pa.record_batch({"prompt": ["hi", "yo"]}))
>>> rows.payloads, len(rows.keys[0])
([{'prompt': 'hi'}, {'prompt': 'yo'}], 40)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..errors import QuillError
from ..tensor import Tensor

__all__ = ["ColumnSpec", "Rows", "StepInputError", "STEP_KINDS", "TOKEN_TYPE"]

#: step kind -> the map kind (quill.client's) its calls go through
STEP_KINDS = {"json": "json", "binary": "unary", "tensor": "tensor", "tokens": "tokens"}
#: a generated token in a ``tokens_output="columns"`` answer
TOKEN_TYPE = pa.struct([("id", pa.uint32()), ("text", pa.string()), ("logprob", pa.float32())])
_TEXT = (pa.types.is_string, pa.types.is_large_string, getattr(pa.types, "is_string_view", lambda t: False))
_BINARY = (pa.types.is_binary, pa.types.is_large_binary, getattr(pa.types, "is_binary_view", lambda t: False))


class StepInputError(QuillError, ValueError):
    """A step's input does not fit it (a missing column, a wrong type or tensor shape, a null):
    raised before any call is made."""


class Rows:
    """One batch as requests: ``payloads[i]`` is row i's request, ``keys[i]`` its idempotency key."""

    __slots__ = ("payloads", "keys")

    def __init__(self, payloads: list, keys: list[str]):
        self.payloads, self.keys = payloads, keys


class ColumnSpec:
    """Which column a step reads, how its rows become requests, and what its answers become."""

    def __init__(self, service: str, method: str, kind: str, input_column: str, *, output_column: str = "result",
                 error_column: str = "error", key_column: str | None = None, request_field: str | None = None,
                 output: str = "string", output_type: pa.DataType | None = None, tokens_output: str = "text",
                 tensor_shape: Sequence[int] | None = None, tensor_dtype: str | None = None,
                 output_shape: Sequence[int] | None = None, output_dtype: str | None = None):
        if kind not in STEP_KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, STEP_KINDS))}, got {kind!r}")
        if output not in ("string", "struct"):
            raise ValueError(f"output must be 'string' or 'struct', got {output!r}")
        if tokens_output not in ("text", "columns"):
            raise ValueError(f"tokens_output must be 'text' or 'columns', got {tokens_output!r}")
        if (output_shape is None) != (output_dtype is None):
            raise ValueError("output_shape and output_dtype go together (the answer tensors' row shape and dtype)")
        if len({input_column, output_column, error_column}) < 3:
            raise ValueError("input_column, output_column and error_column must be three different names")
        self.service, self.method, self.kind, self.input_column = service, method, kind, input_column
        self.output_column, self.error_column, self.key_column = output_column, error_column, key_column
        self.request_field, self.output, self.output_type, self.tokens_output = \
            request_field, output, output_type, tokens_output
        self.tensor_shape = None if tensor_shape is None else [int(n) for n in tensor_shape]
        self.tensor_dtype = None if tensor_dtype is None else np.dtype(tensor_dtype)
        self.output_shape = None if output_shape is None else [int(n) for n in output_shape]
        self.output_dtype = None if output_dtype is None else np.dtype(output_dtype)

    # -- the input ----------------------------------------------------------------------
    def check(self, schema: pa.Schema) -> None:
        """Raise :class:`StepInputError` unless ``schema`` has the columns this step reads, of types
        it takes, and none of the names it writes."""
        names = schema.names
        if self.input_column not in names:
            raise StepInputError(f"the input has no column {self.input_column!r} (it has {', '.join(names) or 'none'})")
        for name in (self.output_column, self.error_column):
            if name in names:
                raise StepInputError(f"the input already has a column {name!r}, which the step writes: rename it "
                                     f"or pass another output_column/error_column")
        if self.key_column is not None:
            if self.key_column not in names:
                raise StepInputError(f"the input has no key column {self.key_column!r}")
            kind = schema.field(self.key_column).type
            if not (any(test(kind) for test in _TEXT) or pa.types.is_integer(kind)):
                raise StepInputError(f"key column {self.key_column!r} is {kind}; it must hold strings or integers")
        self._check_type(schema.field(self.input_column).type)

    def _check_type(self, kind: pa.DataType) -> None:
        column = self.input_column
        if self.kind == "binary":
            if not any(test(kind) for test in _BINARY):
                raise StepInputError(f"column {column!r} is {kind}; kind='binary' reads a binary column "
                                     f"(cast it: pc.cast(column, pa.binary()))")
        elif self.kind == "tensor":
            if not isinstance(kind, pa.FixedShapeTensorType):
                raise StepInputError(f"column {column!r} is {kind}; kind='tensor' reads a fixed_shape_tensor column")
            shape, dtype = list(kind.shape), np.dtype(kind.value_type.to_pandas_dtype())
            if self.tensor_shape is not None and shape != self.tensor_shape:
                raise StepInputError(f"column {column!r} holds tensors of shape {shape}, the step takes "
                                     f"{self.tensor_shape}")
            if self.tensor_dtype is not None and dtype != self.tensor_dtype:
                raise StepInputError(f"column {column!r} holds {dtype} tensors, the step takes {self.tensor_dtype}")
        elif self.request_field is None and not (any(test(kind) for test in _TEXT) or pa.types.is_struct(kind)):
            raise StepInputError(f"column {column!r} is {kind}; kind={self.kind!r} reads JSON text or a struct "
                                 f"column, or any column with request_field= naming the member it fills")

    def requests(self, batch: pa.RecordBatch) -> Rows:
        """Row i's request and idempotency key, for every row (StepInputError for a null)."""
        self.check(batch.schema)
        column = batch.column(self.input_column)
        if column.null_count:
            first = column.is_null().to_pylist().index(True)
            raise StepInputError(f"column {self.input_column!r} has {column.null_count} null(s), the first at row "
                                 f"{first}: drop or fill them first")
        if self.kind == "tensor":
            arrays = column.to_numpy_ndarray()
            payloads = [Tensor.from_numpy(np.ascontiguousarray(row)) for row in arrays]
            signature = f"{list(arrays.shape[1:])}{arrays.dtype.str}".encode()
            contents = [signature + row.tobytes() for row in arrays]
        elif self.kind == "binary":
            payloads = column.to_pylist()
            contents = payloads
        else:
            payloads = [self._request(value) for value in column.to_pylist()]
            contents = [json.dumps(p, sort_keys=True, separators=(",", ":")).encode() for p in payloads]
        return Rows(payloads, self._keys(batch, contents))

    def _request(self, value: Any) -> Any:
        if self.request_field is not None:
            return {self.request_field: value}
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise StepInputError(f"column {self.input_column!r} holds {value[:40]!r}, not JSON text ({exc}); "
                                     f"pass request_field= to send each value as a member") from None
        return value

    def _keys(self, batch: pa.RecordBatch, contents: list[bytes]) -> list[str]:
        if self.key_column is not None:
            values = batch.column(self.key_column)
            if values.null_count:
                raise StepInputError(f"key column {self.key_column!r} has {values.null_count} null(s)")
            return [str(v) for v in values.to_pylist()]
        scope = f"{self.service}/{self.method}\0{self.kind}\0".encode()
        return [hashlib.sha256(scope + content).hexdigest()[:40] for content in contents]

    # -- the output ---------------------------------------------------------------------
    def output_fields(self) -> list[pa.Field]:
        """The columns a step adds (its answers, then the error column), when their types are known."""
        if self.kind == "binary":
            kind = pa.binary()
        elif self.kind == "tokens":
            kind = pa.string() if self.tokens_output == "text" else pa.list_(TOKEN_TYPE)
        elif self.kind == "tensor":
            if self.output_shape is None:
                raise ValueError("the schema of a tensor step's answers needs output_shape= and output_dtype=")
            kind = pa.fixed_shape_tensor(pa.from_numpy_dtype(self.output_dtype), self.output_shape)
        elif self.output == "string":
            kind = pa.string()
        elif self.output_type is None:
            raise ValueError("the schema of output='struct' answers needs output_type= (a pyarrow struct type)")
        else:
            kind = self.output_type
        return [pa.field(self.output_column, kind), pa.field(self.error_column, pa.string())]

    def answers(self, results: list, errors: list[BaseException | None]) -> pa.Array:
        """The answer column of a batch: row i's result, null where it failed (its error may be set
        here: a tensor of another shape than the others)."""
        if self.kind == "binary":
            return pa.array(results, pa.binary())
        if self.kind == "tokens":
            if self.tokens_output == "text":
                return pa.array([None if r is None else "".join(b.text() for b in r) for r in results], pa.string())
            return pa.array([None if r is None else [{"id": t.id, "text": t.text, "logprob": t.logprob}
                                                     for b in r for t in b.tokens()] for r in results],
                            pa.list_(TOKEN_TYPE))
        if self.kind == "tensor":
            return self._tensors(results, errors)
        if self.output == "string":
            return pa.array([None if r is None else json.dumps(r, separators=(",", ":")) for r in results],
                            pa.string())
        return pa.array(results, self.output_type)

    def _tensors(self, results: list, errors: list) -> pa.Array:
        arrays = [None if r is None else r.to_numpy() for r in results]
        if self.output_shape is not None:
            shape, dtype = tuple(self.output_shape), self.output_dtype
        else:
            first = next((a for a in arrays if a is not None), None)
            shape, dtype = (first.shape, first.dtype) if first is not None else ((1,), np.dtype(np.float32))
        for i, array in enumerate(arrays):
            if array is not None and (array.shape != shape or array.dtype != dtype):
                errors[i] = StepInputError(f"the answer is a {array.dtype} tensor of shape {list(array.shape)}; "
                                           f"the column holds {dtype} of shape {list(shape)}")
                arrays[i] = None
        size = int(np.prod(shape))
        values = np.zeros((len(arrays), size), dtype)
        for i, array in enumerate(arrays):
            if array is not None:
                values[i] = array.reshape(-1)
        mask = pa.array([a is None for a in arrays])
        storage = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), size, mask=mask)
        return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.from_numpy_dtype(dtype), list(shape)), storage)
