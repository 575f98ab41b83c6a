"""Free-threaded CPython: the GIL stays off, and shared objects stay whole under 8 to 32 threads.

The GIL test runs on a free-threaded interpreter only (``sys._is_gil_enabled`` does not exist
elsewhere). The stress tests run on every build: with the GIL they check the same rules
(docs/memory-safety.md, "Free-threaded CPython"), and on a free-threaded build, with
``PYTHON_GIL=0``, the threads really run at once. Each result is checked against a plain-Python
model: the list of tokens, payloads or rows that the operations must give. Each test runs
QUILL_STRESS_SECONDS (default 0.5) seconds, as in tests/test_threads.py.
"""

import json
import os
import random
import subprocess
import sys
import sysconfig
import threading
import time

import numpy as np
import pytest

from quill._core.frames import (
    END_STREAM_FRAME,
    StreamFrameParser,
    TokenStreamDecoder,
    encode_stream_frame,
    encode_token_batch_frame,
)
from quill._core.tokens import Token, TokenBatch, TokenBatchBuilder

sys.path.insert(0, os.path.dirname(__file__))
from thread_runs import run_together  # noqa: E402

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
COMPILED = ["quill._core." + name for name in ("arrow", "arrow_import", "casts", "frames", "tensor", "tokens")]


def run_threads(count, worker):
    """Run ``worker(index, deadline)`` on ``count`` threads started together; re-raise the first
    failure; return the workers' results in order."""
    return run_together([lambda deadline, index=index: worker(index, deadline) for index in range(count)])


def model_token(i):
    """Token i of the one periodic sequence every batch here is a prefix of (as plain values)."""
    k = i % 61
    return (k, k, None if k % 7 == 3 else f"t{k}-" + "é" * (k % 4), -0.25 * k if k % 3 else None)


def make_token(i):
    token_id, position, text, logprob = model_token(i)
    return Token(token_id, position, text, logprob)


def as_model(batch_tokens):
    return [(t.id, t.position, t.text, t.logprob) for t in batch_tokens]


# -- the GIL stays off --------------------------------------------------------------------------


@pytest.mark.skipif(not FREE_THREADED, reason="the GIL can only stay off on a free-threaded CPython build")
@pytest.mark.parametrize("module", ["quill"] + COMPILED)
def test_importing_quill_leaves_the_gil_off(module):
    # A compiled module that does not declare free-threading support turns the GIL back on at
    # import (with a RuntimeWarning). PYTHON_GIL is removed: with PYTHON_GIL=0 it would stay off
    # whatever the modules declare.
    code = f"""
import sys, warnings
warnings.simplefilter("error")
import {module}
import quill
from quill._core.tokens import Token, TokenBatch
from quill._core.casts import cast
import numpy as np
batch = TokenBatch.from_tokens([Token(1, 0, "hi")])
assert TokenBatch.decode(batch.encode()) == batch
cast(np.ones(4, np.float32), "bfloat16")
print(sys._is_gil_enabled())
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", done.stdout + done.stderr
    assert "GIL" not in done.stderr, done.stderr


# -- one TokenBatch read by many threads while another mutates it --------------------------------


@pytest.mark.parametrize("readers", [8, 31])
def test_token_batch_read_by_many_threads_while_one_mutates(readers):
    # Every mutation keeps the batch a prefix of the model sequence, so whatever a reader sees
    # (one call's snapshot) must be a prefix too: never torn, never a token from nowhere.
    batch = TokenBatch.from_tokens([make_token(i) for i in range(100)])
    model = [model_token(i) for i in range(70_000)]

    def check_prefix(values):
        assert values == model[:len(values)], "a torn read"

    def worker(index, deadline):
        rng = random.Random(index)
        operations = 0
        while time.monotonic() < deadline:
            operations += 1
            if index == 0:    # the mutator
                n = len(batch)
                choice = rng.randrange(5)
                if n > 20_000 or choice == 0 and rng.random() < 0.02:
                    batch.clear()
                elif choice == 1:
                    batch.add(make_token(n))
                elif choice == 2:
                    batch.extend([make_token(n + i) for i in range(rng.randrange(1, 300))])
                elif choice == 3 and n and n % 61 == 0 and n <= 10_000:
                    batch.extend(batch)                    # itself: still the model's prefix
                else:
                    batch.extend(TokenBatch.from_tokens([make_token(n + i) for i in range(rng.randrange(1, 50))]))
                continue
            choice = rng.randrange(6)
            if choice == 0:
                check_prefix(as_model(TokenBatch.decode(batch.encode())))
            elif choice == 1:
                check_prefix(as_model(batch.tokens()))
            elif choice == 2:
                ids = batch.ids_array().tolist()
                assert ids == [m[0] for m in model[:len(ids)]]
            elif choice == 3:
                texts = batch.texts()
                assert texts == [m[2] for m in model[:len(texts)]]
            elif choice == 4:
                part = as_model(batch[5:400])
                assert part == model[5:5 + len(part)]
            else:
                n = len(batch)
                if n:
                    at = rng.randrange(n)
                    try:
                        token = batch[at]
                    except IndexError:   # cleared since len()
                        continue
                    assert as_model([token]) == [model[at]]
        return operations

    counts = run_threads(readers + 1, worker)
    assert all(counts)
    check_prefix(as_model(batch.tokens()))


def test_lazy_token_texts_read_by_many_threads():
    # A token from a batch decodes its text from the batch's buffer on first use; 16 threads ask
    # for the same tokens' texts at once while the batch keeps growing (moving its buffer).
    for _ in range(20):
        batch = TokenBatch.from_tokens([make_token(i) for i in range(500)])
        tokens = batch.tokens()

        def worker(index, deadline):
            if index == 0:
                for i in range(500, 5000):
                    batch.add(make_token(i))
                return 1
            return sum(1 for i, tok in enumerate(tokens) if tok.text == model_token(i)[2]
                       and tok == make_token(i))

        counts = run_threads(16, worker)
        assert counts[1:] == [500] * 15


# -- builders and parsers, one per thread and one shared by mistake --------------------------------


def test_a_builder_per_thread():
    def worker(index, deadline):
        builder = TokenBatchBuilder(max_size=1 + index, sequence_id=index)
        batches = [b for i in range(2000) if (b := builder.push(make_token(i))) is not None]
        batches.append(builder.finish())
        assert all(len(b) <= 1 + index and b.sequence_id == index for b in batches)
        return [t for b in batches for t in as_model(b)]

    assert run_threads(16, worker) == [[model_token(i) for i in range(2000)]] * 16


def test_one_builder_shared_by_mistake_is_serialised():
    # The rule: a builder's calls are serialised. Every token pushed comes out exactly once, in
    # batches of at most max_size, each thread's tokens in the order it pushed them.
    builder = TokenBatchBuilder(max_size=7, sequence_id=3)
    out, lock = [], threading.Lock()

    def worker(index, deadline):
        pushed = 0
        while time.monotonic() < deadline and pushed < 20_000:
            batch = builder.push(Token(index, pushed))   # id: the thread, position: its count
            pushed += 1
            if batch is not None:
                with lock:
                    out.append(batch)
            if pushed % 97 == 0 and (batch := builder.flush()) is not None:
                with lock:
                    out.append(batch)
        return pushed

    pushed = run_threads(16, worker)
    out.append(builder.finish())
    assert all(len(b) <= 7 and b.sequence_id == 3 for b in out)
    seen = {}
    for b in out:
        for tok in b:
            seen.setdefault(tok.id, []).append(tok.position)
    for index, count in enumerate(pushed):
        assert sorted(seen.get(index, [])) == list(range(count)), f"thread {index}'s tokens"


@pytest.mark.parametrize("threads", [8, 32])
def test_one_parser_shared_by_mistake_refuses_or_serialises(threads):
    # Each thread feeds whole frames into one parser: a feed is either refused (RuntimeError,
    # nothing consumed) or runs alone and returns exactly its frame. Payloads of 64 KiB and more
    # are copied without the GIL, which is where a second feed would otherwise slip in.
    parser = StreamFrameParser()
    sizes = [10, 1000, 70_000, 200_000]

    def worker(index, deadline):
        rng = random.Random(index)
        accepted = refused = 0
        while time.monotonic() < deadline:
            payload = bytes([index]) * rng.choice(sizes)
            try:
                frames = parser.feed(encode_stream_frame(payload))
            except RuntimeError as exc:
                assert "another feed() or finish()" in str(exc)
                refused += 1
                continue
            assert [f.payload for f in frames] == [payload]
            accepted += 1
        return accepted

    assert sum(run_threads(threads, worker)) > 0
    assert parser.buffered == 0


def test_a_token_stream_decoder_per_thread():
    batches = [TokenBatch.from_tokens([make_token(i) for i in range(start, start + 3000)], sequence_id=start)
               for start in (0, 3000, 6000)]
    stream = b"".join(encode_token_batch_frame(b) for b in batches) + END_STREAM_FRAME
    model = [model_token(i) for i in range(9000)]

    def worker(index, deadline):
        rng = random.Random(index)
        runs = 0
        while time.monotonic() < deadline or runs == 0:
            decoder, got, at = TokenStreamDecoder(), [], 0
            while at < len(stream):
                step = rng.randrange(1, 90_000)
                got.extend(decoder.feed(stream[at:at + step]))
                at += step
            decoder.finish()
            assert [t for b in got for t in as_model(b)] == model and decoder.done
            runs += 1
        return runs

    assert all(run_threads(12, worker))


# -- Arrow exports released from other threads --------------------------------------------------


def test_arrow_exports_released_from_other_threads():
    # The producer thread exports a batch it keeps mutating; consumer threads import the capsules
    # (which releases them when the import is done) or just drop them (the capsule destructor
    # releases them), on their own threads. Each import is the batch as it was at export time.
    batch = TokenBatch.from_tokens([make_token(i) for i in range(200)])
    model = [model_token(i) for i in range(50_000)]
    exports, ready, done = [], threading.Condition(), []

    def worker(index, deadline):
        if index == 0:
            made = 0
            while time.monotonic() < deadline:
                n = len(batch)
                capsules = batch.__arrow_c_array__()
                with ready:
                    exports.append((n, capsules))
                    ready.notify()
                made += 1
                if n > 20_000:
                    batch.clear()
                batch.extend([make_token(len(batch) + i) for i in range(50)])
            with ready:
                done.append(True)
                ready.notify_all()
            return made
        released = 0
        while True:
            with ready:
                while not exports and not done:
                    ready.wait(0.1)
                if not exports:
                    return released
                n, capsules = exports.pop()
            if index % 2:
                capsule_owner = type("Export", (), {"__arrow_c_array__": lambda self, schema=None: capsules})()
                imported = TokenBatch.from_arrow(capsule_owner)
                assert len(imported) == n and as_model(imported) == model[:n]
            del capsules
            released += 1

    counts = run_threads(16, worker)
    assert counts[0] > 0 and sum(counts[1:]) <= counts[0]


def test_pyarrow_record_batches_released_from_other_threads():
    pa = pytest.importorskip("pyarrow")   # in the test extra; free-threaded wheels may be missing
    batch = TokenBatch.from_tokens([make_token(i) for i in range(3000)])
    record = pa.record_batch(batch)
    exported = [pa.record_batch(batch) for _ in range(64)]
    batch.clear()
    batch.extend([make_token(5) for _ in range(10)])   # the exports keep the old state
    ids = [m[0] for m in (model_token(i) for i in range(3000))]

    def worker(index, deadline):
        mine = exported[index::16]
        for rb in mine:
            assert rb.column("id").to_pylist() == ids
        del mine, rb   # the release callbacks run on this thread
        return 1

    assert run_threads(16, worker) == [1] * 16
    del exported
    assert record.column("text").to_pylist() == [model_token(i)[2] for i in range(3000)]


# -- one QuillClient shared by many threads -------------------------------------------------------


def test_one_quill_client_shared_by_many_threads():
    from quill.client import QuillClient
    from quill.demo import SERVICE, ToyLanguageModel, create_demo_app, embed_texts
    from quill.server import serve_in_thread

    model = ToyLanguageModel()
    with serve_in_thread(create_demo_app()) as url, QuillClient(url, timeout_ms=30_000) as client:
        def worker(index, deadline):
            calls = 0
            while time.monotonic() < deadline or calls == 0:
                seed = index * 1000 + calls
                body = json.dumps({"prompt": "Hi", "max_tokens": 12, "seed": seed, "sequence_id": seed}).encode()
                batches = list(client.stream_tokens(SERVICE, "Generate", body))
                assert {b.sequence_id for b in batches} == {seed}
                assert [t.id for b in batches for t in b] == [i for i, _ in model.generate("Hi", 12, seed)]
                text = f"thread {index} call {calls}"
                tensor = client.call_tensor(SERVICE, "Embed", json.dumps({"input": [text], "dim": 32}).encode())
                np.testing.assert_array_equal(tensor.to_numpy(), embed_texts([text.encode()], 32))
                calls += 1
            return calls

        assert all(run_threads(16, worker))
