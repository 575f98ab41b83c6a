"""Running the server: Unix domain sockets and TLS, on every engine, checked with quill's client,
curl and the standard library's ssl module, and ``quill serve`` with those options.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.parse

import pytest

from quill.client import QuillClient
from quill.demo import SERVICE, create_demo_app
from quill.errors import QuillConnectionError
from quill.server import QuillApp, serve_in_thread, unix_url
from quill.server.sockets import bind_unix
from quill.server.tls import TLSConfig

sys.path.insert(0, os.path.dirname(__file__))
from certificates import make_certificates  # noqa: E402
from waiting import wait_until  # noqa: E402


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def socket_path(tmp_path):
    return str(tmp_path / "quill.sock")


def echo_app() -> QuillApp:
    app = QuillApp()

    @app.unary("echo.v1.EchoService/Echo")
    def echo(request, context):
        return request

    return app


# ----------------------------------------------------------------------------------------
# Unix domain sockets
# ----------------------------------------------------------------------------------------
def test_unix_url_percent_encodes_the_path():
    assert unix_url("/tmp/q.sock") == "http+unix://%2Ftmp%2Fq.sock"
    assert urllib.parse.unquote(unix_url("/run/a b/%.sock")[len("http+unix://"):]) == "/run/a b/%.sock"


def test_unix_socket_serves_quill_client_and_curl(engine, socket_path):
    with serve_in_thread(create_demo_app(), uds=socket_path, engine=engine) as path:
        assert path == socket_path
        url = unix_url(path)
        mode = os.stat(socket_path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        with QuillClient(url) as client:
            assert client.call(SERVICE, "Echo", b"over a unix socket") == b"over a unix socket"
            batches = list(client.stream_tokens(SERVICE, "Generate", b'{"max_tokens": 20, "batch_size": 7}'))
            assert [len(b) for b in batches] == [7, 7, 6]
        done = subprocess.run(["curl", "-sS", "--unix-socket", socket_path, "--data-binary", "curl",
                               f"http://localhost/{SERVICE}/Echo"], capture_output=True, timeout=30, check=True)
        assert done.stdout == b"curl"
    assert not os.path.exists(socket_path)  # removed on exit


def test_unix_socket_mode_can_be_chosen(socket_path):
    with serve_in_thread(echo_app(), uds=socket_path, uds_mode=0o660):
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o660


def test_stale_socket_is_replaced_but_live_socket_and_files_are_not(socket_path, tmp_path):
    stale = bind_unix(socket_path)
    stale.close()  # the file stays, nobody listens: what a crashed server leaves
    with serve_in_thread(echo_app(), uds=socket_path) as path:
        with pytest.raises(OSError, match="already listening"):
            bind_unix(socket_path)
        assert QuillClient(unix_url(path)).call("echo.v1.EchoService", "Echo", b"x") == b"x"
    regular = tmp_path / "not-a-socket"
    regular.write_text("data")
    with pytest.raises(FileExistsError, match="not a socket"):
        bind_unix(str(regular))
    assert regular.read_text() == "data"


# ----------------------------------------------------------------------------------------
# TLS
# ----------------------------------------------------------------------------------------
def test_tls_server_certificate_is_verified_by_the_client(engine, certs):
    tls = TLSConfig(certs.server_cert, certs.server_key)
    with serve_in_thread(echo_app(), tls=tls, engine=engine) as url:
        assert url.startswith("https://127.0.0.1:")
        assert QuillClient(url, ca_file=certs.ca).call("echo.v1.EchoService", "Echo", b"secret") == b"secret"
        with pytest.raises(QuillConnectionError, match="TLS|certificate|SSL"):
            QuillClient(url, retries=0).call("echo.v1.EchoService", "Echo", b"x")  # not in the system store
        localhost = url.replace("127.0.0.1", "localhost")
        assert QuillClient(localhost, ca_file=certs.ca).call("echo.v1.EchoService", "Echo", b"by name") == b"by name"


def test_tls_client_certificate_required(engine, certs):
    tls = TLSConfig(certs.server_cert, certs.server_key, ca_certs=certs.ca, require_client_cert=True)
    app = QuillApp()
    seen = []

    @app.unary("echo.v1.EchoService/Echo")
    def echo(request, context):
        seen.append(request)
        return request

    with serve_in_thread(app, tls=tls, engine=engine) as url:
        mutual = QuillClient(url, ca_file=certs.ca, client_cert=certs.client_cert, client_key=certs.client_key)
        assert mutual.call("echo.v1.EchoService", "Echo", b"mutual") == b"mutual"
        for cert, key in ((None, None), (certs.stranger_cert, certs.stranger_key)):
            client = QuillClient(url, ca_file=certs.ca, client_cert=cert, client_key=key, retries=0)
            with pytest.raises(QuillConnectionError):
                client.call("echo.v1.EchoService", "Echo", b"refused")
        assert seen == [b"mutual"]  # no refused call reached the handler


def test_tls_client_certificate_optional_with_ca_certs(certs):
    """With ca_certs but not require_client_cert, a client may come without a certificate."""
    tls = TLSConfig(certs.server_cert, certs.server_key, ca_certs=certs.ca)
    with serve_in_thread(echo_app(), tls=tls) as url:
        assert QuillClient(url, ca_file=certs.ca).call("echo.v1.EchoService", "Echo", b"anonymous") == b"anonymous"
        context = ssl.create_default_context(cafile=certs.ca)
        host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls_socket:
            assert tls_socket.version() in ("TLSv1.2", "TLSv1.3")


def test_tls_config_checks():
    with pytest.raises(ValueError, match="needs ca_certs"):
        TLSConfig("c.pem", "k.pem", require_client_cert=True)


# ----------------------------------------------------------------------------------------
# quill serve --uds / --certfile / --engine
# ----------------------------------------------------------------------------------------
def quill_serve(*options: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "quill", "serve", "--port", "0", "--log-level", "warning",
                                *options], stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    assert " on " in line, line
    return process, line.split(" on ", 1)[1].strip()


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    rest = process.stderr.read()
    process.stderr.close()
    return rest


@pytest.mark.parametrize("engine_name", ["uvicorn", "hypercorn", "granian"])
def test_quill_serve_on_a_unix_socket(engine_name, socket_path):
    process, url = quill_serve("--uds", socket_path, "--engine", engine_name)
    try:
        assert url == unix_url(socket_path)
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
        assert QuillClient(url).call(SERVICE, "Echo", b"cli") == b"cli"
    finally:
        assert "quill: server stopped" in stop(process)
    assert not os.path.exists(socket_path)


def test_quill_serve_https_with_client_certificates(certs):
    process, url = quill_serve("--certfile", certs.server_cert, "--keyfile", certs.server_key,
                               "--ca-certs", certs.ca, "--require-client-cert")
    try:
        assert url.startswith("https://127.0.0.1:")
        client = QuillClient(url, ca_file=certs.ca, client_cert=certs.client_cert, client_key=certs.client_key)
        assert client.call(SERVICE, "Echo", b"tls") == b"tls"
        with pytest.raises(QuillConnectionError):
            QuillClient(url, ca_file=certs.ca, retries=0).call(SERVICE, "Echo", b"no cert")
    finally:
        stop(process)


@pytest.mark.parametrize("options, fragment", [
    (["--require-client-cert", "--certfile", "c.pem"], "needs ca_certs"),
    (["--keyfile", "k.pem"], "need --certfile"),
    (["--uds-mode", "999"], "octal file mode"),
    (["--engine", "nginx"], "invalid choice"),
])
def test_quill_serve_bad_tls_and_socket_options(options, fragment):
    done = subprocess.run([sys.executable, "-m", "quill", "serve", "--port", "0", *options],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and fragment in done.stderr


def test_quill_serve_with_workers_on_each_engine(engine):
    """--workers N forks N servers on the shared socket, every connection of every worker has
    TCP_NODELAY, and SIGTERM stops them all."""
    from serve_process import children

    process, url = quill_serve("debug_app:app", "--app-dir", os.path.dirname(os.path.abspath(__file__)),
                               "--engine", engine, "--workers", "2")
    try:
        wait_until(lambda: len(children(process.pid)) >= 2, 10, interval=0.05)
        pids = set(children(process.pid))
        answers: dict[int, set] = {}
        for _ in range(200):  # fresh connections until both workers have answered
            with QuillClient(url) as client:
                pid, nodelay = client.call("debug.v1.Debug", "NoDelay", b"").split()
            answers.setdefault(int(pid), set()).add(nodelay)
            if len(answers) == 2:
                break
        assert set(answers) == pids and all(v == {b"1"} for v in answers.values()), answers
    finally:
        stop(process)
    for pid in pids:  # no worker left behind
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_a_dead_worker_takes_the_others_down(engine):
    """A worker killed from outside is not silently lost: the supervisor stops the other
    workers and exits with status 6, so whatever runs the server notices and restarts it."""
    from serve_process import children

    process, url = quill_serve("--engine", engine, "--workers", "2")
    try:
        wait_until(lambda: len(children(process.pid)) >= 2, 10, interval=0.05)
        first, second = children(process.pid)
        os.kill(first, signal.SIGKILL)
        assert process.wait(30) == 6
        assert "worker %d exited with status -9" % first in process.stderr.read()
        assert not os.path.exists(f"/proc/{second}") or open(f"/proc/{second}/stat").read().split()[2] == "Z"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def test_hypercorn_cli_finds_the_benchmark_app():
    """``hypercorn quill.cli.bench_service:app`` looks the app up with eval: it must be a plain attribute."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "hypercorn", "quill.cli.bench_service:app", "--bind", f"127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = QuillClient(f"http://127.0.0.1:{port}", timeout_ms=2000)
        deadline = time.monotonic() + 30
        while not client.health_check():
            assert process.poll() is None and time.monotonic() < deadline, "hypercorn did not serve quill.cli.bench_service:app"
            time.sleep(0.1)
        assert client.call("bench.v1.BenchService", "Echo", b"hi") == b"hi"
    finally:
        process.terminate()
        process.wait(30)
