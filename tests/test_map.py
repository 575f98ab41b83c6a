"""QuillClient.map and AsyncQuillClient.map against a real server that counts what it runs:
order, bounded concurrency, lazy input, per-item errors, progress, cancellation, and the fault
servers (nothing listening, 503 with Retry-After, a POST read then dropped). Both clients run
every test (tests/client_kinds.py); what only one runner has is marked or named so."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_kinds import PROTOCOLS, protocol_of  # noqa: E402
from client_servers import ScriptedServer, echo, free_port, response  # noqa: E402
from waiting import wait_until  # noqa: E402

from quill import AsyncQuillClient, QuillClient, Tensor, Token, TokenBatch  # noqa: E402
from quill.errors import BadRequestError, ProblemDetails, QuillConnectionError, ServiceUnavailableError  # noqa: E402
from quill.server import QuillApp, serve_in_thread  # noqa: E402

SVC = "map.v1.Work"
WAIT = 20
#: for a test that makes its own client: it runs once, not once per client kind
runs_once = pytest.mark.sync_only


@pytest.fixture(autouse=True)
def client_kind(request, monkeypatch):
    from client_kinds import client_for

    monkeypatch.setattr(request.module, "QuillClient", client_for(request))
    return request.param


class Counts:
    """What the server saw: calls started, in flight now, the most at once, streams cut off. Only
    the calls that carry its ``token`` (the ``x-counts`` header of the test's client) count: a call
    of an earlier test that the server runs late (HTTP/2: frames read before that client left)
    counts nowhere."""

    def __init__(self):
        self.token = os.urandom(8).hex()
        self.started = 0
        self.in_flight = 0
        self.most = 0
        self.disconnected = 0

    def enter(self) -> None:
        self.started += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1


def build_app() -> QuillApp:
    app = QuillApp()
    app.state = Counts()

    def counts_of(context) -> Counts:
        return app.state if context.headers.get("x-counts") == app.state.token else Counts()

    @app.unary(f"{SVC}/Sleep")
    async def sleep(request, context):
        """``b"<ms>|<payload>"``: wait ms, answer the payload (422 for a payload starting 'fail')."""
        ms, _, payload = request.partition(b"|")
        counts = counts_of(context)
        counts.enter()
        try:
            await asyncio.sleep(int(ms) / 1000)
        finally:
            counts.leave()
        if payload.startswith(b"fail"):
            return ProblemDetails(400, "Bad request", detail=f"refused {payload.decode()}")
        return payload

    @app.unary(f"{SVC}/Square")
    async def square(request, context):
        x = json.loads(request)["x"]
        if not isinstance(x, int):
            return ProblemDetails(400, "Bad request", detail=f"x must be an integer, got {x!r}")
        return json.dumps({"y": x * x}).encode()

    @app.token_stream(f"{SVC}/Count")
    async def count(request, context):
        """``{"n": N, "ms": M}``: N one-token batches, M ms apart."""
        spec = json.loads(request)
        counts = counts_of(context)
        counts.enter()
        finished = False
        try:
            for i in range(spec["n"]):
                batch = TokenBatch(sequence_id=spec.get("id", 0))
                batch.add(Token.with_text(i, f"t{i}", i))
                batch.is_final = i == spec["n"] - 1
                yield batch
                await asyncio.sleep(spec.get("ms", 0) / 1000)
            finished = True
        finally:
            counts.leave()
            if not finished:
                counts.disconnected += 1

    @app.server_stream(f"{SVC}/Split")
    def split(request, context):
        yield from request.split(b",")

    @app.tensor(f"{SVC}/Double")
    def double(request, context):
        return Tensor.from_numpy(request.to_numpy() * 2)

    return app


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def served(request):
    app = build_app()
    with serve_in_thread(app, **PROTOCOLS[request.param]) as url:
        yield app, url


@pytest.fixture
def counts(served):
    app, _ = served
    app.state = Counts()
    return app.state


@pytest.fixture
def client(served, counts):
    with QuillClient(served[1], timeout_ms=WAIT * 1000, headers={"x-counts": counts.token}) as c:
        yield c


def sleeps(*pairs) -> list[bytes]:
    return [b"%d|%s" % (ms, payload) for ms, payload in pairs]


# ---------------------------------------------------------------- order and concurrency

def test_results_come_in_input_order_though_later_ones_finish_first(client, counts):
    requests = sleeps(*((60 - 2 * i, b"item-%d" % i) for i in range(30)))
    assert list(client.map(SVC, "Sleep", requests, concurrency=8)) == [b"item-%d" % i for i in range(30)]
    assert counts.started == 30


def test_as_completed_gives_each_result_with_its_index(client):
    requests = sleeps((300, b"slow"), *((1, b"fast-%d" % i) for i in range(5)))
    pairs = list(client.map(SVC, "Sleep", requests, concurrency=6, ordered=False))
    assert sorted(pairs) == sorted(enumerate([b"slow"] + [b"fast-%d" % i for i in range(5)]))
    assert pairs[-1] == (0, b"slow")


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_no_more_than_concurrency_calls_are_in_flight(client, counts, concurrency):
    requests = sleeps(*((20, b"%d" % i) for i in range(6 * concurrency)))
    assert len(list(client.map(SVC, "Sleep", requests, concurrency=concurrency))) == 6 * concurrency
    assert counts.most == concurrency  # reached, never passed


@pytest.mark.parametrize("served", ["http1"], indirect=True)  # the window's rule, not the protocol's: 3000 calls
def test_a_million_requests_are_read_as_they_go(client):
    """A generator of 10**6 requests is never materialised: it is read only as far as the
    window of 2 * concurrency allows ahead of what the consumer has taken."""
    read = 0

    def requests():
        nonlocal read
        for i in range(10**6):
            read += 1
            yield b"0|%d" % i

    taken = 0
    for taken, answer in enumerate(client.map(SVC, "Sleep", requests(), concurrency=4), start=1):
        assert answer == b"%d" % (taken - 1)
        assert read <= taken - 1 + 2 * 4
        if taken == 3000:
            break
    assert taken == 3000 and read <= 3000 + 2 * 4


# ---------------------------------------------------------------- kinds

def test_each_kind_goes_through_its_call(client):
    assert list(client.map(SVC, "Square", [{"x": 3}, {"x": 4}])) == [{"y": 9}, {"y": 16}]
    streams = list(client.map(SVC, "Count", [{"n": 3}, {"n": 1, "id": 5}], kind="tokens"))
    assert all(isinstance(b, TokenBatch) for batches in streams for b in batches)
    assert [[b.text() for b in batches] for batches in streams] == [["t0", "t1", "t2"], ["t0"]]
    assert streams[1][0].sequence_id == 5 and streams[0][-1].is_final
    assert list(client.map(SVC, "Split", [b"a,b", b"c"], kind="messages")) == [[b"a", b"b"], [b"c"]]
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3) + i for i in range(3)]
    for array, doubled in zip(arrays, client.map(SVC, "Double", map(Tensor.from_numpy, arrays))):
        np.testing.assert_array_equal(doubled.to_numpy(), array * 2)


def test_without_a_kind_each_request_goes_by_its_type(client):
    arrays = [np.ones(4, dtype=np.int32)]
    assert list(client.map(SVC, "Sleep", [b"0|x", bytearray(b"0|y"), memoryview(b"0|z")])) == [b"x", b"y", b"z"]
    assert list(client.map(SVC, "Square", [{"x": 2}])) == [{"y": 4}]
    assert [t.to_numpy().tolist() for t in client.map(SVC, "Double", map(Tensor.from_numpy, arrays))] == [[2] * 4]


# ---------------------------------------------------------------- errors and progress

def test_an_item_error_is_raised_at_that_item(client, counts):
    requests = sleeps((0, b"a"), (0, b"b"), (0, b"fail-c"), *((200, b"late-%d" % i) for i in range(20)))
    got = []
    with pytest.raises(BadRequestError, match="refused fail-c") as raised:
        for answer in client.map(SVC, "Sleep", requests, concurrency=2):
            got.append(answer)
    assert got == [b"a", b"b"]
    assert "(raised by request 2 of the map)" in raised.value.__notes__
    time.sleep(0.5)
    assert counts.started <= 2 + 2 * 2  # the two handed out and the window: the rest never started


def test_return_exceptions_gives_each_error_as_its_result(client):
    results = list(client.map(SVC, "Square", [{"x": 1}, {"x": "two"}, {"x": 3}], return_exceptions=True))
    assert results[0] == {"y": 1} and results[2] == {"y": 9}
    assert isinstance(results[1], BadRequestError) and results[1].status == 400
    assert "x must be an integer" in str(results[1])


def test_an_input_that_fails_raises_after_the_results_before_it(client):
    def requests():
        yield {"x": 1}
        yield {"x": 2}
        raise OSError("the input file went away")

    got = []
    with pytest.raises(OSError, match="went away"):
        for answer in client.map(SVC, "Square", requests()):
            got.append(answer)
    assert got == [{"y": 1}, {"y": 4}]


def test_progress_reports_done_and_failed_counts(client):
    reports = []
    requests = [{"x": i} if i % 4 else {"x": "no"} for i in range(12)]
    results = list(client.map(SVC, "Square", requests, return_exceptions=True,
                              progress=lambda done, failed: reports.append((done, failed))))
    assert len(results) == 12
    assert [done for done, _ in reports] == list(range(1, 13))
    assert reports[-1] == (12, 3)
    assert all(a[1] <= b[1] for a, b in zip(reports, reports[1:]))


def test_bad_arguments_are_refused_before_any_call(client, counts):
    with pytest.raises(ValueError, match="concurrency must be a positive integer"):
        client.map(SVC, "Sleep", [b"0|x"], concurrency=0)
    with pytest.raises(ValueError, match="exceeds the client's max_connections=10"):
        client.map(SVC, "Sleep", [b"0|x"], concurrency=11)
    with pytest.raises(ValueError, match="kind must be one of 'unary', 'json'"):
        client.map(SVC, "Sleep", [b"0|x"], kind="bytes")
    with pytest.raises(TypeError, match="progress must be a callable"):
        client.map(SVC, "Sleep", [b"0|x"], progress=5)
    with pytest.raises(TypeError, match="not iterable"):
        client.map(SVC, "Sleep", 5)
    assert counts.started == 0


# ---------------------------------------------------------------- leaving early

def long_streams(count: int) -> list[dict]:
    """Two short streams, then ``count`` that run for minutes unless cut off."""
    return [{"n": 2}, {"n": 2}] + [{"n": 100_000, "ms": 2}] * count


@pytest.mark.parametrize("how", ["break", "close"])
def test_leaving_early_cancels_the_streams_in_flight(client, counts, how):
    results = client.map(SVC, "Count", long_streams(50), kind="tokens", concurrency=4)
    first = next(results)
    assert [b.text() for b in first] == ["t0", "t1"]
    # four long ones in flight and the two short ones done (in flight alone may count a short one
    # still finishing: it ends normally, and only three streams are cut off)
    assert wait_until(lambda: counts.in_flight == 4 and counts.started == 6, WAIT)
    if how == "close":
        results.close()
    else:
        del results  # what `break` does: the results are dropped
    assert wait_until(lambda: counts.in_flight == 0, WAIT)
    assert counts.disconnected == 4
    started = counts.started
    time.sleep(0.3)
    assert counts.started == started <= 2 + 2 * 4  # nothing started after leaving
    assert client.call(SVC, "Sleep", b"0|still usable") == b"still usable"


def test_leaving_early_starts_no_more_unary_calls(client, counts):
    for _ in client.map(SVC, "Sleep", sleeps(*((100, b"x"),) * 100), concurrency=5):
        break
    time.sleep(0.5)  # the calls already sent (each takes 0.1 s) end or are cancelled ...
    assert counts.in_flight == 0
    started = counts.started
    time.sleep(0.3)
    assert counts.started == started <= 2 * 5  # ... and none follow (at most the window of 10 ever started)


@pytest.mark.sync_only
def test_no_worker_thread_outlives_the_map(client, counts):
    def map_threads():
        return [t for t in threading.enumerate() if t.name.startswith("quill-map")]

    assert list(client.map(SVC, "Sleep", sleeps(*((5, b"x"),) * 20))) == [b"x"] * 20
    results = client.map(SVC, "Count", long_streams(8), kind="tokens", concurrency=6)
    next(results)
    results.close()
    assert wait_until(lambda: not map_threads(), timeout=10), map_threads()
    # the server has seen every stream end (else they would end during the next test, in its counts)
    assert wait_until(lambda: counts.in_flight == 0, WAIT)


@runs_once
def test_the_sync_map_s_loop_is_uvloop_s_where_installed_and_its_thread_ends_when_stopped():
    from quill.client._loop_thread import LoopThread

    uvloop = pytest.importorskip("uvloop")  # a dependency of quill on CPython outside Windows
    thread = LoopThread("quill-map-test")

    async def running_loop():
        return asyncio.get_running_loop()

    assert isinstance(thread.submit(running_loop()), uvloop.Loop)
    thread.stop()
    assert not thread.is_alive() and thread.loop.is_closed()
    thread.call_soon(print, "never")  # a closed loop: nothing runs, nothing raises


@runs_once
def test_cancelling_the_consuming_task_cancels_every_call(served, counts, request):
    """Only the async client has tasks: cancel the one iterating, its calls go with it."""
    _, url = served
    http2 = protocol_of(request) != "http1"

    async def main():
        async with AsyncQuillClient(url, timeout_ms=WAIT * 1000, headers={"x-counts": counts.token},
                                    http2=http2) as client:
            started = asyncio.Event()

            async def consume():
                async for _ in client.map(SVC, "Count", long_streams(20), kind="tokens", concurrency=5):
                    started.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(started.wait(), WAIT)
            deadline = time.monotonic() + WAIT
            while counts.in_flight < 5:
                assert time.monotonic() < deadline, f"only {counts.in_flight} calls in flight"
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
            assert await client.call(SVC, "Sleep", b"0|after") == b"after"

    asyncio.run(main())
    assert wait_until(lambda: counts.in_flight == 0, WAIT)
    assert counts.disconnected >= 4


# ---------------------------------------------------------------- fault servers

def test_a_dead_server_fails_each_item_with_a_connection_error():
    client = QuillClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff_ms=1)
    with pytest.raises(QuillConnectionError, match="cannot connect"):
        next(iter(client.map(SVC, "Sleep", [b"0|a", b"0|b"])))
    results = list(client.map(SVC, "Sleep", [b"0|a"] * 5, return_exceptions=True))
    assert len(results) == 5 and all(isinstance(r, QuillConnectionError) for r in results)
    client.close()


def busy_once_per_request():
    """Answers 503 (Retry-After: 0) the first time it sees a body, then echoes it."""
    seen = set()

    def handler(req, sock):
        if req.body not in seen:
            seen.add(req.body)
            problem = b'{"type":"about:blank","title":"Busy","status":503}'
            sock.sendall(response(503, problem, "application/problem+json", {"Retry-After": "0"}))
            return
        echo(req, sock)

    return ScriptedServer(handler)


def test_503_with_retry_after_is_retried_when_the_client_says_so():
    bodies = [b"job-%d" % i for i in range(10)]
    with busy_once_per_request() as server:
        client = QuillClient(server.url, status_retries=1)
        assert list(client.map(SVC, "Sleep", bodies, concurrency=4)) == bodies
        assert sorted(r.body for r in server.requests) == sorted(bodies * 2)
        client.close()


def test_503_is_each_item_s_error_without_status_retries():
    with busy_once_per_request() as server:
        client = QuillClient(server.url)
        results = list(client.map(SVC, "Sleep", [b"a", b"b", b"c"], return_exceptions=True))
        assert all(isinstance(r, ServiceUnavailableError) and r.retry_after == 0 for r in results)
        client.close()


@pytest.mark.parametrize("idempotent", [None, True])
def test_a_request_the_server_read_is_resent_only_when_idempotent(idempotent):
    executed = []

    def handler(req, sock):
        executed.append(req.body)
        if req.body == b"b" and executed.count(b"b") == 1:
            return False  # read it all, then hung up: it may have been acted on
        echo(req, sock)

    with ScriptedServer(handler) as server:
        client = QuillClient(server.url, retries=2)
        results = list(client.map(SVC, "Sleep", [b"a", b"b", b"c"], concurrency=1, return_exceptions=True,
                                  idempotent=idempotent))
        if idempotent:
            assert results == [b"a", b"b", b"c"] and executed == [b"a", b"b", b"b", b"c"]
        else:
            assert results[0] == b"a" and results[2] == b"c"
            assert isinstance(results[1], QuillConnectionError) and executed == [b"a", b"b", b"c"]
        client.close()
