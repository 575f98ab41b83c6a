"""Shared-memory tensor calls against their peers, interleaved round by round in one run.

A 256 MiB float32 Echo (there and back) between this process and a server process:

* quill over shared memory, from an ordinary array (one copy into an arena), from
  ``client.empty()`` (no copy), and with a handler that computes a new array (the server writes
  it into the arena the call offered);
* the same Echo over HTTP/1.1 bodies on the same Unix socket (``shared_memory=False``);
* ``multiprocessing.shared_memory`` with pickle protocol 5 out-of-band buffers, used the usual
  way (a block per message, created by the sender, its name sent over a pipe; the peer maps it
  and answers with the same block, as quill's Echo does);
* Ray's object store (``ray.put`` here, an actor's ``ray.get`` and return there), when ray is
  installed;
* one ``np.copyto`` of 256 MiB into memory already touched: the memory-bandwidth limit.

Then the per-call time of 4 KiB and 64 KiB tensor calls against a 100-byte unary call on the
same socket. Every figure is the median of ``--rounds`` rounds.

    python benchmarks/bench_shm.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import tempfile
import time
from multiprocessing import shared_memory
from typing import Callable

import numpy as np
from bench_tensor_receive import interleaved

from quill import QuillClient
from quill.server import QuillApp, serve, unix_url
from quill.tensor import Tensor

SVC = "bench.v1.Shm"
MIB = 1 << 20
SIZE = 256 * MIB


def make_app() -> QuillApp:
    app = QuillApp(max_request_bytes=None)

    @app.tensor(f"{SVC}/Echo")
    def echo(tensor, context):
        return tensor

    @app.tensor(f"{SVC}/Copy")
    def copy(tensor, context):
        return Tensor.from_numpy(tensor.to_numpy().copy())

    @app.unary(f"{SVC}/Ping")
    def ping(request, context):
        return request

    return app


def _mp_peer(conn) -> None:
    """The multiprocessing peer: map each block named, rebuild the array, answer with the block."""
    while True:
        message = conn.recv()
        if message is None:
            return
        name, header = message
        block = shared_memory.SharedMemory(name=name)
        array = pickle.loads(header, buffers=[block.buf])
        del array
        block.close()
        conn.send(name)


class MultiprocessingEcho:
    def __init__(self):
        self._conn, child = mp.Pipe()
        self._process = mp.get_context("spawn").Process(target=_mp_peer, args=(child,), daemon=True)
        self._process.start()
        self._blocks: list = []

    def __call__(self, array: np.ndarray) -> np.ndarray:
        for block in self._blocks:  # the previous answer's block, released now
            block.close()
            block.unlink()
        buffers: list = []
        header = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
        raw = buffers[0].raw()
        block = shared_memory.SharedMemory(create=True, size=raw.nbytes)
        np.copyto(np.frombuffer(block.buf, np.uint8), np.frombuffer(raw, np.uint8))
        self._conn.send((block.name, header))
        name = self._conn.recv()
        answer_block = block if name == block.name else shared_memory.SharedMemory(name=name)
        self._blocks = [answer_block]
        return pickle.loads(header, buffers=[answer_block.buf])

    def close(self) -> None:
        self._conn.send(None)
        self._process.join(10)
        for block in self._blocks:
            block.close()
            block.unlink()


def ray_echo():
    """A Ray actor's Echo (None when ray is not installed)."""
    try:
        import ray
    except ImportError:
        return None, None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=2 << 30)

    @ray.remote
    class Echo:
        def echo(self, array):
            return array

    actor = Echo.remote()

    def call(array: np.ndarray) -> np.ndarray:
        return ray.get(actor.echo.remote(ray.put(array)))

    return call, ray.shutdown


def big_rows(url: str, rounds: int) -> None:
    a = np.random.default_rng(1).standard_normal(SIZE // 4).astype(np.float32)
    target = np.empty_like(a)
    np.copyto(target, a)
    shm = QuillClient(url, shared_memory=True, timeout_ms=120_000, shared_memory_bytes=2 << 30)
    http = QuillClient(url, shared_memory=False, timeout_ms=120_000)
    staged = shm.empty(a.shape, a.dtype)
    staged[:] = a
    tensor, staged_tensor = Tensor.from_numpy(a), Tensor.from_numpy(staged)
    multiprocessing_echo = MultiprocessingEcho()
    ray_call, ray_stop = ray_echo()

    ops = {
        "np.copyto of 256 MiB (the memory limit)": lambda: np.copyto(target, a),
        "quill shared memory, ordinary array": lambda: shm.call_tensor(SVC, "Echo", tensor),
        "quill shared memory, client.empty() array": lambda: shm.call_tensor(SVC, "Echo", staged_tensor),
        "quill shared memory, handler makes a new array": lambda: shm.call_tensor(SVC, "Copy", tensor),
        "quill HTTP/1.1 bodies, same Unix socket": lambda: http.call_tensor(SVC, "Echo", tensor),
        "multiprocessing.shared_memory + pickle 5": lambda: multiprocessing_echo(a),
    }
    if ray_call is not None:
        ops["Ray object store (put, actor get and return)"] = lambda: ray_call(a)
    checks = {"shm": shm.call_tensor(SVC, "Echo", tensor), "http": http.call_tensor(SVC, "Echo", tensor),
              "mp": multiprocessing_echo(a)}
    assert all(np.array_equal(np.asarray(v).view(np.float32).reshape(-1) if not isinstance(v, Tensor)
                              else v.to_numpy(), a) for v in checks.values())
    del checks
    seconds = interleaved(ops, rounds)
    base = seconds["quill shared memory, ordinary array"]
    copy = seconds["np.copyto of 256 MiB (the memory limit)"]
    http_s = seconds["quill HTTP/1.1 bodies, same Unix socket"]
    print(f"\n| 256 MiB float32 Echo, median of {rounds} | ms | GB/s (256 MiB / time) | vs quill shm | vs np.copyto |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, value in seconds.items():
        print(f"| {name} | {value * 1e3:.1f} | {SIZE / value / 1e9:.2f} | {value / base:.2f}x | {value / copy:.2f}x |")
    print(f"\nshared memory vs HTTP: {http_s / base:.1f}x faster (ordinary array), "
          f"{http_s / seconds['quill shared memory, client.empty() array']:.1f}x (client.empty()); "
          f"shared memory / np.copyto: {base / copy:.2f}")
    if ray_call is None:
        print("Ray: not installed (pip install ray), not measured")
    multiprocessing_echo.close()
    if ray_stop is not None:
        ray_stop()
    shm.close()
    http.close()


def small_rows(url: str, rounds: int) -> None:
    calls = 2000
    with QuillClient(url) as client:
        small = Tensor.from_numpy(np.ones(1024, np.float32))  # 4 KiB
        medium = Tensor.from_numpy(np.ones(16 * 1024, np.float32))  # 64 KiB: through shared memory
        ping = b"x" * 100

        def many(function: Callable[[], object]) -> Callable[[], None]:
            def run() -> None:
                for _ in range(calls):
                    function()
            return run

        seconds = interleaved({
            "unary call, 100 bytes": many(lambda: client.call(SVC, "Ping", ping)),
            "tensor call, 4 KiB (HTTP body)": many(lambda: client.call_tensor(SVC, "Echo", small)),
            "tensor call, 64 KiB (shared memory)": many(lambda: client.call_tensor(SVC, "Echo", medium)),
        }, rounds)
    base = seconds["unary call, 100 bytes"]
    print(f"\n| per call, median of {rounds} rounds of {calls} | µs | vs 100-byte unary |\n| --- | ---: | ---: |")
    for name, value in seconds.items():
        print(f"| {name} | {value / calls * 1e6:.0f} | {value / base:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args()
    if args.serve:
        serve(make_app(), uds=args.serve, log_level="warning",
              on_listening=lambda url: print(url, file=sys.stderr, flush=True))
        return
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "bench.sock")
    server = subprocess.Popen([sys.executable, __file__, "--serve", path], stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        assert "http+unix://" in line, line
        print(f"{os.cpu_count()} CPUs; server: quill serve (uvicorn) in its own process on {path}")
        big_rows(unix_url(path), args.rounds)
        small_rows(unix_url(path), args.rounds)
    finally:
        server.terminate()
        server.wait(20)


if __name__ == "__main__":
    main()
