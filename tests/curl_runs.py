"""The curl binary driving a server: an HTTP client nobody on this project wrote (not collected
by pytest). CI installs curl when the machine lacks it (.ci/run); without it, every module that
imports this one fails."""

from __future__ import annotations

import shutil
import subprocess

import pytest

CURL = shutil.which("curl")
if CURL is None:  # .ci/run installs curl; a machine without it cannot run the curl tests
    pytest.fail("curl is not installed; install it (apt-get install curl) to run the server's curl tests",
                pytrace=False)


def curl(*args: str, data: bytes | None = None) -> tuple[int, dict, bytes]:
    """Run curl; return (status, lower-case headers, body)."""
    command = [CURL, "-sS", "--max-time", "20", "-D", "/dev/stderr", "-o", "-", *args]
    if data is not None:
        command[1:1] = ["--data-binary", "@-"]
    done = subprocess.run(command, input=data, capture_output=True, timeout=30, check=True)
    head = done.stderr.decode("latin-1").replace("\r\n", "\n").strip().split("\n\n")[-1].split("\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, done.stdout
