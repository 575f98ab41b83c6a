"""Threaded stress: every compiled method that releases the GIL, raced by threads that mutate.

One thread mutates an object while others encode, decode or read it. Asserted: no crash, only
the documented errors, and every result a consistent snapshot (for a TokenBatch: a prefix of
the one token sequence every mutation keeps it on). Each test runs QUILL_STRESS_SECONDS
(default 0.5) seconds; set it higher for a long run, e.g. under the sanitizer build:

    QUILL_STRESS_SECONDS=120 python tools/native_builds.py run asan /tmp/quill-asan \\
        python -m pytest tests/test_threads.py
"""

import os
import pickle
import random
import sys
import sysconfig
import time

import numpy as np
import pytest

from quill._core.casts import cast
from quill._core.frames import (
    MessageStreamDecoder,
    StreamFrameParser,
    TensorFrameParser,
    TensorReceiver,
    TokenStreamDecoder,
    encode_stream_frame,
    encode_tensor_frame,
    encode_tensor_frames,
    encode_token_batch_frame,
    END_STREAM_FRAME,
)
from quill._core.tensor import buffers_equal
from quill._core.tokens import Token, TokenBatch, pin_batch
from quill.errors import QuillError

sys.path.insert(0, os.path.dirname(__file__))
from thread_runs import SECONDS, run_together  # noqa: E402
from quill.frames import encode_end_stream
from quill.tensor import Tensor

PERIOD = 61           # token i of every batch here is periodic_token(i)
MAX_TOKENS = 60000    # the mutator clears a batch past this (65,535 is the wire limit)
NOGIL_TOKENS = 4096   # encode/decode release the GIL from this many tokens


@pytest.fixture(autouse=True)
def frequent_thread_switches():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def race(*workers):
    """Run each ``worker(deadline)`` in its own thread until the deadline; re-raise the first
    failure. Returns how many loop iterations the workers reported, in order."""
    results = run_together(workers)
    # The figures of a long run (docs/bad-inputs.md): pytest -s shows them.
    print(f"\n{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}: {SECONDS:g} s, "
          f"loop iterations per thread {results}")
    return results


def periodic_token(i):
    k = i % PERIOD
    return Token(k, k, None if k % 7 == 3 else "tok%d-%s" % (k, "é" * (k % 5)), -0.125 * k if k % 3 else None,
                 k == 0)


PERIODIC = TokenBatch.from_tokens([periodic_token(i) for i in range(MAX_TOKENS + 2 * PERIOD)])


def assert_periodic_prefix(batch):
    expected = PERIODIC[:len(batch)]
    expected.sequence_id = batch.sequence_id
    assert batch == expected, f"torn batch of {len(batch)} tokens"


# -- TokenBatch -------------------------------------------------------------------------------


def mutate_periodic_batch(batch, deadline, seed):
    """Every operation keeps ``batch`` a prefix of PERIODIC: appends of the next tokens in every
    way there is (its own tokens, itself, slices of itself, fresh tokens), and clear()."""
    rng = random.Random(seed)
    operations = 0
    while time.monotonic() < deadline:
        n = len(batch)
        choice = rng.randrange(9)
        if n > MAX_TOKENS:
            batch.clear()
            batch.extend(PERIODIC[:NOGIL_TOKENS])
        elif choice == 0:
            batch.add(periodic_token(n))
        elif choice == 1 and n >= PERIOD:
            batch.add(batch[n - PERIOD])                          # one of its own tokens
        elif choice == 2 and n % PERIOD == 0 and 2 * n <= MAX_TOKENS:
            batch.extend(batch)                                   # itself
        elif choice == 3 and n >= PERIOD:
            batch.extend(batch[n - PERIOD:])                      # a slice of itself
        elif choice == 4 and n >= PERIOD:
            batch.extend(batch.tokens()[n - PERIOD:])             # its own token objects
        elif choice == 5:
            batch.extend([periodic_token(n + i) for i in range(rng.randrange(1, 200))])
        elif choice == 6 and rng.random() < 0.05:
            batch.clear()
        elif choice == 7:
            batch.sequence_id = rng.choice([None, 7])              # header fields are snapshot too
        else:
            batch.extend(PERIODIC[n:n + rng.randrange(1, 300)])
        operations += 1
    return operations


def fresh_periodic_batch():
    batch = TokenBatch()
    batch.extend(PERIODIC[:MAX_TOKENS])   # room for MAX_TOKENS: adds fit within capacity
    batch.clear()
    batch.extend(PERIODIC[:NOGIL_TOKENS])
    return batch


def test_token_batch_encode_while_mutated():
    # Issue 9 defect 2: encode() released the GIL and re-read the count, then an add() within
    # capacity made it write past the end of its output (segfault, "corrupted top size").
    batch = fresh_periodic_batch()

    def encode(deadline):
        encodes = 0
        while time.monotonic() < deadline:
            wire = batch.encode()
            decoded = TokenBatch.decode(wire)
            assert_periodic_prefix(decoded)
            assert decoded.sequence_id in (None, 7) and len(wire) == decoded.encoded_size()
            encodes += 1
        return encodes

    operations, encodes, _ = race(lambda d: mutate_periodic_batch(batch, d, 1), encode, encode)
    assert operations > 0 and encodes > 0


def test_token_batch_readers_while_mutated():
    batch = fresh_periodic_batch()

    def read(deadline):
        reads = 0
        while time.monotonic() < deadline:
            kind = reads % 7
            if kind == 0:
                assert_periodic_prefix(TokenBatch.from_tokens(batch.tokens()))
            elif kind == 1:
                texts = batch.texts()
                assert texts == PERIODIC[:len(texts)].texts()
            elif kind == 2:
                assert_periodic_prefix(pickle.loads(pickle.dumps(batch)))
            elif kind == 3:
                assert_periodic_prefix(batch[:])
            elif kind == 4:
                pin = pin_batch(batch)
                ids = pin.column("ids").cast("I").tolist()
                assert ids == [i % PERIOD for i in range(len(pin))]
                assert bytes(pin.column("text")) == PERIODIC[:len(pin)].text_bytes()
            elif kind == 5:
                copy = TokenBatch()
                copy.extend(batch)
                assert_periodic_prefix(copy)
            else:
                ids = batch.ids_array()
                assert (ids == np.arange(len(ids)) % PERIOD).all()
            reads += 1
        return reads

    operations, *reads = race(lambda d: mutate_periodic_batch(batch, d, 2), read, read)
    assert operations > 0 and all(reads)


def test_token_batch_decode_of_a_buffer_being_rewritten():
    # decode() parses large batches without the GIL straight from the caller's buffer: bytes
    # changing underneath may give a DecodeError or a different batch, never a crash or a batch
    # that does not round-trip.
    original = PERIODIC[:8000].encode()
    wire = bytearray(original)

    def scribble(deadline):
        rng = random.Random(3)
        writes = 0
        while time.monotonic() < deadline:
            if writes % 64 == 0:
                wire[:] = original        # same length: no resize, allowed while exported
            at = rng.randrange(3, len(wire) - 4)
            wire[at:at + 4] = rng.randbytes(4)
            writes += 1
        return writes

    def decode(deadline):
        decodes = 0
        while time.monotonic() < deadline:
            decodes += 1
            try:
                batch = TokenBatch.decode(wire)
            except QuillError:
                continue
            assert TokenBatch.decode(batch.encode()) == batch
            batch.texts()
        return decodes

    race(scribble, decode, decode)


# -- frame parsers ----------------------------------------------------------------------------


def tensor_stream():
    data = np.arange(300_000, dtype=np.float32)    # payload chunks over the 64 KiB nogil threshold
    return b"".join(bytes(p) for p in encode_tensor_frames(Tensor.from_numpy(data), chunk_size=200_000)), data


def message_stream():
    return b"".join(encode_stream_frame(bytes([i]) * 100_000) for i in range(5)) + encode_end_stream()


def token_stream():
    return encode_token_batch_frame(PERIODIC[:5000]) * 3 + END_STREAM_FRAME


PARSERS = {
    "TensorFrameParser": (TensorFrameParser, lambda: encode_tensor_frame(0x11, bytes(300_000)) * 3),
    "StreamFrameParser": (StreamFrameParser, message_stream),
    "MessageStreamDecoder": (MessageStreamDecoder, message_stream),
    "TensorReceiver": (TensorReceiver, lambda: tensor_stream()[0]),
    "TokenStreamDecoder": (TokenStreamDecoder, token_stream),
}


@pytest.mark.parametrize("make_parser, make_stream", PARSERS.values(), ids=PARSERS.keys())
def test_one_parser_fed_from_two_threads(make_parser, make_stream):
    # Parsers are documented single-threaded, but a second feed() must be refused, not race the
    # first one's GIL-free copy (which it could free or overrun).
    stream = make_stream()
    chunks = [stream[i:i + 150_001] for i in range(0, len(stream), 150_001)]
    shared = {"parser": make_parser()}

    def feed(deadline):
        feeds = 0
        while time.monotonic() < deadline:
            parser = shared["parser"]
            for chunk in chunks:
                try:
                    parser.feed(chunk)
                except QuillError:    # chunks interleaved by the two threads: a bad stream
                    break             # (before RuntimeError: StreamCancelledError is one too)
                except RuntimeError as exc:
                    assert "another feed() or finish()" in str(exc)
            try:
                parser.finish()
            except (RuntimeError, QuillError):
                pass
            shared["parser"] = make_parser()
            feeds += 1
        return feeds

    race(feed, feed)


def test_tensor_receiver_result_is_whole_while_its_input_changes():
    # The receiver copies from the caller's buffer without the GIL: a chunk rewritten meanwhile
    # changes payload bytes (or breaks a header), never the shape or the memory it writes to.
    stream, data = tensor_stream()
    header_end = len(stream) - len(data.tobytes()) - 9 * 2    # META frame plus first chunk header
    chunk = bytearray(stream)

    def scribble(deadline):
        rng = random.Random(4)
        writes = 0
        while time.monotonic() < deadline:
            at = rng.randrange(header_end, len(chunk) - 9)
            chunk[at] ^= 0xFF
            writes += 1
        return writes

    def receive(deadline):
        received = 0
        while time.monotonic() < deadline:
            receiver = TensorReceiver()
            try:
                tensor = receiver.feed(chunk)
            except QuillError:
                continue
            if tensor is not None:
                assert tensor.shape == [300_000] and tensor.to_numpy().nbytes == data.nbytes
                received += 1
        return received

    race(scribble, receive)


def test_encoders_and_equality_of_buffers_being_rewritten():
    buffer = bytearray(200_000)

    def scribble(deadline):
        rng = random.Random(5)
        writes = 0
        while time.monotonic() < deadline:
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
            writes += 1
        return writes

    def encode(deadline):
        rounds = 0
        while time.monotonic() < deadline:
            assert len(encode_tensor_frame(0x11, buffer)) == 9 + len(buffer)
            assert len(encode_stream_frame(buffer)) == 3 + 1 + len(buffer)
            buffers_equal(buffer, buffer)
            rounds += 1
        return rounds

    race(scribble, encode, encode)


# -- casts ------------------------------------------------------------------------------------


@pytest.mark.skipif(bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
                    reason="free-threaded, setting .shape while another thread reads the array is a race "
                           "inside numpy itself (numpy's thread-safety docs): numpy's shape getter already "
                           "reads torn dimensions, before any quill code runs")
def test_cast_while_the_source_view_changes_shape():
    # The strided kernel read src's dimensions through numpy's dimension storage, which setting
    # .shape frees; it now works on a copy taken with the GIL held.
    base = np.random.default_rng(6).standard_normal((64, 2, 3000)).astype(np.float32)
    view = base[:, 0:1, :]            # rows 2 apart: strided, and reshapable without a copy
    expected = view.astype(np.float16).ravel()

    def reshape(deadline):
        reshapes = 0
        while time.monotonic() < deadline:
            view.shape = (64, 3000)
            view.shape = (64, 1, 3000)
            reshapes += 2
        return reshapes

    def convert(deadline):
        casts = 0
        while time.monotonic() < deadline:
            try:
                result = cast(view, "float16")
            except RuntimeError as exc:     # the shape changed between planning and running
                assert "changed shape" in str(exc)
                continue
            assert np.array_equal(result.ravel(), expected, equal_nan=True)
            casts += 1
        return casts

    race(reshape, convert, convert)
