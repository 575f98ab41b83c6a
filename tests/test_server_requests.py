"""How the server reads requests: tensor frames told from protobuf by the Content-Type, request
bodies split at every TCP read boundary, and Accept-Encoding read with its q-values.

Requests go over a raw socket where the split matters (each chunk of a chunked body is sent
and flushed on its own, so the server reads it separately), otherwise through urllib3.
"""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
import urllib3

from quill.frames import END_STREAM_FRAME, TensorReceiver, encode_tensor_frames
from quill.protocol.constants import PROTO, TENSOR_FRAMES
from quill.server import QuillApp, serve_in_thread
from quill.tensor import Tensor

DESCRIBE = "t.v1.Tensors/Describe"
ECHO = "t.v1.Tensors/Echo"


@pytest.fixture(scope="module")
def url(engine):
    app = QuillApp(max_request_bytes=1 << 20)

    @app.tensor(DESCRIBE)
    def describe(request, context):
        """What the handler was given: a tensor's shape, or the bytes."""
        if isinstance(request, Tensor):
            return json.dumps({"tensor": list(request.shape), "dtype": request.dtype.name}).encode()
        return json.dumps({"bytes": bytes(request).hex()}).encode()

    @app.tensor(ECHO)
    def echo(request, context):
        return request

    @app.unary("t.v1.Meta/Peer")
    def peer(request, context):
        host, port = context.client
        return json.dumps([host, port]).encode()

    with serve_in_thread(app, engine=engine) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def http():
    return urllib3.PoolManager(retries=False)


def chunked_post(url: str, path: str, chunks: list[bytes], content_type: str) -> tuple[int, bytes]:
    """POST ``chunks`` as a chunked body, each chunk in its own send, 50 ms apart; return
    (status, body) of a Content-Length answer."""
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"POST /{path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                     "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode())
        for chunk in chunks:
            time.sleep(0.05)
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        time.sleep(0.05)
        sock.sendall(b"0\r\n\r\n")
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def frames_with_end_apart(tensor: Tensor) -> list[bytes]:
    """The tensor's frames, with END_STREAM as a chunk of its own."""
    frames = b"".join(bytes(p) for p in encode_tensor_frames(tensor))
    end = END_STREAM_FRAME
    assert frames.endswith(end)
    return [frames[: -len(end)], end]


@pytest.mark.parametrize("array", [
    np.array(7.5, dtype=np.float32),  # 0-d: len() raises TypeError
    np.zeros((0, 3), dtype=np.int64),  # shape[0] == 0: len() is 0, so the tensor is falsy
    np.arange(6, dtype=np.uint8).reshape(2, 3),
], ids=["0-d", "empty-rows", "2x3"])
def test_tensor_whose_end_stream_arrives_alone(url, array):
    status, body = chunked_post(url, DESCRIBE, frames_with_end_apart(Tensor.from_numpy(array)), TENSOR_FRAMES)
    assert status == 200, body
    assert json.loads(body) == {"tensor": list(array.shape), "dtype": str(array.dtype)}


@pytest.mark.parametrize("split", [1, 9, 10, 30])
def test_tensor_split_anywhere_echoes_unchanged(url, split):
    tensor = Tensor.from_numpy(np.array(3, dtype=np.int32), name="scalar")
    wire = b"".join(bytes(p) for p in encode_tensor_frames(tensor))
    status, body = chunked_post(url, ECHO, [wire[:split], wire[split:]], TENSOR_FRAMES)
    assert status == 200
    receiver = TensorReceiver()
    got = receiver.feed(body)
    receiver.finish()
    assert got == tensor


def test_protobuf_starting_with_0x10_reaches_a_tensor_handler_as_bytes(url, http):
    """0x10 is TENSOR_META and also the tag of protobuf field 2 (varint): only the Content-Type
    says which it is."""
    r = http.request("POST", f"{url}/{DESCRIBE}", body=b"\x10\x05", headers={"Content-Type": PROTO})
    assert r.status == 200 and json.loads(r.data) == {"bytes": "1005"}
    frames = b"".join(bytes(p) for p in encode_tensor_frames(Tensor.from_numpy(np.ones(2, np.float32))))
    r = http.request("POST", f"{url}/{DESCRIBE}", body=frames, headers={"Content-Type": PROTO})
    assert r.status == 200 and json.loads(r.data) == {"bytes": frames.hex()}  # no parameter: bytes
    r = http.request("POST", f"{url}/{DESCRIBE}", body=frames,
                     headers={"Content-Type": 'Application/Proto; Frames="tensor"'})
    assert r.status == 200 and json.loads(r.data) == {"tensor": [2], "dtype": "float32"}


def test_tensor_content_type_with_a_protobuf_body_is_400(url, http):
    r = http.request("POST", f"{url}/{DESCRIBE}", body=b"\x08\x05", headers={"Content-Type": TENSOR_FRAMES})
    assert r.status == 400 and r.headers["content-type"] == "application/problem+json"
    r = http.request("POST", f"{url}/{DESCRIBE}", body=b"", headers={"Content-Type": TENSOR_FRAMES})
    assert r.status == 400  # no frames at all: not a tensor


@pytest.mark.parametrize("accept_encoding, compressed", [
    ("zstd", True), ("gzip, zstd;q=0.5", True), ("*", True),
    ("zstd;q=0", False), ("zstd; q=0.0, gzip", False), ("*;q=0", False), ("gzip", False), (None, False),
])
def test_accept_encoding_q_values(url, http, accept_encoding, compressed):
    body = bytes(range(256)) * 64
    headers = {"Content-Type": PROTO}
    if accept_encoding is not None:
        headers["Accept-Encoding"] = accept_encoding
    r = http.request("POST", f"{url}/{ECHO}", body=body, headers=headers, decode_content=True)
    assert r.status == 200 and r.data == body
    assert (r.headers.get("content-encoding") == "zstd") is compressed


def test_context_client_is_host_and_int_port_on_every_engine(url, http):
    """granian reports the ASGI client port as a str; handlers get an int on every engine."""
    host, port = json.loads(http.request("POST", f"{url}/t.v1.Meta/Peer", body=b"").data)
    assert host == "127.0.0.1" and isinstance(port, int) and 0 < port < 65536
