"""Slow and numerous clients, on every engine: raw sockets that trickle a request head a byte at a
time (or send nothing) must be dropped at the head timeout without holding up anyone else, and
beyond ``max_connections`` the connections already open go on being served while a new one is
refused (uvicorn: 503; hypercorn: closed) or waits to be accepted (granian)."""

from __future__ import annotations

import http.client
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from serve_process import SERVICE, quill_serve  # noqa: E402
from waiting import wait_until  # noqa: E402

from quill import QuillClient  # noqa: E402
from quill.demo import create_demo_app  # noqa: E402
from quill.server import serve_in_thread  # noqa: E402
from quill.server.engines import ServeOptions, prepare  # noqa: E402
from quill.server.sockets import BACKLOG, bind_tcp  # noqa: E402

HEAD_START = b"GET /health HTTP/1.1\r\nHost: quill\r\n"  # then a header name, one byte at a time, never ending
HEALTH = b"GET /health HTTP/1.1\r\nHost: quill\r\n\r\n"


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


class Tricklers:
    """Connections that each send ``first`` (the start of a request head), then one more byte
    every 0.2 s."""

    def __init__(self, first: bytes = HEAD_START):
        self.first = first
        self.selector = selectors.DefaultSelector()
        self.opened: dict[socket.socket, float] = {}
        self.lived: dict[socket.socket, float] = {}  # a connection the server closed -> seconds it was open
        self.answers: list[bytes] = []

    @classmethod
    def connect(cls, url: str, count: int, first: bytes = HEAD_START) -> "Tricklers":
        tricklers = cls(first)
        for _ in range(count):
            tricklers.add(socket.create_connection(address(url), timeout=5))
        return tricklers

    def add(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if self.first:
            sock.send(self.first)
        self.opened[sock] = time.monotonic()
        self.selector.register(sock, selectors.EVENT_READ)

    def trickle(self, seconds: float, byte: bytes = b"x") -> None:
        """Go on trickling for ``seconds`` (or until the server closed them all), noting closes;
        with 0, only note the closes so far."""
        end = time.monotonic() + seconds
        next_send = 0.0
        while True:
            now = time.monotonic()
            if byte and now >= next_send:
                for sock in self.opened:
                    if sock not in self.lived:
                        try:
                            sock.send(byte)
                        except BlockingIOError:
                            pass
                        except OSError:
                            self._closed(sock)
                next_send = now + 0.2
            for key, _ in self.selector.select(timeout=max(0.0, min(next_send, end) - time.monotonic())):
                try:
                    data = key.fileobj.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.answers.append(data)
                else:
                    self._closed(key.fileobj)
            if len(self.lived) == len(self.opened) or time.monotonic() >= end:
                return

    def _closed(self, sock: socket.socket) -> None:
        if sock not in self.lived:
            self.lived[sock] = time.monotonic() - self.opened[sock]
            self.selector.unregister(sock)

    def close(self) -> None:
        for sock in self.opened:
            sock.close()
        self.selector.close()


def test_a_call_is_served_beside_200_tricklers_and_each_is_dropped_at_the_head_timeout(engine):
    with quill_serve("--engine", engine, "--head-timeout", "2") as server:
        tricklers = Tricklers.connect(server.url, 200)
        try:
            tricklers.trickle(0.4)
            with QuillClient(server.url, timeout_ms=1000, retries=0) as client:
                assert client.call(SERVICE, "Echo", b"beside them") == b"beside them"
            tricklers.trickle(0.0)
            assert tricklers.lived == {}  # served while all 200 were still connected and trickling
            tricklers.trickle(8.0)
            assert len(tricklers.lived) == 200, "the server kept tricklers past their head timeout"
            assert 1.8 <= min(tricklers.lived.values()) and max(tricklers.lived.values()) <= 6.0, tricklers.lived
            assert not any(answer.startswith(b"HTTP/1.1 200") for answer in tricklers.answers)
        finally:
            tricklers.close()


def test_the_next_head_on_a_kept_alive_connection_has_the_deadline_too(engine):
    with serve_in_thread(create_demo_app(), engine=engine, head_timeout=0.5) as url:
        connection = http.client.HTTPConnection(*address(url), timeout=5)
        connection.request("GET", "/health")
        assert connection.getresponse().read()  # the connection stays open for a next request
        tricklers = Tricklers()
        tricklers.add(connection.sock)
        try:
            tricklers.trickle(5.0)
            assert 0.25 <= tricklers.lived.get(connection.sock, 99) <= 2.5, tricklers.lived
        finally:
            tricklers.close()


# granian holds a connection that sends nothing: hyper-util's HTTP/1-or-2 detection has no timer
# (hyperium/hyper#3962); quill.server.engines documents it.
@pytest.mark.parametrize("engine_name", ["uvicorn", "hypercorn"])
def test_a_connection_that_sends_nothing_is_dropped_at_the_head_timeout(engine_name):
    with serve_in_thread(create_demo_app(), engine=engine_name, head_timeout=0.5) as url:
        tricklers = Tricklers.connect(url, 3, first=b"")
        try:
            tricklers.trickle(5.0, byte=b"")
            assert len(tricklers.lived) == 3 and all(0.3 <= t <= 2.5 for t in tricklers.lived.values()), tricklers.lived
        finally:
            tricklers.close()


#: What a connection opened beyond max_connections sees, on each engine.
NEWCOMER = {"uvicorn": "answered 503", "hypercorn": "closed", "granian": "waiting"}


def newcomer_sees(sock: socket.socket, seconds: float) -> str:
    sock.settimeout(seconds)
    try:
        sock.sendall(HEALTH)
        data = sock.recv(4096)
    except TimeoutError:
        return "waiting"
    except OSError:  # reset
        return "closed"
    if not data:
        return "closed"
    return "answered " + data.split(b" ", 2)[1].decode()


def test_beyond_max_connections_the_open_ones_are_served(engine):
    with serve_in_thread(create_demo_app(), engine=engine, max_connections=4) as url:
        held = [http.client.HTTPConnection(*address(url), timeout=5) for _ in range(4)]
        for connection in held:
            connection.request("GET", "/health")
            assert connection.getresponse().read()
        newcomer = socket.create_connection(address(url), timeout=5)
        try:
            assert newcomer_sees(newcomer, 1.0) == NEWCOMER[engine]
            for connection in held:  # the open connections are served as before
                connection.request("GET", "/health")
                assert connection.getresponse().status == 200
            held.pop().close()
            if engine == "granian":  # the waiting connection is accepted once one closed
                newcomer.settimeout(5)
                assert newcomer.recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            newcomer.close()
            for connection in held:
                connection.close()


def test_uvicorn_refuses_a_head_without_end_with_431():
    with serve_in_thread(create_demo_app(), engine="uvicorn") as url:
        big = socket.create_connection(address(url), timeout=5)
        with big:
            try:
                big.sendall(HEAD_START + b"X-Pad: " + b"a" * 200_000)
            except OSError:  # closed while we still sent: the answer was written first
                pass
            assert big.recv(4096).startswith(b"HTTP/1.1 431 ")
        connection = http.client.HTTPConnection(*address(url), timeout=5)  # a large head within the cap is served
        connection.request("GET", "/health", headers={"X-Pad": "a" * 60_000})
        assert connection.getresponse().status == 200
        connection.close()


def test_the_limits_are_checked():
    for bad in ({"head_timeout": 0}, {"head_timeout": float("inf")}, {"max_connections": 0},
                {"max_connections": True}, {"max_connections": 2.5}):
        with pytest.raises(ValueError, match="head_timeout|max_connections"):
            with serve_in_thread(create_demo_app(), **bad):
                pass
    for option, value in (("--head-timeout", "0"), ("--head-timeout", "nan"), ("--max-connections", "0")):
        done = subprocess.run([sys.executable, "-m", "quill", "serve", "--port", "0", option, value],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and option in done.stderr, done.stderr


def open_file_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        return next(int(line.split()[3]) for line in limits if line.startswith("Max open files"))


def test_quill_serve_raises_the_open_file_limit_to_fit_max_connections():
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2000))

    process = subprocess.Popen([sys.executable, "-m", "quill", "serve", "--port", "0", "--max-connections", "1000"],
                               stderr=subprocess.PIPE, text=True, preexec_fn=low_limit)
    try:
        while " on http://" not in (line := process.stderr.readline()):  # the engine logs its start first
            assert line, "quill serve exited before its banner"
        assert open_file_limit(process.pid) >= 1000
    finally:
        process.terminate()
        process.wait(20)
        process.stderr.close()
    process = subprocess.Popen([sys.executable, "-m", "quill", "serve", "--port", "0", "--max-connections", "5000"],
                               stderr=subprocess.PIPE, text=True, preexec_fn=low_limit)
    try:
        first = process.stderr.readline()
        assert "open-file limit (2000) is below max_connections (5000)" in first, first
        assert open_file_limit(process.pid) == 2000
    finally:
        process.terminate()
        process.wait(20)
        process.stderr.close()


def listen_backlog(sock: socket.socket) -> int:
    """The accept queue a listening socket was given, as Linux reports it (tcp_info's tcpi_sacked)."""
    return struct.unpack_from("8B6I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104))[13]


def test_every_engine_keeps_quills_listen_backlog(engine):
    """hypercorn listened again on quill's socket with its own backlog of 100 (asyncio does so)."""
    with open("/proc/sys/net/core/somaxconn") as limit:
        expected = min(BACKLOG, int(limit.read()))
    sock = bind_tcp("127.0.0.1", 0)
    server = prepare(create_demo_app(), sock, ServeOptions(log_level="warning"), engine)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, 10)
        assert listen_backlog(sock) == expected
    finally:
        server.stop()
        thread.join(10)
        sock.close()
