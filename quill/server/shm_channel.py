"""The server's descriptor channel of the shared-memory extension (docs/shared-memory.md): a
``SOCK_SEQPACKET`` Unix socket beside the HTTP one, where a client of an allowed uid
(``SO_PEERCRED``) registers arenas by passing memfd descriptors (``SCM_RIGHTS``).

Nothing a peer sends is trusted. A descriptor is mapped only when it is a memfd
(``/proc/self/fd`` names it ``/memfd:...``) sealed against shrinking (``F_SEAL_SHRINK`` in
``F_GET_SEALS``: a file that could be truncated under the mapping would kill the server with
SIGBUS) and not against writing; its size is ``fstat``'s, and a message that claims another is
refused. Every other descriptor, and every descriptor of a refused message, is closed at once.
Arenas and bytes per connection, and connections, are bounded (each mapping holds one
descriptor: Python's mmap keeps a duplicate, so at most ``max_peers * max_arenas`` of them, 2,048
by default). When the connection closes (the client exited, or was killed), its
arenas are forgotten, and each mapping goes once the last view of it (a handler's Tensor) dies.

One thread runs the channel (a selector over the listening socket and its connections); the
HTTP side asks it, under a lock, for the memory of a region (:meth:`ShmChannel.region`).

>>> import tempfile, os
>>> channel = ShmChannel(os.path.join(tempfile.mkdtemp(), "q.sock.shm"))
>>> channel.start(); channel.announce()["version"]
1
>>> channel.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import secrets
import selectors
import socket
import stat
import struct
import threading
from typing import Any, Iterable

import numpy as np

from ..errors import DecodeError
from ..protocol.shm import MAX_MESSAGE, MIN_BYTES, VERSION, Region, decode_message, encode_message, int_field

__all__ = ["ShmChannel", "check_arena_fd", "MAX_ARENAS", "MAX_ARENA_BYTES", "MAX_PEERS"]

logger = logging.getLogger("quill.server")

#: Arenas one connection may hold registered at a time.
MAX_ARENAS = 64
#: Bytes of the arenas one connection may hold registered at a time.
MAX_ARENA_BYTES = 64 << 30
#: Connections the channel holds at a time (one per client object, usually).
MAX_PEERS = 32
_F_SEAL_FUTURE_WRITE = 0x0010  # not in Python's fcntl
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


class RefusedArena(ValueError):
    """A descriptor or message the channel refuses (the peer is told why)."""


def check_arena_fd(fd: int, claimed: int) -> int:
    """The size of the memfd ``fd`` if it may be mapped, else RefusedArena saying why."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        kind = "a pipe" if stat.S_ISFIFO(info.st_mode) else "a directory" if stat.S_ISDIR(info.st_mode) else \
            "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file"
        raise RefusedArena(f"the descriptor is {kind}, not a memfd")
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        name = ""
    if not name.startswith("/memfd:"):
        raise RefusedArena(f"the descriptor is not a memfd (it is {name[:80] or 'unnamed'!r})")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        raise RefusedArena(f"the memfd's seals cannot be read ({exc.strerror})") from None
    if not seals & fcntl.F_SEAL_SHRINK:
        raise RefusedArena("the memfd is not sealed with F_SEAL_SHRINK (create it with MFD_ALLOW_SEALING and "
                           "add F_SEAL_SHRINK: a file that can shrink under the mapping would crash the server)")
    if seals & (fcntl.F_SEAL_WRITE | _F_SEAL_FUTURE_WRITE):
        raise RefusedArena("the memfd is sealed against writing; answers are written into arenas")
    if info.st_size <= 0 or info.st_size != claimed:
        raise RefusedArena(f"the memfd holds {info.st_size} bytes, the message says {claimed}")
    return info.st_size


class _Arena:
    __slots__ = ("size", "map", "bytes")

    def __init__(self, fd: int, size: int):
        self.size = size
        self.map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.bytes = np.frombuffer(self.map, dtype=np.uint8)

    def forget(self) -> None:
        """Unmap now unless a view lives on (then the last view's death unmaps it)."""
        self.bytes = None
        with contextlib.suppress(BufferError):
            self.map.close()


class _Peer:
    """One connection: its session token, its arenas, their bytes."""

    __slots__ = ("sock", "session", "uid", "pid", "arenas", "held", "next_id")

    def __init__(self, sock: socket.socket, uid: int, pid: int):
        self.sock = sock
        self.session = secrets.token_hex(16)
        self.uid, self.pid = uid, pid
        self.arenas: dict[int, _Arena] = {}
        self.held = 0
        self.next_id = 1


class ShmChannel:
    """The descriptor channel at ``path`` (file mode ``mode``), for peers whose uid is in
    ``allow_uids`` (default: this process's uid only); ``max_arenas`` and ``max_bytes`` bound
    each connection, ``max_peers`` the connections. ``start()`` binds it and starts its thread,
    ``close()`` stops it, forgets every arena and removes the socket file."""

    def __init__(self, path: str, *, mode: int = 0o600, allow_uids: Iterable[int] | None = None,
                 max_arenas: int = MAX_ARENAS, max_bytes: int = MAX_ARENA_BYTES, max_peers: int = MAX_PEERS):
        self.path = os.fspath(path)
        self.mode = mode
        self.allow_uids = frozenset([os.getuid()] if allow_uids is None else allow_uids)
        self.max_arenas, self.max_bytes, self.max_peers = max_arenas, max_bytes, max_peers
        self._lock = threading.Lock()
        self._sessions: dict[str, _Peer] = {}
        self._peers: dict[socket.socket, _Peer] = {}
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def announce(self) -> dict:
        """What ``GET /.well-known/quill/shm`` answers."""
        return {"version": VERSION, "socket": self.path, "min_bytes": MIN_BYTES, "max_arenas": self.max_arenas,
                "max_bytes": self.max_bytes}

    @property
    def peers(self) -> int:
        with self._lock:
            return len(self._peers)

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)  # a stale one (the HTTP socket beside it was bound: no live server)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        previous = os.umask(0o777 & ~self.mode)
        try:
            sock.bind(self.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(previous)
        os.chmod(self.path, self.mode)
        sock.listen(64)
        sock.setblocking(False)
        self._listener = sock
        self._thread = threading.Thread(target=self._run, name="quill-shm-channel", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(5.0)
        for peer in list(self._peers.values()):
            self._drop_peer(peer)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)
        self._wake_r.close()
        self._wake_w.close()

    # -- the HTTP side ---------------------------------------------------------------
    def region(self, session: str, region: Region, what: str) -> np.ndarray:
        """The bytes of ``region`` of ``session``'s arenas (a writable uint8 view), or DecodeError."""
        with self._lock:
            peer = self._sessions.get(session)
            if peer is None:
                raise DecodeError(f"{what}: unknown shared-memory session (its descriptor channel closed?)")
            arena = peer.arenas.get(region.arena)
            if arena is None:
                raise DecodeError(f"{what}: arena {region.arena} is not registered in this session")
            region.check(arena.size, what)
            return arena.bytes[region.offset:region.offset + region.length]

    # -- the channel thread ----------------------------------------------------------
    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self._listener:
                        self._accept(selector)
                    elif key.fileobj is not self._wake_r:
                        peer = self._peers.get(key.fileobj)  # type: ignore[call-overload]
                        if peer is not None and not self._serve(peer):
                            selector.unregister(peer.sock)
                            self._drop_peer(peer)
        except Exception:  # a bug here must not go unnoticed, nor take the HTTP server down
            logger.exception("quill shared-memory channel stopped")
        finally:
            selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            sock, _ = self._listener.accept()  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        reason = None
        if uid not in self.allow_uids:
            reason = f"uid {uid} may not use this server's shared memory (allowed: {sorted(self.allow_uids)})"
        elif len(self._peers) >= self.max_peers:
            reason = f"the channel holds {self.max_peers} connections already"
        if reason is not None:
            logger.warning("quill shared memory: refused pid %d: %s", pid, reason)
            with contextlib.suppress(OSError):
                sock.send(encode_message({"op": "refused", "error": reason}))
            sock.close()
            return
        peer = _Peer(sock, uid, pid)
        sock.settimeout(1.0)  # replies are small: a peer that does not read them is dropped
        try:
            sock.send(encode_message({"op": "hello", "version": VERSION, "session": peer.session,
                                      "max_arenas": self.max_arenas, "max_bytes": self.max_bytes}))
        except OSError:
            sock.close()
            return
        with self._lock:
            self._peers[sock] = peer
            self._sessions[peer.session] = peer
        selector.register(sock, selectors.EVENT_READ)

    def _serve(self, peer: _Peer) -> bool:
        """Handle one message of ``peer``; False when the connection is to be closed."""
        try:
            data, fds, flags, _ = socket.recv_fds(peer.sock, MAX_MESSAGE + 1, 4)
        except (OSError, ValueError):
            return False
        try:
            if not data and not fds:
                return False  # the peer closed
            try:
                reply = self._handle(peer, data, fds, flags)
            except (RefusedArena, DecodeError, OSError, ValueError) as exc:
                reply = {"op": "error", "error": str(exc)}
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        try:
            peer.sock.send(encode_message(reply))
        except OSError:
            return False
        return True

    def _handle(self, peer: _Peer, data: bytes, fds: list, flags: int) -> dict:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise RefusedArena(f"message longer than {MAX_MESSAGE} bytes, or with more than one descriptor")
        message = decode_message(data, f"pid {peer.pid}")
        op = message["op"]
        if op == "register":
            if len(fds) != 1:
                raise RefusedArena(f"'register' carries exactly one descriptor, this one {len(fds)}")
            size = check_arena_fd(fds[0], int_field(message, "size", "register"))
            if len(peer.arenas) >= self.max_arenas:
                raise RefusedArena(f"this connection holds {self.max_arenas} arenas already (the limit): drop one")
            if peer.held + size > self.max_bytes:
                raise RefusedArena(f"this connection's arenas would exceed {self.max_bytes} bytes (the limit)")
            arena = _Arena(fds[0], size)
            with self._lock:
                number = peer.next_id
                peer.next_id += 1
                peer.arenas[number] = arena
                peer.held += size
            return {"op": "registered", "arena": number, "size": size}
        if fds:
            raise RefusedArena(f"'{op}' carries no descriptors")
        if op == "drop":
            number = int_field(message, "arena", "drop")
            with self._lock:
                arena = peer.arenas.pop(number, None)
                if arena is not None:
                    peer.held -= arena.size
            if arena is None:
                raise RefusedArena(f"arena {number} is not registered")
            arena.forget()
            return {"op": "dropped", "arena": number}
        raise RefusedArena(f"unknown op {op[:40]!r} (register, drop)")

    def _drop_peer(self, peer: _Peer) -> None:
        with self._lock:
            self._peers.pop(peer.sock, None)
            self._sessions.pop(peer.session, None)
            arenas, peer.arenas, peer.held = list(peer.arenas.values()), {}, 0
        for arena in arenas:
            arena.forget()
        peer.sock.close()
