"""`quill serve` in a child process, and what /proc says about a process (not collected by pytest).

The load, disconnect and Dask tests run the reference server the way users do: its own
process (no GIL shared with the client), optionally with several workers.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from typing import Iterator

from waiting import wait_until

SERVICE = "inference.v1.LLMService"


class ServeProcess:
    """A running ``quill serve``: its base URL, the supervisor process and the worker pids."""

    def __init__(self, process: subprocess.Popen, url: str, workers: int):
        self.process = process
        self.url = url
        self.workers = workers

    def worker_pids(self) -> list[int]:
        """The pids that serve requests: the process itself, or its forked workers."""
        if self.workers == 1:
            return [self.process.pid]
        wait_until(lambda: len(children(self.process.pid)) == self.workers, 10, interval=0.05)
        return children(self.process.pid)


@contextlib.contextmanager
def quill_serve(*options: str, workers: int = 1, cwd: str | None = None) -> Iterator[ServeProcess]:
    """Run ``quill serve --port 0 OPTIONS`` (in directory ``cwd``) until the block ends (then
    SIGTERM, and wait).

    >>> with quill_serve(workers=2) as server:  # doctest: +SKIP
    ...     QuillClient(server.url).call(SERVICE, "Echo", b"hi")
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "quill", "serve", "--port", "0", "--log-level", "warning",
         "--workers", str(workers), *options],
        stderr=subprocess.PIPE, text=True, cwd=cwd,
    )
    try:
        line = process.stderr.readline()
        match = re.search(r" on ((?:https?|http\+unix)://\S+)", line)
        assert match, f"quill serve did not start: {line!r}"
        yield ServeProcess(process, match.group(1), workers)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def open_fds(pid: int | str = "self") -> int:
    """How many file descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_sockets(pid: int | str = "self") -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def established_connections(pid: int, port: int) -> int:
    """How many established TCP connections to local ``port`` the process holds open."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for row in f.readlines()[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}")[len("socket:["):-1] in inodes
    return count


def rss_bytes(pid: int | str = "self") -> int:
    """The process's resident set size now (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")
