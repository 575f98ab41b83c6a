"""Both clients against method discovery and the wrong-kind refusals: ``list_methods()`` gives
typed descriptions, and a call of the wrong kind raises WrongKindError naming the call to make."""

from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_kinds import PROTOCOLS  # noqa: E402
from client_servers import ScriptedServer, response  # noqa: E402

from quill import MethodInfo, WrongKindError  # noqa: E402
from quill.client import QuillClient  # noqa: E402
from quill.errors import DecodeError, NotFoundError, RpcError, UnauthorizedError  # noqa: E402
from quill.server import BearerAuth, serve_in_thread  # noqa: E402
from quill.tensor import Tensor  # noqa: E402

from test_discovery_server import EXPECTED_DOCUMENT, SVC, build_app  # noqa: E402


@pytest.fixture(autouse=True)
def client_kind(request, monkeypatch):
    """Every test here runs over both clients (tests/client_kinds.py)."""
    from client_kinds import client_for

    monkeypatch.setattr(request.module, "QuillClient", client_for(request))
    return request.param


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def url(request):
    with serve_in_thread(build_app(), **PROTOCOLS[request.param]) as base_url:
        yield base_url


@pytest.fixture
def client(url):
    with QuillClient(url, timeout_ms=10_000) as c:
        yield c


def test_list_methods_gives_a_typed_description_per_method(client):
    methods = client.list_methods()
    assert all(isinstance(m, MethodInfo) for m in methods)
    assert [(m.path, m.kind) for m in methods] == [
        (f"{SVC}/Echo", "unary"), (f"{SVC}/Count", "server_stream"), (f"{SVC}/Concat", "client_stream"),
        (f"{SVC}/Spell", "token_stream"), (f"{SVC}/Double", "tensor"), ("other.v1.Plain/NoDoc", "unary")]
    echo, *_, no_doc = methods
    assert echo.summary == "Answer the request unchanged." and echo.doc.endswith("Any bytes, or JSON.")
    assert echo.request == ("application/proto", "application/json")
    assert echo.response == ("application/proto; frames=none", "application/json")
    assert (no_doc.doc, no_doc.summary) == (None, "")
    assert [m.name for m in client.list_methods("other.v1.Plain")] == ["NoDoc"]
    assert client.list_methods("no.such.Service") == []
    with pytest.raises(AttributeError):
        echo.kind = "tensor"  # frozen


def test_list_methods_sends_credentials_and_reports_a_refusal():
    with serve_in_thread(build_app(auth=BearerAuth("s3cret"))) as url:
        with QuillClient(url, timeout_ms=10_000) as client:
            with pytest.raises(UnauthorizedError):
                client.list_methods()
            assert len(client.list_methods(headers={"Authorization": "Bearer s3cret"})) == 6
            client.set_bearer_token("s3cret")
            assert len(client.list_methods()) == 6


def scripted(status: int, body: bytes, content_type: str = "application/json"):
    def handler(request, sock):
        sock.sendall(response(status, body, content_type))
        return True

    return handler


@pytest.mark.parametrize("body, fragment", [
    (b"[]", "not an object with a 'services' list"),
    (b'{"services": [{"name": "a.S", "methods": [{"name": "M"}]}]}', "needs a non-empty string 'kind'"),
    (b'{"services": [{"name": "a.S", "methods": [{"name": "M", "kind": "unary", "request": "x"}]}]}',
     "must be a list of strings"),
    (b'{"services": [{"name": "a.S", "methods": [{"name": "M", "kind": "unary", "doc": 3}]}]}',
     "not a string or null"),
    (b'{"services": [{"methods": []}]}', "a service needs a non-empty string 'name'"),
    (b"not json", "not valid JSON"),
])
def test_a_malformed_description_is_a_decode_error(body, fragment):
    with ScriptedServer(scripted(200, body)) as server:
        with QuillClient(server.url, timeout_ms=5000) as client:
            with pytest.raises(DecodeError, match=fragment):
                client.list_methods()
        assert server.requests[-1].method == "GET" and server.requests[-1].path == "/.well-known/quill/methods"


def test_unknown_members_and_kinds_are_kept_and_a_server_without_discovery_is_404():
    document = {"version": 9, "services": [{"name": "a.S", "extra": 1, "methods": [
        {"name": "M", "kind": "bidi_stream", "request": [], "response": [], "doc": None, "since": "2.0"}]}]}
    with ScriptedServer(scripted(200, json.dumps(document).encode())) as server:
        with QuillClient(server.url, timeout_ms=5000) as client:
            assert client.list_methods() == [MethodInfo("a.S", "M", "bidi_stream", (), (), None)]
    with ScriptedServer(scripted(404, b"<html>no</html>", "text/html")) as server:
        with QuillClient(server.url, timeout_ms=5000) as client:
            with pytest.raises(NotFoundError):
                client.list_methods()


ARRAY = Tensor.from_numpy(np.array([1, 2], dtype=np.int32))
WRONG_CALLS = [
    # (the call, the error's status, method_kind, its message)
    (lambda c: c.call_stream(SVC, "Echo", b"x"), 406, "unary", "Echo is unary: use call()"),
    (lambda c: list(c.stream_tokens(SVC, "Echo", b"x")), 406, "unary", "Echo is unary: use call()"),
    (lambda c: c.call_tensor(SVC, "Echo", b"x"), 406, "unary", "Echo is unary: use call()"),
    (lambda c: c.call_client_stream(SVC, "Echo", [b"x"]), 415, "unary", "Echo is unary: use call()"),
    (lambda c: c.send_tensor(SVC, "Echo", ARRAY), 415, "unary", "Echo is unary: use call()"),
    (lambda c: c.call(SVC, "Count", b"2"), 406, "server_stream", "Count is a message stream: use call_stream()"),
    (lambda c: c.call_json(SVC, "Count", {}), 406, "server_stream", "Count is a message stream: use call_stream()"),
    (lambda c: list(c.stream_tokens(SVC, "Count", b"2")), 406, "server_stream",
     "Count is a message stream: use call_stream()"),
    (lambda c: c.call(SVC, "Concat", b"x"), 415, "client_stream",
     "Concat is a client stream: use call_client_stream()"),
    (lambda c: c.call_json(SVC, "Concat", {}), 415, "client_stream",
     "Concat is a client stream: use call_client_stream()"),
    (lambda c: c.call_stream(SVC, "Concat", b"x"), 415, "client_stream",
     "Concat is a client stream: use call_client_stream()"),
    (lambda c: c.call(SVC, "Spell", b"ab"), 406, "token_stream", "Spell is a token stream: use stream_tokens()"),
    (lambda c: c.call_stream(SVC, "Spell", b"ab"), 406, "token_stream",
     "Spell is a token stream: use stream_tokens()"),
    (lambda c: c.call_tensor(SVC, "Spell", ARRAY), 415, "token_stream",
     "Spell is a token stream: use stream_tokens()"),
    (lambda c: c.call(SVC, "Double", b"t"), 406, "tensor", "Double is a tensor method: use call_tensor()"),
    (lambda c: list(c.stream_tokens(SVC, "Double", b"t")), 406, "tensor",
     "Double is a tensor method: use call_tensor()"),
    (lambda c: c.call_tensor(SVC, "Double", b"raw"), 406, "tensor",
     "Double answered a message, not a tensor: use call()"),
]


@pytest.mark.parametrize("make_call, status, kind, message", WRONG_CALLS,
                         ids=[f"{i}-{k}-{s}" for i, (_, s, k, _) in enumerate(WRONG_CALLS)])
def test_a_call_of_the_wrong_kind_raises_wrong_kind_error_naming_the_call(client, make_call, status, kind, message):
    with pytest.raises(WrongKindError) as info:
        make_call(client)
    error = info.value
    assert isinstance(error, RpcError) and error.status == status and error.method_kind == kind
    assert error.hint == message and str(error).startswith(message + " (")
    assert error.problem.extensions["quill_method_kind"] == kind
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.method_kind, copy.hint) == (WrongKindError, str(error), kind, message)


def test_calls_of_the_right_kind_still_work(client):
    assert client.call(SVC, "Echo", b"x") == b"x"
    assert client.call_json(SVC, "Echo", {"a": 1}) == {"a": 1}
    assert list(client.call_stream(SVC, "Count", b"2")) == [b"0", b"1"]
    assert client.call_client_stream(SVC, "Concat", [b"a", b"b"]) == b"a|b"
    assert "".join(b.text() for b in client.stream_tokens(SVC, "Spell", b"hey")) == "hey"
    assert client.call_json(SVC, "Spell", {})["text"] == "{}"
    assert client.call_tensor(SVC, "Double", ARRAY).to_numpy().tolist() == [2, 4]
    assert client.call(SVC, "Double", b"raw") == b"raw"
    assert client.send_tensor(SVC, "Double", ARRAY).startswith(b"\x10")  # the tensor frames, as bytes
    assert client.call_json(SVC, "Double", {"a": 1}) == {"a": 1}  # JSON bytes back as JSON


def test_the_description_matches_what_the_server_serves(client, url):
    import urllib3

    served = json.loads(urllib3.request("GET", f"{url}/.well-known/quill/methods").data)
    assert served == EXPECTED_DOCUMENT
    assert [m.path for m in client.list_methods()] == [
        f"{s['name']}/{m['name']}" for s in served["services"] for m in s["methods"]]
