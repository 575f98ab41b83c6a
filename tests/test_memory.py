"""Bounded memory: a large tensor echoed through the reference server stays under 2.5x its size on
both sides, and a tensor meta that claims 2**60 bytes is refused before anything is allocated, by
the client (in a response) and by the server (in a request).

The 2 GiB figure is measured once outside CI: ``python tests/tensor_memory.py --gib 2``.
"""

from __future__ import annotations

import os
import socket
import sys
import tracemalloc

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_servers import ScriptedServer, response  # noqa: E402
from tensor_memory import measure  # noqa: E402

from quill.client import QuillClient  # noqa: E402
from quill.demo import create_demo_app  # noqa: E402
from quill.errors import LimitExceededError, RpcError  # noqa: E402
from quill.frames import TensorFrameType, encode_tensor_frame, tensor_frame_header  # noqa: E402
from quill.server import serve_in_thread  # noqa: E402
from quill.tensor import TensorMeta  # noqa: E402

SERVICE = "inference.v1.LLMService"
HOSTILE_SIZE = 1 << 60
# The meta of a 2**60-byte uint8 tensor, and the start of its payload: what a hostile peer sends.
HOSTILE = (encode_tensor_frame(TensorFrameType.TENSOR_META, TensorMeta([HOSTILE_SIZE], "uint8").encode())
           + tensor_frame_header(TensorFrameType.TENSOR_PAYLOAD, 1 << 20) + b"\0" * 4096)
NOTHING_BIG = 4 << 20  # traced peak allowed during a refused call: buffers and objects, no tensor


def test_half_a_gib_echoed_through_the_reference_server_within_2_5x_on_both_sides():
    size = 512 << 20
    figures = measure(size)
    assert figures["client_peak"] < 2.5 * size, figures  # it holds the tensor sent and the one received
    assert figures["server_peak"] < 2.5 * size, figures  # the request tensor, answered from its own memory


def test_the_client_refuses_a_hostile_meta_before_allocating():
    def hostile(request, sock):
        sock.sendall(response(200, HOSTILE))
        return False

    with ScriptedServer(hostile) as server:
        client = QuillClient(server.url, timeout_ms=5000)
        tracemalloc.start()
        try:
            with pytest.raises(LimitExceededError, match=str(HOSTILE_SIZE)) as info:
                client.call_tensor(SERVICE, "Embed", b"x")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < NOTHING_BIG, f"{peak} bytes traced while refusing: {info.value}"
        # Even a client that lifts its limit is not talked into 2**60 bytes by a peer it trusts.
        with pytest.raises((LimitExceededError, MemoryError, ValueError)):
            QuillClient(server.url, max_tensor_bytes=HOSTILE_SIZE).call_tensor(SERVICE, "Embed", b"x")


def test_the_server_refuses_a_hostile_meta_before_allocating():
    with serve_in_thread(create_demo_app()) as url:
        client = QuillClient(url, timeout_ms=5000)
        tracemalloc.start()
        try:
            with pytest.raises(RpcError) as info:
                # tensor frames are told by their Content-Type (frames=tensor), never by their first byte
                client.call(SERVICE, "Echo", HOSTILE, headers={"Content-Type": "application/proto; frames=tensor"})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert info.value.status == 413 and peak < NOTHING_BIG, (peak, info.value)
        # The same claim over a raw socket, announcing the whole 2**60-byte body: refused from the meta.
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /%s/Echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/proto; frames=tensor\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (SERVICE.encode(), len(HOSTILE), HOSTILE))
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert client.call(SERVICE, "Echo", b"still serving") == b"still serving"
