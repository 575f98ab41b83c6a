"""The server driven by curl: an HTTP client nobody on this project wrote.

Every call runs the real curl binary against the server on loopback and parses what
curl received. CI installs curl when the machine lacks it (.ci/run).
"""

from __future__ import annotations

import json
import os
import sys

import pytest

import numpy as np

from quill.demo import SERVICE, VOCABULARY, ToyLanguageModel, create_demo_app, embed_texts
from quill.frames import (
    TensorReceiver,
    TokenStreamDecoder,
    encode_end_stream,
    encode_stream_frame,
    encode_tensor_frames,
)
from quill.server import QuillApp, serve_in_thread
from quill.tensor import Tensor

sys.path.insert(0, os.path.dirname(__file__))
from curl_runs import curl  # noqa: E402


@pytest.fixture(scope="module")
def url(engine):
    app = QuillApp(max_request_bytes=1_000_000)

    @app.unary("echo.v1.EchoService/Echo")
    def echo(request, context):
        return request

    @app.client_stream("echo.v1.EchoService/Concat")
    async def concat(messages, context):
        return b"|".join([m async for m in messages])

    demo = create_demo_app()
    for path, kind in demo.methods().items():
        app.add_method(path, demo._routes[path].function, kind)

    with serve_in_thread(app, engine=engine) as base_url:
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
    status, _, body = curl(f"{url}/echo.v1.EchoService/Echo", data=b"z" * 1_000_001)
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


def test_streamed_generate_frames(url):
    status, headers, body = curl("--no-buffer", "-H", "Content-Type: application/json", "-H", "Accept: application/proto",
                                 f"{url}/{SERVICE}/Generate",
                                 data=b'{"prompt": "Hello", "max_tokens": 30, "batch_size": 4, "sequence_id": 11}')
    assert status == 200 and headers["content-type"] == "application/proto"
    assert headers["transfer-encoding"] == "chunked"
    decoder = TokenStreamDecoder()
    batches = decoder.feed(body)
    decoder.finish()  # the stream ended with END_STREAM
    assert [len(b) for b in batches] == [4] * 7 + [2] and batches[-1].is_final
    expected = list(ToyLanguageModel().generate("Hello", 30))
    tokens = [t for b in batches for t in b]
    assert [t.id for t in tokens] == [i for i, _ in expected]
    assert [t.text for t in tokens] == [VOCABULARY[i] for i, _ in expected]
    assert np.allclose([t.logprob for t in tokens], [lp for _, lp in expected], rtol=1e-6)
    assert {b.sequence_id for b in batches} == {11}


def test_compressed_token_stream_and_tensor_decoded_by_curl(url):
    """curl --compressed asks for zstd and decodes the answer itself: an independent decoder of
    the frame-by-frame compressed streams."""
    request = b'{"prompt": "Hello", "max_tokens": 200, "batch_size": 3}'
    status, headers, raw = curl("-H", "Accept-Encoding: zstd", "-H", "Content-Type: application/json",
                                f"{url}/{SERVICE}/Generate", data=request)
    assert status == 200 and headers["content-encoding"] == "zstd"
    _, _, body = curl("--compressed", "-H", "Content-Type: application/json", f"{url}/{SERVICE}/Generate", data=request)
    decoder = TokenStreamDecoder()
    tokens = [t.id for b in decoder.feed(body) for t in b]
    decoder.finish()
    assert tokens == [i for i, _ in ToyLanguageModel().generate("Hello", 200)] and len(raw) < len(body)
    status, headers, body = curl("--compressed", f"{url}/{SERVICE}/Embed", data=b'{"input": ["a", "b"], "dim": 4000}')
    assert status == 200 and headers["content-encoding"] == "zstd"
    assert np.array_equal(TensorReceiver().feed(body).to_numpy(), embed_texts([b"a", b"b"], 4000))


def test_generate_as_json_with_zstd(url):
    status, headers, body = curl("--compressed", "-H", "Accept: application/json", f"{url}/{SERVICE}/Generate",
                                 data=b'{"prompt": "Hello", "max_tokens": 300}')
    assert status == 200 and headers["content-encoding"] == "zstd"  # curl asked, curl decoded
    answer = json.loads(body)
    assert [t["id"] for t in answer["tokens"]] == [i for i, _ in ToyLanguageModel().generate("Hello", 300)]


def test_embed_tensor_frames_both_ways(url, tmp_path):
    status, _, body = curl(f"{url}/{SERVICE}/Embed", data=b'{"input": ["x", "y", "z"], "dim": 50}')
    assert status == 200
    embedding = TensorReceiver().feed(body)
    assert embedding.shape == (3, 50) and np.array_equal(embedding.to_numpy(), embed_texts([b"x", b"y", b"z"], 50))
    # a tensor request body: curl uploads tensor frames, the server decodes them as a Tensor
    tensor = Tensor.from_numpy(np.arange(70_000, dtype=np.int32).reshape(700, 100), name="ids")
    frames = tmp_path / "tensor.bin"
    frames.write_bytes(b"".join(encode_tensor_frames(tensor)))
    status, _, body = curl("--data-binary", f"@{frames}", "-H", "Content-Type: application/proto; frames=tensor",
                           f"{url}/{SERVICE}/Echo")
    assert status == 200 and TensorReceiver().feed(body) == tensor


def test_client_stream_chunked_upload(url, tmp_path):
    frames = tmp_path / "frames.bin"
    frames.write_bytes(b"".join(encode_stream_frame(w) for w in (b"alpha", b"beta", b"gamma")) + encode_end_stream())
    status, _, body = curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{frames}",
                           f"{url}/echo.v1.EchoService/Concat")
    assert (status, body) == (200, b"alpha|beta|gamma")
