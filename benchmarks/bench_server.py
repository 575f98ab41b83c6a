"""Server benchmark: the quill reference server (QuillApp on uvicorn) and its peers, one client.

Each server runs in its own process; the client is raw urllib3 (one keep-alive connection),
the same for every server, so the numbers compare servers. Peers:

* ``bare ASGI`` -- a hand-written ASGI app on the same uvicorn that answers with bytes
  prepared in advance: the floor of what uvicorn costs, with no routing, limits or codecs.
* ``no TCP_NODELAY`` -- QuillApp on uvicorn given a socket created without
  ``proto=IPPROTO_TCP`` (as uvicorn's own ``bind_socket`` does for ``--workers`` and
  ``--reload``), so asyncio leaves Nagle's algorithm on: the stall ``quill.server`` avoids.
* ``stdlib http.server`` -- ``ThreadingHTTPServer`` with an echo handler (Nagle on).

Run: ``python benchmarks/bench_server.py`` (about a minute). Prints a Markdown table.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time

import urllib3

SERVICE = "inference.v1.LLMService"
TENSOR_BYTES = 64 * 1024 * 1024
GENERATE_TOKENS = 100_000


def _bare_asgi_app():
    """An ASGI app that echoes unary bodies and sends prepared token / tensor streams
    (the same bytes quill.server sends for ``Tokens`` and ``Tensor``)."""
    import numpy as np

    from quill._tokens import Token, TokenBatch
    from quill.frames import END_STREAM_FRAME, encode_tensor_frames, encode_token_batch_frame
    from quill.tensor import Tensor

    batch = TokenBatch.from_tokens([Token(5, i, text=" word", logprob=-1.0) for i in range(32)])
    token_frames = [encode_token_batch_frame(batch)] * (GENERATE_TOKENS // 32) + [END_STREAM_FRAME]
    tensor = Tensor.from_numpy(np.zeros(TENSOR_BYTES, dtype=np.uint8))
    tensor_body = b"".join(encode_tensor_frames(tensor))

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path.endswith("/Echo"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/proto"), (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})
        elif path.endswith("/Tokens"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/proto")]})
            for frame in token_frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path.endswith("/Tensor"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/proto"),
                                    (b"content-length", b"%d" % len(tensor_body))]})
            await send({"type": "http.response.body", "body": tensor_body})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    return app


def _quill_app():
    import numpy as np

    from quill._tokens import Token, TokenBatch
    from quill.demo import create_demo_app
    from quill.tensor import Tensor

    app = create_demo_app()
    tensor = Tensor.from_numpy(np.zeros(TENSOR_BYTES, dtype=np.uint8))
    batch = TokenBatch.from_tokens([Token(5, i, text=" word", logprob=-1.0) for i in range(32)])

    @app.tensor(f"{SERVICE}/Tensor")
    def send_tensor(request, context):
        return tensor

    @app.token_stream(f"{SERVICE}/Tokens")
    async def tokens(request, context):
        for _ in range(GENERATE_TOKENS // 32):
            yield batch

    return app


def serve(kind: str, port: int) -> None:
    """Run one server in this process (the benchmark starts each in a subprocess)."""
    if kind == "stdlib":
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Echo(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "application/proto")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
        return
    import uvicorn

    from quill.server.sockets import bind_tcp

    app = _bare_asgi_app() if kind == "bare" else _quill_app()
    if kind == "nagle":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0: asyncio leaves Nagle on
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    else:
        sock = bind_tcp("127.0.0.1", port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def start(kind: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)])
    url = f"http://127.0.0.1:{port}"
    pool = urllib3.PoolManager(retries=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            if pool.request("GET", f"{url}/health", timeout=1).status == 200:
                return process, url
        except urllib3.exceptions.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the {kind} server did not start")
        time.sleep(0.05)


def timed_runs(operation, repeats: int) -> list[float]:
    operation()  # warm-up
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        operation()
        out.append(time.perf_counter() - started)
    return out


def unary_latency(url: str, calls: int) -> float:
    """Median seconds of one 100-byte echo call."""
    pool = urllib3.connection_from_url(url, maxsize=1)
    body = b"x" * 100
    path = f"/{SERVICE}/Echo"

    def one():
        assert pool.urlopen("POST", path, body=body, headers={"Content-Type": "application/proto"}).data == body

    return statistics.median(timed_runs(one, calls))


def stream_rate(url: str, method: str, body: bytes, repeats: int) -> float:
    """Median seconds to receive a whole streamed answer."""
    pool = urllib3.connection_from_url(url, maxsize=1, timeout=120)

    def one():
        response = pool.urlopen("POST", f"/{SERVICE}/{method}", body=body, preload_content=False,
                                headers={"Content-Type": "application/proto", "Accept": "application/proto"})
        for _ in response.stream(1 << 20):
            pass
        response.release_conn()

    return statistics.median(timed_runs(one, repeats))


def main() -> None:
    rows = []
    servers = {}
    try:
        for kind in ("quill", "bare", "nagle", "stdlib"):
            servers[kind] = start(kind)
        names = {"quill": "quill.server (uvicorn)", "bare": "bare ASGI (uvicorn)",
                 "nagle": "quill.server, no TCP_NODELAY", "stdlib": "stdlib http.server"}
        for kind in ("quill", "bare", "nagle", "stdlib"):
            calls = 1000 if kind in ("quill", "bare") else 20  # Nagle-bound servers take ~44 ms a call
            seconds = unary_latency(servers[kind][1], calls)
            rows.append(("unary 100 B echo, median latency", names[kind], seconds * 1e3, "ms"))
        for kind in ("quill", "bare"):
            seconds = stream_rate(servers[kind][1], "Tokens", b"", 5)
            rows.append((f"{GENERATE_TOKENS:,} tokens in batches of 32", names[kind], GENERATE_TOKENS / seconds, "tokens/s"))
        generate = json.dumps({"max_tokens": GENERATE_TOKENS, "batch_size": 32}).encode()
        seconds = stream_rate(servers["quill"][1], "Generate", generate, 5)
        rows.append((f"demo Generate, {GENERATE_TOKENS:,} tokens (toy model in the loop)", names["quill"],
                     GENERATE_TOKENS / seconds, "tokens/s"))
        for kind in ("quill", "bare"):
            seconds = stream_rate(servers[kind][1], "Tensor", b"", 5)
            rows.append(("64 MiB tensor download", names[kind], TENSOR_BYTES / seconds / 1e6, "MB/s"))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait()
    quill_value = {workload: value for workload, server, value, _ in rows if server.startswith("quill.server (")}
    print("| workload | server | result | quill.server / this |")
    print("| --- | --- | ---: | ---: |")
    for workload, server, value, unit in rows:
        mine = quill_value[workload]
        ratio = value / mine if unit == "ms" else mine / value  # > 1: quill.server is better
        print(f"| {workload} | {server} | {value:,.2f} {unit} | {ratio:.2f}x |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
