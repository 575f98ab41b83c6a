"""Peak memory of a large tensor sent to the reference server and echoed back (not collected by pytest).

The client runs in its own process (peak RSS from ``resource.getrusage``), the server is
``quill serve`` (peak RSS from VmHWM in /proc). Used by tests/test_memory.py with a size that
fits CI; the 2 GiB figure is measured once by hand:

    python tests/tensor_memory.py --gib 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_process import SERVICE, quill_serve  # noqa: E402

CLIENT = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from quill.client import QuillClient
    from quill.tensor import Tensor
    url, size = sys.argv[1], int(sys.argv[2])
    array = np.arange(size // 4, dtype=np.int32)  # every page written: really resident
    tensor = Tensor.from_numpy(array, name="big")
    client = QuillClient(url, timeout_ms=600_000, max_tensor_bytes=size + (1 << 20))
    started = time.perf_counter()
    result = client.call_tensor({service!r}, "Echo", tensor)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the check's temporaries
    assert result.shape == tensor.shape and result.name == "big" and result.dtype == tensor.dtype
    assert np.array_equal(result.to_numpy(), array)
    print(json.dumps({{"client_peak": peak, "seconds": seconds}}))
""").format(service=SERVICE)


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def measure(size: int) -> dict:
    """Echo a ``size``-byte tensor through ``quill serve``: peak RSS of client and server, seconds."""
    with quill_serve("--max-request-mb", str(size / (1 << 20) + 1)) as server:
        server_before = peak_rss(server.process.pid)
        out = subprocess.run([sys.executable, "-c", CLIENT, server.url, str(size)],
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        figures["server_peak"] = peak_rss(server.process.pid)
        figures["server_peak_before"] = server_before
    figures["size"] = size
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="tensor size in GiB (default 2)")
    size = int(parser.parse_args().gib * (1 << 30)) // 4 * 4
    f = measure(size)
    gib = 1 << 30
    print("| tensor | client peak RSS | client / tensor | server peak RSS | server / tensor | round trip |")
    print("|---|---|---|---|---|---|")
    print(f"| {size / gib:.2f} GiB | {f['client_peak'] / gib:.2f} GiB | {f['client_peak'] / size:.2f}x "
          f"| {f['server_peak'] / gib:.2f} GiB | {f['server_peak'] / size:.2f}x | {f['seconds']:.1f} s |")


if __name__ == "__main__":
    main()
