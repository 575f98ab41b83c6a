"""The receive pool of ``call_tensor`` (no ``out=``), over both clients against the reference
server: a Tensor's buffer is never lent again while anything sees its memory, is reused once
nothing does, the pool's bound holds, and concurrent calls each get their own intact tensor."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_kinds import PROTOCOLS  # noqa: E402
from quill.client import QuillClient  # noqa: E402
from quill.server import QuillApp, serve_in_thread  # noqa: E402
from quill.tensor import Tensor  # noqa: E402

SVC = "test.v1.Pool"
MIB = 1 << 20


@pytest.fixture(autouse=True)
def client_kind(request, monkeypatch):
    """Every test here runs over both clients (tests/client_kinds.py), unless marked sync_only."""
    from client_kinds import client_for

    monkeypatch.setattr(request.module, "QuillClient", client_for(request))
    return request.param


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def url(request):
    app = QuillApp()

    @app.tensor(f"{SVC}/Fill")
    def fill(request, context):  # b"SIZE,VALUE": SIZE bytes of VALUE
        size, value = (int(x) for x in bytes(request).split(b","))
        return Tensor.from_numpy(np.full(size, value, dtype=np.uint8))

    with serve_in_thread(app, **PROTOCOLS[request.param]) as served:
        yield served


def fetch(client, size: int, value: int) -> Tensor:
    return client.call_tensor(SVC, "Fill", b"%d,%d" % (size, value))


def pool_of(client):
    return getattr(client, "_client", client)._core.receive_pool


def address(tensor_or_array) -> int:
    array = tensor_or_array.to_numpy() if isinstance(tensor_or_array, Tensor) else tensor_or_array
    return array.ctypes.data


def pooled(client) -> set[int]:
    return {buffer.ctypes.data for buffer in pool_of(client)._buffers}


def intact(tensor: Tensor, value: int, size: int) -> bool:
    array = tensor.to_numpy()
    return array.size == size and bool((array == value).all())


def test_a_kept_tensor_stays_intact_while_later_calls_use_other_buffers(url):
    with QuillClient(url) as client:
        kept = fetch(client, 4 * MIB, 1)
        assert address(kept) in pooled(client)
        later = [fetch(client, 4 * MIB, 2 + i) for i in range(3)]
        assert len({address(t) for t in [kept, *later]}) == 4
        assert intact(kept, 1, 4 * MIB)
        assert all(intact(t, 2 + i, 4 * MIB) for i, t in enumerate(later))


VIEWS = {
    "numpy slice": lambda t: t.to_numpy()[MIB:],
    "memoryview": lambda t: t.data,
    "dlpack": lambda t: np.from_dlpack(t),
}


@pytest.mark.parametrize("kind", sorted(VIEWS))
def test_a_buffer_is_reused_once_nothing_sees_its_memory(url, kind):
    with QuillClient(url) as client:
        first = fetch(client, 4 * MIB, 7)
        where = address(first)
        view = VIEWS[kind](first)
        del first  # the view alone keeps the buffer lent
        second = fetch(client, 4 * MIB, 8)
        assert address(second) != where
        assert bytes(memoryview(view)[-16:]) == b"\x07" * 16
        del view  # now nothing sees the first buffer; the second stays in use
        third = fetch(client, 4 * MIB, 9)
        assert address(third) == where
        assert intact(third, 9, 4 * MIB) and intact(second, 8, 4 * MIB)


def test_a_smaller_tensor_of_the_same_size_class_reuses_the_buffer_and_sees_only_its_bytes(url):
    with QuillClient(url) as client:
        where = address(fetch(client, 8 * MIB, 3))
        smaller = fetch(client, 8 * MIB - 4096, 4)
        assert address(smaller) == where
        assert intact(smaller, 4, 8 * MIB - 4096)


def test_the_pool_bound_holds_and_tensors_past_it_get_fresh_memory(url):
    limit = 3 * 4 * MIB
    with QuillClient(url, tensor_pool_bytes=limit) as client:
        kept = [fetch(client, 4 * MIB, i) for i in range(6)]
        assert pool_of(client).held_bytes <= limit
        assert len(pooled(client)) == 3
        assert sum(address(t) in pooled(client) for t in kept) == 3
        assert all(intact(t, i, 4 * MIB) for i, t in enumerate(kept))
        del kept
        other = fetch(client, 2 * MIB, 5)  # another size class: a free buffer makes room for it
        assert pool_of(client).held_bytes <= limit and address(other) in pooled(client)


def test_no_pool_and_small_tensors_get_fresh_memory(url):
    with QuillClient(url, tensor_pool_bytes=0) as client:
        assert intact(fetch(client, 4 * MIB, 1), 1, 4 * MIB)
        assert pool_of(client).held_bytes == 0
    with QuillClient(url) as client:
        assert intact(fetch(client, 4096, 2), 2, 4096)
        assert pool_of(client).held_bytes == 0
    with pytest.raises(ValueError, match="tensor_pool_bytes"):
        QuillClient(url, tensor_pool_bytes=-1)


def test_concurrent_calls_each_get_their_own_intact_tensor(url, client_kind):
    failures: list = []
    with QuillClient(url, max_connections=4, tensor_pool_bytes=6 * 2 * MIB) as client:
        def work(worker: int) -> None:
            kept = []
            try:
                for i in range(12):
                    value = worker * 16 + i
                    tensor = fetch(client, 2 * MIB, value)
                    if i % 3 == 0:
                        kept.append((tensor, value))  # some live on while the others' buffers recycle
                    if not intact(tensor, value, 2 * MIB):
                        failures.append((worker, i))
                failures.extend((worker, v) for t, v in kept if not intact(t, v, 2 * MIB))
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures
        assert pool_of(client).held_bytes <= 6 * 2 * MIB
