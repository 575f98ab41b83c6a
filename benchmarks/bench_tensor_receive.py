"""Receiving large tensors: fresh memory, the receive-buffer pool, ``out=``, and the async client,
interleaved round by round in one process so that the machine's noise hits every row alike.

Servers: the bench app under ``quill serve`` (uvicorn) and bench_server.py's raw socket server,
whose prepared chunked body urllib3 reads as the loopback ceiling.

* sync, 256 MiB ``call_tensor``: the ceiling (urllib3 reading the raw server), QuillClient without
  the pool (``tensor_pool_bytes=0``: fresh memory per call), with the pool (the default), and into
  a reused ``out=`` buffer; each as MB/s and as a fraction of the ceiling;
* sync against async: a 64 MiB tensor (a Content-Length body) and a message stream of 64 x 1 MiB
  (a chunked body), MB/s of each client and async / sync.

Each figure is the median of ``--rounds`` rounds.

    python benchmarks/bench_tensor_receive.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Callable

import bench_server

from quill import AsyncQuillClient, QuillClient
from quill.cli.bench_service import BENCH_SERVICE

MIB = 1 << 20


def interleaved(ops: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each op, run once to warm up, then round-robin ``rounds`` times."""
    for op in ops.values():
        op()
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(rounds):
        for name, op in ops.items():
            started = time.perf_counter()
            op()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def sync_rows(url: str, ceiling_url: str, rounds: int) -> None:
    request, size = b"%d" % (256 * MIB), 256 * MIB
    out = bytearray(size)
    with QuillClient(url, timeout_ms=120_000, tensor_pool_bytes=0) as fresh, \
            QuillClient(url, timeout_ms=120_000) as pooled:
        seconds = interleaved({
            "ceiling: urllib3 reading the raw server": lambda: bench_server.raw_read(ceiling_url, "/"),
            "QuillClient, fresh memory (tensor_pool_bytes=0)": lambda: fresh.call_tensor(BENCH_SERVICE, "Tensor", request),
            "QuillClient, receive-buffer pool (default)": lambda: pooled.call_tensor(BENCH_SERVICE, "Tensor", request),
            "QuillClient, out= reused": lambda: pooled.call_tensor(BENCH_SERVICE, "Tensor", request, out=out),
        }, rounds)
    ceiling = size / seconds["ceiling: urllib3 reading the raw server"]
    print("\n| 256 MiB call_tensor | MB/s | of the ceiling |\n| --- | ---: | ---: |")
    for name, value in seconds.items():
        print(f"| {name} | {size / value / 1e6:,.0f} | {size / value / ceiling:.2f} |")


def async_rows(url: str, rounds: int) -> None:
    tensor_request, stream_request, size = b"%d" % (64 * MIB), b"64,%d" % MIB, 64 * MIB
    loop = asyncio.new_event_loop()
    sync_client = QuillClient(url, timeout_ms=120_000)
    async_client = AsyncQuillClient(url, timeout_ms=120_000)

    async def stream() -> int:
        return sum([len(message) async for message in await async_client.call_stream(BENCH_SERVICE, "Stream", stream_request)])

    try:
        seconds = interleaved({
            "tensor sync": lambda: sync_client.call_tensor(BENCH_SERVICE, "Tensor", tensor_request),
            "tensor async": lambda: loop.run_until_complete(async_client.call_tensor(BENCH_SERVICE, "Tensor", tensor_request)),
            "stream sync": lambda: sum(len(m) for m in sync_client.call_stream(BENCH_SERVICE, "Stream", stream_request)),
            "stream async": lambda: loop.run_until_complete(stream()),
        }, rounds)
    finally:
        sync_client.close()
        loop.run_until_complete(async_client.aclose())
        loop.close()
    print("\n| workload | QuillClient MB/s | AsyncQuillClient MB/s | async / sync |\n| --- | ---: | ---: | ---: |")
    for label, key in (("tensor 64 MiB (Content-Length body)", "tensor"),
                       ("message stream 64 x 1 MiB (chunked body)", "stream")):
        sync_rate, async_rate = size / seconds[f"{key} sync"], size / seconds[f"{key} async"]
        print(f"| {label} | {sync_rate / 1e6:,.0f} | {async_rate / 1e6:,.0f} | {async_rate / sync_rate:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    server, url = bench_server.start("--serve", "quill", "uvicorn")
    ceiling_server, ceiling_url = bench_server.start("--ceiling")
    try:
        sync_rows(url, ceiling_url, args.rounds)
        async_rows(url, args.rounds)
    finally:
        for process in (server, ceiling_server):
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
