"""The sans-IO protocol layer in memory, no sockets: requests as data, consumers fed arbitrary
splits, retry decisions, error mapping, Accept-Encoding and zstd framing."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from quill import Tensor, TokenBatch, Token
from quill.errors import (
    DecodeError,
    IncompleteStreamError,
    LimitExceededError,
    NotFoundError,
    QuillConnectionError,
    QuillTimeoutError,
    RateLimitedError,
    ServiceUnavailableError,
)
from quill.frames import END_STREAM_FRAME, TensorReceiver, encode_end_stream, encode_stream_frame, encode_token_batch_frame
from quill.protocol import compression
from quill.protocol.calls import ClientCore
from quill.protocol.constants import TENSOR_FRAMES, is_tensor_frames
from quill.protocol.responses import BytesConsumer, error_for_response, parse_retry_after
from quill.protocol.retries import RetryPolicy, RetryState, TransportError, quill_error_for

SVC, METHOD = "echo.v1.Echo", "Echo"


def core(**config):
    return ClientCore({"base_url": "http://example.test:8080/api", **config})


def body_bytes(request) -> bytes:
    body = request.body
    if body.chunks is not None:
        return b"".join(bytes(c) for c in body.iter_chunks())
    return b"".join(bytes(p) for p in body.parts)


def headers_of(request) -> dict:
    return {name.lower(): value for name, value in request.headers}


# ---------------------------------------------------------------- requests as data

def test_a_unary_request_is_data_the_transport_sends_as_is():
    request = core().request("unary", SVC, METHOD, b"\x00payload")
    assert (request.method, request.target, request.expect) == ("POST", b"/api/echo.v1.Echo/Echo", "bytes")
    assert headers_of(request) == {
        "host": "example.test:8080", "user-agent": headers_of(request)["user-agent"],
        "content-type": "application/proto", "accept": "application/proto; frames=none", "prefer": "prism=classic",
    }
    assert request.body.parts == [b"\x00payload"] and request.body.encoding is None
    assert request.call.url == "http://example.test:8080/api/echo.v1.Echo/Echo" and not request.idempotent


CALL_HEADERS = [
    # (expect, payload, Content-Type, Accept): docs/protocol.md, "Call kinds in the headers"
    ("unary", b"x", "application/proto", "application/proto; frames=none"),
    ("json", {"a": 1}, "application/json", "application/json"),
    ("messages", b"x", "application/proto", "application/proto; frames=messages"),
    ("messages", {"a": 1}, "application/json", "application/proto; frames=messages"),
    ("tokens", b"x", "application/proto", "application/proto; frames=tokens"),
    ("tokens", {"a": 1}, "application/json", "application/proto; frames=tokens"),
    ("tensor", Tensor.from_numpy(np.zeros(2, np.float32)), TENSOR_FRAMES, "application/proto; frames=tensor"),
    ("tensor", b"x", "application/proto", "application/proto; frames=tensor"),
    ("send_tensor", Tensor.from_numpy(np.zeros(2, np.float32)), TENSOR_FRAMES, "application/proto"),
    ("client_stream", [b"x"], "application/proto; frames=messages", "application/proto; frames=none"),
]


@pytest.mark.parametrize("expect, payload, content_type, accept", CALL_HEADERS)
def test_each_call_declares_its_kind_in_its_headers(expect, payload, content_type, accept):
    headers = headers_of(core().request(expect, SVC, METHOD, payload))
    assert (headers["content-type"], headers["accept"]) == (content_type, accept)


def test_a_wrong_kind_problem_becomes_wrong_kind_error_naming_the_call():
    from quill.errors import WrongKindError

    call = core().call_info(SVC, "Generate")
    body = b'{"type":"urn:quill:error:406","title":"Wrong kind of call","status":406,"quill_method_kind":"token_stream"}'
    error = error_for_response(406, {"content-type": "application/problem+json"}, body, call, "bytes")
    assert isinstance(error, WrongKindError) and error.method_kind == "token_stream"
    assert str(error).startswith("Generate is a token stream: use stream_tokens() (echo.v1.Echo/Generate at ")
    unknown = error_for_response(415, {"content-type": "application/problem+json"},
                                 body.replace(b"token_stream", b"bidi"), call, "bytes")
    assert unknown.hint == "Generate is of kind 'bidi', which this client cannot call"
    # the member alone, on another status, or a kind that is not a string: the status's own error
    assert type(error_for_response(400, {"content-type": "application/problem+json"}, body, call)).__name__ == \
        "BadRequestError"
    odd = body.replace(b'"token_stream"', b"7")
    assert not isinstance(error_for_response(406, {"content-type": "application/problem+json"}, odd, call),
                          WrongKindError)


def test_buffers_are_kept_as_buffers_and_tensors_as_views():
    array = np.arange(100_000, dtype=np.float32)
    request = core().request("unary", SVC, METHOD, array)
    assert np.shares_memory(np.frombuffer(request.body.parts[0], dtype=np.float32), array)
    tensor = Tensor.from_numpy(array)
    request = core().request("tensor", SVC, METHOD, tensor)
    assert headers_of(request)["content-type"] == TENSOR_FRAMES and is_tensor_frames(TENSOR_FRAMES)
    assert any(isinstance(p, memoryview) and np.shares_memory(np.frombuffer(p, np.float32), array)
               for p in request.body.parts)
    receiver = TensorReceiver()
    received = [t for t in (receiver.feed(bytes(p)) for p in request.body.parts) if t is not None]
    assert received[0] == tensor


def test_json_and_streams_and_compression():
    request = core().request("json", SVC, METHOD, {"a": [1, 2]})
    assert headers_of(request)["content-type"] == "application/json" and json.loads(body_bytes(request)) == {"a": [1, 2]}
    small = core(enable_compression=True).request("unary", SVC, METHOD, b"x" * 1023)
    big = core(enable_compression=True).request("unary", SVC, METHOD, b"x" * 1024)
    assert small.body.encoding is None and big.body.encoding == "zstd"
    assert headers_of(big)["accept-encoding"] == "zstd"
    decoder = compression.ZstdDecoder()
    assert decoder.decompress(body_bytes(big)) == b"x" * 1024
    stream = core().request("client_stream", SVC, METHOD, iter([b"a", b"bc"]))
    assert not stream.body.replayable or stream.body.rewindable is False
    assert body_bytes(stream) == encode_stream_frame(b"a") + encode_stream_frame(b"bc") + encode_end_stream()
    assert not stream.replayable  # a caller's iterator, once started, cannot be sent again


def test_header_caching_follows_header_changes():
    c = core()
    first = c.request("unary", SVC, METHOD, b"")
    again = c.request("unary", SVC, METHOD, b"")
    assert first.header_key == again.header_key and first.headers is again.headers
    c.set_header("Authorization", "Bearer t")
    changed = c.request("unary", SVC, METHOD, b"")
    assert changed.header_key != first.header_key and headers_of(changed)["authorization"] == "Bearer t"
    extra = c.request("unary", SVC, METHOD, b"", headers={"X-Once": "1"})
    assert extra.header_key is None and headers_of(extra)["x-once"] == "1"


@pytest.mark.parametrize("url,error", [
    ("ftp://h/", ValueError), ("http://", ValueError), ("http://h/?q=1", ValueError), ("http+unix://", ValueError),
    (42, TypeError),
])
def test_bad_base_urls_are_refused(url, error):
    with pytest.raises(error):
        ClientCore({"base_url": url})


def test_unix_socket_urls_and_idempotent_methods():
    c = ClientCore({"base_url": "http+unix://%2Frun%2Fq.sock/v1", "idempotent_methods": [f"{SVC}/{METHOD}"]})
    assert (c.endpoint.uds, c.endpoint.prefix, c.endpoint.host_header) == ("/run/q.sock", "/v1", "localhost")
    assert c.request("unary", SVC, METHOD, b"").idempotent
    assert not c.request("unary", SVC, "Other", b"").idempotent
    assert not c.request("unary", SVC, METHOD, b"", idempotent=False).idempotent
    with pytest.raises(ValueError):
        ClientCore({"base_url": "http://h", "idempotent_methods": ["no-slash"]})


# ---------------------------------------------------------------- consumers, fed any split

def splits(data: bytes, pieces: int = 3):
    for cut in itertools.combinations(range(1, len(data)), min(pieces - 1, len(data) - 1)):
        bounds = (0, *cut, len(data))
        yield [data[a:b] for a, b in zip(bounds, bounds[1:])]


def test_consumers_give_the_same_result_however_the_body_is_split():
    batch = TokenBatch.from_tokens([Token.with_text(1, "hi", 0), Token.with_text(2, "!", 1)], sequence_id=3)
    wire = encode_token_batch_frame(batch) + END_STREAM_FRAME
    c = core()
    request = c.request("tokens", SVC, METHOD, b"")
    for parts in itertools.islice(splits(wire), 200):
        consumer = c.consumer(request, {})
        items = [item for part in parts for item in consumer.feed(part)]
        consumer.finish()
        assert items == [batch] and consumer.done


def test_a_zstd_body_in_two_frames_split_anywhere():
    body = compression.compress(b"first|") + compression.compress(b"second")
    for parts in splits(body):
        consumer = BytesConsumer({"content-encoding": "zstd"}, 1 << 20, "s/M")
        for part in parts:
            consumer.feed(part)
        assert consumer.finish() == b"first|second"


def test_consumer_limits_and_endings():
    with pytest.raises(LimitExceededError, match="max_response_bytes"):
        BytesConsumer({"content-length": "11"}, 10, "s/M")
    bomb = compression.compress(bytes(50 << 20))
    with pytest.raises(LimitExceededError):
        BytesConsumer({"content-encoding": "zstd"}, 1 << 20, "s/M").feed(bomb)
    with pytest.raises(DecodeError, match="Content-Encoding"):
        BytesConsumer({"content-encoding": "br"}, 10, "s/M")
    c = core()
    consumer = c.consumer(c.request("messages", SVC, METHOD, b""), {})
    assert consumer.feed(encode_stream_frame(b"one")) == [b"one"]
    with pytest.raises(IncompleteStreamError, match="without END_STREAM after 1 item"):
        consumer.finish()


# ---------------------------------------------------------------- retry decisions

@pytest.mark.parametrize("failure,idempotent,expected", [
    (TransportError("connect", sent=False, detail="refused"), False, 0.05),
    (TransportError("send", sent=False, detail="reset", reused=True), False, 0.0),
    (TransportError("response", sent=True, detail="closed"), False, None),
    (TransportError("response", sent=True, detail="closed"), True, 0.05),
    (TransportError("tls", sent=False, detail="bad cert"), True, None),
    (TransportError("body", sent=True, detail="cut"), True, None),
])
def test_what_is_retried(failure, idempotent, expected):
    policy = RetryPolicy(retries=2, status_retries=0, backoff_s=0.05)
    assert policy.delay(failure, True, idempotent, 5.0, RetryState()) == expected


def test_retries_are_bounded_and_need_a_replayable_body():
    policy = RetryPolicy(retries=2, status_retries=1, backoff_s=0.1)
    state = RetryState()
    refused = TransportError("connect", sent=False, detail="refused")
    assert [policy.delay(refused, True, False, 5.0, state) for _ in range(3)] == [0.1, 0.2, None]
    assert policy.delay(refused, False, True, 5.0, RetryState()) is None
    busy = error_for_response(503, {"retry-after": "1.5"}, b"", None)
    state = RetryState()
    assert policy.delay(busy, True, False, 5.0, state) == 1.5 and policy.delay(busy, True, False, 5.0, state) is None
    assert policy.delay(busy, True, False, 1.0, RetryState()) is None  # waiting beyond the timeout: give up


def test_transport_errors_become_quill_errors():
    assert isinstance(quill_error_for(TransportError("connect", sent=False, detail="x", timeout=True), "c", 1), QuillTimeoutError)
    error = quill_error_for(TransportError("body", sent=True, detail="body cut short", expected=7), "c", 1)
    assert isinstance(error, QuillConnectionError) and "7 more bytes" in str(error)


def test_error_answers_and_retry_after():
    problem = b'{"type":"urn:quill:error:404","title":"Method not found","status":404,"detail":"no"}'
    error = error_for_response(404, {"content-type": "application/problem+json"}, problem, None)
    assert isinstance(error, NotFoundError) and error.problem.title == "Method not found"
    assert isinstance(error_for_response(429, {}, b"slow down", None), RateLimitedError)
    assert isinstance(error_for_response(503, {}, b"", None), ServiceUnavailableError)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("-3") == 0.0


@pytest.mark.parametrize("header,accepted", [
    ("zstd", True), ("gzip, zstd;q=0.5", True), ("zstd;q=0", False), ("zstd; Q=0.000", False),
    ("gzip", False), ("*", True), ("*;q=0", False), ("zstd;q=0, *", False), ("zstd;q=bogus", False), ("", False),
])
def test_accept_encoding_q_values(header, accepted):
    assert compression.accepts_zstd(header) is accepted
