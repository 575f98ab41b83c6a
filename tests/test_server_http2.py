"""HTTP/2 on the engines that speak it (hypercorn, granian): cleartext with prior knowledge and
TLS with ALPN, next to HTTP/1.1 on the same port, driven by two independent HTTP/2 clients:
curl (``--http2-prior-knowledge``, nghttp2) and httpx (``http2=True``, the h2 library).

Every call kind, errors, limits and auth must answer exactly as over HTTP/1.1.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys

import httpx  # the test extra installs httpx[http2]
import numpy as np
import pytest

from quill.demo import SERVICE, ToyLanguageModel, create_demo_app, embed_texts
from quill.frames import (
    MessageStreamDecoder,
    TensorReceiver,
    TokenStreamDecoder,
    encode_end_stream,
    encode_stream_frame,
    encode_tensor_frames,
)
from quill.protocol.constants import TENSOR_FRAMES
from quill.server import BearerAuth, serve_in_thread
from quill.server.prior_knowledge import HTTP1_ONLY_TEXT, HTTP_1_1_REQUIRED
from quill.server.tls import TLSConfig
from quill.tensor import Tensor


sys.path.insert(0, os.path.dirname(__file__))
from certificates import make_certificates  # noqa: E402

CURL = shutil.which("curl")
H2LOAD = shutil.which("h2load")  # Debian's nghttp2-client; .ci/run installs it
H2_ENGINES = ["hypercorn", "granian"]


def build_app():
    app = create_demo_app(max_request_bytes=1_000_000)

    @app.client_stream("echo.v1.EchoService/Concat")
    async def concat(messages, context):
        return b"|".join([m async for m in messages])

    @app.server_stream("echo.v1.EchoService/Count")
    async def count(request, context):
        for i in range(int(request)):
            yield b"n%d" % i

    @app.unary("echo.v1.EchoService/Peer")
    def peer(request, context):  # the client's port: which TCP connection the call came on
        return b"%d" % context.client[1]

    @app.unary("echo.v1.EchoService/Protocol")
    def protocol(request, context):
        return context.headers.get("x-seen", "").encode()

    return app


@pytest.fixture(scope="module", params=H2_ENGINES)
def h2_url(request):
    with serve_in_thread(build_app(), engine=request.param) as url:
        yield url


def curl(*args: str, data: bytes | None = None) -> tuple[str, int, dict, bytes]:
    """Run curl; return (HTTP version, status, lower-case headers, body)."""
    command = [CURL, "-sS", "--max-time", "30", "-D", "/dev/stderr", "-o", "-", *args]
    if data is not None:
        command[1:1] = ["--data-binary", "@-"]
    done = subprocess.run(command, input=data, capture_output=True, timeout=40, check=True)
    head = done.stderr.decode("latin-1").replace("\r\n", "\n").strip().split("\n\n")[-1].split("\n")
    version, status = head[0].split()[:2]
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return version, int(status), headers, done.stdout


def h2c(*args: str, data: bytes | None = None):
    return curl("--http2-prior-knowledge", *args, data=data)


# ----------------------------------------------------------------------------------------
# curl, cleartext HTTP/2 with prior knowledge
# ----------------------------------------------------------------------------------------
def test_curl_unary_and_http1_on_the_same_port(h2_url):
    version, status, headers, body = h2c("-H", "Content-Type: application/proto", f"{h2_url}/{SERVICE}/Echo",
                                         data=b"\x00over h2\xff")
    assert (version, status, body) == ("HTTP/2", 200, b"\x00over h2\xff")
    assert headers["content-type"] == "application/proto"
    version, status, _, body = curl("--http1.1", f"{h2_url}/{SERVICE}/Echo", data=b"over h1")
    assert (version, status, body) == ("HTTP/1.1", 200, b"over h1")


def test_curl_server_stream_and_token_stream(h2_url):
    _, status, _, body = h2c(f"{h2_url}/echo.v1.EchoService/Count", data=b"25")
    decoder = MessageStreamDecoder()
    assert status == 200 and decoder.feed(body) == [b"n%d" % i for i in range(25)]
    decoder.finish()
    _, status, _, body = h2c("-H", "Content-Type: application/json", f"{h2_url}/{SERVICE}/Generate",
                             data=b'{"prompt": "Hi", "max_tokens": 40, "batch_size": 6}')
    tokens = TokenStreamDecoder()
    batches = tokens.feed(body)
    tokens.finish()
    assert [t.id for b in batches for t in b] == [i for i, _ in ToyLanguageModel().generate("Hi", 40)]


def test_curl_client_stream_in_data_frames(h2_url, tmp_path):
    frames = tmp_path / "frames.bin"
    frames.write_bytes(b"".join(encode_stream_frame(w) for w in (b"alpha", b"beta" * 5000, b"gamma"))
                       + encode_end_stream())
    _, status, _, body = h2c("--data-binary", f"@{frames}", f"{h2_url}/echo.v1.EchoService/Concat")
    assert (status, body) == (200, b"alpha|" + b"beta" * 5000 + b"|gamma")


def test_curl_tensor_both_ways(h2_url, tmp_path):
    tensor = Tensor.from_numpy(np.arange(200_000, dtype=np.int32).reshape(400, 500), name="ids")
    frames = tmp_path / "tensor.bin"
    frames.write_bytes(b"".join(bytes(p) for p in encode_tensor_frames(tensor)))
    _, status, _, body = h2c("--data-binary", f"@{frames}", "-H", f"Content-Type: {TENSOR_FRAMES}",
                             f"{h2_url}/{SERVICE}/Echo")
    assert status == 200 and TensorReceiver().feed(body) == tensor
    _, status, headers, body = h2c("--compressed", f"{h2_url}/{SERVICE}/Embed", data=b'{"input": ["x"], "dim": 3000}')
    assert status == 200 and headers["content-encoding"] == "zstd"
    assert np.array_equal(TensorReceiver().feed(body).to_numpy(), embed_texts([b"x"], 3000))


def test_curl_errors_and_limits(h2_url):
    _, status, headers, body = h2c(f"{h2_url}/no.v1.Such/Method", data=b"x")
    assert status == 404 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["title"] == "Method not found"
    _, status, _, body = h2c(f"{h2_url}/{SERVICE}/Echo", data=b"z" * 1_000_001)
    assert status == 413 and json.loads(body)["status"] == 413
    _, status, _, body = h2c("-H", "Content-Type: application/json", f"{h2_url}/{SERVICE}/Generate",
                             data=b'{"max_tokens": -1}')
    assert status == 400 and "max_tokens" in json.loads(body)["detail"]


@pytest.mark.parametrize("engine_name", H2_ENGINES)
def test_curl_auth_over_http2(engine_name):
    app = create_demo_app(auth=BearerAuth("t0ken"))
    with serve_in_thread(app, engine=engine_name) as url:
        _, status, headers, _ = h2c(f"{url}/{SERVICE}/Echo", data=b"x")
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="quill"'
        assert h2c(f"{url}/{SERVICE}/Echo", data=b"x" * 3_000_000)[1] == 401  # refused before the body is read
        _, status, _, body = h2c("-H", "Authorization: Bearer t0ken", f"{url}/{SERVICE}/Echo", data=b"x")
        assert (status, body) == (200, b"x")
        assert h2c(f"{url}/health")[1] == 200


# ----------------------------------------------------------------------------------------
# httpx (the h2 library): cleartext prior knowledge, and TLS with ALPN
# ----------------------------------------------------------------------------------------
def test_httpx_every_call_kind(h2_url):
    with httpx.Client(http1=False, http2=True, base_url=h2_url, timeout=30) as client:
        r = client.post(f"/{SERVICE}/Echo", content=b"hi", headers={"Content-Type": "application/proto"})
        assert (r.http_version, r.status_code, r.content) == ("HTTP/2", 200, b"hi")

        def upload():  # a request body produced piece by piece: HTTP/2 DATA frames as it goes
            for word in (b"one", b"two", b"three"):
                yield encode_stream_frame(word)
            yield encode_end_stream()

        r = client.post("/echo.v1.EchoService/Concat", content=upload())
        assert r.content == b"one|two|three"
        # iter_raw() reads the body as sent: identity, whether or not httpx can decode zstd (with zstandard installed)
        with client.stream("POST", "/echo.v1.EchoService/Count", content=b"300",
                           headers={"Accept-Encoding": "identity"}) as r:
            decoder = MessageStreamDecoder()
            messages = [m for chunk in r.iter_raw() for m in decoder.feed(chunk)]
        assert messages == [b"n%d" % i for i in range(300)]
        r = client.post(f"/{SERVICE}/Generate", content=b'{"max_tokens": 9}',
                        headers={"Content-Type": "application/json", "Accept": "application/json"})
        assert [t["id"] for t in r.json()["tokens"]] == [i for i, _ in ToyLanguageModel().generate("", 9)]
        r = client.post(f"/{SERVICE}/Embed", content=b'{"input": "a", "dim": 8}')
        assert np.array_equal(TensorReceiver().feed(r.content).to_numpy(), embed_texts([b"a"], 8))
        r = client.get("/nowhere")
        assert r.status_code == 405 and r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("engine_name", H2_ENGINES)
def test_httpx_over_tls_negotiates_h2_by_alpn(engine_name, tmp_path):
    certs = make_certificates(tmp_path)
    tls = TLSConfig(certs.server_cert, certs.server_key)
    trust = ssl.create_default_context(cafile=certs.ca)
    with serve_in_thread(build_app(), tls=tls, engine=engine_name) as url:
        with httpx.Client(http2=True, verify=trust, timeout=30) as client:
            r = client.post(f"{url}/{SERVICE}/Echo", content=b"secure h2")
            assert (r.http_version, r.content) == ("HTTP/2", b"secure h2")
        with httpx.Client(http2=False, verify=trust, timeout=30) as client:  # HTTP/1.1 clients still work
            r = client.post(f"{url}/{SERVICE}/Echo", content=b"secure h1")
            assert (r.http_version, r.content) == ("HTTP/1.1", b"secure h1")
        version, status, _, _ = curl("--http2", "--cacert", certs.ca, f"{url}/{SERVICE}/Echo", data=b"x")
        assert (version, status) == ("HTTP/2", 200)


# ----------------------------------------------------------------------------------------
# Many calls on one connection (hypercorn closed every connection after 1,000 requests)
# ----------------------------------------------------------------------------------------
CALLS_ON_ONE_CONNECTION = 10_000


def test_httpx_makes_ten_thousand_calls_on_one_connection(h2_url):
    ports = set()
    with httpx.Client(http1=False, http2=True, base_url=h2_url, timeout=30) as client:
        for _ in range(CALLS_ON_ONE_CONNECTION):
            r = client.post("/echo.v1.EchoService/Peer", content=b"")
            assert (r.http_version, r.status_code) == ("HTTP/2", 200)
            ports.add(r.content)
    assert len(ports) == 1, ports  # every call came from the same client port: one TCP connection


def test_h2load_ten_thousand_requests_on_one_connection_none_fail(h2_url, tmp_path):
    assert H2LOAD, "h2load is missing: apt-get install nghttp2-client (.ci/run does)"
    body = tmp_path / "body"
    body.write_bytes(b"h2load")
    done = subprocess.run([H2LOAD, "-n", str(CALLS_ON_ONE_CONNECTION), "-c", "1", "-m", "10", "-d", str(body),
                           f"{h2_url}/{SERVICE}/Echo"], capture_output=True, text=True, timeout=120)
    requests = next(line for line in done.stdout.splitlines() if line.startswith("requests:"))
    assert requests == (f"requests: {CALLS_ON_ONE_CONNECTION} total, {CALLS_ON_ONE_CONNECTION} started, "
                        f"{CALLS_ON_ONE_CONNECTION} done, {CALLS_ON_ONE_CONNECTION} succeeded, 0 failed, "
                        "0 errored, 0 timeout"), done.stdout
    assert f"status codes: {CALLS_ON_ONE_CONNECTION} 2xx" in done.stdout, done.stdout


# ----------------------------------------------------------------------------------------
# uvicorn speaks HTTP/1.1 only: an h2c client is told so in HTTP/2, at once
# ----------------------------------------------------------------------------------------
def test_uvicorn_answers_h2c_prior_knowledge_with_http_1_1_required():
    with serve_in_thread(build_app(), engine="uvicorn") as url:
        done = subprocess.run([CURL, "-sS", "-v", "--max-time", "30", "--http2-prior-knowledge", "--data-binary", "x",
                               f"{url}/{SERVICE}/Echo"], capture_output=True, text=True, timeout=40)
        assert done.returncode == 16 and done.stdout == ""  # "Error in the HTTP2 framing layer"
        assert "GOAWAY, error=13, last_stream=0" in done.stderr, done.stderr
        with httpx.Client(http1=False, http2=True, timeout=30) as client:
            with pytest.raises(httpx.RemoteProtocolError) as failure:
                client.post(f"{url}/{SERVICE}/Echo", content=b"x")
        goaway = failure.value.__cause__.args[0]  # h2's ConnectionTerminated event
        assert (goaway.error_code, goaway.last_stream_id) == (HTTP_1_1_REQUIRED, 0)
        assert goaway.additional_data.decode() == HTTP1_ONLY_TEXT
        version, status, _, body = curl("--http1.1", f"{url}/{SERVICE}/Echo", data=b"h1")  # HTTP/1.1 still served
        assert (version, status, body) == ("HTTP/1.1", 200, b"h1")
