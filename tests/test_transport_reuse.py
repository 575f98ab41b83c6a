"""Regression tests for the transport defects an outside review found, over both clients: a
connection whose request was not sent in full is never reused (a server that answers early and
drains the body would read the next request as its rest), and a POST is never resent once it may
have reached the server, even when the connection was kept alive and is then reset, unless the
call is idempotent or carries an ``Idempotency-Key``; an interim (1xx) answer is never taken
for the answer."""

from __future__ import annotations

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from bad_peers import SERVICE, UPLOADS, early_answer_server, reset_after_read_server  # noqa: E402

from client_servers import ScriptedServer, echo  # noqa: E402

from quill.client import QuillClient  # noqa: E402
from quill.errors import QuillConnectionError, RpcError  # noqa: E402


@pytest.fixture(autouse=True)
def client_kind(request, monkeypatch):
    from client_kinds import CLIENTS

    monkeypatch.setattr(request.module, "QuillClient", CLIENTS[request.param])
    return request.param


@pytest.mark.parametrize("upload", sorted(UPLOADS))
def test_a_connection_answered_before_its_body_was_sent_is_not_reused(upload):
    with early_answer_server() as server:
        client = QuillClient(server.url, max_connections=1, timeout_ms=5000)
        with pytest.raises(RpcError) as info:
            UPLOADS[upload](client)
        assert info.value.status == 413
        # The next call is read as a request of its own, not as the rest of the upload's body.
        assert client.call(SERVICE, "Echo", b"after") == b"after"
        assert server.answered_early == [f"/{SERVICE}/Upload"]
        assert [(r.path, r.body) for r in server.requests if not r.path.endswith("/Upload")] == [
            (f"/{SERVICE}/Echo", b"after")]
        client.close()


def test_a_post_read_before_a_reset_is_not_resent():
    with reset_after_read_server() as server:
        client = QuillClient(server.url, retries=3)
        assert client.call(SERVICE, "Transfer", b"transfer-1") == b"transfer-1"
        with pytest.raises(QuillConnectionError, match="reset"):
            client.call(SERVICE, "Transfer", b"transfer-2")  # on the kept-alive connection
        assert client.call(SERVICE, "Transfer", b"transfer-3") == b"transfer-3"
        assert [r.body for r in server.requests] == [b"transfer-1", b"transfer-2", b"transfer-3"]
        client.close()


@pytest.mark.parametrize("per_client,per_call", [
    ({}, {"idempotent": True}),
    ({}, {"headers": {"Idempotency-Key": "8e03978e"}}),
    ({"headers": {"Idempotency-Key": "batch-7"}}, {}),
], ids=["idempotent", "idempotency key", "client-wide idempotency key"])
def test_an_idempotent_post_read_before_a_reset_is_resent(per_client, per_call):
    with reset_after_read_server() as server:
        client = QuillClient(server.url, retries=3, **per_client)
        assert client.call(SERVICE, "Transfer", b"transfer-1") == b"transfer-1"
        assert client.call(SERVICE, "Transfer", b"transfer-2", **per_call) == b"transfer-2"
        assert [r.body for r in server.requests] == [b"transfer-1", b"transfer-2", b"transfer-2"]
        keys = [r.headers.get("idempotency-key") for r in server.requests[1:]]
        assert keys[0] == keys[1]  # the resent request carries the same key
        client.close()


@pytest.mark.sync_only
def test_an_early_answer_salvaged_after_a_reset_closes_its_connection():
    """The sync client writes the whole body, but when the server hangs up mid-body it still reads
    the early answer: that connection, its request cut short, goes back to the pool closed."""
    with early_answer_server(pause_s=0.2, hang_up=True) as server:
        client = QuillClient(server.url, max_connections=1)
        with pytest.raises(RpcError) as info:
            UPLOADS["tensor"](client)
        assert info.value.status == 413
        assert [conn.sock for conn in client._transport.pool.pool.queue if conn is not None] == [None]
        assert client.call(SERVICE, "Echo", b"after") == b"after"
        client.close()


@pytest.mark.parametrize("interim", [b"100 Continue", b"103 Early Hints\r\nLink: </style.css>; rel=preload"],
                         ids=["100", "103"])
def test_an_interim_answer_is_not_taken_for_the_answer(interim):
    """A 1xx answer, in a segment of its own, comes before the answer: reading it as the answer
    would leave the real one on the kept-alive connection, to be read as the next call's."""
    def handler(request, sock):
        sock.sendall(b"HTTP/1.1 " + interim + b"\r\n\r\n")
        time.sleep(0.05)
        echo(request, sock)

    with ScriptedServer(handler) as server:
        client = QuillClient(server.url, max_connections=1)
        assert [client.call(SERVICE, "Echo", b"call-%d" % i) for i in range(3)] == [b"call-0", b"call-1", b"call-2"]
        client.close()
