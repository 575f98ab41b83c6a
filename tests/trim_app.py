"""The demo service plus one debugging method, for `quill serve trim_app:app --app-dir tests`
(not collected by pytest).

``debug.v1.Debug/ReleaseFreeMemory`` runs the garbage collector and glibc's ``malloc_trim``, so
the server's RSS afterwards counts what it still holds, not the freed heap pages the allocator
keeps for later: a test can tell a leak from allocator retention.
"""

import ctypes
import ctypes.util
import gc

from quill.demo import create_demo_app

app = create_demo_app()
_libc = ctypes.CDLL(ctypes.util.find_library("c"))


@app.unary("debug.v1.Debug/ReleaseFreeMemory")
def release_free_memory(request: bytes, context) -> bytes:
    gc.collect()
    _libc.malloc_trim(0)
    return b"released"
