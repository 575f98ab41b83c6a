"""QuillClient against its peers, measured in one run, printed as a Markdown table.

Servers, each in its own process (so it has a core of its own, not the client's GIL):
  * quill's reference server (``quill serve quill.cli.bench_service:app``, uvicorn);
  * a minimal fast HTTP/1.1 server speaking the same protocol (blocking sockets, no framework),
    to show the client's own ceiling where the reference server is the bottleneck;
  * a grpcio server with an equivalent servicer (raw bytes, no protobuf codegen).
Clients: QuillClient, raw urllib3 (HTTPConnectionPool.urlopen; streams read as raw chunks) and grpcio;
AsyncQuillClient against the minimal server.

    python benchmarks/bench_client.py [--quick] [--workloads unary_100B,unary_1MiB,...]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from concurrent import futures

from quill.cli import bench_service as benchmark
from quill.cli.bench_service import BENCH_SERVICE, MIB, WORKLOADS, measure

GRPC_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- the minimal fast server

def serve_fast(port: int) -> None:
    """HTTP/1.1 keep-alive, one thread per connection, answers the three bench methods."""
    import socketserver

    import numpy as np

    from quill.frames import encode_end_stream, encode_tensor_frames, stream_frame_header
    from quill.tensor import Tensor

    tensors: dict[int, Tensor] = {}

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            sock = self.connection
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                path = line.split(b" ")[1]
                length = 0
                while (header := self.rfile.readline()) not in (b"\r\n", b""):
                    name, _, value = header.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = self.rfile.read(length)
                if path.endswith(b"/Echo"):
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nContent-Length: %d\r\n\r\n"
                                 % len(body) + body)
                    continue
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nTransfer-Encoding: chunked\r\n\r\n")
                if path.endswith(b"/Stream"):
                    count, size = (int(x) for x in body.split(b","))
                    payload = bytes(size)
                    head = b"%x\r\n" % (size + len(stream_frame_header(size))) + stream_frame_header(size)
                    for _ in range(count):
                        sock.sendmsg([head, payload, b"\r\n"])
                    end = encode_end_stream()
                    sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(end), end))
                else:
                    size = int(body)
                    tensor = tensors.setdefault(size, Tensor.from_numpy(np.zeros(size, np.uint8), name="bench"))
                    parts = list(encode_tensor_frames(tensor, chunk_size=MIB))
                    for i in range(0, len(parts), 64):
                        group = parts[i:i + 64]
                        total = sum(len(p) if not isinstance(p, memoryview) else p.nbytes for p in group)
                        sock.sendmsg([b"%x\r\n" % total, *group, b"\r\n"])
                    sock.sendall(b"0\r\n\r\n")

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    Server(("127.0.0.1", port), Handler).serve_forever()


# ---------------------------------------------------------------- grpcio, server and client

def serve_grpc(port: int) -> None:
    import grpc

    payloads: dict[int, bytes] = {}

    def echo(request, context):
        return request

    def stream(request, context):
        count, size = (int(x) for x in request.split(b","))
        payload = payloads.setdefault(size, bytes(size))
        for _ in range(count):
            yield payload

    def tensor(request, context):
        size = int(request)
        payload = payloads.setdefault(MIB, bytes(MIB))
        for _ in range(size // MIB):
            yield payload

    handler = grpc.method_handlers_generic_handler(BENCH_SERVICE, {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Tensor": grpc.unary_stream_rpc_method_handler(tensor),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def grpc_runner(target: str, workload):
    """The workload with grpcio; a tensor is received as 1 MiB messages assembled into one buffer."""
    import grpc

    channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
    grpc.channel_ready_future(channel).result(timeout=30)
    request = workload.request
    if workload.kind == "unary":
        call = channel.unary_unary(f"/{BENCH_SERVICE}/Echo")

        def op():
            assert len(call(request)) == workload.size
        return lambda: benchmark._timed(workload.count, op)
    if workload.kind == "stream":
        call = channel.unary_stream(f"/{BENCH_SERVICE}/Stream")

        def stream_op():
            assert sum(len(m) for m in call(request)) == workload.count * workload.size
        return lambda: benchmark._timed(3, stream_op)
    call = channel.unary_stream(f"/{BENCH_SERVICE}/Tensor")

    def tensor_op():
        buffer = memoryview(bytearray(workload.size))
        offset = 0
        for message in call(request):
            buffer[offset:offset + len(message)] = message
            offset += len(message)
        assert offset == workload.size
    return lambda: benchmark._timed(3, tensor_op)


# ---------------------------------------------------------------- AsyncQuillClient

def aio_runner(base_url: str, workload, reuse_out: bool = False):
    """The workload with AsyncQuillClient on one asyncio loop (kept across runs, as an app would)."""
    import asyncio

    from quill.client import AsyncQuillClient

    loop = asyncio.new_event_loop()
    client = AsyncQuillClient(base_url, timeout_ms=120_000)
    request = workload.request
    out = bytearray(workload.size) if reuse_out else None

    async def unary():
        assert len(await client.call(BENCH_SERVICE, "Echo", request)) == workload.size

    async def stream():
        n = 0
        async for message in await client.call_stream(BENCH_SERVICE, "Stream", request):
            n += len(message)
        assert n == workload.count * workload.size

    async def tensor():
        assert (await client.call_tensor(BENCH_SERVICE, "Tensor", request, out=out)).size_bytes == workload.size

    op = {"unary": unary, "stream": stream, "tensor": tensor}[workload.kind]
    count = workload.count if workload.kind == "unary" else 3
    return lambda: benchmark._timed(count, lambda: loop.run_until_complete(op()))


def asyncio_ceiling_runner(base_url: str, workload):
    """A bare asyncio BufferedProtocol reading the chunked answer into one reused buffer, counting
    bytes until the last chunk: what the event loop alone allows, with no HTTP parsing at all."""
    import asyncio

    host, port = base_url.rsplit("/", 1)[-1].split(":")
    method = "Stream" if workload.kind == "stream" else "Tensor"
    body = workload.request
    request = (f"POST /{BENCH_SERVICE}/{method} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/proto\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    class Counting(asyncio.BufferedProtocol):
        def __init__(self):
            self.buffer = memoryview(bytearray(1 << 20))
            self.tail = b""
            self.done: asyncio.Future | None = None

        def get_buffer(self, sizehint):
            return self.buffer

        def buffer_updated(self, nbytes):
            self.tail = (self.tail + bytes(self.buffer[max(0, nbytes - 5):nbytes]))[-5:]
            if self.tail == b"0\r\n\r\n":
                self.done.set_result(None)

    loop = asyncio.new_event_loop()
    transport, protocol = loop.run_until_complete(loop.create_connection(Counting, host, int(port)))

    async def one():
        protocol.tail, protocol.done = b"", loop.create_future()
        transport.write(request)
        await protocol.done

    return lambda: benchmark._timed(3, lambda: loop.run_until_complete(one()))


def aio_rows(url: str, server: str, workload, repeats: int, progress) -> list[dict]:
    volume = None if workload.kind == "unary" else workload.size * (workload.count if workload.kind == "stream" else 1)
    rows = []
    variants = [("AsyncQuillClient", False)] + ([("AsyncQuillClient, out= reused", True)]
                                                if workload.kind == "tensor" else [])
    runners = [(client, lambda reuse_out=reuse_out: aio_runner(url, workload, reuse_out))
               for client, reuse_out in variants]
    if workload.kind != "unary":
        runners.append(("asyncio protocol, bytes counted (no HTTP parsing)",
                        lambda: asyncio_ceiling_runner(url, workload)))
    for client, make in runners:
        progress(f"{workload.label}: {client} against {server}")
        run = make()
        run()
        rows.append(measure(workload.label, client, server, run, volume, repeats))
    return rows


# ---------------------------------------------------------------- main

def spawn(mode: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), mode, str(port)])


def wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {port} did not start")
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition instead of three")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    args = parser.parse_args()
    names = args.workloads.split(",")
    repeats = 1 if args.quick else 3
    progress = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    reference, reference_url = benchmark.start_server()
    fast_port, grpc_port = free_port(), free_port()
    fast, grpc_server = spawn("--serve-fast", fast_port), spawn("--serve-grpc", grpc_port)
    try:
        wait_port(fast_port, fast)
        wait_port(grpc_port, grpc_server)
        rows = []
        for name in names:
            workload = WORKLOADS[name]
            rows += benchmark.run_benchmarks(reference_url, [name], repeats=repeats, progress=progress)
            fast_url = f"http://127.0.0.1:{fast_port}"
            rows += benchmark.run_benchmarks(fast_url, [name], repeats=repeats,
                                             server="minimal fast server", progress=progress)
            rows += aio_rows(fast_url, "minimal fast server", workload, repeats, progress)
            progress(f"{workload.label}: grpcio")
            run = grpc_runner(f"127.0.0.1:{grpc_port}", workload)
            run()
            volume = None if workload.kind == "unary" else workload.size * (
                workload.count if workload.kind == "stream" else 1)
            rows.append(measure(workload.label, "grpcio", "grpcio server", run, volume, repeats))
        print(benchmark.format_table(rows))
    finally:
        for proc in (reference, fast, grpc_server):
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-fast":
        serve_fast(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--serve-grpc":
        serve_grpc(int(sys.argv[2]))
    else:
        main()
