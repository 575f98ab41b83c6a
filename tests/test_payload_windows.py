"""Payload windows: a parser hands out the rest of the payload it is filling, a reader writes the
stream's next bytes into it and commits them (the clients read large payloads from the socket
straight into place this way). Whatever mixes of feed() and windows deliver a stream, the result
is what one feed() of the whole stream gives; misuse is refused before any memory is touched.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quill._core.tokens import Token, TokenBatch
from quill.frames import (
    END_STREAM_FRAME,
    MessageStreamDecoder,
    TensorReceiver,
    TokenStreamDecoder,
    encode_end_stream,
    encode_stream_frame,
    encode_tensor_frames,
    encode_token_batch_frame,
)
from quill.tensor import Tensor

MESSAGES = [bytes(range(256)) * 300, b"", b"small", bytes(70_000)]
MESSAGE_WIRE = b"".join(encode_stream_frame(m) for m in MESSAGES) + encode_end_stream()
TENSOR = Tensor.from_numpy(np.arange(50_000, dtype=np.float32).reshape(100, 500), name="w")
TENSOR_WIRE = b"".join(bytes(p) for p in encode_tensor_frames(TENSOR, chunk_size=65_536))
BATCHES = [TokenBatch.from_tokens([Token(i, j, text="x" * j) for j in range(300)]) for i in range(3)]
TOKEN_WIRE = b"".join(encode_token_batch_frame(b) for b in BATCHES) + END_STREAM_FRAME

READERS = {
    "messages": (MessageStreamDecoder, MESSAGE_WIRE, MESSAGES),
    "tensor": (TensorReceiver, TENSOR_WIRE, TENSOR),
    "tokens": (TokenStreamDecoder, TOKEN_WIRE, BATCHES),
}


def collect(results: list, got) -> None:
    if isinstance(got, list):
        results.extend(got)
    elif got is not None:
        results.append(got)


def deliver(parser, wire: bytes, steps) -> list:
    """Deliver ``wire``: each step either fills part of the window on offer or feeds a chunk."""
    results: list = []
    position = 0
    steps = iter(steps)
    while position < len(wire):
        size, use_window = next(steps, (len(wire), False))
        window = parser.payload_window(1)
        if use_window and window is not None:
            n = min(size, len(window), len(wire) - position)
            memoryview(window)[:n] = wire[position:position + n]
            collect(results, parser.commit(window, n))
        else:
            n = min(size, len(wire) - position)
            collect(results, parser.feed(wire[position:position + n]))
        position += n
    parser.finish()
    return results


def expected(name: str):
    return [READERS[name][2]] if name == "tensor" else READERS[name][2]


@pytest.mark.parametrize("name", READERS)
@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(1, 90_000), st.booleans()), max_size=60))
def test_any_mix_of_windows_and_feeds_gives_what_one_feed_gives(name, steps):
    parser_class, wire, _ = READERS[name]
    assert deliver(parser_class(), wire, steps) == expected(name)


@pytest.mark.parametrize("name", READERS)
def test_whole_windows_carry_every_large_payload(name):
    """With a window taken whenever one is on offer, only the headers go through feed()."""
    parser_class, wire, _ = READERS[name]
    parser = parser_class()
    results: list = []
    fed = position = 0
    while position < len(wire):
        window = parser.payload_window(1024)
        if window is None:
            collect(results, parser.feed(wire[position:position + 1]))
            fed += 1
            position += 1
            continue
        n = len(window)
        memoryview(window)[:] = wire[position:position + n]
        collect(results, parser.commit(window, n))
        position += n
    parser.finish()
    assert results == expected(name)
    assert fed < len(wire) // 20


def started_message_decoder():
    decoder = MessageStreamDecoder()
    decoder.feed(MESSAGE_WIRE[:10])
    return decoder


def test_a_window_is_offered_only_mid_payload_and_above_min_size():
    decoder = MessageStreamDecoder()
    assert decoder.payload_window(1) is None  # between frames
    decoder.feed(MESSAGE_WIRE[:10])  # 4 header bytes and 6 payload bytes of a 76,800-byte message
    assert len(decoder.payload_window(1)) == 76_800 - 6
    assert decoder.payload_window(76_800) is None


def test_the_window_writes_into_the_callers_out_buffer():
    out = np.zeros(TENSOR.size_bytes, dtype=np.uint8)
    receiver = TensorReceiver(out=out)
    receiver.feed(TENSOR_WIRE[:200])  # the meta frame, the first payload frame's header, some payload
    window = receiver.payload_window(1)
    memoryview(window)[:4] = b"\x01\x02\x03\x04"
    offset = 65_536 - len(window)
    assert out[offset:offset + 4].tolist() == [1, 2, 3, 4]  # the window is out itself: no copy between


def test_misuse_is_refused():
    decoder = started_message_decoder()
    window = decoder.payload_window(1)
    other = started_message_decoder().payload_window(1)
    with pytest.raises(ValueError, match="handed out last"):
        decoder.commit(other, 1)
    with pytest.raises(ValueError, match="commit\\(\\) of"):
        decoder.commit(window, len(window) + 1)
    with pytest.raises(ValueError, match="commit\\(\\) of"):
        decoder.commit(window, -1)
    with pytest.raises(TypeError):
        decoder.commit(None, 0)
    view = memoryview(window)
    with pytest.raises(BufferError, match="still held"):
        decoder.commit(window, 0)
    with pytest.raises(RuntimeError, match="view of its payload window is held"):
        decoder.feed(b"x")
    with pytest.raises(RuntimeError, match="view of its payload window is held"):
        decoder.finish()
    view.release()
    assert decoder.commit(window, 0) == []
    with pytest.raises(ValueError, match="handed out last"):
        decoder.commit(window, 0)  # single use
    with pytest.raises(BufferError, match="already committed"):
        memoryview(window)
    assert len(window) == 0


def test_feeding_abandons_the_window_and_its_memory_can_no_longer_be_reached():
    decoder = started_message_decoder()
    window = decoder.payload_window(1)
    assert decoder.feed(MESSAGE_WIRE[10:]) == MESSAGES
    with pytest.raises(BufferError, match="abandoned"):
        memoryview(window)  # the published message stays immutable
    with pytest.raises(ValueError, match="handed out last"):
        decoder.commit(window, 1)


def test_a_new_window_replaces_the_previous_one():
    decoder = started_message_decoder()
    first = decoder.payload_window(1)
    second = decoder.payload_window(1)
    with pytest.raises(BufferError):
        memoryview(first)
    held = memoryview(second)
    with pytest.raises(RuntimeError, match="previous window is held"):
        decoder.payload_window(1)
    held.release()


def test_a_window_keeps_its_memory_alive_after_the_parser_is_gone():
    decoder = started_message_decoder()
    window = decoder.payload_window(1)
    del decoder
    gc.collect()
    memoryview(window)[:] = b"\xab" * len(window)  # writes into memory the window still owns
    assert bytes(memoryview(window)[:2]) == b"\xab\xab"


def test_no_window_after_an_error_or_the_end():
    decoder = MessageStreamDecoder(max_frame_size=100)
    with pytest.raises(ValueError):
        decoder.feed(MESSAGE_WIRE[:10])
    assert decoder.payload_window(1) is None
    ended = MessageStreamDecoder()
    ended.feed(MESSAGE_WIRE)
    assert ended.done and ended.payload_window(1) is None


def test_a_short_window_then_finish_is_an_incomplete_stream():
    decoder = started_message_decoder()
    window = decoder.payload_window(1)
    memoryview(window)[:100] = MESSAGE_WIRE[10:110]
    assert decoder.commit(window, 100) == []
    with pytest.raises(ValueError, match="ended inside a stream frame"):
        decoder.finish()
