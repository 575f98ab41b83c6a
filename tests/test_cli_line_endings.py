"""``quill generate`` ends its line of text however the stream ends: complete, or interrupted
with Ctrl+C, so the shell prompt (or "quill: interrupted") starts a line of its own."""

import signal
import subprocess
import sys
import time

from quill.demo import create_demo_app
from quill.server import serve_in_thread


def test_an_interrupted_generation_ends_its_line(tmp_path):
    with serve_in_thread(create_demo_app(token_delay=0.02)) as url:
        process = subprocess.Popen([sys.executable, "-m", "quill", "generate", url, "Hello", "--max-tokens", "2000"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
        first = process.stdout.read(8)  # tokens are flowing
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=30)
    out = (first + rest).decode()
    assert process.returncode == 130, err
    assert len(out) > 8 and out.endswith("\n") and out.count("\n") == 1
    assert err.decode().splitlines()[-1] == "quill: interrupted"


def test_a_complete_generation_ends_its_line(tmp_path):
    with serve_in_thread(create_demo_app()) as url:
        done = subprocess.run([sys.executable, "-m", "quill", "generate", url, "Hello", "--max-tokens", "5", "-q"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and done.stdout.endswith("\n") and done.stdout.count("\n") == 1
