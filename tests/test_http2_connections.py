"""HTTP/2 connection management: a second connection only when ``http2_connections`` allows it
(against the raw h2 server of tests/h2_hostile.py with MAX_CONCURRENT_STREAMS=2, and against
hypercorn and granian with their limit lowered), and the idle PING keepalive (a server that answers
PINGs keeps its connection; one that does not is declared dead and its calls fail)."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

pytest.importorskip("quill._core.h2engine", reason="quill was built without libnghttp2 (HTTP/2 engine)")

sys.path.insert(0, os.path.dirname(__file__))
from h2_hostile import HostileH2Server, answer, count_connects  # noqa: E402
from waiting import wait_until  # noqa: E402

from quill.client import AsyncQuillClient, QuillClient  # noqa: E402
from quill.errors import QuillConnectionError, QuillTimeoutError  # noqa: E402
from quill.server import QuillApp, engines, serve_in_thread  # noqa: E402

ECHO = "echo.v1.EchoService"


@pytest.fixture
def client_kind(request):
    """sync or async (tests/conftest.py generates both)."""
    return request.param


def make(kind, url, **options):
    from client_kinds import CLIENTS

    return CLIENTS[kind](url, http2=True, **options)


def slow_echo(conn, sock, stream_id, headers, body):
    time.sleep(0.03)
    answer(conn, stream_id, body)


async def burst(client, count):
    await client.call(ECHO, "Echo", b"settings first")  # the server's SETTINGS are known after one call
    return await asyncio.gather(*[client.call(ECHO, "Echo", b"q%d" % i) for i in range(count)])


@pytest.mark.parametrize("connections", [1, 2, 3])
def test_connections_open_only_up_to_the_option(connections):
    with HostileH2Server(slow_echo, settings={3: 2}) as server:  # SETTINGS_MAX_CONCURRENT_STREAMS = 2
        async def main():
            async with AsyncQuillClient(server.url, http2=True, http2_connections=connections) as client:
                return await burst(client, 16)

        assert asyncio.run(main()) == [b"q%d" % i for i in range(16)]
        assert server.connections == connections  # each new one only when the others were full
        assert server.max_open == 2  # never past the server's limit on any connection


def test_one_connection_is_kept_while_it_has_room():
    with HostileH2Server(slow_echo) as server:  # h2's default limit: 100 streams
        async def main():
            async with AsyncQuillClient(server.url, http2=True, http2_connections=4) as client:
                return await burst(client, 20)

        assert asyncio.run(main()) == [b"q%d" % i for i in range(20)]
        assert server.connections == 1


def test_sync_client_threads_spread_over_connections():
    with HostileH2Server(slow_echo, settings={3: 2}) as server:
        with QuillClient(server.url, http2=True, http2_connections=2) as client:
            assert client.call(ECHO, "Echo", b"first") == b"first"
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda i: client.call(ECHO, "Echo", b"t%d" % i), range(24)))
        assert answers == [b"t%d" % i for i in range(24)]
        assert server.connections == 2 and server.max_open == 2


def test_queue_timeout_names_the_limit_and_the_option():
    def hold(conn, sock, stream_id, headers, body):
        if body == b"settings first":
            answer(conn, stream_id, body)  # any other stream is held open: no answer

    with HostileH2Server(hold, settings={3: 1}) as server:
        async def main():
            async with AsyncQuillClient(server.url, http2=True, http2_connections=2, timeout_ms=2000,
                                        retries=0) as client:
                await client.call(ECHO, "Echo", b"settings first")  # the server's limit is known after it
                return await asyncio.gather(*[client.call(ECHO, "Echo", b"x") for _ in range(3)],
                                            return_exceptions=True)

        errors = asyncio.run(main())
    assert all(isinstance(error, QuillTimeoutError) for error in errors)
    queued = [str(error) for error in errors if "no free HTTP/2 stream" in str(error)]
    assert queued and "each of 2 connections" in queued[0] and "http2_connections=2" in queued[0]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_connection_counts_are_refused(bad):
    with pytest.raises(ValueError, match="http2_connections"):
        QuillClient("http://127.0.0.1:1", http2=True, http2_connections=bad)


@pytest.mark.parametrize("option, bad", [("http2_keepalive_ms", 0), ("http2_keepalive_ms", -5),
                                         ("http2_keepalive_ms", "10"), ("http2_keepalive_timeout_ms", None),
                                         ("http2_keepalive_timeout_ms", float("nan"))])
def test_bad_keepalive_options_are_refused(option, bad):
    with pytest.raises(ValueError, match=option):
        AsyncQuillClient("http://127.0.0.1:1", http2=True, **{option: bad})


@pytest.mark.parametrize("engine", ["hypercorn", "granian"])
def test_real_servers_get_a_second_connection_only_when_allowed(engine, monkeypatch):
    monkeypatch.setattr(engines, "H2_MAX_CONCURRENT_STREAMS", 4)
    app = QuillApp()
    running = {"now": 0, "most": 0}

    @app.unary(f"{ECHO}/Echo")
    async def echo(request, context):
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        await asyncio.sleep(0.3)  # long enough that every call of a burst is running at once
        running["now"] -= 1
        return bytes(request)

    connects = count_connects(monkeypatch)
    with serve_in_thread(app, engine=engine) as url:
        for connections, most in ((1, 4), (2, 8)):
            running["most"] = 0
            connects.clear()

            async def main():
                async with AsyncQuillClient(url, http2=True, http2_connections=connections) as client:
                    return await burst(client, 16)

            assert asyncio.run(main()) == [b"q%d" % i for i in range(16)]
            assert len(connects) == connections, engine
            assert running["most"] == most, (engine, connections)  # the server ran them side by side


# ----------------------------------------------------------------------------------------
# keepalive
# ----------------------------------------------------------------------------------------
def test_keepalive_pings_an_idle_connection_and_keeps_it(client_kind):
    with HostileH2Server(lambda conn, sock, sid, headers, body: answer(conn, sid, body)) as server:
        with make(client_kind, server.url, http2_keepalive_ms=50, http2_keepalive_timeout_ms=10_000) as client:
            assert client.call(ECHO, "Echo", b"before") == b"before"
            assert wait_until(lambda: server.pings >= 3, 10)  # one each 50 ms of quiet, each answered
            assert client.call(ECHO, "Echo", b"after") == b"after"
        assert server.connections == 1


def test_no_pings_without_the_option(client_kind):
    with HostileH2Server(lambda conn, sock, sid, headers, body: answer(conn, sid, body)) as server:
        with make(client_kind, server.url) as client:
            assert client.call(ECHO, "Echo", b"before") == b"before"
            time.sleep(0.3)
            assert client.call(ECHO, "Echo", b"after") == b"after"
        assert server.pings == 0


def test_unanswered_ping_fails_the_calls_in_flight(client_kind):
    def never(conn, sock, stream_id, headers, body):
        pass  # silent from now on: no answer, and (answer_pings=False) no PING ACK

    with HostileH2Server(never, answer_pings=False) as server:
        with make(client_kind, server.url, timeout_ms=20000, retries=0, http2_keepalive_ms=100,
                  http2_keepalive_timeout_ms=200) as client:
            started = time.monotonic()
            with pytest.raises(QuillConnectionError, match="keepalive PING within 0.2 s"):
                client.call(ECHO, "Echo", b"x")
            assert time.monotonic() - started < 5  # the PING found it, long before timeout_ms
        assert server.pings >= 1


def test_a_dead_idle_connection_is_replaced(client_kind):
    answered = []

    def once(conn, sock, stream_id, headers, body):
        answered.append(body)
        answer(conn, stream_id, body)

    with HostileH2Server(once, answer_pings=False) as server:
        with make(client_kind, server.url, http2_keepalive_ms=50, http2_keepalive_timeout_ms=100) as client:
            assert client.call(ECHO, "Echo", b"one") == b"one"
            transport = getattr(client, "_client", client)._transport  # the async client is wrapped
            transport = getattr(transport, "_async", transport)  # the sync one runs the async one
            assert wait_until(lambda: all(conn.lost for conn in transport._conns), 10)  # PING unanswered: closed
            assert client.call(ECHO, "Echo", b"two") == b"two"  # on a new connection, no error
        assert server.connections == 2 and answered == [b"one", b"two"]
