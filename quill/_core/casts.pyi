"""Type stub for the compiled module quill._core.casts."""

from typing import Any

import numpy as np
import numpy.typing as npt

from quill.dtypes import DType

_DTypeSpec = DType | npt.DTypeLike | str

def cast(
    src: np.ndarray | np.generic,
    dtype: _DTypeSpec,
    *,
    out: np.ndarray | None = None,
    src_dtype: _DTypeSpec | None = None,
) -> np.ndarray[Any, np.dtype[Any]]: ...
def _available_paths() -> tuple[str, ...]: ...
def _cast_using(
    path: str,
    src: np.ndarray | np.generic,
    dtype: _DTypeSpec,
    *,
    out: np.ndarray | None = None,
    src_dtype: _DTypeSpec | None = None,
) -> np.ndarray[Any, np.dtype[Any]]: ...
