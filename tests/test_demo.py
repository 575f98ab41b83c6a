"""The demo inference service (quill.demo) on loopback: request layouts, determinism, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import urllib3

from quill.demo import SERVICE, VOCABULARY, ToyLanguageModel, create_demo_app, embed_texts, parse_generate_request
from quill.errors import BadRequestError
from quill.frames import END_STREAM_FRAME, TensorReceiver, TokenStreamDecoder, encode_tensor_frames
from quill.protocol.constants import TENSOR_FRAMES
from quill.server import serve_in_thread
from quill.tensor import Tensor


@pytest.fixture(scope="module")
def url():
    with serve_in_thread(create_demo_app()) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def http():
    return urllib3.PoolManager(retries=False)


TENSOR_HEADERS = {"Content-Type": TENSOR_FRAMES}


def post(http, url, method, body, **headers):
    return http.request("POST", f"{url}/{SERVICE}/{method}", body=body, headers=headers)


def tokens_of(response) -> list:
    decoder = TokenStreamDecoder()
    batches = decoder.feed(response.data)
    decoder.finish()
    return batches


def protobuf_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_generate_is_deterministic_and_honours_max_tokens(http, url):
    body = json.dumps({"prompt": "Once", "max_tokens": 50, "batch_size": 8, "seed": 3}).encode()
    first, second = tokens_of(post(http, url, "Generate", body)), tokens_of(post(http, url, "Generate", body))
    assert [b.token_ids() for b in first] == [b.token_ids() for b in second]
    assert sum(len(b) for b in first) == 50 and [b.is_final for b in first].count(True) == 1
    other_seed = tokens_of(post(http, url, "Generate", body.replace(b'"seed": 3', b'"seed": 4')))
    assert [b.token_ids() for b in other_seed] != [b.token_ids() for b in first]
    # every token id is in the built-in vocabulary and carries its text and a logprob
    for token in (t for b in first for t in b):
        assert token.text == VOCABULARY[token.id] and token.logprob < 0 and not token.is_special


def test_generate_zero_tokens_is_one_empty_final_batch(http, url):
    batches = tokens_of(post(http, url, "Generate", b'{"max_tokens": 0}'))
    assert [(len(b), b.is_final) for b in batches] == [(0, True)]


def test_generate_protobuf_request(http, url):
    ids = [5, 300, 7]
    packed = b"".join(protobuf_varint(i) for i in ids)
    body = b"\x0a" + protobuf_varint(len(packed)) + packed + b"\x10" + protobuf_varint(9) + b"\x1d\x00\x00\x80\x3f"
    batches = tokens_of(post(http, url, "Generate", body, **{"Content-Type": "application/proto"}))
    expected = [i for i, _ in ToyLanguageModel().generate(ids, 9)]
    assert [t.id for b in batches for t in b] == expected


@pytest.mark.parametrize("body, fragment", [
    (b'{"max_tokens": 100001}', "max_tokens"),
    (b'{"max_tokens": 5, "batch_size": 0}', "batch_size"),
    (b'{"prompt": 12}', "prompt"),
    (b'{"token_delay_ms": 5000}', "token_delay_ms"),
    (b'{"prompt": "x"', "not valid JSON"),
    (b'[1, 2]', "JSON object"),
    (b"\x0a\x05\x01", "runs past the end"),
    (b"\x13", "wire type"),  # field 2 with wire type 3 (groups are not supported)
    (b"\x08" + protobuf_varint(2**35), "input_ids"),  # a uint32 field holding 2**35
    (b"\x0a\x05" + protobuf_varint(2**32), "input_ids"),  # packed
])
def test_generate_bad_requests_are_400(http, url, body, fragment):
    content_type = "application/json" if body[:1] in b"{[" else "application/proto"
    r = post(http, url, "Generate", body, **{"Content-Type": content_type})
    assert r.status == 400 and r.headers["content-type"] == "application/problem+json"
    assert fragment in json.loads(r.data)["detail"]


def test_parse_generate_request_defaults_and_aliases():
    assert parse_generate_request(b"\n\x01\x00", "application/proto").prompt == [0]  # protobuf, not blank JSON
    params = parse_generate_request(b"")
    assert (params.prompt, params.max_tokens, params.batch_size, params.token_delay) == ("", 16, 1, None)
    params = parse_generate_request(b'{"max_new_tokens": 7, "token_delay_ms": 20}')
    assert (params.max_tokens, params.token_delay) == (7, 0.02)
    with pytest.raises(BadRequestError):
        parse_generate_request(b'{"max_tokens": true}')


def test_embed_layouts(http, url):
    r = post(http, url, "Embed", b'{"input": "solo", "dim": 16}')
    single = TensorReceiver().feed(r.data)
    assert single.shape == (1, 16) and np.array_equal(single.to_numpy(), embed_texts([b"solo"], 16))
    r = post(http, url, "Embed", b'{"input": ["a", "b"], "dim": 16, "dtype": "float16"}')
    half = TensorReceiver().feed(r.data)
    assert half.dtype.name == "float16"
    assert np.array_equal(half.to_numpy(), embed_texts([b"a", b"b"], 16).astype(np.float16))
    r = post(http, url, "Embed", b'{"input": ["a"], "dim": 4}', Accept="application/json")
    answer = json.loads(r.data)
    assert answer["shape"] == [1, 4] and answer["dtype"] == "float32"
    assert np.allclose(answer["data"], embed_texts([b"a"], 4))


def test_embed_tensor_and_protobuf_requests(http, url):
    ids = Tensor.from_numpy(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32))
    r = post(http, url, "Embed", b"".join(encode_tensor_frames(ids)), **TENSOR_HEADERS)
    rows = TensorReceiver().feed(r.data).to_numpy()
    assert rows.shape == (2, 256)
    assert np.array_equal(rows, embed_texts([ids.to_numpy()[0].tobytes(), ids.to_numpy()[1].tobytes()], 256))
    r = post(http, url, "Embed", b"\x0a\x02\x07\x08")  # EmbedRequest{input_ids: [7, 8]}
    assert np.array_equal(TensorReceiver().feed(r.data).to_numpy(),
                          embed_texts([np.array([7, 8], "<u4").tobytes()], 256))


@pytest.mark.parametrize("request_object", [{"input": [1]}, {"dim": 0}, {"dtype": "int8"},
                                            {"input": ["t"] * 300, "dim": 65536}])  # too many elements
def test_embed_bad_requests_are_400(http, url, request_object):
    r = post(http, url, "Embed", json.dumps(request_object).encode())
    assert r.status == 400 and json.loads(r.data)["title"] == "Invalid request"


def tensor_request(meta: bytes) -> bytes:
    """Tensor frames of a tensor with no elements: a TENSOR_META frame, then END_STREAM."""
    return b"\x10\0\0\0\0" + len(meta).to_bytes(4, "big") + meta + END_STREAM_FRAME


@pytest.mark.parametrize("rows", [65_537, 2**40, 2**63, 2**64 - 1])
def test_embed_of_many_empty_rows_is_400_not_a_huge_answer(http, url, rows):
    """A (rows, 0) tensor is 0 bytes on the wire; the answer would be rows x 256 floats."""
    meta = b"\x02" + rows.to_bytes(8, "little") + bytes(8) + b"\x01\x00" + bytes(8) + b"\x00\x00"  # float32, cpu
    body = tensor_request(meta)
    assert len(body) < 64
    r = post(http, url, "Embed", body, **TENSOR_HEADERS)
    assert r.status == 400 and "rows" in json.loads(r.data)["detail"]
    assert len(r.data) < 1000


def test_embed_row_limit_is_the_element_limit(http, url):
    ok = Tensor.from_numpy(np.zeros((65_536, 0), dtype=np.float32))  # 65,536 x 256 = the element limit
    r = post(http, url, "Embed", b"".join(encode_tensor_frames(ok)), **TENSOR_HEADERS)
    assert r.status == 200 and TensorReceiver().feed(r.data).shape == (65_536, 256)


@pytest.mark.parametrize("body", [b"\x08" + protobuf_varint(2**35), b"\x0a\x05" + protobuf_varint(2**32)])
def test_embed_protobuf_id_out_of_uint32_range_is_400(http, url, body):
    r = post(http, url, "Embed", body, **{"Content-Type": "application/proto"})
    assert r.status == 400 and "input_ids" in json.loads(r.data)["detail"]


def test_echo_bytes_and_tensor(http, url):
    assert post(http, url, "Echo", b"\x00\x01 any bytes").data == b"\x00\x01 any bytes"
    tensor = Tensor.from_numpy(np.linspace(0, 1, 100_000, dtype=np.float64), name="ramp")
    r = post(http, url, "Echo", b"".join(encode_tensor_frames(tensor)), **TENSOR_HEADERS)
    assert TensorReceiver().feed(r.data) == tensor


def test_server_side_token_delay_paces_the_stream():
    """With a per-token delay the tokens leave the server one by one (several frames reach the client)."""
    with serve_in_thread(create_demo_app(token_delay=0.01)) as base_url:
        r = urllib3.PoolManager(retries=False).request(
            "POST", f"{base_url}/{SERVICE}/Generate", body=b'{"max_tokens": 5}', preload_content=False)
        chunks = [c for c in r.read_chunked()]
    assert len(chunks) >= 5  # five TOKEN_BATCH frames and END_STREAM, sent as they were made
    decoder = TokenStreamDecoder()
    assert [len(b) for c in chunks for b in decoder.feed(c)] == [1] * 5


# ----------------------------------------------------------------------------------------
# Random input: the request parsers answer 400 (BadRequestError) or parse, nothing else
# ----------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_generate_parser_on_random_bytes(body):
    try:
        params = parse_generate_request(body)
    except BadRequestError as exc:
        assert exc.status == 400 and exc.problem.detail
    else:
        assert 0 <= params.max_tokens <= 100_000 and params.batch_size >= 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=20), st.integers(0, 100_000))
def test_generate_protobuf_round_trip(ids, max_tokens):
    packed = b"".join(protobuf_varint(i) for i in ids)
    body = b"\x0a" + protobuf_varint(len(packed)) + packed + b"\x10" + protobuf_varint(max_tokens)
    params = parse_generate_request(body)
    assert (params.prompt, params.max_tokens) == (ids, max_tokens)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["prompt", "max_tokens", "batch_size", "seed", "token_delay_ms",
                                        "sequence_id", "max_new_tokens"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=5))))
def test_generate_parser_on_random_json(obj):
    try:
        parse_generate_request(json.dumps(obj).encode())
    except BadRequestError as exc:
        assert exc.status == 400


def test_concurrent_streams_do_not_mix():
    """Eight clients stream different generations at once from a paced server; each gets its own."""
    from concurrent.futures import ThreadPoolExecutor

    from quill.client import QuillClient

    def generate(base_url: str, seed: int) -> list[int]:
        with QuillClient(base_url) as client:
            body = json.dumps({"prompt": "Hi", "max_tokens": 20, "seed": seed, "sequence_id": seed}).encode()
            batches = list(client.stream_tokens(SERVICE, "Generate", body))
        assert {b.sequence_id for b in batches} == {seed}
        return [t.id for b in batches for t in b]

    with serve_in_thread(create_demo_app(token_delay=0.002)) as base_url:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda seed: generate(base_url, seed), range(8)))
    model = ToyLanguageModel()
    assert results == [[i for i, _ in model.generate("Hi", 20, seed)] for seed in range(8)]
