"""The server's method discovery and its refusal of calls of the wrong kind (docs/protocol.md,
"Call kinds in the headers" and "Method discovery"), on every engine, driven by urllib3 and curl
rather than quill's own client."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import urllib3

from quill._core.tokens import Token, TokenBatch
from quill.frames import MessageStreamDecoder, TensorReceiver, TokenStreamDecoder, encode_end_stream, \
    encode_stream_frame, encode_tensor_frames
from quill.server import DEFAULT_PUBLIC_PATHS, BearerAuth, QuillApp, serve_in_thread
from quill.tensor import Tensor

SVC = "kinds.v1.Kinds"
PROTO = "application/proto"
JSON = "application/json"
ONE = "application/proto; frames=none"
MESSAGES = "application/proto; frames=messages"
TOKENS = "application/proto; frames=tokens"
TENSOR = "application/proto; frames=tensor"
DESCRIBE_PATH = "/.well-known/quill/methods"  # docs/protocol.md, "Method discovery"


def build_app(**options) -> QuillApp:
    """One method of each kind, each recording that it ran."""
    app = QuillApp(**options)
    app.ran = []

    @app.unary(f"{SVC}/Echo")
    def echo(request, context):
        """Answer the request unchanged.

            Any bytes, or JSON.
        """
        app.ran.append("Echo")
        return request

    @app.server_stream(f"{SVC}/Count")
    def count(request, context):
        """Count from 0 to the number in the request."""
        app.ran.append("Count")
        for i in range(int(request or b"3")):
            yield str(i).encode()

    @app.client_stream(f"{SVC}/Concat")
    async def concat(messages, context):
        """Join the messages with '|'."""
        app.ran.append("Concat")
        return b"|".join([m async for m in messages])

    @app.token_stream(f"{SVC}/Spell")
    def spell(request, context):
        """Spell the request, one token per letter."""
        app.ran.append("Spell")
        for position, letter in enumerate(request.decode() or "ab"):
            yield TokenBatch.from_tokens([Token(ord(letter), position, text=letter)])

    @app.tensor(f"{SVC}/Double")
    def double(request, context):
        """Double a tensor; the bytes b"t" give the tensor [1, 2], other bytes come back as bytes."""
        app.ran.append("Double")
        if isinstance(request, Tensor):
            return Tensor.from_numpy(request.to_numpy() * 2)
        return Tensor.from_numpy(np.array([1, 2], dtype=np.int32)) if request == b"t" else request

    app.add_method("other.v1.Plain/NoDoc", lambda request, context: request)
    return app


@pytest.fixture(scope="module")
def served(engine):
    app = build_app()
    with serve_in_thread(app, engine=engine) as url:
        yield app, url


@pytest.fixture(scope="module")
def http():
    with urllib3.PoolManager(retries=False, timeout=10) as pool:
        yield pool


def post(http, url: str, method: str, body: bytes = b"", **headers: str):
    return http.request("POST", f"{url}/{SVC}/{method}", body=body, headers=headers)


def problem_of(response) -> dict:
    assert response.headers["content-type"] == "application/problem+json", response.data[:200]
    return json.loads(response.data)


EXPECTED_DOCUMENT = {"services": [
    {"name": SVC, "methods": [
        {"name": "Echo", "kind": "unary", "request": [PROTO, JSON], "response": [ONE, JSON],
         "doc": "Answer the request unchanged.\n\nAny bytes, or JSON."},
        {"name": "Count", "kind": "server_stream", "request": [PROTO, JSON], "response": [MESSAGES],
         "doc": "Count from 0 to the number in the request."},
        {"name": "Concat", "kind": "client_stream", "request": [MESSAGES], "response": [ONE, JSON],
         "doc": "Join the messages with '|'."},
        {"name": "Spell", "kind": "token_stream", "request": [PROTO, JSON], "response": [TOKENS, JSON],
         "doc": "Spell the request, one token per letter."},
        {"name": "Double", "kind": "tensor", "request": [TENSOR, PROTO, JSON], "response": [TENSOR, ONE, JSON],
         "doc": 'Double a tensor; the bytes b"t" give the tensor [1, 2], other bytes come back as bytes.'},
    ]},
    {"name": "other.v1.Plain", "methods": [
        {"name": "NoDoc", "kind": "unary", "request": [PROTO, JSON], "response": [ONE, JSON], "doc": None},
    ]},
]}


# ---------------------------------------------------------------- the description

def test_the_description_lists_every_method_with_kind_content_types_and_doc(served, http):
    _, url = served
    response = http.request("GET", f"{url}{DESCRIBE_PATH}")
    assert response.status == 200 and response.headers["content-type"] == JSON
    assert json.loads(response.data) == EXPECTED_DOCUMENT


def test_the_description_answers_head_and_refuses_post(served, http):
    _, url = served
    head = http.request("HEAD", f"{url}{DESCRIBE_PATH}")
    assert head.status == 200 and head.data == b""
    refused = http.request("POST", f"{url}{DESCRIBE_PATH}", body=b"{}")
    assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD"
    assert problem_of(refused)["status"] == 405


def test_curl_reads_the_description(served):
    curl = shutil.which("curl")
    if curl is None:  # .ci/run installs curl, as for tests/test_server_curl.py
        pytest.fail("curl is not installed; install it (apt-get install curl)", pytrace=False)
    _, url = served
    done = subprocess.run([curl, "-sS", "--fail", "--max-time", "20", f"{url}{DESCRIBE_PATH}"],
                          capture_output=True, timeout=30, check=True)
    assert json.loads(done.stdout) == EXPECTED_DOCUMENT


def test_the_description_is_behind_auth_unless_made_public(engine, http):
    with serve_in_thread(build_app(auth=BearerAuth("s3cret")), engine=engine) as url:
        refused = http.request("GET", f"{url}{DESCRIBE_PATH}")
        assert refused.status == 401 and problem_of(refused)["title"] == "Unauthorized"
        allowed = http.request("GET", f"{url}{DESCRIBE_PATH}", headers={"Authorization": "Bearer s3cret"})
        assert allowed.status == 200 and json.loads(allowed.data) == EXPECTED_DOCUMENT
    opened = build_app(auth=BearerAuth("s3cret"), public_paths=DEFAULT_PUBLIC_PATHS + (DESCRIBE_PATH,))
    with serve_in_thread(opened, engine=engine) as url:
        assert http.request("GET", f"{url}{DESCRIBE_PATH}").status == 200
        assert post(http, url, "Echo", b"x").status == 401  # the methods stay closed


# ---------------------------------------------------------------- calls of the wrong kind

FRAMES = encode_stream_frame(b"a") + encode_end_stream()
WRONG_KIND = [
    # (method, its kind, headers, status): the declared body (415) or answer (406) it does not have
    ("Echo", "unary", {"Accept": MESSAGES}, 406),
    ("Echo", "unary", {"Accept": TOKENS}, 406),
    ("Echo", "unary", {"Accept": TENSOR}, 406),
    ("Echo", "unary", {"Content-Type": MESSAGES, "Accept": ONE}, 415),
    ("Echo", "unary", {"Content-Type": TENSOR}, 415),
    ("Count", "server_stream", {"Accept": ONE}, 406),
    ("Count", "server_stream", {"Accept": TOKENS}, 406),
    ("Count", "server_stream", {"Accept": JSON}, 406),
    ("Count", "server_stream", {"Content-Type": MESSAGES, "Accept": ONE}, 415),
    ("Concat", "client_stream", {"Content-Type": MESSAGES, "Accept": MESSAGES}, 406),
    ("Concat", "client_stream", {"Content-Type": MESSAGES, "Accept": TOKENS}, 406),
    ("Concat", "client_stream", {"Content-Type": JSON, "Accept": JSON}, 415),
    ("Concat", "client_stream", {"Content-Type": PROTO, "Accept": ONE}, 415),  # call(): one message
    ("Concat", "client_stream", {"Content-Type": "application/proto; frames=none"}, 415),
    ("Concat", "client_stream", {"Content-Type": TENSOR}, 415),
    ("Spell", "token_stream", {"Accept": ONE}, 406),
    ("Spell", "token_stream", {"Accept": MESSAGES}, 406),
    ("Spell", "token_stream", {"Accept": TENSOR}, 406),
    ("Spell", "token_stream", {"Content-Type": TENSOR, "Accept": TOKENS}, 415),
    ("Spell", "token_stream", {"Content-Type": MESSAGES, "Accept": ONE}, 415),
    ("Double", "tensor", {"Accept": MESSAGES}, 406),
    ("Double", "tensor", {"Accept": TOKENS}, 406),
    ("Double", "tensor", {"Content-Type": MESSAGES, "Accept": ONE}, 415),
    ("Double", "tensor", {"Accept": "application/proto; frames=unheard-of"}, 406),
]


@pytest.mark.parametrize("method, kind, headers, status", WRONG_KIND,
                         ids=[f"{m}-{s}-{'-'.join(h.values())}" for m, _, h, s in WRONG_KIND])
def test_a_call_of_the_wrong_kind_is_refused_naming_the_method_kind(served, http, method, kind, headers, status):
    app, url = served
    app.ran.clear()
    response = post(http, url, method, FRAMES, **headers)
    assert response.status == status, response.data[:300]
    problem = problem_of(response)
    assert problem["title"] == "Wrong kind of call" and problem["status"] == status
    assert problem["quill_method_kind"] == kind and problem["instance"] == f"/{SVC}/{method}"
    assert problem["detail"].startswith(f"{SVC}/{method} is ") and f"(kind {kind})" in problem["detail"]
    if status == 415:  # the Content-Types the method takes
        assert response.headers["accept"] == ", ".join(EXPECTED_KIND_REQUEST[kind])
    assert app.ran == []  # refused from the headers, before the handler


EXPECTED_KIND_REQUEST = {m["kind"]: m["request"] for m in EXPECTED_DOCUMENT["services"][0]["methods"]}


def test_a_tensor_method_is_refused_once_its_answer_is_not_what_the_call_reads(served, http):
    app, url = served
    got_tensor = post(http, url, "Double", b"t", Accept=ONE)  # the handler answers a Tensor
    assert got_tensor.status == 406 and problem_of(got_tensor)["quill_method_kind"] == "tensor"
    assert "answered a tensor" in problem_of(got_tensor)["detail"]
    got_bytes = post(http, url, "Double", b"raw", Accept=TENSOR)  # the handler answers bytes
    assert got_bytes.status == 406 and "answered a message" in problem_of(got_bytes)["detail"]
    # both answers are accepted when the call reads either
    either = {"Accept": f"{TENSOR}, {ONE}"}
    assert post(http, url, "Double", b"raw", **either).data == b"raw"
    assert TensorReceiver().feed(post(http, url, "Double", b"t", **either).data).to_numpy().tolist() == [1, 2]


# ---------------------------------------------------------------- calls of the right kind, or undeclared

def messages_of(data: bytes) -> list:
    decoder = MessageStreamDecoder()
    messages = decoder.feed(data)
    decoder.finish()
    return messages


def tokens_of(data: bytes) -> str:
    decoder = TokenStreamDecoder()
    batches = decoder.feed(data)
    decoder.finish()
    return "".join(b.text() for b in batches)


TENSOR_BODY = b"".join(bytes(p) for p in encode_tensor_frames(Tensor.from_numpy(np.array([3, 4], dtype=np.int32))))
SERVED = [
    # (method, body, headers, how to read the answer, the answer): what quill's clients declare,
    # and requests that declare nothing (curl's defaults, the reference client's application/proto)
    ("Echo", b"hi", {"Content-Type": PROTO, "Accept": ONE}, bytes, b"hi"),
    ("Echo", b'{"a":1}', {"Content-Type": JSON, "Accept": JSON}, json.loads, {"a": 1}),
    ("Echo", b"hi", {}, bytes, b"hi"),
    ("Echo", b"hi", {"Content-Type": "application/x-www-form-urlencoded", "Accept": "*/*"}, bytes, b"hi"),
    ("Count", b"2", {"Content-Type": PROTO, "Accept": MESSAGES}, messages_of, [b"0", b"1"]),
    ("Count", b"2", {"Content-Type": JSON, "Accept": MESSAGES}, messages_of, [b"0", b"1"]),
    ("Count", b"2", {"Accept": PROTO}, messages_of, [b"0", b"1"]),
    ("Concat", FRAMES, {"Content-Type": MESSAGES, "Accept": ONE}, bytes, b"a"),
    ("Concat", FRAMES, {"Content-Type": MESSAGES, "Accept": JSON}, bytes, b"a"),
    ("Concat", FRAMES, {"Content-Type": PROTO, "Accept": PROTO}, bytes, b"a"),
    ("Concat", FRAMES, {}, bytes, b"a"),
    ("Spell", b"hey", {"Content-Type": PROTO, "Accept": TOKENS}, tokens_of, "hey"),
    ("Spell", b"hey", {"Accept": JSON}, lambda data: json.loads(data)["text"], "hey"),
    ("Spell", b"hey", {"Accept": PROTO}, tokens_of, "hey"),
    ("Double", TENSOR_BODY, {"Content-Type": TENSOR, "Accept": TENSOR},
     lambda data: TensorReceiver().feed(data).to_numpy().tolist(), [6, 8]),
    ("Double", TENSOR_BODY, {"Content-Type": TENSOR, "Accept": PROTO},
     lambda data: TensorReceiver().feed(data).to_numpy().tolist(), [6, 8]),
    ("Double", b"raw", {"Content-Type": PROTO, "Accept": ONE}, bytes, b"raw"),
    ("Double", b"t", {"Accept": JSON}, lambda data: json.loads(data)["data"], [1, 2]),
]


@pytest.mark.parametrize("method, body, headers, read, expected", SERVED,
                         ids=[f"{m}-{'-'.join(h.values()) or 'nothing-declared'}" for m, _, h, _, _ in SERVED])
def test_a_call_of_the_right_kind_or_of_no_declared_kind_is_served(served, http, method, body, headers, read,
                                                                   expected):
    _, url = served
    response = post(http, url, method, body, **headers)
    assert response.status == 200, response.data[:300]
    assert read(response.data) == expected
