"""One thread against two, on a free-threaded CPython and on one with the GIL, in one run.

Three workloads, each a fixed amount of work per thread (so two threads do twice the work):

* token batch decode: ``TokenBatch.decode`` of 4,096-token batches (GIL held throughout);
* float32 -> bfloat16 of many 1 MiB arrays: ``quill._core.casts.cast`` (the kernel runs without
  the GIL on every build);
* client-side frame parsing: a ``TokenStreamDecoder`` fed a stream of 16-token batches in 64 KiB
  chunks, as a client's read loop feeds it.

"scaling" is two threads' throughput over one thread's: 2.0 is perfect on two cores. Each
interpreter named with ``--python`` runs the same measurement in a child process (each needs
quill built for it: ``python setup.py build_ext --inplace`` with that interpreter); the first is
the reference of the last column (each one-thread time over the first interpreter's).

    python benchmarks/bench_free_threading.py --python /opt/py313t/bin/python3.13t --python /opt/py313/bin/python3.13
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

WORKLOADS = ("token batch decode", "float32->bfloat16 1 MiB arrays", "token stream frame parsing")


def prepare(name):
    """A function doing one thread's share of ``name``, with its inputs made beforehand."""
    import numpy as np

    from quill._core.casts import cast
    from quill._core.frames import END_STREAM_FRAME, TokenStreamDecoder, encode_token_batch_frame
    from quill._core.tokens import Token, TokenBatch

    if name == WORKLOADS[0]:
        wire = TokenBatch.from_tokens([Token(i % 50000, i, f"tok{i % 97}", -0.5) for i in range(4096)]).encode()

        def work():
            for _ in range(2000):
                TokenBatch.decode(wire)
        return work
    if name == WORKLOADS[1]:
        arrays = [np.random.default_rng(i).standard_normal(1 << 18).astype(np.float32) for i in range(16)]

        def work():
            for _ in range(32):
                for array in arrays:
                    cast(array, "bfloat16")
        return work
    batches = [TokenBatch.from_tokens([Token(j, 16 * i + j, f" w{j}") for j in range(16)], sequence_id=1)
               for i in range(2000)]
    stream = b"".join(encode_token_batch_frame(b) for b in batches) + END_STREAM_FRAME
    chunks = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]

    def work():
        for _ in range(25):
            decoder = TokenStreamDecoder()
            for chunk in chunks:
                decoder.feed(chunk)
            decoder.finish()
    return work


def timed(threads, work, runs):
    """Median seconds for ``threads`` threads each running ``work`` once, started together."""
    times = []
    for _ in range(runs):
        barrier = threading.Barrier(threads + 1)

        def run():
            barrier.wait()
            work()

        pool = [threading.Thread(target=run) for _ in range(threads)]
        for thread in pool:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        for thread in pool:
            thread.join()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(runs):
    """{workload: [one-thread seconds, two-thread seconds]} in this interpreter."""
    results = {}
    for name in WORKLOADS:
        work = prepare(name)
        work()   # warm: allocator, caches, recycled cast buffers
        results[name] = [timed(1, work, runs), timed(2, work, runs)]
    return results


def describe():
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    build = "free-threaded" if "free-threading" in sys.version else "GIL build"
    return f"{sys.version.split()[0]} {build}, GIL {'on' if gil else 'off'}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", action="append", help="interpreter to measure (repeatable; default: this one)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"describe": describe(), "results": measure(args.runs)}))
        return
    measured = []
    for python in args.python or [sys.executable]:
        env = dict(os.environ)
        if "PYTHON_GIL" not in env:
            env["PYTHON_GIL"] = "0"   # a free-threaded build keeps the GIL off (ignored with the GIL)
        out = subprocess.run([python, __file__, "--child", "--runs", str(args.runs)], env=env,
                             capture_output=True, text=True, check=True).stdout
        measured.append(json.loads(out.strip().splitlines()[-1]))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load:.2f} after the run; medians of {args.runs}")
    print(f"{'workload':32} {'interpreter':36} {'1 thread s':>10} {'2 threads s':>11} {'scaling':>8} {'1 thread vs first':>18}")
    for name in WORKLOADS:
        reference = measured[0]["results"][name][0]
        for entry in measured:
            one, two = entry["results"][name]
            print(f"{name:32} {entry['describe']:36} {one:10.4f} {two:11.4f} {2 * one / two:7.2f}x "
                  f"{one / reference:17.2f}x")


if __name__ == "__main__":
    main()
