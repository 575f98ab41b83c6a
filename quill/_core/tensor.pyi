"""Type stubs for quill._core.tensor: the TENSOR_META codec, byte equality and DLPack export."""

from typing import Any, Sequence

from quill.dtypes import DType

def encode_meta(shape: Sequence[int], dtype: DType, name: str | None, device_code: int) -> bytes: ...
def decode_meta(
    buf: Any, max_bytes: int | None = None
) -> tuple[tuple[int, ...], int, int, int, int, str | None]: ...
def buffers_equal(a: Any, b: Any) -> bool: ...
def export_dlpack(
    data: Any,
    shape: Sequence[int],
    dtype: DType,
    *,
    stream: Any = None,
    max_version: tuple[int, int] | None = None,
    dl_device: tuple[int, int] | None = None,
    copy: bool | None = None,
) -> Any: ...
