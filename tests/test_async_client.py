"""What only an asyncio client has to prove: thousands of calls on one event loop, cancellation
from another task or thread, a loop closed with streams open; plus every call kind of both clients
over a Unix domain socket, and the generated sync client matching its async source."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
from urllib.parse import quote

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from serve_process import SERVICE as DEMO, open_fds, quill_serve, rss_bytes  # noqa: E402
from test_client_streaming import SVC, WAIT, build_app  # noqa: E402

from quill import AsyncQuillClient, QuillClient, Tensor, TokenBatch  # noqa: E402
from quill.errors import StreamCancelledError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_sync_client_is_generated_from_the_async_one():
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "unasync.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_both_clients_offer_the_same_api():
    import inspect

    sys.path.insert(0, os.path.join(REPO, "tools"))
    from unasync import unasync

    def api(cls):
        return {unasync(name): unasync(str(inspect.signature(getattr(cls, name)))) if callable(getattr(cls, name)) else None
                for name in dir(cls) if not name.startswith("_")}

    assert api(AsyncQuillClient) == api(QuillClient)


# ---------------------------------------------------------------- Unix domain sockets

@pytest.fixture(scope="module")
def unix_server(tmp_path_factory):
    """The test app served by quill itself on a Unix domain socket (file mode 0600)."""
    from quill.server import serve_in_thread
    from quill.server.sockets import unix_url

    path = str(tmp_path_factory.mktemp("uds") / "quill.sock")
    app = build_app()
    with serve_in_thread(app, uds=path) as served:
        assert served == path and os.stat(path).st_mode & 0o777 == 0o600
        assert unix_url(path) == "http+unix://" + quote(path, safe="")
        yield app, unix_url(path)
    assert not os.path.exists(path)  # removed when the server stops


async def every_call_kind(client) -> None:
    async def run(result):
        return await result if asyncio.iscoroutine(result) else result

    async def items(stream):
        if hasattr(stream, "__anext__"):
            return [item async for item in stream]
        return list(stream)

    assert await run(client.call(SVC, "Echo", b"over uds")) == b"over uds"
    assert await items(await run(client.call_stream(SVC, "Count", b"3,8"))) == [i.to_bytes(4, "big") * 2 for i in range(3)]
    batches = await items(await run(client.stream_tokens(SVC, "Generate", b"a b")))
    assert [b.text() for b in batches] == ["a", "b"] and all(isinstance(b, TokenBatch) for b in batches)
    assert await run(client.call_client_stream(SVC, "Collect", [b"x", b"y"])) == b"2:x|y"
    array = np.arange(100_000, dtype=np.float32).reshape(10, -1)
    doubled = await run(client.call_tensor(SVC, "Double", Tensor.from_numpy(array)))
    np.testing.assert_array_equal(doubled.to_numpy(), array * 2)
    assert (await run(client.send_tensor(SVC, "Store", Tensor.from_numpy(array)))).endswith(b"\x00" * 4)
    assert await run(client.health_check()) is True


def test_sync_client_over_a_unix_socket(unix_server):
    _, url = unix_server
    with QuillClient(url, timeout_ms=WAIT * 1000) as client:
        asyncio.run(every_call_kind(client))


def test_async_client_over_a_unix_socket(unix_server):
    _, url = unix_server

    async def main():
        async with AsyncQuillClient(url, timeout_ms=WAIT * 1000) as client:
            await every_call_kind(client)

    asyncio.run(main())


# ---------------------------------------------------------------- many calls on one loop

@pytest.fixture(scope="module")
def demo_serve():
    with quill_serve() as served:
        yield served


def test_one_loop_1000_concurrent_unary_calls_and_200_token_streams(demo_serve):
    async def main():
        async with AsyncQuillClient(demo_serve.url, max_connections=64, timeout_ms=60_000) as client:
            payloads = [os.urandom(64) + b"%d" % i for i in range(1000)]
            answers = await asyncio.gather(*[client.call(DEMO, "Echo", p) for p in payloads])
            assert answers == payloads

            async def generate(seed):
                stream = await client.stream_tokens(DEMO, "Generate", {"prompt": "hi", "max_tokens": 20, "seed": seed})
                return [t.id async for batch in stream for t in batch]

            results = await asyncio.gather(*[generate(i % 5) for i in range(200)])
            assert all(len(ids) == 20 for ids in results)
            assert all(results[i] == results[i % 5] for i in range(200))  # same seed, same tokens

    asyncio.run(main())  # warm-up: imports, first allocations
    gc.collect()
    fds, rss = open_fds(), rss_bytes()
    asyncio.run(main())
    gc.collect()
    assert open_fds() <= fds
    assert rss_bytes() - rss < 64 << 20


# ---------------------------------------------------------------- cancellation

@pytest.fixture(scope="module")
def served():
    from quill.server import serve_in_thread

    app = build_app()
    with serve_in_thread(app) as url:
        yield app, url


def test_a_task_cancelled_mid_stream_leaks_nothing(served):
    app, url = served
    app.state["cancelled"].clear()

    async def main():
        async with AsyncQuillClient(url, max_connections=1, timeout_ms=WAIT * 1000) as client:
            started = asyncio.Event()

            async def consume():
                async for _ in await client.call_stream(SVC, "Forever", b""):
                    started.set()

            task = asyncio.create_task(consume())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The one connection came back (discarded): the next call gets a fresh one at once.
            assert await client.call(SVC, "Echo", b"after", timeout_ms=2000) == b"after"
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    asyncio.run(main())
    assert app.state["cancelled"].wait(WAIT)


def test_cancel_from_another_thread_ends_a_pending_read(served):
    app, url = served
    app.state["cancelled"].clear()

    async def main():
        async with AsyncQuillClient(url, max_connections=1, timeout_ms=WAIT * 1000) as client:
            stream = await client.call_stream(SVC, "Count", b"1,4")
            assert [m async for m in stream] == [bytes(4)]
            stream = await client.call_stream(SVC, "Forever", b"")
            await stream.__anext__()
            timer = threading.Timer(0.2, stream.cancel)
            timer.start()
            started = time.monotonic()
            with pytest.raises(StreamCancelledError, match="cancelled"):
                async for _ in stream:
                    pass
            assert time.monotonic() - started < 5
            assert stream.cancelled and [m async for m in stream] == []
            assert await client.call(SVC, "Echo", b"still fine") == b"still fine"
            timer.join()

    asyncio.run(main())
    assert app.state["cancelled"].wait(WAIT)


@pytest.mark.parametrize("when, threads", [("a read pending", 1), ("a read pending", 8), ("between reads", 8)])
def test_cancel_from_other_threads_closes_the_connection_on_the_loop(monkeypatch, when, threads):
    """cancel() from other threads: in asyncio's debug mode nothing runs off the loop's thread (it
    raised "Non-thread-safe operation" and the socket was closed behind the loop's back, so the
    pending read hung until its timeout), each connection is lost once, the pool slot comes back
    once, and the next call gets a connection."""
    from client_servers import ScriptedServer, chunk, chunked_head, echo

    from quill.frames import encode_stream_frame
    from quill.transports import aio_http11

    def first_frame_then_silence(request, sock):
        if not request.path.endswith("/Watch"):
            return echo(request, sock)
        sock.sendall(chunked_head() + chunk(encode_stream_frame(b"first")))
        sock.recv(1)  # until the client closes
        return False

    lost: dict = {}
    made, counted = aio_http11._Connection.connection_made, aio_http11._Connection.connection_lost

    def connection_made(conn, transport):
        lost[conn] = 0
        made(conn, transport)

    def connection_lost(conn, exc):
        lost[conn] += 1
        counted(conn, exc)

    monkeypatch.setattr(aio_http11._Connection, "connection_made", connection_made)
    monkeypatch.setattr(aio_http11._Connection, "connection_lost", connection_lost)
    monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")
    loop_errors, cancel_errors = [], []

    def cancel(stream, ready):
        ready.wait()
        if when == "a read pending":
            time.sleep(0.2)  # the loop is waiting on the silent socket by then
        try:
            stream.cancel()
        except BaseException as exc:
            cancel_errors.append(exc)

    async def main(url):
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.set_exception_handler(lambda _, context: loop_errors.append(context))
        async with AsyncQuillClient(url, max_connections=1, timeout_ms=20_000) as client:
            stream = await client.call_stream("feed.v1.Feed", "Watch", b"")
            assert await stream.__anext__() == b"first"
            ready = threading.Barrier(threads)
            cancellers = [threading.Thread(target=cancel, args=(stream, ready)) for _ in range(threads)]
            started = time.monotonic()
            for thread in cancellers:
                thread.start()
            if when == "between reads":  # the loop is held up here: the cancel waits for it
                for thread in cancellers:
                    thread.join()
            with pytest.raises(StreamCancelledError, match="cancelled"):
                await stream.__anext__()
            assert time.monotonic() - started < 10  # not the 20 s timeout of a read left hanging
            for thread in cancellers:
                thread.join()
            assert [m async for m in stream] == []
            for _ in range(100):
                await asyncio.sleep(0.01)
                if list(lost.values()) == [1]:
                    break
            assert list(lost.values()) == [1]
            assert client._transport._slots._value == 1  # released once: still one connection at most
            assert await client.call("feed.v1.Feed", "Echo", b"after") == b"after"

    with ScriptedServer(first_frame_then_silence) as server:
        asyncio.run(main(server.url))
        assert server.connections == 2
    assert cancel_errors == [] and loop_errors == []


def test_closing_the_loop_with_streams_open_leaks_no_connection_or_warning(served):
    _, url = served
    script = f"""
import asyncio, gc, os, warnings
warnings.simplefilter("error")
from quill import AsyncQuillClient
streams = []
async def main():
    client = AsyncQuillClient({url!r})
    for _ in range(3):
        stream = await client.call_stream({SVC!r}, "Forever", b"")
        await stream.__anext__()
        streams.append(stream)
loop = asyncio.new_event_loop()
loop.run_until_complete(main())
loop.close()
streams.clear()
gc.collect()
def is_socket(fd):
    try:
        return "socket" in os.readlink(f"/proc/self/fd/{{fd}}")
    except OSError:
        return False
print("open sockets", sum(map(is_socket, os.listdir("/proc/self/fd"))))
"""
    # Every warning is an error (an unclosed transport's ResourceWarning would print "Exception ignored");
    # not -X dev, whose asyncio debug mode reports slow callbacks on a loaded machine.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "open sockets 0" in result.stdout


@pytest.mark.parametrize("frame_bytes", [64 << 10, 1 << 20])
def test_a_content_length_tensor_arriving_in_dribbles_is_received_whole(frame_bytes):
    """After the head of a Content-Length answer the async connection counts the body itself and
    reads it straight into the tensor: any split of the bytes, and bytes after the body, are handled
    (the connection is then not reused)."""
    from client_servers import ScriptedServer

    from quill.frames import encode_tensor_frames

    tensor = Tensor.from_numpy(np.arange(3 << 18, dtype=np.float32).reshape(3, -1), name="w")
    wire = b"".join(bytes(p) for p in encode_tensor_frames(tensor, chunk_size=frame_bytes))
    pieces = [wire[:7], wire[7:5000], wire[5000:300_000], wire[300_000:300_001], wire[300_001:]]

    def dribble(request, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nContent-Length: %d\r\n\r\n" % len(wire))
        surplus = b"surplus" if request.path.endswith("Surplus") else b""
        for piece in pieces[:-1]:
            time.sleep(0.01)
            sock.sendall(piece)
        time.sleep(0.01)
        # The surplus goes out with the body's last bytes, so it is in the socket when the body is
        # complete: sent later, no client could tell it from the next answer (urllib3 neither).
        sock.sendall(pieces[-1] + surplus)
        return True

    async def main():
        async with AsyncQuillClient(server.url, max_connections=1) as client:
            out = np.empty(tensor.size_bytes, dtype=np.uint8)
            first = await client.call_tensor("t.v1.T", "Surplus", b"", out=out)
            second = await client.call_tensor("t.v1.T", "Get", b"")
            return first, second

    with ScriptedServer(dribble) as server:
        first, second = asyncio.run(main())
        assert first == tensor and second == tensor
        assert server.connections == 2  # the surplus bytes made the first connection unusable


def test_a_tensor_payload_trickling_in_slower_than_the_timeout_in_all_but_never_stalling_arrives():
    """A payload is read from the socket straight into the tensor and its reader woken once the
    window is full; the call's timeout bounds each wait for bytes, not the whole window: 1 MiB
    sent in 32 pieces, 40 ms apart (1.3 s in all), with timeout_ms=500, arrives; a stall times out."""
    from client_servers import ScriptedServer

    from quill.errors import QuillTimeoutError
    from quill.frames import encode_tensor_frames

    tensor = Tensor.from_numpy(np.arange(1 << 18, dtype=np.float32), name="slow")
    wire = b"".join(bytes(p) for p in encode_tensor_frames(tensor, chunk_size=1 << 20))
    step = len(wire) // 32 + 1

    def trickle(request, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nContent-Length: %d\r\n\r\n" % len(wire))
        stall = request.path.endswith("Stall")
        for start in range(0, len(wire), step):
            sock.sendall(wire[start:start + step])
            time.sleep(1.0 if stall and start >= len(wire) // 2 else 0.04)
        return True

    async def main():
        async with AsyncQuillClient(server.url, timeout_ms=500, retries=0) as client:
            received = await client.call_tensor("t.v1.T", "Slow", b"")
            with pytest.raises(QuillTimeoutError):
                await client.call_tensor("t.v1.T", "Stall", b"")
            return received

    with ScriptedServer(trickle) as server:
        assert asyncio.run(main()) == tensor
