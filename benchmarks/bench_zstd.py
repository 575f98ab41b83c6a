"""zstd implementations side by side: the one quill picks (quill/protocol/compression.py) and
every other one importable here, on the bodies quill compresses.

``compression.zstd`` (CPython 3.14+), ``backports.zstd`` (what urllib3's zstd extra installs
below 3.14; cp313t/cp314t wheels) and ``zstandard`` (no free-threaded wheels) at quill's level
(ZSTD_LEVEL), each body compressed and decompressed in one call; medians of ``--runs``.

    python benchmarks/bench_zstd.py [--mib 4] [--runs 9]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time

import numpy as np

from quill.protocol import compression
from quill.protocol.constants import ZSTD_LEVEL


def implementations():
    """name -> (compress(data), decompress(data)) for every zstd module importable here."""
    found = {}
    for name in ("compression.zstd", "backports.zstd"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found[name] = (lambda d, m=module: m.compress(d, level=ZSTD_LEVEL), module.decompress)
    try:
        import zstandard
    except ImportError:
        pass
    else:
        compressor, decompressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL), zstandard.ZstdDecompressor()
        found["zstandard"] = (compressor.compress, decompressor.decompress)
    return found


def bodies(mib):
    rng = np.random.default_rng(0)
    n = mib << 20
    embeddings = rng.standard_normal(n // 4).astype(np.float32).tobytes()       # barely compressible
    tokens = rng.integers(0, 32000, n // 4, dtype=np.uint32).tobytes()          # 15 of 32 bits used
    rows = [{"id": i, "text": f"token {i % 977}", "logprob": -0.01 * (i % 300)} for i in range(n // 48)]
    return {"float32 embeddings": embeddings, "uint32 token ids": tokens, "JSON rows": json.dumps(rows).encode()[:n]}


def median_seconds(function, data, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function(data)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=4)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    found = implementations()
    chosen = compression.IMPLEMENTATION
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"Python {sys.version.split()[0]} (GIL {'on' if gil else 'off'}); quill uses {chosen}; "
          f"level {ZSTD_LEVEL}; {args.mib} MiB bodies, median of {args.runs}")
    print(f"{'body':20} {'implementation':18} {'ratio':>6} {'compress MB/s':>14} {'decompress MB/s':>16} {'vs quill':>9}")
    for body_name, data in bodies(args.mib).items():
        reference = None
        rows = []
        for name, (compress, decompress) in found.items():
            packed = compress(data)
            assert decompress(packed) == data
            c = median_seconds(compress, data, args.runs)
            d = median_seconds(decompress, packed, args.runs)
            rows.append((name, len(data) / len(packed), len(data) / c / 1e6, len(data) / d / 1e6, c + d))
            if name == chosen:
                reference = c + d
        for name, ratio, c_speed, d_speed, total in rows:
            versus = f"{reference / total:8.2f}x" if reference else "        -"
            print(f"{body_name:20} {name:18} {ratio:6.2f} {c_speed:14.0f} {d_speed:16.0f} {versus}")


if __name__ == "__main__":
    main()
