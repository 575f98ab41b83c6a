"""Type stubs for quill._core.arrow_import: checked import of Arrow C data from any producer."""

from typing import Any, final

TYPE_NAMES: dict[str, str]
DTYPE_NAMES: dict[str, str]
ELEMENT_SIZES: dict[str, int]
TOKEN_COLUMNS: dict[str, tuple[tuple[str, ...], bool, bool]]

def type_name(fmt: str) -> str: ...
def import_tensor(source: Any) -> tuple[tuple[int, ...], str, str | None, Any]: ...

@final
class ArrowBuffer:
    def __buffer__(self, flags: int) -> memoryview: ...

@final
class TokenChunk: ...
