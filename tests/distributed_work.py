"""Functions that run in other processes for test_distributed.py: a spawned child that unpickles quill
objects, and the per-prompt task a Dask worker runs (not collected by pytest; importable by the
children because spawned processes get the parent's sys.path)."""

from __future__ import annotations

import functools
import os
import pickle

SERVICE = "inference.v1.LLMService"


def unpickle_check_and_return(conn) -> None:
    """Spawned child: receive a protocol-5 pickle and its out-of-band buffers, use what arrived
    (a checksum of the tensor, one call with the client), then send everything back the same way."""
    import numpy as np

    payload = conn.recv_bytes()
    buffers = [conn.recv_bytes() for _ in range(conn.recv())]
    objects = pickle.loads(payload, buffers=buffers)
    tensor, client = objects["tensor"], objects["client"]
    report = {
        "pid": os.getpid(),
        "tensor checksum": int(tensor.to_numpy().astype(np.int64).sum()),
        "tensor memory is the received buffer": np.shares_memory(tensor.to_numpy(), np.frombuffer(buffers[0], np.uint8)),
        "dtype is the registry's": objects["dtype"] is type(objects["dtype"]).from_name(objects["dtype"].name),
        "client headers": client.get_headers(),
        "echo": client.call(SERVICE, "Echo", b"from the child"),
    }
    send_pickled(conn, {"objects": objects, "report": report})


def send_pickled(conn, obj) -> int:
    """Send ``obj`` as a protocol-5 pickle with its large buffers out of band; returns the in-band size."""
    buffers = []
    payload = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    conn.send_bytes(payload)
    conn.send(len(buffers))
    for buffer in buffers:
        conn.send_bytes(buffer.raw())  # a view of the object's memory: no copy before the pipe
    return len(payload)


def recv_pickled(conn):
    payload = conn.recv_bytes()
    return pickle.loads(payload, buffers=[conn.recv_bytes() for _ in range(conn.recv())])


# ---------------------------------------------------------------- the Dask task

@functools.lru_cache(maxsize=None)
def quill_client(base_url: str):
    """One QuillClient per worker process and server, kept for every task that process runs."""
    from quill.client import QuillClient

    return QuillClient(base_url, timeout_ms=30_000)


def generate_and_embed(prompt: str, base_url: str, max_tokens: int = 12, dim: int = 64) -> dict:
    """What a batch-inference task does with one prompt: its tokens and its embedding."""
    client = quill_client(base_url)
    batches = list(client.stream_tokens(SERVICE, "Generate", {"prompt": prompt, "max_tokens": max_tokens,
                                                               "batch_size": 4}))
    embedding = client.call_tensor(SERVICE, "Embed", {"input": [prompt], "dim": dim})
    return {
        "prompt": prompt,
        "batches": batches,
        "embedding": embedding,
        "worker": (os.getpid(), id(client)),
        "connections opened": client._transport.pool.num_connections,
    }
