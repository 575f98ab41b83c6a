"""Client benchmarks: quill's QuillClient and raw urllib3 against the same server, side by side.

The server must serve :data:`BENCH_SERVICE` (``app`` below, e.g. ``quill serve quill.cli.bench_service:app``):
``Echo`` (unary echo), ``Stream`` (a server stream of COUNT messages of SIZE bytes, request
``b"COUNT,SIZE"``) and ``Tensor`` (a uint8 tensor of N bytes, request ``b"N"``).

>>> rows = run_benchmarks("http://127.0.0.1:8080", workloads=["unary_100B"])  # doctest: +SKIP
>>> print(format_table(rows))                                                  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable

import urllib3

from ..client import QuillClient

BENCH_SERVICE = "bench.v1.BenchService"
MIB = 1 << 20
_HEADERS = {"Content-Type": "application/proto", "Accept": "application/proto", "Prefer": "prism=classic"}


class Workload:
    """One measured job: ``kind`` is "unary", "stream" or "tensor"; ``size`` the payload bytes,
    ``count`` the calls per run (unary) or messages per stream (stream)."""

    def __init__(self, name: str, kind: str, size: int, count: int, label: str):
        self.name, self.kind, self.size, self.count, self.label = name, kind, size, count, label

    @property
    def request(self) -> bytes:
        if self.kind == "unary":
            return b"x" * self.size
        if self.kind == "stream":
            return b"%d,%d" % (self.count, self.size)
        return b"%d" % self.size


WORKLOADS = {
    w.name: w
    for w in (
        Workload("unary_100B", "unary", 100, 2000, "unary 100 B"),
        Workload("unary_1MiB", "unary", MIB, 150, "unary 1 MiB"),
        Workload("stream_256MiB", "stream", MIB, 256, "message stream 256 x 1 MiB"),
        Workload("tensor_256MiB", "tensor", 256 * MIB, 1, "tensor 256 MiB"),
    )
}


def _create_app():
    import numpy as np

    from ..server import QuillApp
    from ..tensor import Tensor

    app = QuillApp()
    payloads: dict[int, bytes] = {}
    tensors: dict[int, Tensor] = {}

    @app.unary(f"{BENCH_SERVICE}/Echo")
    def echo(request: bytes, context) -> bytes:
        return request

    @app.server_stream(f"{BENCH_SERVICE}/Stream")
    def stream(request: bytes, context):
        count, size = (int(x) for x in request.split(b","))
        payload = payloads.setdefault(size, bytes(size))
        for _ in range(count):
            yield payload

    @app.tensor(f"{BENCH_SERVICE}/Tensor")
    def tensor(request: bytes, context) -> Tensor:
        size = int(request)
        if size not in tensors:
            tensors[size] = Tensor.from_numpy(np.zeros(size, dtype=np.uint8), name="bench")
        return tensors[size]

    return app


#: The benchmark service, a plain module attribute so that any ASGI server finds it
#: (``hypercorn quill.cli.bench_service:app`` looks it up with eval; a lazy module ``__getattr__`` hid it).
app = _create_app()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(label: str, client: str, server: str, run: Callable[[], list[float]], volume: int | None,
            repeats: int) -> dict:
    """Run ``run`` (returns per-operation seconds) ``repeats`` times; the median run gives the rate.

    ``volume`` is bytes per operation for throughput rows (MB/s), None for calls/s rows.
    """
    runs = [run() for _ in range(repeats)]
    totals = [sum(r) for r in runs]
    median_run = runs[totals.index(statistics.median_low(totals))]
    latencies = [t for r in runs for t in r]
    ops = len(median_run) / sum(median_run)
    return {
        "workload": label,
        "server": server,
        "client": client,
        "unit": "MB/s" if volume else "calls/s",
        "rate": ops * volume / 1e6 if volume else ops,
        "p50_ms": _percentile(latencies, 0.50) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
    }


def _timed(count: int, op: Callable[[], object]) -> list[float]:
    out = []
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        op()
        out.append(clock() - start)
    return out


def quill_runner(base_url: str, workload: Workload, reuse_out: bool = False,
                 tls: dict | None = None) -> Callable[[], list[float]]:
    """A run of ``workload`` with QuillClient (checks every answer's size); ``reuse_out`` receives
    tensors into one preallocated buffer (``call_tensor(..., out=)``) instead of fresh memory;
    ``tls``: the client's TLS keyword arguments (verify, ca_file, client_cert, client_key)."""
    client = QuillClient(base_url, timeout_ms=120_000, **(tls or {}))
    request = workload.request
    if workload.kind == "unary":
        def unary_op():
            assert len(client.call(BENCH_SERVICE, "Echo", request)) == workload.size
        return lambda: _timed(workload.count, unary_op)
    if workload.kind == "stream":
        def stream_op():
            n = 0
            for message in client.call_stream(BENCH_SERVICE, "Stream", request):
                n += len(message)
            assert n == workload.count * workload.size
        return lambda: _timed(3, stream_op)

    out = bytearray(workload.size) if reuse_out else None

    def tensor_op():
        assert client.call_tensor(BENCH_SERVICE, "Tensor", request, out=out).size_bytes == workload.size
    return lambda: _timed(3, tensor_op)


def urllib3_runner(base_url: str, workload: Workload, tls: dict | None = None) -> Callable[[], list[float]]:
    """The same run with raw urllib3 (HTTPConnectionPool.urlopen; streams read chunk by chunk,
    unparsed); ``tls`` as for :func:`quill_runner`."""
    pool = urllib3.connection_from_url(base_url, maxsize=1, timeout=120, **_urllib3_tls(tls or {}))
    prefix = urllib3.util.parse_url(base_url).path or ""
    request = workload.request
    if workload.kind == "unary":
        path = f"{prefix.rstrip('/')}/{BENCH_SERVICE}/Echo"

        def op():
            assert len(pool.urlopen("POST", path, body=request, headers=_HEADERS).data) == workload.size
        return lambda: _timed(workload.count, op)
    path = f"{prefix.rstrip('/')}/{BENCH_SERVICE}/{'Stream' if workload.kind == 'stream' else 'Tensor'}"

    def stream_op():
        response = pool.urlopen("POST", path, body=request, headers=_HEADERS, preload_content=False)
        n = 0
        for chunk in response.stream(MIB):
            n += len(chunk)
        response.release_conn()
        assert n >= workload.size
    return lambda: _timed(3, stream_op)


def _urllib3_tls(tls: dict) -> dict:
    """The urllib3 pool arguments of the clients' TLS keyword arguments."""
    if not tls:
        return {}
    verify = tls.get("verify", True)
    return {"cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE", "assert_hostname": None if verify else False,
            "ca_certs": tls.get("ca_file"), "cert_file": tls.get("client_cert"), "key_file": tls.get("client_key")}


def run_benchmarks(
    base_url: str,
    workloads: Iterable[str] | None = None,
    *,
    repeats: int = 3,
    server: str = "quill (uvicorn)",
    progress: Callable[[str], None] | None = None,
    tls: dict | None = None,
) -> list[dict]:
    """Measure quill and raw urllib3 on each workload against the server at ``base_url``
    (``tls``: the clients' TLS keyword arguments, verify, ca_file, client_cert, client_key).

    Returns rows (dicts: workload, server, client, unit, rate, p50_ms, p99_ms); see :func:`format_table`.

    >>> rows = run_benchmarks(url, ["unary_100B"], progress=print)  # doctest: +SKIP
    """
    rows = []
    for name in workloads or WORKLOADS:
        workload = WORKLOADS[name]
        volume = None if workload.kind == "unary" else workload.size * (workload.count if workload.kind == "stream" else 1)
        runners = [("quill", quill_runner), ("urllib3", urllib3_runner)]
        if workload.kind == "tensor":
            runners.append(("quill, out= reused", lambda url, w, tls: quill_runner(url, w, reuse_out=True, tls=tls)))
        for client, make in runners:
            if progress:
                progress(f"{workload.label}: {client} against {server}")
            run = make(base_url, workload, tls=tls)
            run()  # warm-up: connections, caches, server-side payloads
            rows.append(measure(workload.label, client, server, run, volume, repeats))
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table; ``quill / this`` is quill's rate divided by that row's client's rate, and
    ``this / urllib3`` the row's rate divided by raw urllib3's against the same server."""
    quill_rate = {(r["workload"], r["server"]): r["rate"] for r in rows if r["client"] == "quill"}
    urllib3_rate = {(r["workload"], r["server"]): r["rate"] for r in rows if r["client"] == "urllib3"}
    lines = [
        "| workload | server | client | rate | p50 ms | p99 ms | quill / this | this / urllib3 |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        key = (r["workload"], r["server"])
        mine = quill_rate.get(key)
        if mine is None:  # a peer measured on its own server (grpcio): compare with quill on any server
            mine = max((v for (w, _), v in quill_rate.items() if w == r["workload"]), default=None)
        ratio = f"{mine / r['rate']:.2f}x" if mine else "-"
        raw = urllib3_rate.get(key)
        share = f"{r['rate'] / raw:.2f}x" if raw else "-"
        lines.append(
            f"| {r['workload']} | {r['server']} | {r['client']} | {r['rate']:,.0f} {r['unit']} | "
            f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {ratio} | {share} |"
        )
    return "\n".join(lines)


def start_server(port: int = 0) -> tuple[subprocess.Popen, str]:
    """``quill serve quill.cli.bench_service:app`` in a subprocess (its own core, not this GIL); returns (process, url)."""
    import socket

    if not port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "quill", "serve", "quill.cli.bench_service:app", "--port", str(port), "--log-level", "warning"],
    )
    url = f"http://127.0.0.1:{port}"
    probe_client = QuillClient(url, timeout_ms=1000)
    deadline = time.monotonic() + 30
    while not probe_client.health_check():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.1)
    return proc, url


__all__ = ["BENCH_SERVICE", "WORKLOADS", "Workload", "run_benchmarks", "format_table", "measure",
           "start_server", "quill_runner", "urllib3_runner"]
