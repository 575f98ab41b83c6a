"""Listening sockets for the server, bound before the engine starts (so ``port=0`` is known at
once and forked workers share one socket), and the base URL a client uses to reach them.

TCP sockets are made so that every accepted connection gets TCP_NODELAY; Unix domain sockets
are created with file mode 0600 (only the owner may connect) unless told otherwise. The URL of
a Unix socket is ``http+unix://`` and the percent-encoded path, the form quill's client takes.

>>> sock = bind_tcp("127.0.0.1", 0)
>>> socket_url(sock).startswith("http://127.0.0.1:")
True
>>> sock.close()
>>> unix_url("/tmp/q.sock")
'http+unix://%2Ftmp%2Fq.sock'
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from urllib.parse import quote

__all__ = ["bind_tcp", "bind_unix", "remove_unix_socket", "socket_url", "unix_url", "BACKLOG"]

BACKLOG = 2048


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` whose accepted connections get TCP_NODELAY.

    ``proto=IPPROTO_TCP`` matters: asyncio sets TCP_NODELAY only on sockets whose proto says
    TCP, and without it every small response waits ~40 ms for the delayed ACK (Nagle).
    A port outside 0-65535 is a ValueError.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535 (0: any free port), got {port!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit TCP_NODELAY from the listener on Linux: this covers engines that
    # do not set it per connection themselves (granian's Rust acceptor does not).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(BACKLOG)  # connectable right away; the server accepts the backlog once it runs
    sock.set_inheritable(True)
    return sock


def bind_unix(path: str, mode: int = 0o600) -> socket.socket:
    """A listening Unix domain socket at ``path`` with file ``mode`` (0600: the owner only).

    The file is created with that mode already (no moment where others could connect). A stale
    socket file left by a crashed server is replaced; any other file at ``path`` is an error,
    and so is a socket that a running server still answers on.
    """
    path = os.fspath(path)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
        if _answers(path):
            raise OSError(f"a server is already listening on {path}")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(previous)
    os.chmod(path, mode)  # the umask can only take bits away; this sets exactly ``mode``
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def remove_unix_socket(path: str) -> None:
    """Remove the socket file at ``path`` (left alone if something else replaced it)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def unix_url(path: str) -> str:
    """The client URL of a Unix socket: ``http+unix://`` and the percent-encoded path."""
    return "http+unix://" + quote(os.fspath(path), safe="")


def socket_url(sock: socket.socket, tls: bool = False) -> str:
    """The base URL of a listening socket: ``http://host:port`` (``https`` with ``tls``), or
    :func:`unix_url` of a Unix socket's path."""
    if sock.family == socket.AF_UNIX:
        return unix_url(sock.getsockname())
    scheme = "https" if tls else "http"
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
