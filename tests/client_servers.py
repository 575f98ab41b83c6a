"""Small loopback HTTP/1.1 servers for the QuillClient tests (not collected by pytest).

:class:`ScriptedServer` parses real requests off a socket, records them, and answers with
whatever raw bytes a test scripts, so tests can check what the client put on the wire and
inject faults (lying Content-Length, truncated chunked bodies, resets, silence).
"""

from __future__ import annotations

import socket
import threading
from typing import Callable

try:
    from compression import zstd
except ImportError:
    from backports import zstd


class Request:
    """One request as received: method, path, lower-case headers (``header_lines``: every
    (name, value) as sent, repeats included), the body after de-chunking."""

    def __init__(self, method: str, path: str, headers: dict, body: bytes, chunked: bool, connection: int,
                 header_lines: list | None = None):
        self.method = method
        self.path = path
        self.headers = headers
        self.header_lines = header_lines or []
        self.body = body
        self.chunked = chunked
        self.connection = connection

    @property
    def content(self) -> bytes:
        """The body with any zstd Content-Encoding removed."""
        if self.headers.get("content-encoding") == "zstd":
            return zstd.decompress(self.body)
        return self.body


def response(status: int = 200, body: bytes = b"", content_type: str = "application/proto", headers=None) -> bytes:
    """A complete raw HTTP/1.1 response with Content-Length."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked_head(status: int = 200, content_type: str = "application/proto", headers=None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", "Transfer-Encoding: chunked"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def read_request(rfile, connection: int, on_head: Callable[[str, dict], object] | None = None) -> Request | None:
    """The next request off ``rfile`` (None at the end of the connection); ``on_head(path, headers)``
    runs once the head is read, before the body is (a server that answers early). A body the
    client stopped sending is recorded as far as it came."""
    line = rfile.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers, header_lines = {}, []
    while True:
        line = rfile.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
        header_lines.append((name.strip(), value.strip()))
    if on_head is not None:
        on_head(path, headers)
    chunked = headers.get("transfer-encoding", "").lower() == "chunked"
    if chunked:
        parts = []
        while True:
            line = rfile.readline()
            size = int(line.split(b";")[0], 16) if line.strip() else 0
            if size == 0:
                rfile.readline()
                break
            parts.append(rfile.read(size))
            rfile.read(2)
        body = b"".join(parts)
    else:
        body = rfile.read(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body, chunked, connection, header_lines)


class ScriptedServer:
    """A threaded loopback server; ``handler(request, sock)`` writes the answer itself.

    ``handler`` returns False to close the connection after answering. ``early(path, headers, sock)``,
    if given, runs once a request's head is read, before its body is (it may answer early; the
    body is read after it returns, as Go's net/http drains it). Every request is appended to
    ``requests``; ``connections`` counts accepted connections, ``closed`` those it has closed.
    """

    def __init__(self, handler: Callable[[Request, socket.socket], object], port: int = 0, ssl_context=None,
                 early: Callable[[str, dict, socket.socket], object] | None = None):
        self.handler = handler
        self.early = early
        self._ssl_context = ssl_context
        self.requests: list[Request] = []
        self.connections = 0
        self.closed = 0
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._stopped = False
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket, connection: int) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl_context is not None:
            try:
                sock = self._ssl_context.wrap_socket(sock, server_side=True)
            except OSError:
                sock.close()
                return
        self._open.append(sock)
        rfile = sock.makefile("rb")
        try:
            while True:
                on_head = None if self.early is None else (lambda path, headers: self.early(path, headers, sock))
                request = read_request(rfile, connection, on_head)
                if request is None:
                    break
                self.requests.append(request)
                if self.handler(request, sock) is False:
                    break
        except (OSError, ValueError):  # the connection broke, or the bytes are not a request
            pass
        finally:
            rfile.close()
            sock.close()
            self.closed += 1

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        for sock in self._open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "ScriptedServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def echo(request: Request, sock: socket.socket) -> None:
    """Answer with the (decompressed) request body, echoing its content type."""
    sock.sendall(response(200, request.content, request.headers.get("content-type", "application/proto")))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call_from_child(client, queue) -> None:
    """Worker-process target (importable by spawned children): one Echo call, result to ``queue``."""
    queue.put(client.call("echo.v1.EchoService", "Echo", b"from-child"))
