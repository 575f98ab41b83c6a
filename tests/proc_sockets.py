"""Find the server side of a TCP connection among this process's descriptors (not collected by
pytest): the server under test runs in the same process, on any engine or event loop (uvloop
keeps no socket objects, so the descriptors are the only way in)."""

from __future__ import annotations

import os
import socket


def socket_connected_to(peer) -> socket.socket | None:
    """A socket on a duplicate of this process's TCP descriptor whose peer address is ``peer``
    (``(host, port)``), or None. Close it when done."""
    wanted = tuple(peer[:2])
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            candidate = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if candidate.family in (socket.AF_INET, socket.AF_INET6) and tuple(candidate.getpeername()[:2]) == wanted:
                return candidate
        except OSError:
            pass
        candidate.close()
    return None
