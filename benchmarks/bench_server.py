"""Server benchmark: quill.server on each engine, read by QuillClient (the way users read) and by
raw urllib3, every throughput row printed against the loopback ceiling measured in the same run.

* ``ceiling`` -- a raw socket server writing a prepared chunked body (1 MiB chunks) that urllib3
  reads: what this machine's loopback and HTTP parsing allow, with no server work at all.
* ``quill (ENGINE)`` -- ``quill serve quill.cli.bench_service:app --engine ENGINE`` for each engine
  installed (uvicorn, granian, hypercorn), plus uvicorn limited to h11 and asyncio, what a plain
  ``pip install quill-rpc`` without the ``server`` extra runs.
* ``bare ASGI (ENGINE)`` -- a hand-written ASGI app on the same engine sending the same prepared
  token frames, one body message each: what the engine costs per frame, for the token-streaming
  row (QuillApp joins frames ready back to back; ``bench_token_overhead.py`` compares the two).
* ``HTTP/2`` rows -- httpx with ``http2=True`` on the engines that speak it (hypercorn, granian),
  when httpx and h2 are installed.

Each server runs in its own process. Every row is the median of ``--repeats`` runs (default 3).
Run: ``python benchmarks/bench_server.py [--quick] [--engines uvicorn,granian]`` (a few minutes).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time

import urllib3

sys.path.insert(0, __import__("os").path.dirname(__file__))

MIB = 1 << 20
CEILING_BYTES = 256 * MIB
TOKENS = 100_000
TOKEN_SERVICE = "inference.v1.LLMService"


# --------------------------------------------------------------------------------------
# Servers (each started as `python bench_server.py --serve KIND ENGINE PORT`)
# --------------------------------------------------------------------------------------
def _token_frames() -> list[bytes]:
    from quill._core.tokens import Token, TokenBatch
    from quill.frames import encode_token_batch_frame

    batch = TokenBatch.from_tokens([Token(5, i, text=" word", logprob=-1.0) for i in range(32)])
    return [encode_token_batch_frame(batch)] * (TOKENS // 32)


def _bare_asgi_app():
    """Sends the prepared token frames, then END_STREAM: no routing, limits or codecs."""
    from quill.frames import END_STREAM_FRAME

    frames = _token_frames() + [END_STREAM_FRAME]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/proto")]})
        for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def _quill_app():
    """quill.cli.bench_service's app plus a token stream of the same prepared batches."""
    from quill._core.tokens import Token, TokenBatch
    from quill.cli.bench_service import app

    batch = TokenBatch.from_tokens([Token(5, i, text=" word", logprob=-1.0) for i in range(32)])

    @app.token_stream(f"{TOKEN_SERVICE}/Tokens")
    async def tokens(request, context):
        for _ in range(TOKENS // 32):
            yield batch

    return app


def serve(kind: str, engine: str, port: int) -> None:
    """Run one server in this process until SIGTERM."""
    from quill.server.engines import ServeOptions, prepare
    from quill.server.sockets import bind_tcp

    if kind == "demo":
        from quill.demo import create_demo_app

        app = create_demo_app()
    else:
        app = _bare_asgi_app() if kind == "bare" else _quill_app()
    sock = bind_tcp("127.0.0.1", port)
    if engine == "uvicorn-h11":  # uvicorn without httptools and uvloop
        import uvicorn

        config = uvicorn.Config(app, log_level="warning", http="h11", loop="asyncio", lifespan="auto")
        uvicorn.Server(config).run(sockets=[sock])
        return
    prepare(app, sock, ServeOptions(log_level="warning"), engine).run()


def serve_ceiling(port: int) -> None:
    """A raw socket server answering every request with a prepared chunked body."""
    chunk = b"%x\r\n%s\r\n" % (MIB, bytes(MIB))
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nTransfer-Encoding: chunked\r\n\r\n"
    listener = socket.create_server(("127.0.0.1", port))

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                request, _, buffer = buffer.partition(b"\r\n\r\n")
                if request.startswith(b"GET /health"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    continue
                conn.sendall(head)
                for _ in range(CEILING_BYTES // MIB):
                    conn.sendall(chunk)
                conn.sendall(b"0\r\n\r\n")

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def start(*args: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, __file__, *args, str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    pool = urllib3.PoolManager(retries=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            if pool.request("GET", f"{url}/health", timeout=1).status == 200:
                return process, url
        except urllib3.exceptions.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server {args} did not start")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------
def median_rate(operation, volume: float, repeats: int) -> float:
    """``volume`` per second over the median of ``repeats`` timed runs (after one warm-up)."""
    operation()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        operation()
        seconds.append(time.perf_counter() - started)
    return volume / statistics.median(seconds)


def raw_read(url: str, path: str, body: bytes = b"") -> int:
    pool = urllib3.connection_from_url(url, maxsize=1, timeout=120)
    response = pool.urlopen("POST", path, body=body, preload_content=False,
                            headers={"Content-Type": "application/proto"})
    n = sum(len(chunk) for chunk in response.stream(MIB))
    response.release_conn()
    return n


def measure_ceiling(repeats: int) -> float:
    """MB/s of urllib3 reading the raw socket server's prepared chunked body."""
    process, url = start("--ceiling")
    try:
        return median_rate(lambda: raw_read(url, "/"), CEILING_BYTES, repeats) / 1e6
    finally:
        process.terminate()
        process.wait()


def quill_rows(url: str, server: str, repeats: int) -> list[tuple]:
    """Unary, stream and tensor rows with QuillClient and raw urllib3 (quill.cli.bench_service's runners)."""
    from quill.cli.bench_service import WORKLOADS, run_benchmarks

    rows = []
    for r in run_benchmarks(url, list(WORKLOADS), repeats=repeats, server=server):
        rows.append((r["workload"], server, r["client"], r["rate"], r["unit"]))
    return rows


def token_rate(url: str, repeats: int) -> float:
    from quill.client import QuillClient

    client = QuillClient(url, timeout_ms=120_000)

    def one():
        assert sum(len(b) for b in client.stream_tokens(TOKEN_SERVICE, "Tokens", b"")) == TOKENS // 32 * 32

    return median_rate(one, TOKENS, repeats)


def http2_rows(url: str, server: str, repeats: int) -> list[tuple]:
    """Unary, stream and tensor over HTTP/2 cleartext (prior knowledge) with httpx."""
    try:
        import httpx
    except ImportError:
        return []
    from quill.cli.bench_service import BENCH_SERVICE

    rows = []
    headers = {"Content-Type": "application/proto"}
    calls = 200  # per run; hypercorn ends a connection after 1,000 requests (keep_alive_max_requests)
    with httpx.Client(http1=False, http2=True, base_url=url, timeout=120) as client:
        def unary():
            for _ in range(calls):
                client.post(f"/{BENCH_SERVICE}/Echo", content=b"x" * 100, headers=headers).read()

        rows.append(("unary 100 B", server + ", HTTP/2", "httpx", median_rate(unary, calls, repeats), "calls/s"))
    for label, method, body, volume in (("message stream 256 x 1 MiB", "Stream", b"256,1048576", 256 * MIB),
                                        ("tensor 256 MiB", "Tensor", b"%d" % (256 * MIB), 256 * MIB)):
        with httpx.Client(http1=False, http2=True, base_url=url, timeout=120) as client:
            def download(method=method, body=body):
                with client.stream("POST", f"/{BENCH_SERVICE}/{method}", content=body, headers=headers) as r:
                    for _ in r.iter_raw(MIB):
                        pass

            rows.append((label, server + ", HTTP/2", "httpx", median_rate(download, volume, repeats) / 1e6, "MB/s"))
    return rows


def compression_rows(url: str, server: str, repeats: int) -> list[tuple]:
    """The demo's Generate, 100,000 tokens, with and without zstd: bytes on the wire (raw urllib3,
    undecoded) and tokens/s through QuillClient (which decodes)."""
    import json

    from quill.client import QuillClient

    rows = []
    for batch_size in (1, 32):
        request = json.dumps({"max_tokens": TOKENS, "batch_size": batch_size, "token_delay_ms": 0}).encode()
        for coding in ("identity", "zstd"):
            pool = urllib3.connection_from_url(url, maxsize=1, timeout=120)
            response = pool.urlopen("POST", f"/{TOKEN_SERVICE}/Generate", body=request, preload_content=False,
                                    headers={"Content-Type": "application/json", "Accept": "application/proto",
                                             "Accept-Encoding": coding})
            wire = sum(len(chunk) for chunk in response.stream(MIB, decode_content=False))
            response.release_conn()
            client = QuillClient(url, timeout_ms=120_000, enable_compression=coding == "zstd")

            def one():
                assert sum(len(b) for b in client.stream_tokens(TOKEN_SERVICE, "Generate", request)) == TOKENS

            rate = median_rate(one, TOKENS, repeats)
            label = f"demo Generate {TOKENS:,} tokens, batch {batch_size}, {coding}"
            rows.append((label + " (wire bytes)", server, "urllib3", wire / 1e6, "MB"))
            rows.append((label, server, "quill", rate, "tokens/s"))
    return rows


def main() -> None:
    from quill.server.engines import available_engines

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run per row")
    parser.add_argument("--engines", default=None, help="comma-separated engines (default: all installed)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    engines = args.engines.split(",") if args.engines else available_engines() + ["uvicorn-h11"]

    rows: list[tuple] = []
    ceilings = [measure_ceiling(repeats)]  # measured before and after the rows: the load may move
    for engine in engines:
        label = "uvicorn (h11, asyncio)" if engine == "uvicorn-h11" else engine
        for kind in ("quill", "bare"):
            process, url = start("--serve", kind, engine)
            try:
                if kind == "quill":
                    rows += quill_rows(url, f"quill ({label})", repeats)
                    rows.append((f"{TOKENS:,} tokens in batches of 32", f"quill ({label})", "quill",
                                 token_rate(url, repeats), "tokens/s"))
                    if engine in ("hypercorn", "granian"):
                        rows += http2_rows(url, f"quill ({label})", repeats)
                else:
                    rows.append((f"{TOKENS:,} tokens in batches of 32", f"bare ASGI ({label})", "quill",
                                 token_rate(url, repeats), "tokens/s"))
            finally:
                process.terminate()
                process.wait()
    default = available_engines()[0]
    process, url = start("--serve", "demo", default)
    try:
        rows += compression_rows(url, f"quill demo ({default})", repeats)
    finally:
        process.terminate()
        process.wait()
    ceilings.append(measure_ceiling(repeats))
    ceiling = statistics.median(ceilings)
    print(f"loopback ceiling (urllib3 reading a raw socket server's chunked body): {ceiling:,.0f} MB/s "
          f"(before the rows {ceilings[0]:,.0f}, after {ceilings[1]:,.0f})\n")
    print("| workload | server | client | rate | / ceiling |")
    print("| --- | --- | --- | ---: | ---: |")
    for workload, server, client, rate, unit in rows:
        share = f"{rate / ceiling:.2f}" if unit == "MB/s" else "-"
        value = f"{rate:,.2f}" if unit == "MB" else f"{rate:,.0f}"
        print(f"| {workload} | {server} | {client} | {value} {unit} | {share} |")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--ceiling":
        serve_ceiling(int(sys.argv[2]))
    else:
        main()
