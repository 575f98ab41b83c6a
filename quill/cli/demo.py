"""``quill demo``: the demo service on an embedded loopback server, called end to end.

Streams a generation to the terminal, times a bulk generation, round-trips an embedding tensor
and measures small unary calls; offline, a few seconds. The service itself is :mod:`quill.demo`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, TextIO

from .support import EXIT_OK, non_negative_float, positive_int, run_client_command

__all__ = ["add_parser", "run_demo"]


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``quill demo`` with the CLI's subcommand factory."""
    demo = command("demo", "run the demo end to end on an embedded server (offline, a few seconds)",
                   "Start the demo inference service on a free loopback port, stream a generation to the "
                   "terminal, round-trip an embedding tensor, and print tokens/s, MB/s and latencies.")
    demo.add_argument("--max-tokens", type=positive_int, default=48, help="tokens to stream (default 48)")
    demo.add_argument("--token-delay-ms", type=non_negative_float, default=25.0,
                      help="simulated compute per token on the server (default 25)")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``quill demo`` with parsed ``args``; the exit status."""
    def action() -> int:
        run_demo(max_tokens=args.max_tokens, token_delay=args.token_delay_ms / 1000.0)
        return EXIT_OK

    return run_client_command(action)


def _unix_socket_echo(embedding: Any, rounds: int, say: Callable[[str], None]) -> dict[str, float]:
    """The Echo of ``embedding`` on the demo served on a Unix socket, through shared memory
    (docs/shared-memory.md) and in HTTP bodies: MB/s of each."""
    import os
    import tempfile

    from ..client import QuillClient
    from ..demo import SERVICE, create_demo_app
    from ..server import serve_in_thread, unix_url

    rates = {}
    with tempfile.TemporaryDirectory() as folder, \
            serve_in_thread(create_demo_app(), uds=os.path.join(folder, "demo.sock")) as path:
        for key, shared in (("shm_tensor_mb_per_s", True), ("uds_tensor_mb_per_s", False)):
            with QuillClient(unix_url(path), timeout_ms=60_000, shared_memory=shared) as client:
                client.call_tensor(SERVICE, "Echo", embedding)  # the offer, the arenas
                started = time.perf_counter()
                for _ in range(rounds):
                    echoed = client.call_tensor(SERVICE, "Echo", embedding)
                rates[key] = 2 * rounds * embedding.size_bytes / (time.perf_counter() - started) / 1e6
                if echoed != embedding:
                    raise RuntimeError("the Unix-socket Echo changed the tensor")
    say(f"  on a Unix socket: {rates['shm_tensor_mb_per_s']:,.0f} MB/s through shared memory, "
        f"{rates['uds_tensor_mb_per_s']:,.0f} MB/s in HTTP bodies (identical: True)")
    return rates


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(round(fraction * (len(sorted_values) - 1))))]


def run_demo(
    *,
    max_tokens: int = 48,
    token_delay: float = 0.025,
    bulk_tokens: int = 50_000,
    tensor_rows: int = 2048,
    echo_calls: int = 200,
    out: TextIO | None = None,
) -> dict[str, float]:
    """The ``quill demo`` routine: serve the demo on a free loopback port, call it with
    :class:`~quill.client.QuillClient`, print what happens, and return the summary numbers.

    Streams a generation to ``out`` token by token (``token_delay`` seconds each), times a
    bulk generation of ``bulk_tokens`` tokens, round-trips a ``(tensor_rows, 1024)`` float32
    embedding tensor through ``Echo``, and measures ``echo_calls`` small unary calls.

    >>> summary = run_demo(max_tokens=8, token_delay=0.0, bulk_tokens=1000, tensor_rows=16,
    ...                    echo_calls=10, out=sys.stderr)  # doctest: +SKIP
    >>> summary["streamed_tokens"]  # doctest: +SKIP
    8
    """
    import numpy as np

    from ..client import QuillClient
    from ..demo import SERVICE, create_demo_app
    from ..server import serve_in_thread

    out = sys.stdout if out is None else out
    perf = time.perf_counter

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    summary: dict[str, float] = {}
    with serve_in_thread(create_demo_app()) as url, QuillClient(url, timeout_ms=60_000) as client:
        say(f"quill demo: {SERVICE} (Generate, Embed, Echo) on an embedded server at {url}")
        if not client.health_check():
            raise RuntimeError(f"the embedded demo server at {url} is not healthy")

        prompt = "Tell me how a quill writes"
        say(f"\n> Generate  prompt={prompt!r} max_tokens={max_tokens}, streamed as TOKEN_BATCH frames "
            f"({token_delay * 1000:g} ms per token on the server)")
        request = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "token_delay_ms": token_delay * 1000})
        out.write(" ")
        started, first_token, count, logprob_total, column = perf(), None, 0, 0.0, 1
        for batch in client.stream_tokens(SERVICE, "Generate", request.encode()):
            if first_token is None:
                first_token = perf() - started
            for token in batch:  # printed as it arrives, wrapped at word boundaries
                text = token.text or ""
                if text.startswith(" ") and column + len(text) > 88:
                    out.write("\n ")
                    column = 1
                out.write(text)
                column += len(text)
            out.flush()
            count += len(batch)
            logprob_total += float(batch.logprobs_array().sum()) if len(batch) else 0.0
        stream_seconds = perf() - started
        say()
        say(f"  {count} tokens, mean logprob {logprob_total / max(count, 1):.2f}")
        summary.update(streamed_tokens=count, first_token_ms=(first_token or 0.0) * 1000,
                       streamed_tokens_per_s=count / stream_seconds)

        request = json.dumps({"prompt": prompt, "max_tokens": bulk_tokens, "batch_size": 64, "token_delay_ms": 0})
        started = perf()
        bulk = sum(len(batch) for batch in client.stream_tokens(SERVICE, "Generate", request.encode()))
        bulk_seconds = perf() - started
        say(f"\n> Generate  max_tokens={bulk_tokens} batch_size=64 without delay: {bulk} tokens in {bulk_seconds * 1000:.0f} ms")
        summary.update(bulk_tokens=bulk, bulk_tokens_per_s=bulk / bulk_seconds)

        inputs = [f"document {i}" for i in range(tensor_rows)]
        started = perf()
        embedding = client.call_tensor(SERVICE, "Embed", json.dumps({"input": inputs, "dim": 1024}).encode())
        embed_ms = (perf() - started) * 1000
        rows = embedding.to_numpy()
        norms_ok = bool(np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-4))
        say(f"\n> Embed     {tensor_rows} inputs -> {embedding.dtype} tensor {tuple(embedding.shape)}, "
            f"{embedding.size_bytes / 2**20:.1f} MiB in {embed_ms:.0f} ms; unit-length rows: {norms_ok}")
        half = client.call_tensor(SERVICE, "Embed", json.dumps({"input": inputs[:4], "dim": 1024, "dtype": "bfloat16"}).encode())
        error = float(np.abs(half.to_numpy(dtype="float32") - rows[:4]).max())
        say(f"  dtype=bfloat16 -> {half.dtype} tensor {tuple(half.shape)}, max |bf16 - f32| = {error:.4f}")

        rounds, moved = 3, 0
        started = perf()
        for _ in range(rounds):
            echoed = client.call_tensor(SERVICE, "Echo", embedding)
            moved += 2 * embedding.size_bytes
        echo_seconds = perf() - started
        identical = echoed == embedding
        say(f"\n> Echo      the {embedding.size_bytes / 2**20:.1f} MiB tensor there and back x{rounds}: "
            f"identical: {identical}")
        summary.update(tensor_mb_per_s=moved / echo_seconds / 1e6, tensor_identical=float(identical))
        if sys.platform.startswith("linux"):
            summary.update(_unix_socket_echo(embedding, rounds, say))

        payload = b"q" * 64
        latencies = []
        for _ in range(echo_calls):
            started = perf()
            client.call(SERVICE, "Echo", payload)
            latencies.append(perf() - started)
        latencies.sort()
        summary.update(unary_p50_ms=_percentile(latencies, 0.5) * 1000, unary_p99_ms=_percentile(latencies, 0.99) * 1000)
        say(f"\n> Echo      {echo_calls} unary calls of {len(payload)} bytes, one after another")

    say("\nSummary")
    say(f"  streamed generation  {summary['streamed_tokens']:.0f} tokens at {summary['streamed_tokens_per_s']:.1f} tokens/s "
        f"(server paced at {token_delay * 1000:g} ms/token), first token after {summary['first_token_ms']:.1f} ms")
    say(f"  bulk generation      {summary['bulk_tokens_per_s']:,.0f} tokens/s")
    say(f"  tensor round trip    {summary['tensor_mb_per_s']:,.0f} MB/s (bytes sent + received per second)")
    if "shm_tensor_mb_per_s" in summary:
        say(f"  over a Unix socket   {summary['shm_tensor_mb_per_s']:,.0f} MB/s through shared memory, "
            f"{summary['uds_tensor_mb_per_s']:,.0f} MB/s in HTTP bodies")
    say(f"  unary Echo latency   p50 {summary['unary_p50_ms']:.2f} ms, p99 {summary['unary_p99_ms']:.2f} ms")
    return summary
