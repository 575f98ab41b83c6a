"""float16 / bfloat16 conversion throughput: quill.cast against ml_dtypes and numpy.

Run: python benchmarks/bench_casts.py [--mib 64] [--repeats 15]

Every workload converts the same 64 MiB of float32 (or the same number of
elements in the other type) and reports GB/s counting bytes read plus bytes
written. quill and its peer run alternately, in the same process, and the
median of the repeats is reported.

"into out" writes a preallocated array (quill: out=, peers: np.copyto with
casting="unsafe", which runs the same cast loop as astype). "allocating"
returns a new array and drops it before the next call: quill then reuses the
memory of the dropped result (see quill/_core/casts.pyx), numpy maps fresh pages
that the operating system must fault in and zero. "allocating, results kept" holds on
to every result, so nobody can reuse memory: the page-fault cost is paid on
both sides.
"""

import argparse
import statistics
import time

import ml_dtypes
import numpy as np

from quill._core.casts import _available_paths, _cast_using, cast

BF16 = np.dtype(ml_dtypes.bfloat16)


def median_seconds(functions, repeats):
    """Median wall time of each function, running them alternately."""
    times = [[] for _ in functions]
    for _ in range(repeats):
        for function, samples in zip(functions, times):
            start = time.perf_counter()
            function()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def gbps(nbytes, seconds):
    return nbytes / seconds / 1e9


KEPT = []
KEEPING = set()


def keeping(function):
    """function, but its results stay alive until the workload is done (no memory reuse)."""
    def kept():
        KEPT.append(function())

    KEEPING.add(kept)
    return kept


def workloads(x):
    """(name, bytes moved, quill function, peer name, peer function) for each workload."""
    n = x.size
    x64 = x.astype(np.float64)
    bf = x.astype(BF16)
    half = x.astype(np.float16)
    # separate outputs for quill and the peer: each side writes into its own buffer, as a
    # program converting repeatedly into one preallocated array would
    out16, peer_out16 = np.empty(n, np.uint16), np.empty(n, np.uint16)
    out32, peer_out32 = np.empty(n, np.float32), np.empty(n, np.float32)
    moved_narrow = x.nbytes + out16.nbytes
    moved_narrow64 = x64.nbytes + out16.nbytes
    return [
        ("float32 -> bfloat16, allocating", moved_narrow,
         lambda: cast(x, "bfloat16"), "ml_dtypes astype", lambda: x.astype(BF16)),
        ("float32 -> bfloat16, into out", moved_narrow,
         lambda: cast(x, "bfloat16", out=out16.view(BF16)), "ml_dtypes np.copyto",
         lambda: np.copyto(peer_out16.view(BF16), x, casting="unsafe")),
        ("bfloat16 -> float32, allocating", moved_narrow,
         lambda: cast(bf, "float32"), "ml_dtypes astype", lambda: bf.astype(np.float32)),
        ("bfloat16 -> float32, into out", moved_narrow,
         lambda: cast(bf, "float32", out=out32), "ml_dtypes np.copyto",
         lambda: np.copyto(peer_out32, bf, casting="unsafe")),
        ("float32 -> float16, allocating", moved_narrow,
         lambda: cast(x, "float16"), "numpy astype", lambda: x.astype(np.float16)),
        ("float32 -> float16, into out", moved_narrow,
         lambda: cast(x, "float16", out=out16.view(np.float16)), "numpy np.copyto",
         lambda: np.copyto(peer_out16.view(np.float16), x, casting="unsafe")),
        ("float16 -> float32, allocating", moved_narrow,
         lambda: cast(half, "float32"), "numpy astype", lambda: half.astype(np.float32)),
        ("float16 -> float32, into out", moved_narrow,
         lambda: cast(half, "float32", out=out32), "numpy np.copyto",
         lambda: np.copyto(peer_out32, half, casting="unsafe")),
        ("float32 -> bfloat16, allocating, results kept", moved_narrow,
         keeping(lambda: cast(x, "bfloat16")), "ml_dtypes astype", keeping(lambda: x.astype(BF16))),
        ("bfloat16 -> float32, allocating, results kept", moved_narrow,
         keeping(lambda: cast(bf, "float32")), "ml_dtypes astype",
         keeping(lambda: bf.astype(np.float32))),
        ("float32 -> float16, allocating, results kept", moved_narrow,
         keeping(lambda: cast(x, "float16")), "numpy astype",
         keeping(lambda: x.astype(np.float16))),
        ("float16 -> float32, allocating, results kept", moved_narrow,
         keeping(lambda: cast(half, "float32")), "numpy astype",
         keeping(lambda: half.astype(np.float32))),
        ("float64 -> bfloat16 (rounded once), allocating", moved_narrow64,
         lambda: cast(x64, "bfloat16"), "ml_dtypes astype (twice)", lambda: x64.astype(BF16)),
        ("float64 -> float16, allocating", moved_narrow64,
         lambda: cast(x64, "float16"), "numpy astype", lambda: x64.astype(np.float16)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="float32 input size in MiB")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    n = args.mib * (1 << 20) // 4
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    print(f"{args.mib} MiB of float32 ({n:,} elements); GB/s = (bytes read + bytes written) / "
          f"median time of {args.repeats} runs; kernel paths here: {', '.join(_available_paths())}\n")

    print("| workload | quill GB/s | peer | peer GB/s | quill / peer |")
    print("|---|---:|---|---:|---:|")
    for name, moved, ours, peer_name, peer in workloads(x):
        if ours in KEEPING:
            # An untimed rehearsal first: in a VM, memory the process has not used yet (or
            # handed back) also faults on the host, which would otherwise land in one row.
            median_seconds([ours, peer], args.repeats)
            KEPT.clear()
        ours_s, peer_s = median_seconds([ours, peer], args.repeats)
        KEPT.clear()
        print(f"| {name} | {gbps(moved, ours_s):.1f} | {peer_name} | {gbps(moved, peer_s):.1f} "
              f"| {peer_s / ours_s:.2f}x |")

    # memory-bandwidth reference: np.copyto of as many bytes as float32 <-> half moves
    moved = x.nbytes + x.nbytes // 2
    source = x.view(np.uint8)[: moved // 2]
    target = np.empty_like(source)
    copy_s, fresh_s = median_seconds([lambda: np.copyto(target, source), source.copy], args.repeats)
    print(f"| np.copyto of {moved // 2 >> 20} MiB (bandwidth reference), into out | "
          f"{gbps(moved, copy_s):.1f} | | | |")
    print(f"| ndarray.copy of {moved // 2 >> 20} MiB (bandwidth reference), allocating | "
          f"{gbps(moved, fresh_s):.1f} | | | |")

    # page faults: the cost of a fresh output array, measured alone
    out_bytes = x.nbytes // 2
    fault_s, touch_s = median_seconds(
        [lambda: np.empty(out_bytes, np.uint8).fill(1), lambda: target.fill(1)], args.repeats)
    print(f"\nfresh {out_bytes >> 20} MiB output: np.empty + fill {fault_s * 1e3:.2f} ms, "
          f"fill of an existing array {touch_s * 1e3:.2f} ms -> page faults and OS zeroing "
          f"cost {(fault_s - touch_s) * 1e3:.2f} ms per allocating call that cannot reuse memory")

    print("\n| float32 -> bfloat16 / float16 / bfloat16 -> float32, into out, per kernel path "
          "| bf16 GB/s | f16 GB/s | bf16 -> f32 GB/s |")
    print("|---|---:|---:|---:|")
    bf = x.astype(BF16)
    out16, out32 = np.empty(n, np.uint16), np.empty(n, np.float32)
    for path in _available_paths():
        seconds = median_seconds([
            lambda: _cast_using(path, x, "bfloat16", out=out16),
            lambda: _cast_using(path, x, "float16", out=out16),
            lambda: _cast_using(path, bf, "float32", out=out32),
        ], args.repeats)
        moved = x.nbytes + out16.nbytes
        print(f"| {path} | " + " | ".join(f"{gbps(moved, s):.1f}" for s in seconds) + " |")


if __name__ == "__main__":
    main()
