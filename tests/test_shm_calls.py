"""Tensor calls over the shared-memory transport, over both clients, checked against numpy: every
dtype and shape, answers computed, echoed, viewed and larger than the request, bytes and
Problem answers, ``out=``, ``empty()``, fallbacks to HTTP bodies, lifetimes and reuse. The tests
on the ``url`` server run with the wrapper on HTTP/1.1 (the default engine) and on HTTP/2
(``http2=True``, h2c over the Unix socket to hypercorn and to granian)."""

from __future__ import annotations

import gc
import os
import sys
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_kinds import PROTOCOLS, protocol_of  # noqa: E402
from shm_servers import SVC, shm_server  # noqa: E402

from quill.client import QuillClient  # noqa: E402
from quill.errors import QuillConnectionError, QuillTimeoutError, RpcError  # noqa: E402
from quill.tensor import Tensor  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="shared memory is Linux only")
MIB = 1 << 20


@pytest.fixture(autouse=True)
def client_kind(request, monkeypatch):
    from client_kinds import client_for

    monkeypatch.setattr(request.module, "QuillClient", client_for(request))
    return request.param


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def url(request):
    with shm_server(**PROTOCOLS[request.param]) as base_url:
        yield base_url


def test_the_wrapper_sits_on_the_protocol_asked_for(url, request):
    a = np.arange(MIB // 4, dtype=np.float32)
    with QuillClient(url, shared_memory=True) as client:
        answer = client.call_tensor(SVC, "Double", Tensor.from_numpy(a))
        assert np.array_equal(answer.to_numpy(), a * 2) and transport(client)._arenas.region_of(answer._bytes)
        inner = transport(client)._inner
        expected = "HTTP11Transport" if protocol_of(request) == "http1" else "HTTP2Transport"
        assert type(inner).__name__.endswith(expected)
        if expected == "HTTP2Transport":
            conns = getattr(inner, "_async", inner)._conns  # the sync one runs the async one on its loop
            assert [conn.engine.alive for conn in conns] == [True]


def transport(client):
    """The client's transport (the async one is wrapped by tests/client_kinds.py)."""
    return getattr(client, "_client", client)._transport


def arena_bytes(client) -> int:
    arenas = transport(client)._arenas
    return 0 if arenas is None else arenas.pool.held_bytes


DTYPES = ["float32", "float64", "float16", "bfloat16", "int8", "int32", "int64", "uint8", "bool"]


@pytest.mark.parametrize("url", ["http1"], indirect=True)  # the layout matrix: the protocol under it is not its concern
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(MIB // 4,), (64, 1025, 3), (300000,)])
def test_every_dtype_and_shape_round_trips_through_shared_memory(url, dtype, shape):
    count = int(np.prod(shape))
    raw = np.random.default_rng(7).integers(0, 256, size=count * Tensor.zeros([1], dtype).size_bytes, dtype=np.uint8)
    if dtype == "bool":
        raw = raw % 2
    tensor = Tensor.from_bytes(raw, shape, dtype, name="x")
    with QuillClient(url) as client:
        answer = client.call_tensor(SVC, "Echo", tensor)
        assert arena_bytes(client) > 0  # it went through shared memory
    assert answer == tensor and answer.name == "x" and answer.shape == list(shape)
    assert np.array_equal(np.frombuffer(answer.data, np.uint8), raw)


def test_computed_viewed_and_bytes_answers_match_numpy(url):
    a = np.random.default_rng(1).standard_normal(MIB // 4).astype(np.float32)
    with QuillClient(url) as client:
        doubled = client.call_tensor(SVC, "Double", Tensor.from_numpy(a, name="a"))
        tail = client.call_tensor(SVC, "Tail", Tensor.from_numpy(a))
        total = client.send_tensor(SVC, "Sum", Tensor.from_numpy(a))
    assert np.array_equal(doubled.to_numpy(), a * 2) and doubled.name == "a"
    assert np.array_equal(tail.to_numpy(), a[1:])
    assert float(total) == pytest.approx(float(a.astype(np.float64).sum()))


def test_an_answer_larger_than_the_offer_comes_in_the_body_and_then_fits(url):
    a = np.arange(MIB // 4, dtype=np.int32)
    with QuillClient(url) as client:
        first = client.call_tensor(SVC, "Grow", Tensor.from_numpy(a))
        second = client.call_tensor(SVC, "Grow", Tensor.from_numpy(a))
        assert transport(client)._sizes  # the answer's size was learnt
        arenas = transport(client)._arenas
        assert arenas.region_of(second._bytes) is not None  # the second answer is in an arena
        assert arenas.region_of(first._bytes) is None  # the first came as an HTTP body
    expected = np.concatenate([a] * 3)
    assert np.array_equal(first.to_numpy(), expected) and np.array_equal(second.to_numpy(), expected)


def test_empty_arrays_are_sent_and_echoed_without_a_copy(url):
    with QuillClient(url) as client:
        a = client.empty((512, 1024), "float32")
        a[:] = np.arange(a.size, dtype=np.float32).reshape(a.shape)
        echoed = client.call_tensor(SVC, "Echo", Tensor.from_numpy(a))
        tail = client.call_tensor(SVC, "Tail", Tensor.from_numpy(a.reshape(-1)))
        assert np.shares_memory(echoed.to_numpy(), a) and np.shares_memory(tail.to_numpy(), a)
        assert np.array_equal(tail.to_numpy(), a.reshape(-1)[1:])
        small = client.empty(16, "int8")  # below MIN_BYTES: ordinary memory
        assert small.shape == (16,) and small.dtype == np.int8


def test_out_receives_a_copy_of_the_shared_answer(url):
    a = np.arange(MIB // 4, dtype=np.float32)
    out = np.zeros(MIB, dtype=np.uint8)
    with QuillClient(url) as client:
        answer = client.call_tensor(SVC, "Double", Tensor.from_numpy(a), out=out)
    assert np.shares_memory(answer.to_numpy(), out) and np.array_equal(answer.to_numpy(), a * 2)


def test_small_tensors_go_in_the_body(url):
    a = np.arange(1024, dtype=np.float32)  # 4 KiB
    with QuillClient(url) as client:
        assert np.array_equal(client.call_tensor(SVC, "Double", Tensor.from_numpy(a)).to_numpy(), a * 2)
        assert arena_bytes(client) == 0


def test_problems_and_timeouts_leave_the_client_working(url):
    a = np.ones(MIB // 4, dtype=np.float32)
    with QuillClient(url, timeout_ms=300, retries=0) as client:
        with pytest.raises(RpcError) as caught:
            client.call_tensor(SVC, "Refuse", Tensor.from_numpy(a))
        assert caught.value.status == 422 and str(MIB) in str(caught.value)
        with pytest.raises(QuillTimeoutError):
            client.call_tensor(SVC, "Slow", Tensor.from_numpy(a), headers={"x-sleep": "1"})
        answer = client.call_tensor(SVC, "Double", Tensor.from_numpy(a), timeout_ms=10000)
        assert np.array_equal(answer.to_numpy(), a * 2)


def test_an_answer_outlives_its_client_and_its_region_is_reused_only_after_it_dies(url):
    a = np.full(MIB // 4, 5, dtype=np.float32)
    b = np.full(MIB // 4, 7, dtype=np.float32)
    client = QuillClient(url)
    kept = client.call_tensor(SVC, "Double", Tensor.from_numpy(a))
    address = kept._bytes.__array_interface__["data"][0]
    others = [client.call_tensor(SVC, "Double", Tensor.from_numpy(b)) for _ in range(5)]
    assert all(o._bytes.__array_interface__["data"][0] != address for o in others)
    del others
    gc.collect()
    again = [client.call_tensor(SVC, "Double", Tensor.from_numpy(b)) for _ in range(3)]
    assert all(np.array_equal(o.to_numpy(), b * 2) for o in again)
    client.close()
    del client, again
    gc.collect()
    assert np.array_equal(kept.to_numpy(), a * 2)  # still mapped, still intact
    with QuillClient(url) as other:
        other.call_tensor(SVC, "Double", Tensor.from_numpy(b))
    assert np.array_equal(kept.to_numpy(), a * 2)


def test_freed_regions_are_reused(url):
    a = np.ones(MIB // 2, dtype=np.float32)
    with QuillClient(url) as client:
        for _ in range(20):
            assert client.call_tensor(SVC, "Double", Tensor.from_numpy(a)).to_numpy()[0] == 2
        assert arena_bytes(client) <= 4 * 2 * MIB  # request and answer regions, recycled


def test_concurrent_calls_each_get_their_own_answer(url):
    failures = []
    with QuillClient(url, max_connections=4) as client:  # the first calls ask for the offer at once
        def work(seed):
            for i in range(10):
                a = np.full(MIB // 4, seed * 100 + i, dtype=np.int32)
                try:
                    answer = client.call_tensor(SVC, "Double", Tensor.from_numpy(a))
                except Exception as exc:  # noqa: BLE001 - reported by the assert below
                    failures.append((seed, i, exc))
                    continue
                if not np.array_equal(answer.to_numpy(), a * 2):
                    failures.append((seed, i, "wrong answer"))

        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


def test_a_server_without_shared_memory_gets_bodies_and_true_requires_it():
    a = np.arange(MIB // 4, dtype=np.float32)
    with shm_server(shared_memory=False) as url:
        with QuillClient(url) as client:
            assert np.array_equal(client.call_tensor(SVC, "Double", Tensor.from_numpy(a)).to_numpy(), a * 2)
            assert transport(client)._offered is False
        with QuillClient(url, shared_memory=True) as client:
            with pytest.raises(QuillConnectionError, match="does not offer shared memory"):
                client.call_tensor(SVC, "Double", Tensor.from_numpy(a))
    with shm_server() as url:
        with QuillClient(url, shared_memory=False) as client:
            client.call_tensor(SVC, "Double", Tensor.from_numpy(a))
            assert type(transport(client)).__name__.endswith("HTTP11Transport")


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="shared_memory must be"):
        QuillClient("http+unix://%2Ftmp%2Fx.sock", shared_memory="yes")
    with pytest.raises(ValueError, match="shared_memory_bytes"):
        QuillClient("http+unix://%2Ftmp%2Fx.sock", shared_memory_bytes=-1)


@pytest.mark.sync_only
def test_a_forked_child_opens_its_own_channel(url):
    a = np.arange(MIB // 4, dtype=np.float32)
    with QuillClient(url) as client:
        assert client.call_tensor(SVC, "Double", Tensor.from_numpy(a)).to_numpy()[1] == 2
        parent_session = transport(client)._arenas.session
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                answer = client.call_tensor(SVC, "Double", Tensor.from_numpy(a))
                ok = np.array_equal(answer.to_numpy(), a * 2) and transport(client)._arenas.session != parent_session
                os.write(write_end, b"ok" if ok else b"bad")
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        os.waitpid(pid, 0)
        assert os.read(read_end, 16) == b"ok"
        os.close(read_end)
        # the parent's channel is untouched
        assert client.call_tensor(SVC, "Double", Tensor.from_numpy(a)).to_numpy()[1] == 2
        assert transport(client)._arenas.session == parent_session
