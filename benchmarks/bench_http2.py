"""HTTP/2 against HTTP/1.1 on one server engine (granian, whose HTTP/2 is compiled): quill's
clients with ``http2=True`` and without, and httpx with ``http2=True`` (the h2 library), in one run.

* bulk: one 64 MiB tensor (``call_tensor``), and a message stream of 256 x 1 MiB (``call_stream``);
  MB/s of each client, and each quill row over quill's HTTP/1.1 row of the same kind (sync/async);
* many token streams: 256 concurrent token streams, over one HTTP/2 connection against 256
  HTTP/1.1 connections; token events/s in all, and the slowest, median and fastest stream;
* small unary calls: 64 concurrent 100-byte echoes from AsyncQuillClient, over one HTTP/2
  connection against 64 HTTP/1.1 connections, and grpc.aio over one channel to bench_client.py's
  grpcio server (C-core HTTP/2 both sides); calls/s. Beside them h2load (nghttp2's C load client,
  ``-c 1 -m 64``: one connection, 64 streams at once) sends the same request, with the header list
  quill's client sent, to the same granian server: its requests/s (as h2load reports it) is what
  the server side allows, the ceiling for any client.

Each figure is the median of ``--rounds`` rounds, the clients interleaved round by round.

    python benchmarks/bench_http2.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import re
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import bench_server
from bench_server import TOKEN_SERVICE
import httpx
from bench_tensor_receive import interleaved

from quill import AsyncQuillClient, QuillClient
from quill.cli.bench_service import BENCH_SERVICE

MIB = 1 << 20
TENSOR, STREAM = b"%d" % (64 * MIB), b"256,%d" % MIB
VOLUME = {"tensor": 64 * MIB, "stream": 256 * MIB}
# identity: httpx offers zstd by default, and the server would compress the zeros to almost nothing
HEADERS = {"Content-Type": "application/proto", "Prefer": "prism=classic", "Accept-Encoding": "identity"}
ACCEPT = {"Tensor": "application/proto; frames=tensor", "Stream": "application/proto; frames=messages"}


def bulk_rows(url: str, rounds: int) -> None:
    loop = asyncio.new_event_loop()
    sync = {h2: QuillClient(url, timeout_ms=300_000, http2=h2) for h2 in (False, True)}
    aio = {h2: AsyncQuillClient(url, timeout_ms=300_000, http2=h2) for h2 in (False, True)}
    peer = httpx.Client(http1=False, http2=True, timeout=300)

    async def stream_async(client: AsyncQuillClient) -> int:
        return sum([len(m) async for m in await client.call_stream(BENCH_SERVICE, "Stream", STREAM)])

    def httpx_read(method: str, body: bytes) -> int:
        headers = {**HEADERS, "Accept": ACCEPT[method]}
        with peer.stream("POST", f"{url}/{BENCH_SERVICE}/{method}", content=body, headers=headers) as response:
            assert response.http_version == "HTTP/2" and response.status_code == 200, response.status_code
            received = sum(len(piece) for piece in response.iter_raw())
        assert received >= VOLUME[method.lower()], received
        return received

    ops: dict[str, Callable[[], object]] = {}
    for h2 in (False, True):
        name = "HTTP/2" if h2 else "HTTP/1.1"
        ops[f"tensor sync {name}"] = lambda c=sync[h2]: c.call_tensor(BENCH_SERVICE, "Tensor", TENSOR)
        ops[f"tensor async {name}"] = lambda c=aio[h2]: loop.run_until_complete(
            c.call_tensor(BENCH_SERVICE, "Tensor", TENSOR))
        ops[f"stream sync {name}"] = lambda c=sync[h2]: sum(len(m) for m in c.call_stream(BENCH_SERVICE, "Stream", STREAM))
        ops[f"stream async {name}"] = lambda c=aio[h2]: loop.run_until_complete(stream_async(c))
    ops["tensor httpx HTTP/2"] = lambda: httpx_read("Tensor", TENSOR)
    ops["stream httpx HTTP/2"] = lambda: httpx_read("Stream", STREAM)
    try:
        seconds = interleaved(ops, rounds)
    finally:
        for client in sync.values():
            client.close()
        for client in aio.values():
            loop.run_until_complete(client.aclose())
        loop.close()
        peer.close()
    print("\n| workload | client | MB/s | HTTP/2 / HTTP/1.1 | quill / httpx h2 |\n| --- | --- | ---: | ---: | ---: |")
    for kind, label in (("tensor", "tensor 64 MiB"), ("stream", "stream 256 x 1 MiB")):
        rate = {name: VOLUME[kind] / value for name, value in seconds.items() if name.startswith(kind)}
        httpx_rate = rate[f"{kind} httpx HTTP/2"]
        for side in ("sync", "async"):
            h1, h2 = rate[f"{kind} {side} HTTP/1.1"], rate[f"{kind} {side} HTTP/2"]
            print(f"| {label} | quill {side} HTTP/1.1 | {h1 / 1e6:,.0f} | | {h1 / httpx_rate:.1f} |")
            print(f"| {label} | quill {side} HTTP/2 | {h2 / 1e6:,.0f} | {h2 / h1:.2f} | {h2 / httpx_rate:.1f} |")
        print(f"| {label} | httpx HTTP/2 | {httpx_rate / 1e6:,.0f} | | 1.0 |")


def token_rows(url: str, rounds: int, streams: int = 256, per_stream: int = 3200) -> None:
    """``streams`` concurrent token streams (bench_server's Tokens, 32 tokens a batch), each read for
    ``per_stream`` tokens, then closed; token events/s in all, and the spread of per-stream rates."""
    loop = asyncio.new_event_loop()
    clients = {h2: AsyncQuillClient(url, http2=h2, max_connections=streams, timeout_ms=300_000) for h2 in (False, True)}

    async def one(client: AsyncQuillClient, rates: list[float]) -> None:
        started, received = time.perf_counter(), 0
        async with await client.stream_tokens(TOKEN_SERVICE, "Tokens", b"") as stream:
            async for batch in stream:
                received += len(batch)
                if received >= per_stream:
                    break
        rates.append(received / (time.perf_counter() - started))

    spreads: dict[bool, list[list[float]]] = {False: [], True: []}

    def run(h2: bool) -> None:
        rates: list[float] = []
        async def every() -> None:
            await asyncio.gather(*[one(clients[h2], rates) for _ in range(streams)])

        loop.run_until_complete(every())
        spreads[h2].append(sorted(rates))

    try:
        seconds = interleaved({f"h2={h2}": (lambda h2=h2: run(h2)) for h2 in (False, True)}, rounds)
    finally:
        for client in clients.values():
            loop.run_until_complete(client.aclose())
        loop.close()
    print(f"\n| {streams} concurrent token streams, {per_stream} tokens each | token events/s in all "
          f"| per stream: slowest / median / fastest (tokens/s, median round) |\n| --- | ---: | ---: |")
    for h2, label in ((False, f"HTTP/1.1, {streams} connections"), (True, "HTTP/2, one connection")):
        rates = spreads[h2][len(spreads[h2]) // 2]
        print(f"| {label} | {streams * per_stream / seconds[f'h2={h2}']:,.0f} "
              f"| {rates[0]:,.0f} / {statistics.median(rates):,.0f} / {rates[-1]:,.0f} |")


def unary_rows(url: str, grpc_target: str, rounds: int, concurrency: int = 64, calls: int = 2048) -> None:
    import grpc

    loop = asyncio.new_event_loop()
    clients = {h2: AsyncQuillClient(url, http2=h2, max_connections=concurrency) for h2 in (False, True)}
    channel = loop.run_until_complete(_grpc_channel(grpc, grpc_target))  # one channel: one HTTP/2 connection
    grpc_echo = channel.unary_unary(f"/{BENCH_SERVICE}/Echo")

    async def burst(call: Callable[[], Any]) -> None:
        async def worker() -> None:
            for _ in range(calls // concurrency):
                await call()
        await asyncio.gather(*[worker() for _ in range(concurrency)])

    payload = b"x" * 100
    ops = {f"h2={h2}": (lambda c=c: loop.run_until_complete(burst(lambda: c.call(BENCH_SERVICE, "Echo", payload))))
           for h2, c in clients.items()}
    ops["grpc"] = lambda: loop.run_until_complete(burst(lambda: grpc_echo(payload)))
    h2load_rates: list[float] = []
    h2load = _h2load_command(url, clients[True], loop, payload, concurrency, calls)
    if h2load is not None:
        ops["h2load"] = lambda: h2load_rates.append(_h2load_rate(h2load))
    try:
        seconds = interleaved(ops, rounds)
    finally:
        for client in clients.values():
            loop.run_until_complete(client.aclose())
        loop.run_until_complete(channel.close())
        loop.close()
    h1, h2, peer = (calls / seconds[key] for key in ("h2=False", "h2=True", "grpc"))
    print(f"\n| {concurrency} concurrent 100 B unary calls | calls/s | quill HTTP/2 / this |\n| --- | ---: | ---: |")
    print(f"| AsyncQuillClient HTTP/1.1, {concurrency} connections (granian) | {h1:,.0f} | {h2 / h1:.2f} |")
    print(f"| AsyncQuillClient HTTP/2, one connection (granian) | {h2:,.0f} | 1.00 |")
    print(f"| grpc.aio, one channel (grpcio server) | {peer:,.0f} | {h2 / peer:.2f} |")
    if h2load_rates:
        rate = statistics.median(h2load_rates[1:])  # the first was the warm-up
        print(f"| h2load -c 1 -m {concurrency}, one connection (granian): the server side | {rate:,.0f} | {h2 / rate:.2f} |")
    else:
        print("| h2load: not installed (apt-get install nghttp2-client) | | |")


def _h2load_command(url: str, client: AsyncQuillClient, loop: Any, payload: bytes, concurrency: int,
                    calls: int) -> list[str] | None:
    """h2load sending ``payload`` to Echo with the header list ``client`` sends (captured from one call)."""
    import atexit
    import os
    import shutil
    import tempfile

    from quill.transports import aio_http2

    if shutil.which("h2load") is None:
        return None
    sent: list = []
    original = aio_http2.request_headers
    aio_http2.request_headers = lambda *args: sent.append(original(*args)) or sent[-1]
    try:
        loop.run_until_complete(client.call(BENCH_SERVICE, "Echo", payload))
    finally:
        aio_http2.request_headers = original
    body = tempfile.NamedTemporaryFile(prefix="bench-h2load-", delete=False)
    body.write(payload)
    body.close()
    atexit.register(os.unlink, body.name)
    command = ["h2load", "-n", str(calls), "-c", "1", "-m", str(concurrency), "-d", body.name]
    for name, value in sent[0]:
        if not name.startswith(b":") and name != b"content-length":  # h2load frames the body itself
            command += ["-H", f"{name.decode()}: {value.decode()}"]
    return command + [url + dict(sent[0])[b":path"].decode()]


def _h2load_rate(command: list[str]) -> float:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    calls = command[command.index("-n") + 1]
    if f"{calls} succeeded, 0 failed" not in done.stdout:
        raise RuntimeError(f"h2load: not every request succeeded:\n{done.stdout}")
    return float(re.search(r"finished in [^,]+, ([\d.]+) req/s", done.stdout).group(1))


async def _grpc_channel(grpc: Any, target: str) -> Any:
    return grpc.aio.insecure_channel(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["bulk", "tokens", "unary"], help="run one table")
    args = parser.parse_args()
    server, url = bench_server.start("--serve", "quill", "granian")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        grpc_port = probe.getsockname()[1]
    grpc_server = subprocess.Popen([sys.executable, str(pathlib.Path(__file__).with_name("bench_client.py")),
                                    "--serve-grpc", str(grpc_port)])
    try:
        print(f"granian, medians of {args.rounds} rounds")
        if args.only in (None, "bulk"):
            bulk_rows(url, args.rounds)
        if args.only in (None, "tokens"):
            token_rows(url, args.rounds)
        if args.only in (None, "unary"):
            time.sleep(1.0)  # the grpcio server binds within a second (as bench_aio.py waits)
            unary_rows(url, f"127.0.0.1:{grpc_port}", args.rounds)
    finally:
        for process in (server, grpc_server):
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
