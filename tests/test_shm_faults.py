"""Faults around shared-memory calls: a client killed mid-call leaves the server with its
descriptors, memory and ``/dev/shm`` as before; a server killed mid-call gives the client a
connection error and a restarted server serves it again (through shared memory); a 64 MiB
``/dev/shm`` does not limit a 256 MiB tensor (memfds are not in it)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from serve_process import open_fds, rss_bytes  # noqa: E402
from shm_servers import SVC, shm_server  # noqa: E402
from waiting import wait_until  # noqa: E402

from quill.client import QuillClient  # noqa: E402
from quill.errors import QuillConnectionError  # noqa: E402
from quill.server import unix_url  # noqa: E402
from quill.tensor import Tensor  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="shared memory is Linux only")
MIB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
# the tests' helpers (shm_servers.py) importable; quill comes from where this interpreter has it
# (CI runs these tests from the sdist's tree against an installed wheel, so never the tree's quill/)
# `python -c` children run in this folder (their sys.path starts with the working directory)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))}


def test_a_client_killed_mid_call_leaves_nothing_behind():
    with shm_server() as url:
        a = np.ones(MIB // 4, dtype=np.float32)
        with QuillClient(url) as warm:  # the server's lazily made state (threads, pools) exists already
            warm.call_tensor(SVC, "Slow", Tensor.from_numpy(a), headers={"x-sleep": "0"})
        time.sleep(0.2)
        fds, rss, shm = open_fds(), rss_bytes(), sorted(os.listdir("/dev/shm"))
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import numpy as np
            from quill.client import QuillClient
            from quill.tensor import Tensor
            client = QuillClient({url!r}, shared_memory=True)
            client.call_tensor({SVC!r}, "Slow", Tensor.from_numpy(np.ones(64 << 20, np.uint8)),
                               headers={{"x-sleep": "1.5"}})
            """)], env=ENV, cwd=HERE)
        try:
            assert wait_until(lambda: open_fds() >= fds + 3, 20)  # channel, arenas, HTTP connection
            assert wait_until(lambda: rss_bytes() > rss + 8 * MIB, 10)  # the handler read the tensor
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait()
        assert wait_until(lambda: open_fds() <= fds, 10), (open_fds(), fds)
        assert wait_until(lambda: rss_bytes() < rss + 8 * MIB, 10), (rss_bytes() - rss)
        assert sorted(os.listdir("/dev/shm")) == shm
        with QuillClient(url, shared_memory=True) as client:
            assert client.call_tensor(SVC, "Double", Tensor.from_numpy(a)).to_numpy()[0] == 2


def start_server(path: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, os.path.join(HERE, "shm_servers.py"), path], env=ENV,
                               stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    assert "http+unix://" in line, line
    return process


def test_a_server_killed_mid_call_gives_a_connection_error_and_a_restart_serves_again():
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "q.sock")
    a = np.arange(MIB, dtype=np.float32)
    server = start_server(path)
    try:
        client = QuillClient(unix_url(path), shared_memory=True, retries=0)
        assert np.array_equal(client.call_tensor(SVC, "Double", Tensor.from_numpy(a)).to_numpy(), a * 2)
        killer = threading.Timer(0.5, server.send_signal, (signal.SIGKILL,))
        killer.start()
        with pytest.raises(QuillConnectionError):
            client.call_tensor(SVC, "Slow", Tensor.from_numpy(a), headers={"x-sleep": "5"})
        killer.join()
        server.wait()
        server.stderr.close()
        server = start_server(path)
        answer = client.call_tensor(SVC, "Double", Tensor.from_numpy(a))
        assert np.array_equal(answer.to_numpy(), a * 2)
        assert client._transport._arenas.region_of(answer._bytes) is not None  # through shared memory again
        client.close()
    finally:
        server.kill()
        server.wait()
        server.stderr.close()
        shutil.rmtree(folder)


SMALL_SHM = """
import numpy as np, os, shutil, sys, tempfile
sys.path.insert(0, {here!r})
from shm_servers import SVC, shm_server
from quill.client import QuillClient
from quill.tensor import Tensor
assert shutil.disk_usage("/dev/shm").total <= 64 << 20
a = np.random.default_rng(3).standard_normal(64 << 20).astype(np.float32)  # 256 MiB
with shm_server() as url, QuillClient(url, shared_memory=True) as client:
    answer = client.call_tensor(SVC, "Double", Tensor.from_numpy(a))
    assert client._transport._arenas.region_of(answer._bytes) is not None
    assert np.array_equal(answer.to_numpy(), a * 2)
print("ok")
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_small_dev_shm_does_not_limit_shared_memory():
    script = SMALL_SHM.format(here=HERE)
    mount = "mount -t tmpfs -o size=64m tmpfs /dev/shm"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", mount], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here: {probe.stderr.decode().strip()}")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                             f'{mount} && exec "$0" -c "$1"', sys.executable, script],
                            env=ENV, cwd=HERE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
