"""docs/connecting.md runs as written, against live servers: its ```bash blocks set up (the
openssl commands make the certificates; each ``quill serve`` line starts a server, as a
subprocess), then every ``$ command`` of its ```console blocks must print what the page shows
(``...`` for any text), and every ```python block runs.

The page's addresses are rewritten to the live ones: each server's ``--port N`` is dropped (the
server takes a free port) and ``:N`` in the examples becomes that port; ``/tmp/quill.sock``
becomes a socket in the test's directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import urllib.parse

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from doc_blocks import ROOT, check_console_command, console_commands, fenced_blocks, run_python_block  # noqa: E402
from serve_process import quill_serve  # noqa: E402

PAGE = ROOT / "docs" / "connecting.md"
SETUP = fenced_blocks(PAGE, "bash")
COMMANDS = [pair for block in fenced_blocks(PAGE, "console") for pair in console_commands(block)]
PYTHON = fenced_blocks(PAGE, "python")
DOC_SOCKET = "/tmp/quill.sock"
#: the `quill` and `python` of this interpreter first (subprocesses import the same quill)
ENV = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


class LivePage:
    """Where the page's servers really are: a working directory, the ports, the socket."""

    def __init__(self, directory):
        self.directory = directory
        self.socket = str(directory / "quill.sock")
        self.ports: dict[str, str] = {}

    def localize(self, text: str) -> str:
        text = text.replace(urllib.parse.quote(DOC_SOCKET, safe=""), urllib.parse.quote(self.socket, safe=""))
        text = text.replace(DOC_SOCKET, self.socket)
        for documented, live in self.ports.items():
            text = re.sub(rf"(?<=:){documented}\b", live, text)
        return text

    def start(self, line: str, stack: contextlib.ExitStack) -> None:
        options = shlex.split(self.localize(line))[2:]
        documented = None
        if "--port" in options:
            at = options.index("--port")
            documented = options[at + 1]
            del options[at:at + 2]
        server = stack.enter_context(quill_serve(*options, cwd=str(self.directory)))
        if documented is not None:
            self.ports[documented] = server.url.rsplit(":", 1)[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    live = LivePage(tmp_path_factory.mktemp("connecting"))
    with contextlib.ExitStack() as stack:
        for block in SETUP:
            lines = block.splitlines()
            commands = "\n".join(line for line in lines if not line.startswith("quill serve "))
            if commands.strip():
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=live.directory, env=ENV,
                                      capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, f"{commands}\n{done.stderr}"
            for line in lines:
                if line.startswith("quill serve "):
                    live.start(line, stack)
        yield live


def test_the_page_has_examples():
    assert sum(line.startswith("quill serve ") for block in SETUP for line in block.splitlines()) >= 5
    assert len(COMMANDS) >= 15 and len(PYTHON) >= 5
    assert any("http1=False, http2=True" in block for block in PYTHON)  # the h2c advice is run, not only said


@pytest.mark.parametrize("command, expected", COMMANDS, ids=[f"console-{i}" for i in range(len(COMMANDS))])
def test_console_example(page, command, expected):
    check_console_command(page.localize(command), page.localize(expected), cwd=page.directory, env=ENV)


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_example(page, index, monkeypatch):
    monkeypatch.chdir(page.directory)
    run_python_block(page.localize(PYTHON[index]), f"docs/connecting.md python block {index}")
