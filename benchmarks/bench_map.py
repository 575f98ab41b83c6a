"""client.map against the loops users write by hand, on the same server in the same run.

Server: ``quill serve --workers 2`` (the demo service) in a child process. Workload: N unary
calls of 100 B to ``Echo``. Rows: sequential ``QuillClient.call``; the hand-written
``concurrent.futures.ThreadPoolExecutor(C).map`` loop over one QuillClient; ``QuillClient.map``
with ``concurrency=C``; ``AsyncQuillClient.map`` and the hand-written ``asyncio.gather`` with a
semaphore for comparison. Rounds interleave the rows; each figure is the median over
``--repeat`` rounds. p50/p99 are per call (from the client method being called to its answer,
timed by a subclass every row uses), of all calls of the median round.

    python benchmarks/bench_map.py [--calls 10000] [--concurrency 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from quill import AsyncQuillClient, QuillClient

SERVICE, METHOD = "inference.v1.LLMService", "Echo"


class TimedClient(QuillClient):
    """QuillClient whose unary calls record their latency (the same overhead in every row)."""

    latencies: list

    def call(self, *args, **kwargs):
        started = time.perf_counter()
        answer = super().call(*args, **kwargs)
        self.latencies.append(time.perf_counter() - started)
        return answer


class TimedAsyncClient(AsyncQuillClient):
    latencies: list

    async def call(self, *args, **kwargs):
        started = time.perf_counter()
        answer = await super().call(*args, **kwargs)
        self.latencies.append(time.perf_counter() - started)
        return answer


def sequential(client, payloads, concurrency):
    return [client.call(SERVICE, METHOD, p) for p in payloads]


def thread_pool_loop(client, payloads, concurrency):
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda p: client.call(SERVICE, METHOD, p), payloads))


def client_map(client, payloads, concurrency):
    return list(client.map(SERVICE, METHOD, payloads, concurrency=concurrency))


async def async_client_map(client, payloads, concurrency):
    return [answer async for answer in client.map(SERVICE, METHOD, payloads, concurrency=concurrency)]


async def async_gather_loop(client, payloads, concurrency):
    slots = asyncio.Semaphore(concurrency)

    async def one(payload):
        async with slots:
            return await client.call(SERVICE, METHOD, payload)

    return await asyncio.gather(*map(one, payloads))


ROWS = {
    "sequential QuillClient.call": (sequential, False),
    "ThreadPoolExecutor(C).map loop": (thread_pool_loop, False),
    "QuillClient.map(concurrency=C)": (client_map, False),
    "asyncio.gather + Semaphore(C)": (async_gather_loop, True),
    "AsyncQuillClient.map(concurrency=C)": (async_client_map, True),
}


def run_row(url: str, row: str, payloads: list, concurrency: int) -> dict:
    function, is_async = ROWS[row]
    latencies: list = []
    if is_async:
        async def main():
            async with TimedAsyncClient(url, max_connections=concurrency) as client:
                client.latencies = latencies
                await client.call(SERVICE, METHOD, b"warm-up")
                latencies.clear()
                started = time.perf_counter()
                answers = await function(client, payloads, concurrency)
                return answers, time.perf_counter() - started

        answers, wall = asyncio.run(main())
    else:
        with TimedClient(url, max_connections=concurrency) as client:
            client.latencies = latencies
            client.call(SERVICE, METHOD, b"warm-up")
            latencies.clear()
            started = time.perf_counter()
            answers = function(client, payloads, concurrency)
            wall = time.perf_counter() - started
    if answers != payloads:
        raise AssertionError(f"{row}: the answers differ from the requests")
    latencies.sort()
    return {"wall": wall, "p50": latencies[len(latencies) // 2] * 1e3,
            "p99": latencies[int(len(latencies) * 0.99)] * 1e3}


def start_server() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "quill", "serve", "--port", "0", "--workers", "2",
                                "--log-level", "warning"], stderr=subprocess.PIPE, text=True)
    match = re.search(r" on (http://\S+)", process.stderr.readline())
    if not match:
        process.kill()
        raise RuntimeError("quill serve did not start")
    return process, match.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    payloads = [os.urandom(92) + b"%08d" % i for i in range(args.calls)]  # 100 B each, all distinct
    process, url = start_server()
    try:
        rounds = {row: [] for row in ROWS}
        for _ in range(args.repeat):
            for row in ROWS:
                rounds[row].append(run_row(url, row, payloads, args.concurrency))
    finally:
        process.terminate()
        process.wait()
    median = {row: sorted(results, key=lambda r: r["wall"])[len(results) // 2] for row, results in rounds.items()}
    base = median["sequential QuillClient.call"]["wall"]
    pool = median["ThreadPoolExecutor(C).map loop"]["wall"]
    print(f"{args.calls} unary calls of 100 B, C={args.concurrency}, quill serve --workers 2, "
          f"median of {args.repeat} rounds (os.cpu_count()={os.cpu_count()})\n")
    print("| way | calls/s | vs sequential | vs ThreadPoolExecutor loop | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for row, result in median.items():
        print(f"| {row} | {args.calls / result['wall']:,.0f} | {base / result['wall']:.2f}x | "
              f"{pool / result['wall']:.2f}x | {result['p50']:.3f} | {result['p99']:.3f} |")
    walls = {row: [f"{r['wall']:.2f}" for r in results] for row, results in rounds.items()}
    print("\nwall seconds of each round:", "; ".join(f"{row}: {', '.join(w)}" for row, w in walls.items()))


if __name__ == "__main__":
    main()
