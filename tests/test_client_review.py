"""Regression tests for the client defects of the second outside review, over both clients: error
bodies over 64 KiB keep their start, header updates from many threads are atomic, and a
``user:password@`` in the URL is sent as Basic auth and shown nowhere. (Cancelling an async
stream from another thread has its test in tests/test_async_client.py.)"""

from __future__ import annotations

import base64
import json
import os
import pickle
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_servers import LAST_CHUNK, ScriptedServer, chunk, chunked_head, echo, free_port, response, zstd  # noqa: E402

from quill.client import QuillClient  # noqa: E402
from quill.errors import EncodeError, NotFoundError, QuillConnectionError, RpcError, StreamCancelledError  # noqa: E402
from quill.frames import encode_stream_frame  # noqa: E402
from quill.protocol.responses import ERROR_BODY_LIMIT  # noqa: E402
from quill.transports.head import request_head  # noqa: E402

SVC = "review.v1.Review"


@pytest.fixture(autouse=True)
def client_kind(request, monkeypatch):
    from client_kinds import CLIENTS

    monkeypatch.setattr(request.module, "QuillClient", CLIENTS[request.param])
    return request.param


@pytest.fixture
def tiny_switch_interval():
    """Threads switch every microsecond, so that a race in a few bytecodes shows up."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def inner(client):
    """The client itself (the async one behind the blocking facade of tests/client_kinds.py)."""
    return getattr(client, "_client", client)


# ---------------------------------------------------------------- error bodies over 64 KiB

LONG_PROBLEM = json.dumps({"type": "about:blank", "title": "Model failure", "status": 500,
                           "detail": "x" * (100 << 10)}).encode()
LONG_TEXT = b"".join(b"line %06d of the server's error page\n" % i for i in range(30_000))  # about 1 MiB


def answer_errors_with(status_line_body):
    """A server answering Fail with ``status_line_body()`` raw bytes and echoing anything else."""
    def handler(request, sock):
        if request.path.endswith("/Fail"):
            sock.sendall(status_line_body())
            return True
        echo(request, sock)
    return ScriptedServer(handler)


ERROR_ANSWERS = {
    "problem+json, Content-Length": (lambda: response(500, LONG_PROBLEM, "application/problem+json"), LONG_PROBLEM),
    "text, chunked": (lambda: chunked_head(500, "text/html") + chunk(LONG_TEXT[:70_000]) + chunk(LONG_TEXT[70_000:])
                      + LAST_CHUNK, LONG_TEXT),
    "text, zstd": (lambda: response(500, zstd.compress(LONG_TEXT), "text/html", {"Content-Encoding": "zstd"}), LONG_TEXT),
}


@pytest.mark.parametrize("answer", sorted(ERROR_ANSWERS))
def test_an_error_body_over_64_kib_keeps_its_first_64_kib(answer):
    # The whole body was refused (LimitExceededError, swallowed): the error had no body at all.
    raw, body = ERROR_ANSWERS[answer]
    with answer_errors_with(raw) as server:
        client = QuillClient(server.url)
        with pytest.raises(RpcError) as caught:
            client.call(SVC, "Fail", b"")
        error = caught.value
        assert error.status == 500 and error.problem is None  # a part of a JSON body is not parsed
        assert error.body == body[:ERROR_BODY_LIMIT].decode()
        assert error.__notes__ == [f"the error body was longer than {ERROR_BODY_LIMIT} bytes: "
                                   f"only its first {ERROR_BODY_LIMIT} are kept"]
        assert client.call(SVC, "Echo", b"next") == b"next"
        assert server.connections == 2  # the rest was not read: that connection was dropped


def test_an_error_body_of_exactly_64_kib_is_read_whole_and_the_connection_reused():
    problem = json.dumps({"type": "about:blank", "title": "Model failure", "status": 500, "detail": ""}).encode()
    filler = ERROR_BODY_LIMIT - len(problem)
    problem = problem.replace(b'"detail": ""', b'"detail": "' + b"y" * filler + b'"')
    assert len(problem) == ERROR_BODY_LIMIT
    with answer_errors_with(lambda: chunked_head(500, "application/problem+json") + chunk(problem) + LAST_CHUNK) as server:
        client = QuillClient(server.url)
        with pytest.raises(RpcError) as caught:
            client.call(SVC, "Fail", b"")
        assert caught.value.problem.detail == "y" * filler
        assert not getattr(caught.value, "__notes__", None)
        assert client.call(SVC, "Echo", b"next") == b"next"
        assert server.connections == 1


# ---------------------------------------------------------------- headers from many threads

def test_headers_set_from_many_threads_are_all_kept_and_sent(tiny_switch_interval):
    # set_header copied the dict, edited the copy and stored it back unlocked: updates were lost.
    with ScriptedServer(echo) as server:
        for _ in range(20):
            client = QuillClient(server.url)
            names = [[f"X-Thread-{t}-{i}" for i in range(250)] for t in range(8)]
            start = threading.Barrier(len(names))

            def set_all(mine):
                start.wait()
                for name in mine:
                    client.set_header(name, name.lower())

            threads = [threading.Thread(target=set_all, args=(mine,)) for mine in names]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            expected = {name: name.lower() for mine in names for name in mine}
            assert client.get_headers() == expected
            assert client.call(SVC, "Echo", b"x") == b"x"
            seen = server.requests[-1].headers
            assert {name: seen.get(name.lower()) for name in expected} == expected
            client.close()


def test_a_request_after_set_header_returns_carries_the_new_value(tiny_switch_interval):
    # A request racing set_header() could pair the old headers with the new generation, and the
    # transport then cached that stale head under the new key: every later request sent it.
    with ScriptedServer(echo) as server:
        client = QuillClient(server.url)
        core, heads = inner(client)._core, inner(client)._transport._heads

        def head_sent():  # what the transport writes for the next request: the head it caches
            return request_head(heads, core.request("unary", SVC, "Echo", b""))

        stop = threading.Event()

        def build_requests():
            while not stop.is_set():
                head_sent()

        builders = [threading.Thread(target=build_requests) for _ in range(6)]
        for thread in builders:
            thread.start()
        try:
            for i in range(8000):
                client.set_bearer_token(f"token-{i}")
                if i % 40:
                    assert b"Authorization: Bearer token-%d\r\n" % i in head_sent()
                    continue
                assert client.call(SVC, "Echo", b"x") == b"x"  # and what a server receives
                assert server.requests[-1].headers["authorization"] == f"Bearer token-{i}"
        finally:
            stop.set()
            for thread in builders:
                thread.join()


@pytest.mark.sync_only
def test_a_sync_stream_cancelled_from_many_threads_gives_its_connection_back_once(tiny_switch_interval, caplog):
    # cancel() released the connection from the cancelling thread while the owner was inside a
    # read: http.client's response was closed under it (AttributeError, ValueError from the read),
    # and two threads could both release it (urllib3: "Connection pool is full").
    def first_frame_then_silence(request, sock):
        sock.sendall(chunked_head() + chunk(encode_stream_frame(b"first")))
        sock.recv(1)
        return False

    with ScriptedServer(first_frame_then_silence) as server:
        client = QuillClient(server.url, max_connections=1)
        for _ in range(30):
            stream = client.call_stream(SVC, "Watch", b"")
            assert next(stream) == b"first"
            start = threading.Barrier(9)

            def cancel():
                start.wait()
                stream.cancel()

            threads = [threading.Thread(target=cancel) for _ in range(8)]
            for thread in threads:
                thread.start()
            start.wait()
            with pytest.raises(StreamCancelledError):
                next(stream)
            for thread in threads:
                thread.join()
        assert "pool is full" not in caplog.text
        assert client._transport.pool.pool.qsize() == 1 and server.connections == 30


# ---------------------------------------------------------------- credentials in the URL

def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def with_credentials(url: str, userinfo: str = "alice:s%40cr%3Aet%2F") -> str:
    return url.replace("://", f"://{userinfo}@", 1)


SECRETS = ("alice", "s%40cr", "s@cr")


def shows_no_secret(text: str) -> bool:
    return not any(secret in text for secret in SECRETS)


def answer_404_to_missing(request, sock):
    if request.path.endswith("/Missing"):
        sock.sendall(response(404, b"no such method", "text/plain"))
        return True
    echo(request, sock)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_shown_nowhere():
    # They were never sent, and base_url kept them: repr, every error and every log showed the password.
    with ScriptedServer(answer_404_to_missing) as server:
        client = QuillClient(with_credentials(server.url + "/api"))
        assert client.call(SVC, "Echo", b"x") == b"x"
        assert server.requests[-1].header_lines.count(("Authorization", basic("alice", "s@cr:et/"))) == 1
        assert server.requests[-1].path == f"/api/{SVC}/Echo"
        assert client.base_url == server.url + "/api"
        assert shows_no_secret(repr(client))
        with pytest.raises(NotFoundError) as caught:
            client.call(SVC, "Missing", b"")
        assert shows_no_secret(str(caught.value)) and caught.value.url == f"{server.url}/api/{SVC}/Missing"
        assert client.health_check() is True
        assert server.requests[-1].headers["authorization"] == basic("alice", "s@cr:et/")
    unreachable = QuillClient(with_credentials(f"http://127.0.0.1:{free_port()}"), retries=0)
    with pytest.raises(QuillConnectionError) as caught:
        unreachable.call(SVC, "Echo", b"x")
    assert "127.0.0.1" in str(caught.value) and shows_no_secret(str(caught.value))


@pytest.mark.parametrize("how", ["set_bearer_token", "headers=", "per call"])
def test_an_authorization_header_set_by_the_caller_wins_over_the_url(how):
    with ScriptedServer(echo) as server:
        url = with_credentials(server.url)
        client = QuillClient(url, headers={"authorization": "Bearer from-headers"} if how == "headers=" else None)
        extra = {"headers": {"AUTHORIZATION": "Bearer per-call"}} if how == "per call" else {}
        if how == "set_bearer_token":
            client.set_bearer_token("from-setter")
        assert client.call(SVC, "Echo", b"x", **extra) == b"x"
        sent = [value for name, value in server.requests[-1].header_lines if name.lower() == "authorization"]
        assert sent == [{"set_bearer_token": "Bearer from-setter", "headers=": "Bearer from-headers",
                         "per call": "Bearer per-call"}[how]]
        client.remove_header("Authorization")
        assert client.call(SVC, "Echo", b"x") == b"x"
        assert server.requests[-1].headers["authorization"] == basic("alice", "s@cr:et/")


@pytest.mark.sync_only
def test_a_pickled_client_keeps_sending_the_url_credentials():
    with ScriptedServer(echo) as server:
        client = pickle.loads(pickle.dumps(QuillClient(with_credentials(server.url))))
        assert client.call(SVC, "Echo", b"x") == b"x"
        assert server.requests[-1].headers["authorization"] == basic("alice", "s@cr:et/")
        assert shows_no_secret(repr(client))


@pytest.mark.parametrize("url, fragment", [
    ("http://alice:s%40cr@h:99999", "bad port"),
    ("http://alice:s@cr/et@h", "'@' after its host"),  # an unescaped '/' in the password
    ("http://alice:s@cr?et@h", "query"),
    ("http://alice:s@cr#et@h", "fragment"),
    ("ftp://alice:s@cr@h", "http://, https:// or http+unix://"),
    ("http+unix://alice:s@cr@", "socket path"),
    ("http://alice:s@cr@:8080", "with a host"),
    ("alice:s@cr@h", "http://, https:// or http+unix://"),
])
def test_a_bad_url_with_credentials_is_refused_without_showing_them(url, fragment):
    with pytest.raises(ValueError) as caught:
        QuillClient(url)
    assert fragment in str(caught.value) and shows_no_secret(str(caught.value)) and "***@" in str(caught.value)


def test_a_user_name_with_a_colon_is_refused():
    with pytest.raises(EncodeError, match="contains ':'") as caught:
        QuillClient("http://al%3Aice:s%40cr@h")
    assert "***@h" in str(caught.value) and "s%40cr" not in str(caught.value)


@pytest.mark.sync_only
@pytest.mark.parametrize("command", ["call", "batch"])
def test_the_cli_shows_no_credentials(command, tmp_path, capsys):
    from quill.cli import main

    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    batch = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"), "--no-progress"]
    for url in ("http://alice:s%40cr@127.0.0.1:99999", with_credentials(f"http://127.0.0.1:{free_port()}")):
        args = [command, url, SVC, "Echo"] + (["--data", "x"] if command == "call" else batch)
        main(args)
        err = capsys.readouterr().err
        assert "127.0.0.1" in err and shows_no_secret(err), err
        (tmp_path / "out.jsonl").unlink(missing_ok=True)
