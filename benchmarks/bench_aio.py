"""AsyncQuillClient against its peers on the same server, in the same run.

Server: the bench app (quill.cli.bench_service:app) under ``quill serve --engine uvicorn`` (httptools) in a
child process, on TCP loopback and on a Unix socket.
Rows: 100 B echo sequential and 64-concurrent for AsyncQuillClient, raw aiohttp ClientSession,
grpc.aio against a grpcio servicer (bench_client.py's), httpx.AsyncClient (if installed); the sync QuillClient and raw urllib3 sequential; a message
stream of 64 x 1 MiB and a 64 MiB tensor for both quill clients; the Unix socket against TCP.
Each figure is the median of ``--repeat`` runs; p50/p99 are per call of the median run.

    python benchmarks/bench_aio.py [--calls 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import quote

import numpy as np

from quill import AsyncQuillClient, QuillClient, Tensor

SVC = "bench.v1.BenchService"
HEADERS = {"Content-Type": "application/proto", "Accept": "application/proto", "Prefer": "prism=classic"}


def start(args: list[str]) -> subprocess.Popen:
    """``quill serve`` of the bench app on uvicorn (httptools): quill binds the socket itself, so every
    accepted connection has TCP_NODELAY (uvicorn's own binding loses it: 40 ms delayed-ACK stalls)."""
    return subprocess.Popen([sys.executable, "-m", "quill", "serve", "quill.cli.bench_service:app", "--engine", "uvicorn",
                             "--log-level", "warning", *args])


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if QuillClient(url, timeout_ms=500).health_check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not start")


def summarize(latencies: list[float], wall: float, calls: int) -> dict:
    latencies = sorted(latencies)
    return {"rate": calls / wall, "p50": latencies[len(latencies) // 2] * 1e3,
            "p99": latencies[int(len(latencies) * 0.99)] * 1e3}


async def timed_async(op, calls: int, concurrency: int) -> dict:
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            t = time.perf_counter()
            await op()
            latencies.append(time.perf_counter() - t)

    start_t = time.perf_counter()
    if concurrency == 1:
        for _ in range(calls):
            await one()
    else:
        await asyncio.gather(*[one() for _ in range(calls)])
    return summarize(latencies, time.perf_counter() - start_t, calls)


def timed_sync(op, calls: int) -> dict:
    latencies = []
    start_t = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        op()
        latencies.append(time.perf_counter() - t)
    return summarize(latencies, time.perf_counter() - start_t, calls)


def median_run(runs: list[dict]) -> dict:
    runs = sorted(runs, key=lambda r: r["rate"])
    return runs[len(runs) // 2]


async def quill_unary(url: str, calls: int, concurrency: int) -> dict:
    payload = os.urandom(100)
    async with AsyncQuillClient(url, max_connections=max(concurrency, 1)) as client:
        await client.call(SVC, "Echo", payload)
        return await timed_async(lambda: client.call(SVC, "Echo", payload), calls, concurrency)


async def aiohttp_unary(url: str, calls: int, concurrency: int) -> dict:
    import aiohttp

    payload = os.urandom(100)
    connector = aiohttp.TCPConnector(limit=max(concurrency, 1))
    async with aiohttp.ClientSession(url, connector=connector) as session:
        async def op():
            async with session.post(f"/{SVC}/Echo", data=payload, headers=HEADERS) as resp:
                await resp.read()

        await op()
        return await timed_async(op, calls, concurrency)


async def httpx_unary(url: str, calls: int, concurrency: int) -> dict | None:
    try:
        import httpx
    except ImportError:
        return None
    payload = os.urandom(100)
    limits = httpx.Limits(max_connections=max(concurrency, 1))
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        async def op():
            (await client.post(f"/{SVC}/Echo", content=payload, headers=HEADERS)).content

        await op()
        return await timed_async(op, calls, concurrency)


async def grpc_aio_unary(target: str, calls: int, concurrency: int) -> dict | None:
    """grpc.aio against the grpcio servicer of bench_client.py (raw bytes, no protobuf codegen)."""
    try:
        import grpc
    except ImportError:
        return None
    payload = os.urandom(100)
    async with grpc.aio.insecure_channel(target) as channel:
        echo = channel.unary_unary(f"/{SVC}/Echo")
        await echo(payload)
        return await timed_async(lambda: echo(payload), calls, concurrency)


def sync_unary(url: str, calls: int) -> dict:
    payload = os.urandom(100)
    with QuillClient(url) as client:
        client.call(SVC, "Echo", payload)
        return timed_sync(lambda: client.call(SVC, "Echo", payload), calls)


def urllib3_unary(url: str, calls: int) -> dict:
    import urllib3

    payload = os.urandom(100)
    pool = urllib3.connection_from_url(url, maxsize=1)
    pool.request("POST", f"/{SVC}/Echo", body=payload, headers=HEADERS)
    return timed_sync(lambda: pool.request("POST", f"/{SVC}/Echo", body=payload, headers=HEADERS).data, calls)


def volume_rows(url: str) -> list[tuple[str, str, float]]:
    """(workload, client, MB/s): message stream 64 x 1 MiB and a 64 MiB tensor, both clients."""
    rows = []
    stream_request, tensor_request = b"%d,%d" % (64, 1 << 20), b"%d" % (64 << 20)

    def sync_stream():
        with QuillClient(url) as c:
            t = time.perf_counter()
            n = sum(len(m) for m in c.call_stream(SVC, "Stream", stream_request))
            return n / (time.perf_counter() - t) / 1e6

    def sync_tensor():
        with QuillClient(url) as c:
            t = time.perf_counter()
            n = c.call_tensor(SVC, "Tensor", tensor_request).meta.size_bytes
            return n / (time.perf_counter() - t) / 1e6

    async def async_stream():
        async with AsyncQuillClient(url) as c:
            t = time.perf_counter()
            n = 0
            async for m in await c.call_stream(SVC, "Stream", stream_request):
                n += len(m)
            return n / (time.perf_counter() - t) / 1e6

    async def async_tensor():
        async with AsyncQuillClient(url) as c:
            t = time.perf_counter()
            n = (await c.call_tensor(SVC, "Tensor", tensor_request)).meta.size_bytes
            return n / (time.perf_counter() - t) / 1e6

    for name, sync_op, async_op in (("message stream 64 x 1 MiB", sync_stream, async_stream),
                                    ("tensor 64 MiB", sync_tensor, async_tensor)):
        rows.append((name, "QuillClient", statistics.median(sync_op() for _ in range(5))))
        rows.append((name, "AsyncQuillClient", statistics.median(asyncio.run(async_op()) for _ in range(5))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    port = 18000 + os.getpid() % 1000
    uds = os.path.join(tempfile.mkdtemp(), "bench.sock")
    tcp_url, uds_url = f"http://127.0.0.1:{port}", "http+unix://" + quote(uds, safe="")
    servers = [start(["--port", str(port)]), start(["--uds", uds])]
    grpc_port = port + 1
    bench_client = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_client.py")
    servers.append(subprocess.Popen([sys.executable, bench_client, "--serve-grpc", str(grpc_port)]))
    try:
        wait_up(tcp_url)
        wait_up(uds_url)
        time.sleep(1.0)  # the grpcio server binds within a second
        rows = []
        for concurrency in (1, 64):
            label = f"unary 100 B, {'sequential' if concurrency == 1 else '64 concurrent'}"
            measured = {
                "AsyncQuillClient": median_run([asyncio.run(quill_unary(tcp_url, args.calls, concurrency)) for _ in range(args.repeat)]),
                "aiohttp ClientSession": median_run([asyncio.run(aiohttp_unary(tcp_url, args.calls, concurrency)) for _ in range(args.repeat)]),
            }
            if concurrency == 1:
                measured["QuillClient (sync)"] = median_run([sync_unary(tcp_url, args.calls) for _ in range(args.repeat)])
                measured["urllib3 (sync)"] = median_run([urllib3_unary(tcp_url, args.calls) for _ in range(args.repeat)])
                measured["AsyncQuillClient, Unix socket"] = median_run(
                    [asyncio.run(quill_unary(uds_url, args.calls, 1)) for _ in range(args.repeat)])
                measured["QuillClient (sync), Unix socket"] = median_run([sync_unary(uds_url, args.calls) for _ in range(args.repeat)])
            grpc_runs = [asyncio.run(grpc_aio_unary(f"127.0.0.1:{grpc_port}", args.calls, concurrency))
                         for _ in range(args.repeat)]
            if grpc_runs[0] is not None:
                measured["grpc.aio (grpcio server)"] = median_run(grpc_runs)
            hx = [asyncio.run(httpx_unary(tcp_url, args.calls // 4, concurrency)) for _ in range(3)]
            if hx[0] is not None:
                measured["httpx.AsyncClient"] = median_run(hx)
            base = measured["AsyncQuillClient"]["rate"]
            for client, m in measured.items():
                rows.append((label, client, m, base / m["rate"]))
        print("| workload | client | calls/s | p50 ms | p99 ms | AsyncQuillClient / this |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for label, client, m, ratio in rows:
            print(f"| {label} | {client} | {m['rate']:,.0f} | {m['p50']:.3f} | {m['p99']:.3f} | {ratio:.2f}x |")
        print()
        print("| workload | client | MB/s |")
        print("| --- | --- | ---: |")
        for name, client, rate in volume_rows(tcp_url):
            print(f"| {name} | {client} | {rate:,.0f} |")
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
