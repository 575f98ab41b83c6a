"""The reference server's idempotency store: a repeated Idempotency-Key is answered from the store
and its handler runs once (a side-effect counter says so), per method and caller; a key still
running is waited for; a failed first run is not stored; the store is bounded and expires.
Checked over HTTP on loopback with urllib3 (headers and bytes as sent) and the clients."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import subprocess
import sys

import numpy as np
import pytest
import urllib3

from quill import Tensor
from quill._core.tokens import Token, TokenBatch
from quill.client import AsyncQuillClient, QuillClient
from quill.errors import RpcError
from quill.server import BearerAuth, IdempotencyStore, QuillApp, serve_in_thread
from quill.server.idempotency import REPLAYED_HEADER

SERVICE = "ledger.v1.Ledger"


class Ledger:
    """A service with side effects that the test can count: every handler run is recorded."""

    def __init__(self, store: IdempotencyStore | None, **app_options):
        self.runs: collections.Counter = collections.Counter()
        self.fail_next = 0
        self.app = app = QuillApp(idempotency=store, **app_options)

        @app.unary(f"{SERVICE}/Credit")
        async def credit(request, context):
            self.runs[request] += 1
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError("the ledger is down")
            await asyncio.sleep(float(context.headers.get("x-delay", "0")))
            return b"credited %s #%d" % (request, sum(self.runs.values()))

        @app.unary(f"{SERVICE}/Debit")
        def debit(request, context):
            self.runs[b"debit:" + request] += 1
            return b"debited " + request

        @app.server_stream(f"{SERVICE}/History")
        async def history(request, context):
            self.runs[b"history:" + request] += 1
            for i in range(3):
                yield b"%s-%d-%d" % (request, i, sum(self.runs.values()))

        @app.token_stream(f"{SERVICE}/Tokens")
        def tokens(request, context):
            self.runs[b"tokens:" + request] += 1
            yield TokenBatch.from_tokens([Token.with_text(i, f"t{i}", i, logprob=-0.5) for i in range(4)])

        @app.tensor(f"{SERVICE}/Scale")
        def scale(tensor, context):
            self.runs[b"scale"] += 1
            return Tensor.from_numpy(tensor.to_numpy() * 2)


@pytest.fixture
def ledger():
    service = Ledger(IdempotencyStore(max_entries=100, max_bytes=1 << 20, ttl_seconds=60))
    with serve_in_thread(service.app) as url:
        service.url = url
        yield service


def post(url, method, body, key=None, **headers):
    if key is not None:
        headers["Idempotency-Key"] = key
    return urllib3.request("POST", f"{url}/{SERVICE}/{method}", body=body, headers=headers, retries=False)


def test_a_repeated_key_gets_the_stored_answer_and_the_handler_runs_once(ledger):
    first = post(ledger.url, "Credit", b"ada", key="k1")
    second = post(ledger.url, "Credit", b"ada", key="k1")
    assert first.status == second.status == 200
    assert second.data == first.data == b"credited ada #1"
    assert REPLAYED_HEADER not in first.headers and second.headers[REPLAYED_HEADER] == "true"
    assert ledger.runs == {b"ada": 1}
    assert (ledger.app.idempotency.runs, ledger.app.idempotency.replays) == (1, 1)


def test_keys_are_scoped_by_key_and_method(ledger):
    post(ledger.url, "Credit", b"ada", key="k1")
    post(ledger.url, "Credit", b"ada", key="k2")
    post(ledger.url, "Debit", b"ada", key="k1")
    post(ledger.url, "Debit", b"ada", key="k1")
    post(ledger.url, "Credit", b"ada")  # no key: runs
    post(ledger.url, "Credit", b"ada")
    assert ledger.runs == {b"ada": 4, b"debit:ada": 1}


def test_keys_are_scoped_by_the_callers_credentials():
    service = Ledger(IdempotencyStore(), auth=BearerAuth("alice", "bob"))
    with serve_in_thread(service.app) as url:
        for token in ("alice", "bob", "alice"):
            assert post(url, "Credit", b"x", key="same", Authorization=f"Bearer {token}").status == 200
        assert post(url, "Credit", b"x", key="same", Authorization="Bearer mallory").status == 401
    assert service.runs == {b"x": 2}


def test_the_same_key_with_another_request_is_refused_with_422(ledger):
    assert post(ledger.url, "Credit", b"ada", key="k1").status == 200
    other = post(ledger.url, "Credit", b"bob", key="k1")
    assert other.status == 422 and "Idempotency-Key" in json.loads(other.data)["title"]
    shaped = post(ledger.url, "Credit", b"ada", key="k1", Accept="application/json")
    assert shaped.status == 422
    assert ledger.runs == {b"ada": 1}


def test_a_key_still_running_is_waited_for_not_run_twice(ledger):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(ledger.url, "Credit", b"slow", key="k", **{"x-delay": "0.3"}),
                                range(4)))
    assert [a.status for a in answers] == [200] * 4
    assert {a.data for a in answers} == {b"credited slow #1"}
    assert sorted(a.headers.get(REPLAYED_HEADER, "no") for a in answers) == ["no", "true", "true", "true"]
    assert ledger.runs == {b"slow": 1}


def test_a_failed_first_run_is_not_stored_and_the_next_call_runs_again(ledger):
    ledger.fail_next = 1
    assert post(ledger.url, "Credit", b"ada", key="k").status == 500
    retried = post(ledger.url, "Credit", b"ada", key="k")
    assert retried.status == 200 and REPLAYED_HEADER not in retried.headers
    again = post(ledger.url, "Credit", b"ada", key="k")
    assert again.data == retried.data and again.headers[REPLAYED_HEADER] == "true"
    assert ledger.runs == {b"ada": 2}


def test_waiters_of_a_failed_run_run_it_once_more(ledger):
    ledger.fail_next = 1
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        statuses = sorted(pool.map(lambda _: post(ledger.url, "Credit", b"w", key="k", **{"x-delay": "0.2"}).status,
                                   range(3)))
    # one of them ran first and failed; one waiter ran it again; the last got the stored answer
    assert statuses in ([200, 200, 500], [200, 200, 200]) and ledger.runs[b"w"] <= 2
    assert post(ledger.url, "Credit", b"w", key="k").headers[REPLAYED_HEADER] == "true"


@pytest.mark.parametrize("bad", ["", "x" * 256, "tab\tkey"])
def test_a_malformed_key_gets_400(ledger, bad):
    answer = post(ledger.url, "Credit", b"ada", key=bad)
    assert answer.status == 400, answer.data
    assert ledger.runs == {}


def test_streams_and_tensors_are_replayed_byte_for_byte(ledger):
    for method, body, headers in [("History", b"h", {}), ("Tokens", b"t", {}),
                                  ("Tokens", b"t", {"Accept": "application/json"}),
                                  ("History", b"h", {"Accept-Encoding": "zstd"})]:
        key = f"{method}-{headers}"
        first, second = (post(ledger.url, method, body, key=key, **headers) for _ in range(2))
        assert first.status == 200 and second.data == first.data and second.headers[REPLAYED_HEADER] == "true"
    with QuillClient(ledger.url) as client:
        tensor = Tensor.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
        answers = [client.call_tensor(SERVICE, "Scale", tensor, headers={"Idempotency-Key": "t"}) for _ in range(2)]
        assert answers[0] == answers[1] and np.array_equal(answers[1].to_numpy(), tensor.to_numpy() * 2)
    assert ledger.runs == {b"history:h": 2, b"tokens:t": 2, b"scale": 1}  # two keys each


def test_the_store_is_bounded_by_entries_and_bytes():
    service = Ledger(IdempotencyStore(max_entries=2, max_bytes=40, ttl_seconds=60))
    with serve_in_thread(service.app) as url:
        for key in ("a", "b", "c", "a"):  # "a" was dropped for "c": it runs again
            post(url, "Credit", b"x", key=key)
        store = service.app.idempotency
        assert len(store) == 2 and store.stored_bytes <= 40
        assert service.runs == {b"x": 4}
        big = b"y" * 50  # its answer is larger than max_bytes: sent, not stored
        assert [post(url, "Debit", big, key="big").status for _ in range(2)] == [200, 200]
        assert service.runs[b"debit:" + big] == 2


def test_answers_expire_after_the_ttl():
    now = [0.0]
    service = Ledger(IdempotencyStore(ttl_seconds=10, clock=lambda: now[0]))
    with serve_in_thread(service.app) as url:
        post(url, "Credit", b"x", key="k")
        now[0] = 9.0
        assert post(url, "Credit", b"x", key="k").headers[REPLAYED_HEADER] == "true"
        now[0] = 10.5
        assert REPLAYED_HEADER not in post(url, "Credit", b"x", key="k").headers
    assert service.runs == {b"x": 2}


@pytest.mark.parametrize("options, message", [
    ({"max_entries": 0}, "max_entries"), ({"max_bytes": 0}, "max_bytes"), ({"ttl_seconds": 0}, "ttl_seconds"),
])
def test_bad_store_bounds_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        IdempotencyStore(**options)


def test_without_a_store_keys_are_ignored():
    service = Ledger(None)
    with serve_in_thread(service.app) as url:
        post(url, "Credit", b"x", key="k")
        assert REPLAYED_HEADER not in post(url, "Credit", b"x", key="k").headers
    assert service.runs == {b"x": 2}


def test_the_clients_calls_with_a_key_run_once_and_another_request_under_it_raises(ledger):
    seen = []

    async def main():
        async with AsyncQuillClient(ledger.url, status_retries=2, backoff_ms=1) as client:
            for attempt in range(2):
                seen.append(await client.call(SERVICE, "Credit", b"ada", headers={"Idempotency-Key": "r"}))

    asyncio.run(main())
    assert seen == [b"credited ada #1"] * 2 and ledger.runs == {b"ada": 1}
    with pytest.raises(RpcError):
        QuillClient(ledger.url).call(SERVICE, "Credit", b"other", headers={"Idempotency-Key": "r"})


def test_quill_serve_idempotency_ttl_turns_the_store_on():
    process = subprocess.Popen([sys.executable, "-m", "quill", "serve", "--port", "0", "--log-level", "warning",
                                "--idempotency-ttl", "30", "--idempotency-entries", "5"],
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        url = line.split(" on ")[1].split()[0]
        body = json.dumps({"prompt": "hi", "max_tokens": 3}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json", "Idempotency-Key": "g"}
        answers = [urllib3.request("POST", f"{url}/inference.v1.LLMService/Generate", body=body, headers=headers)
                   for _ in range(2)]
        assert answers[0].status == 200 and answers[1].data == answers[0].data
        assert answers[1].headers[REPLAYED_HEADER] == "true" and REPLAYED_HEADER not in answers[0].headers
    finally:
        process.terminate()
        process.wait(timeout=20)
