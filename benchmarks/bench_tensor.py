"""Tensor interop costs: quill.tensor against numpy doing the same job, in one run.

Run: python benchmarks/bench_tensor.py [--mib 256] [--repeats 7]

Each workload runs quill and its peer alternately in the same process and reports the median
of the repeats (microsecond-scale workloads are timed as loops of many calls, per call).
The zero-copy rows (from_numpy -> to_numpy, from_bytes, np.from_dlpack, protocol-5 pickling
with out-of-band buffers) must cost microseconds whatever the size; the copying rows
(tobytes, in-band pickling) are memory-bandwidth bound like numpy's.
"""

import argparse
import pickle
import statistics
import struct
import time

import numpy as np

from quill.tensor import Tensor, TensorMeta


def calls_for(function, budget=0.01):
    """How many back-to-back calls of ``function`` take about ``budget`` seconds (at least one)."""
    start = time.perf_counter()
    function()
    return max(1, min(100_000, int(budget / max(time.perf_counter() - start, 1e-7))))


def median_seconds(functions, repeats):
    """Median seconds per call of each function; microsecond-scale ones are timed in loops.
    The functions run alternately so that both see the same machine conditions."""
    calls = [calls_for(function) for function in functions]
    samples = [[] for _ in functions]
    for _ in range(repeats):
        for function, count, times in zip(functions, calls, samples):
            start = time.perf_counter()
            for _ in range(count):
                function()
            times.append((time.perf_counter() - start) / count)
    return [statistics.median(times) for times in samples]


def show(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    return f"{seconds * 1e3:.1f} ms"


def workloads(mib):
    """(workload, quill function, peer name, peer function) tuples."""
    a = np.arange(mib * (1 << 20) // 4, dtype=np.float32)
    raw = a.tobytes()
    t = Tensor.from_numpy(a, name="x")
    same = Tensor.from_numpy(a.copy(), name="x")
    a_copy = a.copy()
    meta = TensorMeta((4096, 4096), "float32", name="model.layers.0.mlp.up_proj.weight")
    meta_wire = meta.encode()
    name = meta.name.encode()
    meta_struct = struct.Struct(f"<B2QBBQH{len(name)}s")
    size = f"{mib} MiB float32"

    def oob_dumps(obj):
        buffers = []
        return pickle.dumps(obj, protocol=5, buffer_callback=buffers.append), buffers

    t_oob, a_oob = oob_dumps(t), oob_dumps(a)
    t_inband, a_inband = pickle.dumps(t, protocol=5), pickle.dumps(a, protocol=5)
    small = a[:1024].copy()
    return [
        ("from_numpy(a).to_numpy(), 4 KiB float32", lambda: Tensor.from_numpy(small).to_numpy(),
         "np.asarray(a)", lambda: np.asarray(small)),
        (f"from_numpy(a).to_numpy(), {size}", lambda: Tensor.from_numpy(a).to_numpy(),
         "np.asarray(a)", lambda: np.asarray(a)),
        (f"from_numpy(a).to_numpy(), {size}", lambda: Tensor.from_numpy(a).to_numpy(),
         "a.copy()", lambda: a.copy()),
        (f"from_bytes(bytes), {size}", lambda: Tensor.from_bytes(raw, a.shape, "float32"),
         "np.frombuffer(bytes)", lambda: np.frombuffer(raw, np.float32)),
        (f"np.from_dlpack(t), {size}", lambda: np.from_dlpack(t),
         "np.from_dlpack(a)", lambda: np.from_dlpack(a)),
        (f"tobytes(), {size}", t.tobytes, "a.tobytes()", a.tobytes),
        (f"equality, {size}", lambda: t == same, "np.array_equal", lambda: np.array_equal(a, a_copy)),
        (f"pickle.dumps protocol 5 out-of-band, {size}", lambda: oob_dumps(t),
         "same for ndarray", lambda: oob_dumps(a)),
        (f"pickle.loads protocol 5 out-of-band, {size}", lambda: pickle.loads(t_oob[0], buffers=t_oob[1]),
         "same for ndarray", lambda: pickle.loads(a_oob[0], buffers=a_oob[1])),
        (f"pickle.dumps protocol 5 in-band, {size}", lambda: pickle.dumps(t, protocol=5),
         "same for ndarray", lambda: pickle.dumps(a, protocol=5)),
        (f"pickle.loads protocol 5 in-band, {size}", lambda: pickle.loads(t_inband),
         "same for ndarray", lambda: pickle.loads(a_inband)),
        ("TensorMeta.encode (2-d, 33-byte name)", meta.encode,
         "struct.pack", lambda: meta_struct.pack(2, 4096, 4096, 1, 0, 1 << 26, len(name), name)),
        ("TensorMeta.decode (2-d, 33-byte name)", lambda: TensorMeta.decode(meta_wire),
         "struct.unpack", lambda: meta_struct.unpack(meta_wire)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print("| workload | quill | peer | peer time | quill time / peer time |")
    print("| --- | ---: | --- | ---: | ---: |")
    for workload, quill_fn, peer_name, peer_fn in workloads(args.mib):
        quill_s, peer_s = median_seconds([quill_fn, peer_fn], args.repeats)
        print(f"| {workload} | {show(quill_s)} | {peer_name} | {show(peer_s)} | {quill_s / peer_s:.3g} |")


if __name__ == "__main__":
    main()
