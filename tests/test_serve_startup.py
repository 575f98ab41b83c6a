"""``quill serve`` start-up errors, through the CLI in a subprocess: each is one line on stderr
naming the cause, a non-zero exit, no traceback, and no "serving ... on" banner; the banner comes
once the server accepts calls, and granian's own (wrong) address line is not printed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from quill.client import QuillClient
from quill.demo import SERVICE

sys.path.insert(0, os.path.dirname(__file__))
from certificates import make_certificates  # noqa: E402

ENGINES = ["uvicorn", "hypercorn", "granian"]
FAILING_APP = '''
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the model did not load"})
'''


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    files = make_certificates(directory)
    files.combined = str(directory / "combined.pem")  # certificate and key in one file
    with open(files.combined, "w") as out:
        out.write(open(files.server_cert).read() + open(files.server_key).read())
    files.encrypted_key = str(directory / "encrypted.key")
    subprocess.run(["openssl", "pkey", "-in", files.server_key, "-aes128", "-passout", "pass:secret",
                    "-out", files.encrypted_key], check=True, capture_output=True)
    files.der = str(directory / "server.der")
    subprocess.run(["openssl", "x509", "-in", files.server_cert, "-outform", "der", "-out", files.der],
                   check=True, capture_output=True)
    return files


def serve_fails(*options: str, timeout: float = 60) -> tuple[int, list[str]]:
    """Run ``quill serve OPTIONS`` that must fail on its own; its exit status and stderr lines."""
    done = subprocess.run([sys.executable, "-m", "quill", "serve", "--log-level", "warning", *options],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr and not any(" on http" in line for line in lines), done.stderr
    return done.returncode, lines


@pytest.mark.parametrize("port", ["99999", "-1", "65536", "http"])
def test_a_port_out_of_range_is_refused_at_parsing(port):
    code, lines = serve_fails("--port", port)
    assert code == 2  # argparse's usage lines, then the one error line
    assert lines[-1] == "quill serve: error: argument --port: must be a port number from 0 to 65535" + (
        f" (0: any free one), got {port}" if port != "http" else f", got {port}")


TLS_CASES = {
    "missing certificate": (lambda c: ["--certfile", "/nonexistent/cert.pem"],
                            "certificate file /nonexistent/cert.pem: No such file or directory"),
    "certificate without key": (lambda c: ["--certfile", c.server_cert],
                                "certificate file {server_cert} holds no private key: pass its key file with --keyfile"),
    "key of another certificate": (lambda c: ["--certfile", c.server_cert, "--keyfile", c.client_key],
                                   "key file {client_key} does not match the certificate in {server_cert}"),
    "missing key": (lambda c: ["--certfile", c.server_cert, "--keyfile", "/nonexistent/key.pem"],
                    "key file /nonexistent/key.pem: No such file or directory"),
    "key file without key": (lambda c: ["--certfile", c.server_cert, "--keyfile", c.ca],
                             "key file {ca} holds no PEM private key"),
    "encrypted key": (lambda c: ["--certfile", c.server_cert, "--keyfile", c.encrypted_key],
                      "key file {encrypted_key} holds an encrypted private key: give an unencrypted one"),
    "DER certificate": (lambda c: ["--certfile", c.der, "--keyfile", c.server_key],
                        "certificate file {der} holds no PEM certificate"),
    "missing CA file": (lambda c: ["--certfile", c.combined, "--ca-certs", "/nonexistent/ca.pem"],
                        "CA certificates file /nonexistent/ca.pem: No such file or directory"),
    "CA file without certificates": (lambda c: ["--certfile", c.combined, "--ca-certs", c.server_key],
                                     "CA certificates file {server_key} holds no PEM certificate"),
}


@pytest.mark.parametrize("engine_name", ENGINES)
@pytest.mark.parametrize("case", sorted(TLS_CASES))
def test_a_bad_tls_file_is_one_line_naming_it(case, engine_name, certs):
    options, expected = TLS_CASES[case]
    code, lines = serve_fails("--port", "0", "--engine", engine_name, *options(certs))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("quill: error: " + expected.format(**vars(certs))), lines


@pytest.mark.parametrize("engine_name", ENGINES)
def test_a_port_in_use_is_one_line_naming_the_address(engine_name):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = serve_fails("--port", str(port), "--engine", engine_name)
    assert (code, lines) == (3, [f"quill: error: cannot listen on 127.0.0.1:{port}: Address already in use"])


@pytest.mark.parametrize("engine_name", ENGINES)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_app_whose_startup_fails_gets_no_banner(engine_name, workers, tmp_path):
    (tmp_path / "failing.py").write_text(FAILING_APP)
    code, lines = serve_fails("failing:app", "--app-dir", str(tmp_path), "--port", "0", "--engine", engine_name,
                              "--workers", workers)
    assert code == 6
    expected = ("quill: error: the app's startup failed: the model did not load" if workers == "1"
                else "the other workers were stopped")
    # with two workers each reports its failure from its own process: the parent's line need not be last
    assert any(expected in line for line in lines), lines


def start(*options: str) -> tuple[subprocess.Popen, list[str]]:
    """``quill serve --port 0 OPTIONS`` up to its banner: the process and the lines up to it."""
    process = subprocess.Popen([sys.executable, "-m", "quill", "serve", "--port", "0", *options],
                               stderr=subprocess.PIPE, text=True)
    lines = []
    while not lines or " on " not in lines[-1]:
        line = process.stderr.readline()
        assert line, f"quill serve exited: {lines}"
        lines.append(line.rstrip("\n"))
    return process, lines


def stop(process: subprocess.Popen) -> list[str]:
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(30) == 0, rest
    process.stderr.close()
    return rest.splitlines()


@pytest.mark.parametrize("engine_name", ENGINES)
def test_the_banner_comes_when_calls_are_answered_and_names_the_real_address(engine_name, certs):
    """The key may be in the certificate file (hypercorn needed it named twice); granian's own
    "Listening at: http://127.0.0.1:8000" whatever the socket is, is not printed."""
    process, lines = start("--engine", engine_name, "--certfile", certs.combined, "--log-level", "info")
    try:
        url = re.search(r" on (https://\S+)", lines[-1]).group(1)
        assert QuillClient(url, ca_file=certs.ca, retries=0).call(SERVICE, "Echo", b"at once") == b"at once"
    finally:
        rest = stop(process)
    everything = "\n".join(lines + rest)
    assert "Listening at" not in everything and ":8000" not in everything, everything
    if engine_name != "hypercorn":  # hypercorn's "Running on <the real address>" is right, and stays
        assert everything.count(url) == 1, everything
