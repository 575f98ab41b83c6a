"""Type stubs for quill._core.arrow: Arrow C data / C stream export as PyCapsules."""

from collections.abc import Iterable, Sequence

from typing_extensions import CapsuleType

from quill._core.tokens import TokenBatch
from quill.dtypes import DType

TENSOR_FORMATS: dict[str, bytes]
FIXED_SHAPE_TENSOR: str

def tensor_schema(shape: Sequence[int], dtype: DType, name: str | None) -> CapsuleType: ...
def export_tensor(data: object, shape: Sequence[int], dtype: DType, name: str | None) -> tuple[CapsuleType, CapsuleType]: ...
def token_batch_stream(batches: Iterable[TokenBatch], metadata: dict[str, str] | None = None) -> CapsuleType: ...
