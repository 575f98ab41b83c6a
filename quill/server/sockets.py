"""Listening sockets for the server, bound before the engine starts (so ``port=0`` is known at
once and forked workers share one socket), and the base URL a client uses to reach them.

>>> sock = bind_tcp("127.0.0.1", 0)
>>> socket_url(sock).startswith("http://127.0.0.1:")
True
>>> sock.close()
"""

from __future__ import annotations

import socket

__all__ = ["bind_tcp", "socket_url"]

BACKLOG = 2048


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` whose accepted connections get TCP_NODELAY.

    ``proto=IPPROTO_TCP`` matters: asyncio sets TCP_NODELAY only on sockets whose proto says
    TCP, and without it every small response waits ~40 ms for the delayed ACK (Nagle).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(BACKLOG)  # connectable right away; the server accepts the backlog once it runs
    sock.set_inheritable(True)
    return sock


def socket_url(sock: socket.socket, tls: bool = False) -> str:
    """The base URL of a listening socket: ``http://host:port`` (``https`` with ``tls``)."""
    scheme = "https" if tls else "http"
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
