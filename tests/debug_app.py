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
    wanted = tuple(context.client[:2])
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            candidate = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        with candidate:
            try:
                if candidate.family in (socket.AF_INET, socket.AF_INET6) and \
                        tuple(candidate.getpeername()[:2]) == wanted:
                    return b"%d %d" % (os.getpid(), candidate.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            except OSError:
                continue
    return b"%d none" % os.getpid()
