"""Beyond one process: quill objects pickled into another process (large tensors out of band with
protocol 5), and a Dask LocalCluster of process workers mapping prompts through the reference
server, each worker reusing one client across its tasks."""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys

import dask.bag
import numpy as np
import pytest
from dask import distributed

sys.path.insert(0, os.path.dirname(__file__))
import distributed_work  # noqa: E402
from distributed_work import SERVICE, generate_and_embed, recv_pickled, send_pickled  # noqa: E402
from serve_process import established_connections, quill_serve  # noqa: E402

from quill._core.tokens import Token, TokenBatch  # noqa: E402
from quill.client import QuillClient  # noqa: E402
from quill.demo import embed_texts  # noqa: E402
from quill.dtypes import DType  # noqa: E402
from quill.tensor import Tensor, TensorMeta  # noqa: E402

BIG = 64 << 20


def test_quill_objects_pickle_into_another_process_with_large_tensors_out_of_band(demo_server_url):
    array = np.arange(BIG // 4, dtype=np.int32).reshape(-1, 1024)
    batch = TokenBatch(sequence_id=11)
    batch.add(Token.with_text(42, "héllo", 0, logprob=-1.5))
    batch.add(Token(7, 1, text=None, is_special=True))
    batch.is_final = True
    client = QuillClient(demo_server_url, timeout_ms=10_000, enable_compression=True)
    client.set_bearer_token("shipped")
    objects = {
        "tensor": Tensor.from_numpy(array, name="weights"),
        "meta": TensorMeta([3, 4], "bfloat16", name="m"),
        "token": Token.with_text(99, "x", 5, logprob=-0.1),
        "batch": batch,
        "dtype": DType.bfloat16(),
        "client": client,
    }
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=distributed_work.unpickle_check_and_return, args=(child,))
    process.start()
    try:
        in_band = send_pickled(parent, objects)
        assert in_band < 4096  # the 64 MiB went as an out-of-band buffer, not inside the pickle
        back = recv_pickled(parent)
    finally:
        process.join(30)
    assert process.exitcode == 0
    report = back["report"]
    assert report["pid"] != os.getpid()
    assert report["tensor checksum"] == int(array.astype(np.int64).sum())
    assert report["tensor memory is the received buffer"]  # unpickled without a copy
    assert report["dtype is the registry's"]
    assert report["client headers"] == {"Authorization": "Bearer shipped"}
    assert report["echo"] == b"from the child"  # the unpickled client works there
    returned = back["objects"]
    for name in ("tensor", "meta", "token", "batch"):
        assert returned[name] == objects[name], name
    assert returned["dtype"] is DType.bfloat16()
    assert returned["client"].compression_enabled and returned["client"].base_url == client.base_url


PROMPTS = [f"prompt number {i} about {topic}" for i, topic in
           enumerate(["rivers", "owls", "tea", "engines", "maps", "salt", "glass", "bees"] * 5)]


@pytest.fixture(scope="module")
def served():
    with quill_serve() as server:
        yield server


def test_a_dask_bag_of_prompts_through_the_reference_server_on_process_workers(served):
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as dask_client:
        results = (dask.bag.from_sequence(PROMPTS, npartitions=8)
                   .map(generate_and_embed, base_url=served.url)
                   .compute())
        port = int(served.url.rsplit(":", 1)[1])
        server_connections = established_connections(served.process.pid, port)
        worker_pids = set(dask_client.run(os.getpid).values())

    assert [r["prompt"] for r in results] == PROMPTS
    direct = QuillClient(served.url)
    for r in results:
        # Each result equals what this process gets for the same prompt from the same server,
        # and the embedding equals the demo model computed here with numpy.
        expected = list(direct.stream_tokens(SERVICE, "Generate", {"prompt": r["prompt"], "max_tokens": 12,
                                                                    "batch_size": 4}))
        assert r["batches"] == expected and sum(len(b) for b in r["batches"]) == 12
        assert r["batches"][-1].is_final and all(isinstance(b, TokenBatch) for b in r["batches"])
        assert isinstance(r["embedding"], Tensor) and r["embedding"].shape == [1, 64]
        np.testing.assert_array_equal(r["embedding"].to_numpy(), embed_texts([r["prompt"].encode()], 64))
    # Connection reuse: one client per worker process, each opened one connection for all its tasks.
    workers = {r["worker"] for r in results}
    assert {pid for pid, _ in workers} <= worker_pids and len(workers) == len({pid for pid, _ in workers}) == 2
    assert {r["connections opened"] for r in results} == {1}
    assert server_connections == 2  # the server sees one kept-alive connection per worker
    print(f"\ndask: {len(results)} prompts on {len(workers)} workers; server connections "
          f"{server_connections}; one pooled connection per worker")


def test_the_dask_example_in_the_docs_runs(served, tmp_path):
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "dask.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    example = tmp_path / "dask_example.py"
    example.write_text(next(block for block in blocks if "WorkerPlugin" in block))   # the cluster example
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**os.environ, "QUILL_URL": served.url})
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.fullmatch(r"1000 prompts; '.+' \[1, 256\]\n", out.stdout), out.stdout
