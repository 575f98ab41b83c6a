"""The demo service plus two debugging methods, for `quill serve debug_app:app --app-dir tests`
(not collected by pytest).

``debug.v1.Debug/ReleaseFreeMemory`` runs the garbage collector and glibc's ``malloc_trim``, so
the server's RSS afterwards counts what it still holds, not the freed heap pages the allocator
keeps for later: a test can tell a leak from allocator retention. ``debug.v1.Debug/NoDelay`` says
which worker answered and whether its connection has TCP_NODELAY.
"""

import ctypes
import ctypes.util
import gc
import os
import socket

from proc_sockets import socket_connected_to
from quill.demo import create_demo_app

app = create_demo_app()
_libc = ctypes.CDLL(ctypes.util.find_library("c"))


@app.unary("debug.v1.Debug/ReleaseFreeMemory")
def release_free_memory(request: bytes, context) -> bytes:
    gc.collect()
    _libc.malloc_trim(0)
    return b"released"


@app.unary("debug.v1.Debug/NoDelay")
def no_delay(request: bytes, context) -> bytes:
    """``<pid> <TCP_NODELAY>`` of the connection this request came on, found among the process's
    descriptors by its peer address (any engine or event loop: uvloop keeps no socket objects)."""
    sock = socket_connected_to(context.client)
    if sock is None:
        return b"%d none" % os.getpid()
    with sock:
        return b"%d %d" % (os.getpid(), sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
