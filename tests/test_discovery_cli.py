"""``quill list``, and the one line the ``quill`` command prints for a call of the wrong kind,
run as a subprocess (``python -m quill ...``) against real servers on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_servers import ScriptedServer, response  # noqa: E402
from test_discovery_server import EXPECTED_DOCUMENT, SVC, build_app  # noqa: E402

from quill.demo import SERVICE, create_demo_app  # noqa: E402
from quill.server import BearerAuth, serve_in_thread  # noqa: E402


def quill(*args: str, cwd: str) -> subprocess.CompletedProcess:
    # from an empty directory: from the checkout, python -m quill would import the uncompiled tree
    return subprocess.run([sys.executable, "-m", "quill", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="module")
def demo_url():
    with serve_in_thread(create_demo_app()) as url:
        yield url


@pytest.fixture(scope="module")
def kinds_url():
    with serve_in_thread(build_app()) as url:
        yield url


def test_list_prints_each_service_and_its_methods_with_kind_and_summary(demo_url, kinds_url, cwd):
    done = quill("list", demo_url, cwd=cwd)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        SERVICE,
        "  Generate  token stream    Generate tokens after a prompt, each with its text and logprob, as they are sampled.",
        "  Embed     tensor method   Embed texts as a tensor of unit-length rows.",
        "  Echo      tensor method   Answer the request unchanged: bytes as bytes, a tensor as a tensor.",
    ]
    done = quill("list", kinds_url, cwd=cwd)
    assert done.returncode == 0 and done.stdout.splitlines() == [
        SVC,
        "  Echo    unary           Answer the request unchanged.",
        "  Count   message stream  Count from 0 to the number in the request.",
        "  Concat  client stream   Join the messages with '|'.",
        "  Spell   token stream    Spell the request, one token per letter.",
        '  Double  tensor method   Double a tensor; the bytes b"t" give the tensor [1, 2], other bytes come back as bytes.',
        "other.v1.Plain",
        "  NoDoc   unary",
    ]


def test_list_one_service_long_and_as_json(kinds_url, cwd):
    done = quill("list", kinds_url, SVC, "--long", cwd=cwd)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[:5] == [
        SVC,
        "  Echo    unary           Answer the request unchanged.",
        "      request:  application/proto | application/json",
        "      response: application/proto; frames=none | application/json",
        "      Any bytes, or JSON.",
    ]
    assert "other.v1.Plain" not in done.stdout
    done = quill("list", kinds_url, "other.v1.Plain", "--json", cwd=cwd)
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"services": [EXPECTED_DOCUMENT["services"][1]]}
    done = quill("list", kinds_url, "--json", cwd=cwd)
    assert json.loads(done.stdout) == EXPECTED_DOCUMENT


def test_list_an_unknown_service_or_without_credentials_exits_1(kinds_url, cwd):
    done = quill("list", kinds_url, "no.such.Service", cwd=cwd)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"quill: error: the server has no service 'no.such.Service' "
                           f"(it has: {SVC}, other.v1.Plain)\n")
    with serve_in_thread(build_app(auth=BearerAuth("s3cret"))) as url:
        refused = quill("list", url, cwd=cwd)
        assert refused.returncode == 1 and refused.stderr.startswith("quill: error: 401 Unauthorized\n")
        allowed = quill("list", url, "-H", "Authorization: Bearer s3cret", cwd=cwd)
        assert allowed.returncode == 0 and allowed.stdout.startswith(SVC + "\n")


@pytest.mark.parametrize("status", [404, 405])
def test_list_says_when_the_server_does_not_describe_its_methods(cwd, status):
    """A quill server older than discovery takes the path for an RPC (405: POST only); others 404."""
    def older(request, sock):
        sock.sendall(response(status, b'{"type":"about:blank","title":"Nope","status":%d}' % status,
                              "application/problem+json"))

    with ScriptedServer(older) as server:
        done = quill("list", server.url, cwd=cwd)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"quill: error: the server at {server.url} does not describe its methods "
                           f"(GET /.well-known/quill/methods answered {status}: not a quill server, or one "
                           "older than method discovery)\n")


WRONG_KIND = [
    # (server, arguments after the URL, the one line on stderr)
    ("demo", ["call", "URL", SERVICE, "Generate", "--stream"], "Generate is a token stream: use `quill generate`"),
    ("demo", ["call", "URL", SERVICE, "Generate", "--data", "x"], "Generate is a token stream: use `quill generate`"),
    ("demo", ["generate", "URL", "hi", "--method", "Echo"], "Echo is a tensor method: use `quill call --json`"),
    ("demo", ["call", "URL", SERVICE, "Embed", "--data", '{"input": "a"}'],
     "Embed is a tensor method: use `quill call --json`"),
    ("kinds", ["call", "URL", SVC, "Count", "--data", "2"], "Count is a message stream: use `quill call --stream`"),
    ("kinds", ["call", "URL", SVC, "Count", "--json", "{}"], "Count is a message stream: use `quill call --stream`"),
    ("kinds", ["call", "URL", SVC, "Echo", "--stream"], "Echo is unary: use `quill call`"),
    ("kinds", ["generate", "URL", "hi", "--service", SVC, "--method", "Count"],
     "Count is a message stream: use `quill call --stream`"),
    ("kinds", ["call", "URL", SVC, "Concat", "--data", "x"],
     "Concat is a client stream: use call_client_stream() from Python (no quill command sends a client stream)"),
]


@pytest.mark.parametrize("server, args, line", WRONG_KIND, ids=[" ".join(a[2:]) for _, a, _ in WRONG_KIND])
def test_a_call_of_the_wrong_kind_exits_1_with_one_line_naming_the_command(demo_url, kinds_url, cwd, server, args,
                                                                          line):
    url = demo_url if server == "demo" else kinds_url
    done = quill(*[url if a == "URL" else a for a in args], cwd=cwd)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"quill: error: {line}\n")


def test_calls_of_the_right_kind_still_work_from_the_command_line(demo_url, kinds_url, cwd):
    assert quill("call", kinds_url, SVC, "Count", "--stream", "--data", "2", cwd=cwd).stdout == "0\n1\n"
    assert quill("call", demo_url, SERVICE, "Echo", "--data", "x", cwd=cwd).stdout == "x"
    generated = quill("generate", kinds_url, "hi", "--service", SVC, "--method", "Spell", "-q", cwd=cwd)
    assert (generated.returncode, generated.stdout) == (0, json.dumps({"prompt": "hi", "max_tokens": 64,
                                                                       "batch_size": 1}) + "\n")
