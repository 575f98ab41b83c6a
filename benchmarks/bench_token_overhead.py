"""QuillApp's cost on a token stream: ``quill (ENGINE)`` against ``bare ASGI (ENGINE)`` from
bench_server.py (a hand-written ASGI app sending the same prepared frames), side by side.

Both servers run at once, each in its own process, and are measured in alternation (the
order swapped every round: the machine is noisy). Per engine it prints the medians of
tokens/s (100,000 tokens in batches of 32, read by ``QuillClient.stream_tokens``) and of the
server's CPU seconds per stream (user + system of the server process and its children), and
the ratio quill / bare of each.

The bare app sends one body message per frame; QuillApp joins the frames of batches its
handler has ready back to back (see :data:`quill.server.exchange.JOIN_BYTES`), which is why it
can beat it.

Run: ``python benchmarks/bench_token_overhead.py [--rounds 7] [--streams 15] [--engines uvicorn,uvicorn-h11]``
(about a minute; ``uvicorn-h11`` is uvicorn with h11 and asyncio).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(__file__))

from bench_server import TOKEN_SERVICE, TOKENS, start  # noqa: E402


def server_cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU of ``process`` and its children, in seconds."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def measure(client, process: psutil.Process, streams: int) -> tuple[float, float]:
    """Tokens/s (the median over ``streams`` streams) and server CPU seconds per stream."""
    rates = []
    cpu_before = server_cpu_seconds(process)
    for _ in range(streams):
        started = time.perf_counter()
        received = sum(len(b) for b in client.stream_tokens(TOKEN_SERVICE, "Tokens", b""))
        rates.append(TOKENS / (time.perf_counter() - started))
        assert received == TOKENS // 32 * 32, received
    return statistics.median(rates), (server_cpu_seconds(process) - cpu_before) / streams


def compare(engine: str, rounds: int, streams: int) -> dict[str, tuple[float, float]]:
    """Median tokens/s and CPU per stream of the quill and bare servers on ``engine``."""
    from quill.client import QuillClient

    servers = {kind: start("--serve", kind, engine) for kind in ("quill", "bare")}
    try:
        clients = {kind: QuillClient(url, timeout_ms=120_000) for kind, (_, url) in servers.items()}
        processes = {kind: psutil.Process(p.pid) for kind, (p, _) in servers.items()}
        samples: dict[str, list[tuple[float, float]]] = {"quill": [], "bare": []}
        for kind in samples:  # warm-up
            measure(clients[kind], processes[kind], 1)
        for round_ in range(rounds):
            for kind in ("quill", "bare") if round_ % 2 == 0 else ("bare", "quill"):
                samples[kind].append(measure(clients[kind], processes[kind], streams))
        return {kind: (statistics.median(r for r, _ in s), statistics.median(c for _, c in s))
                for kind, s in samples.items()}
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait()


def main() -> None:
    from quill.server.engines import available_engines

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per engine")
    parser.add_argument("--streams", type=int, default=15, help="streams per server in each round")
    parser.add_argument("--engines", default=None, help="comma-separated engines (default: all installed)")
    args = parser.parse_args()
    engines = args.engines.split(",") if args.engines else available_engines()
    print("| engine | quill tokens/s | bare tokens/s | ratio | quill CPU ms/stream | bare CPU ms/stream | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for engine in engines:
        result = compare(engine, args.rounds, args.streams)
        (q_rate, q_cpu), (b_rate, b_cpu) = result["quill"], result["bare"]
        print(f"| {engine} | {q_rate:,.0f} | {b_rate:,.0f} | {q_rate / b_rate:.2f}x "
              f"| {q_cpu * 1e3:,.1f} | {b_cpu * 1e3:,.1f} | {q_cpu / b_cpu:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
