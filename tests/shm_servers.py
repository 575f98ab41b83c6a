"""The app the shared-memory tests serve, and a server of it on a Unix socket (not collected).

``python tests/shm_servers.py PATH`` serves it in the foreground (the fault tests kill that
process); :func:`shm_server` runs it in a thread of the test process.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from typing import Iterator

import numpy as np

from quill.errors import ProblemDetails
from quill.server import QuillApp, serve, serve_in_thread, unix_url
from quill.tensor import Tensor

SVC = "shm.v1.Tensors"


def make_app() -> QuillApp:
    app = QuillApp(max_request_bytes=None)

    @app.tensor(f"{SVC}/Echo")
    def echo(tensor, context):
        return tensor

    @app.tensor(f"{SVC}/Double")
    def double(tensor, context):
        return Tensor.from_numpy(tensor.to_numpy() * 2, name=tensor.name)

    @app.tensor(f"{SVC}/Tail")
    def tail(tensor, context):  # a view of the request: answered where it already is
        return Tensor.from_numpy(tensor.to_numpy()[1:])

    @app.tensor(f"{SVC}/Grow")
    def grow(tensor, context):  # an answer larger than the request
        return Tensor.from_numpy(np.concatenate([tensor.to_numpy()] * 3))

    @app.tensor(f"{SVC}/Sum")
    def total(tensor, context):
        return str(float(tensor.to_numpy().astype(np.float64).sum())).encode()

    @app.tensor(f"{SVC}/Refuse")
    def refuse(tensor, context):
        return ProblemDetails(status=422, title="Refused", detail=f"{tensor.size_bytes} bytes")

    @app.tensor(f"{SVC}/Slow")
    def slow(tensor, context):  # reads every page of its request, then waits
        checksum = int(np.frombuffer(tensor.data, np.uint8)[::4096].sum())
        time.sleep(float(context.headers.get("x-sleep", "1")))
        return Tensor.from_numpy(np.array([checksum], dtype=np.int64)) if context.headers.get("x-sum") else tensor

    return app


@contextlib.contextmanager
def shm_server(**options) -> Iterator[str]:
    """The app on a fresh Unix socket; yields the client URL."""
    with tempfile.TemporaryDirectory() as folder:
        with serve_in_thread(make_app(), uds=os.path.join(folder, "q.sock"), **options) as path:
            yield unix_url(path)


if __name__ == "__main__":
    serve(make_app(), uds=sys.argv[1], log_level="warning",
          on_listening=lambda url: print(url, file=sys.stderr, flush=True))
