"""A raw-socket HTTP/2 server scripted per test, on the ``h2`` library (not collected by pytest).

:class:`HostileH2Server` accepts connections on loopback; for each request it receives it calls
``script(conn, sock, stream_id, headers, body)``, which answers (or misbehaves) with the h2
connection ``conn`` and may write raw bytes to ``sock``. A script returning False closes the
connection. ``settings`` go out in the server's first SETTINGS frame. ``answer_pings=False`` makes
a server that drops every PING it receives unanswered (a dead peer, as the keepalive sees it);
``pings`` counts the PINGs received; ``max_open`` is the most request streams open at once on one
connection (h2 itself refuses a client that opens more than the server's MAX_CONCURRENT_STREAMS).
:func:`count_connects` counts the connections quill's HTTP/2 clients open (to any server).
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Callable

import h2.config
import h2.connection
import h2.events
import h2.settings


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One HTTP/2 frame as bytes, whatever it says (for frames h2 refuses to build)."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


class HostileH2Server:
    def __init__(self, script: Callable, settings: dict | None = None, answer_pings: bool = True):
        self.script = script
        self.settings = settings or {}
        self.answer_pings = answer_pings
        self.connections = 0
        self.max_open = 0
        self.pings = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._socks.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.local_settings = h2.settings.Settings(client=False, initial_values=self.settings)
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        requests: dict[int, list] = {}
        drop_pings = None if self.answer_pings else _PingFilter(self)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                for event in conn.receive_data(data if drop_pings is None else drop_pings(data)):
                    if isinstance(event, h2.events.RequestReceived):
                        requests[event.stream_id] = [event.headers, b""]
                        self.max_open = max(self.max_open, conn.open_inbound_streams)
                    elif isinstance(event, h2.events.PingReceived):
                        self.pings += 1
                    elif isinstance(event, h2.events.DataReceived):
                        requests[event.stream_id][1] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, (h2.events.StreamReset,)):
                        requests.pop(event.stream_id, None)
                    if isinstance(event, h2.events.StreamEnded) and event.stream_id in requests:
                        headers, body = requests.pop(event.stream_id)
                        if self.script(conn, sock, event.stream_id, dict(headers), body) is False:
                            sock.sendall(conn.data_to_send())
                            return
                sock.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            return
        finally:
            sock.close()

    def close(self) -> None:
        self._stop = True
        self._listener.close()
        for sock in self._socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "HostileH2Server":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _PingFilter:
    """Takes the PING frames out of a client's bytes (after its 24-byte preface), counting them."""

    def __init__(self, server: HostileH2Server):
        self.server = server
        self.buffer = b""
        self.preface = 24

    def __call__(self, data: bytes) -> bytes:
        self.buffer += data
        kept = []
        if self.preface:
            taken = min(self.preface, len(self.buffer))
            kept.append(self.buffer[:taken])
            self.buffer, self.preface = self.buffer[taken:], self.preface - taken
        while len(self.buffer) >= 9:
            size = 9 + int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < size:
                break
            frame, self.buffer = self.buffer[:size], self.buffer[size:]
            if frame[3] == 0x6:  # PING
                self.server.pings += 1
            else:
                kept.append(frame)
        return b"".join(kept)


def answer(conn, stream_id: int, body: bytes, status: int = 200, headers=()) -> None:
    """A whole, well-formed answer."""
    conn.send_headers(stream_id, [(b":status", str(status).encode()), (b"content-type", b"application/proto"),
                                  (b"content-length", str(len(body)).encode()), *headers])
    conn.send_data(stream_id, body, end_stream=True)


def count_connects(monkeypatch) -> list:
    """A list that gets an item each time an HTTP/2 client of quill opens a connection."""
    from quill.transports.aio_http2 import AsyncHTTP2Transport

    connects: list = []
    original = AsyncHTTP2Transport._connect

    async def counting(self, timeout):
        connects.append(1)
        return await original(self, timeout)

    monkeypatch.setattr(AsyncHTTP2Transport, "_connect", counting)
    return connects
