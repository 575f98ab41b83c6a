"""Two misbehaving HTTP/1.1 servers on loopback, played with raw sockets (not collected).

Used by tests/test_transport_reuse.py and by tools/bad_inputs_table.py, which writes the
"Misbehaving servers" table of docs/bad-inputs.md from live calls to them.

- :func:`early_answer_server`: answers an upload ``413`` keep-alive as soon as its head is read,
  then drains the body and reads the next request off the same connection (Go's net/http does
  this for a handler that answers without reading the body).
- :func:`reset_after_read_server`: reads the whole second request of the run, on the kept-alive
  connection of the first, then resets the connection (SO_LINGER 0) without answering: a server,
  or a proxy before it, that may have acted on the request.
"""

from __future__ import annotations

import socket
import time

import numpy as np
from client_servers import ScriptedServer, echo, response

from quill.tensor import Tensor

SERVICE = "files.v1.Store"
UPLOAD_BYTES = 16 << 20  # far more than loopback buffers hold while the server is not reading
UPLOADS = {  # how the upload's body goes out: fixed-length parts, or chunked
    "tensor": lambda client: client.send_tensor(SERVICE, "Upload", Tensor.from_numpy(
        np.zeros(UPLOAD_BYTES // 4, dtype=np.float32))),
    "client stream": lambda client: client.call_client_stream(
        SERVICE, "Upload", (bytes(64 << 10) for _ in range(UPLOAD_BYTES >> 16))),
}


def early_answer_server(pause_s: float = 0.3, hang_up: bool = False) -> ScriptedServer:
    """An ``Upload`` gets ``413`` (keep-alive) before its body is read; the body is drained after
    ``pause_s``, by which time the client has seen the answer (with ``hang_up``, the connection is
    closed instead, the body unread: the kernel resets it). Other calls are echoed. The server's
    ``answered_early`` lists the uploads answered (a body cut short by a reset is not recorded in
    ``requests``)."""
    answered_early: list[str] = []

    def early(path: str, headers: dict, sock: socket.socket) -> None:
        if path.endswith("/Upload"):
            answered_early.append(path)
            sock.sendall(response(413, b"too large", "text/plain"))
            time.sleep(pause_s)
            if hang_up:
                raise ConnectionAbortedError("hung up with the body unread")

    def handler(request, sock: socket.socket) -> None:
        if not request.path.endswith("/Upload"):
            echo(request, sock)

    server = ScriptedServer(handler, early=early)
    server.answered_early = answered_early
    return server


def reset_after_read_server() -> ScriptedServer:
    """Echoes every request but the second, which is read whole and then answered by a reset."""
    server: ScriptedServer

    def handler(request, sock: socket.socket) -> bool:
        if len(server.requests) == 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return False  # closing with linger 0 sends RST
        echo(request, sock)
        return True

    server = ScriptedServer(handler)
    return server
