"""The server driven by curl: an HTTP client nobody on this project wrote.

Every call runs the real curl binary against the server on loopback and parses what
curl received. CI installs curl when the machine lacks it (.ci/run).
"""

import json
import shutil
import subprocess

import pytest

from quill.server import QuillApp, serve_in_thread

CURL = shutil.which("curl")
if CURL is None:  # .ci/run installs curl; a machine without it cannot run this module
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


@pytest.fixture(scope="module")
def url():
    app = QuillApp(max_request_bytes=4096)

    @app.unary("echo.v1.EchoService/Echo")
    def echo(request, context):
        return request

    with serve_in_thread(app) as base_url:
        yield base_url


def test_unary(url):
    status, headers, body = curl("-H", "Content-Type: application/proto", f"{url}/echo.v1.EchoService/Echo",
                                 data=b"\x08\x96\x01binary\x00")
    assert status == 200 and body == b"\x08\x96\x01binary\x00"
    assert headers["content-type"] == "application/proto"


def test_404_problem_details(url):
    status, headers, body = curl(f"{url}/no.v1.Such/Method", data=b"x")
    assert status == 404 and headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["title"] == "Method not found" and problem["status"] == 404 and problem["type"]


def test_405_problem_details(url):
    status, headers, body = curl(f"{url}/echo.v1.EchoService/Echo")  # a GET
    assert status == 405 and headers["allow"] == "POST"
    problem = json.loads(body)
    assert problem["title"] == "Method not allowed" and problem["status"] == 405


def test_413_problem_details(url):
    status, _, body = curl(f"{url}/echo.v1.EchoService/Echo", data=b"z" * 5000)
    assert status == 413 and json.loads(body)["status"] == 413


def test_zstd_response_with_curl_compressed(url):
    payload = b"abcdefgh" * 400
    status, headers, body = curl("-H", "Accept-Encoding: zstd", f"{url}/echo.v1.EchoService/Echo", data=payload)
    assert status == 200 and headers["content-encoding"] == "zstd" and body != payload
    status, _, body = curl("--compressed", f"{url}/echo.v1.EchoService/Echo", data=payload)
    assert status == 200 and body == payload  # curl decoded it itself


def test_health_and_metrics(url):
    status, _, body = curl(f"{url}/health")
    assert status == 200 and json.loads(body)["healthy"] is True
    status, headers, body = curl(f"{url}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"# TYPE quill_request_duration_seconds histogram" in body
