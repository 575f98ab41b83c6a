"""Load on the reference server in its own process (`quill serve`, one and two workers):
16 client threads x 10,000 calls with every answer checked byte for byte, and 1,000 clients
that leave mid-stream. Neither side may grow its open descriptors or its memory.

The figures (calls/s, p50/p99, descriptors, RSS) are printed: ``pytest -s tests/test_load.py``.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from serve_process import SERVICE, open_fds, open_sockets, quill_serve, rss_bytes  # noqa: E402
from waiting import wait_until  # noqa: E402

from quill.client import QuillClient  # noqa: E402
from quill.frames import encode_tensor_frames  # noqa: E402
from quill.tensor import Tensor  # noqa: E402

THREADS = 16
CALLS = 10_000
WARM_UP = 300
# Growth allowed over a run: allocator slack, not a leak (a leak of 100 bytes a call is 16 MB).
RSS_SLACK = 8 << 20
UPLOAD = Tensor.from_numpy(np.ones(1 << 18, dtype=np.float32), name="upload")


def payload(thread: int, call: int, rng: random.Random) -> bytes:
    """A payload no other call sends: thread and call number, then 0..256 random bytes."""
    return b"%02d/%05d/" % (thread, call) + rng.randbytes(rng.randrange(257))


def hammer(client: QuillClient, thread: int, calls: int, latencies: np.ndarray, failures: list) -> None:
    rng = random.Random(thread)
    try:
        for call in range(calls):
            sent = payload(thread, call, rng)
            started = time.perf_counter()
            got = client.call(SERVICE, "Echo", sent)
            latencies[call] = time.perf_counter() - started
            if got != sent:
                failures.append((thread, call, sent[:16], got[:16]))
    except BaseException as exc:  # reported by the main thread
        failures.append((thread, "raised", repr(exc)))


def run_threads(client: QuillClient, calls: int, latencies: np.ndarray | None = None) -> list:
    failures: list = []
    if latencies is None:
        latencies = np.zeros((THREADS, calls))
    threads = [threading.Thread(target=hammer, args=(client, k, calls, latencies[k], failures))
               for k in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def snapshot(pids: list[int]) -> dict:
    return {
        "client fds": open_fds(),
        "client RSS MiB": rss_bytes() / (1 << 20),
        "server fds": sum(open_fds(pid) for pid in pids),
        "server RSS MiB": sum(rss_bytes(pid) for pid in pids) / (1 << 20),
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_sixteen_threads_ten_thousand_calls_each_all_checked(workers):
    with quill_serve(workers=workers) as server, QuillClient(server.url, max_connections=THREADS) as client:
        pids = server.worker_pids()
        assert len(pids) == workers
        # Warm up: every pooled connection open, every cache filled, then measure.
        assert run_threads(client, WARM_UP) == []
        before = snapshot(pids)
        latencies = np.zeros((THREADS, CALLS))
        started = time.perf_counter()
        failures = run_threads(client, CALLS, latencies)
        elapsed = time.perf_counter() - started
        after = snapshot(pids)

        assert failures == [], f"{len(failures)} calls lost or mixed up, first: {failures[:3]}"
        assert np.all(latencies > 0)  # every call of every thread answered
        if workers > 1:
            # both workers took connections from the shared socket
            assert all(open_sockets(pid) > 1 for pid in pids), [open_sockets(pid) for pid in pids]
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        print(f"\nquill serve --workers {workers}: {THREADS * CALLS} calls in {elapsed:.1f} s = "
              f"{THREADS * CALLS / elapsed:.0f} calls/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
              f"before {before}, after {after}")
        assert after["client fds"] == before["client fds"]
        # Workers may close some keep-alive connections during the run (seen: 30 -> 25 with two
        # workers); what must never happen is growth.
        assert after["server fds"] <= before["server fds"]
        assert after["client RSS MiB"] - before["client RSS MiB"] < RSS_SLACK / (1 << 20)
        assert after["server RSS MiB"] - before["server RSS MiB"] < RSS_SLACK / (1 << 20)
    # SIGTERM stopped the server cleanly: exit code 0, no worker left behind
    assert server.process.returncode == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def abort_upload(url: str, reset: bool) -> None:
    """Announce a 1 MiB tensor, send 64 KiB of it, then leave (with a FIN, or an RST)."""
    wire = b"".join(bytes(p) for p in encode_tensor_frames(UPLOAD))
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /%s/Echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/proto\r\n"
                     b"Content-Length: %d\r\n\r\n" % (SERVICE.encode(), len(wire)) + wire[:65536])
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_a_thousand_clients_leave_mid_stream_and_the_server_recovers():
    endless = json.dumps({"prompt": "the", "max_tokens": 100000, "token_delay_ms": 1}).encode()
    tests = os.path.dirname(os.path.abspath(__file__))
    with quill_serve("debug_app:app", "--app-dir", tests) as server, QuillClient(server.url, timeout_ms=10000) as client:
        pid = server.process.pid

        def settled_rss() -> int:
            """RSS once the server has returned its free heap pages (glibc keeps them otherwise)."""
            assert client.call("debug.v1.Debug", "ReleaseFreeMemory", b"") == b"released"
            return rss_bytes(pid)

        def leave_mid_stream(times: int, uploads: int) -> None:
            for i in range(times):
                stream = client.stream_tokens(SERVICE, "Generate", endless)
                assert len(next(stream)) >= 1
                if i % 2:
                    next(stream)  # leave a little later in the stream
                stream.close()  # the connection is dropped with the stream unfinished
            for i in range(uploads):  # and clients that leave in the middle of sending a tensor
                abort_upload(server.url, reset=bool(i % 2))

        leave_mid_stream(50, 20)  # the baseline comes after traffic of the same kind (caches warm)
        time.sleep(0.5)
        fds_before, rss_before = open_fds(pid), settled_rss()
        leave_mid_stream(1000, 200)

        # The server notices each departure and releases the connection, the generator, the buffers.
        assert wait_until(lambda: open_fds(pid) <= fds_before), (open_fds(pid), fds_before)
        fds_after = open_fds(pid)
        time.sleep(0.5)
        rss_after = settled_rss()
        print(f"\n1000 mid-stream disconnects, 200 aborted uploads: server fds {fds_before} -> {fds_after}, "
              f"RSS {rss_before / (1 << 20):.1f} -> {rss_after / (1 << 20):.1f} MiB")
        assert rss_after - rss_before < 4 << 20
        # ... and keeps serving: a whole stream and a unary call, on the same client.
        full = json.dumps({"prompt": "the", "max_tokens": 40, "batch_size": 8}).encode()
        batches = list(client.stream_tokens(SERVICE, "Generate", full))
        assert sum(len(b) for b in batches) == 40 and batches[-1].is_final
        assert client.call(SERVICE, "Echo", b"still here") == b"still here"


def test_every_worker_of_quill_serve_keeps_tcp_nodelay():
    """uvicorn's own --workers rebinds a socket without IPPROTO_TCP, so asyncio skips TCP_NODELAY
    (each small answer then waits ~40 ms for a delayed ACK); quill serve --workers shares its own."""
    tests = os.path.dirname(os.path.abspath(__file__))
    with quill_serve("debug_app:app", "--app-dir", tests, workers=2) as server:
        answers = {}
        for _ in range(200):  # fresh connections until both workers have answered
            with QuillClient(server.url) as client:
                pid, nodelay = client.call("debug.v1.Debug", "NoDelay", b"").split()
            answers.setdefault(int(pid), set()).add(nodelay)
            if len(answers) == 2:
                break
        assert set(answers) == set(server.worker_pids())
        assert all(values == {b"1"} for values in answers.values()), answers
