"""The ``quill`` command, run as a subprocess (``python -m quill ...``), output and exit codes checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import urllib3

from quill.frames import MessageStreamDecoder
from quill.demo import SERVICE, VOCABULARY, ToyLanguageModel, create_demo_app
from quill.server import serve_in_thread


# Subprocesses run in an empty directory: from the repository root, ``python -m quill`` would
# import the source tree (without its compiled modules) instead of the installed package.
NEUTRAL_CWD = None


@pytest.fixture(scope="module", autouse=True)
def neutral_cwd(tmp_path_factory):
    global NEUTRAL_CWD
    NEUTRAL_CWD = str(tmp_path_factory.mktemp("cwd"))


def quill(*args: str, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quill", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=NEUTRAL_CWD)


@pytest.fixture(scope="module")
def demo_url():
    with serve_in_thread(create_demo_app()) as url:
        yield url


def test_demo_runs_offline_and_summarizes():
    done = quill("demo", "--max-tokens", "12", "--token-delay-ms", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "quill demo: inference.v1.LLMService" in out and "http://127.0.0.1:" in out
    expected_text = "".join(VOCABULARY[i] for i, _ in ToyLanguageModel().generate("Tell me how a quill writes", 12))
    assert " ".join(expected_text.split()) in " ".join(out.split())  # the streamed tokens, in order (wrapped)
    assert "identical: True" in out and "unit-length rows: True" in out
    summary = out.split("\nSummary\n", 1)[1]
    assert "12 tokens at" in summary and "tokens/s" in summary and "MB/s" in summary
    assert "p50" in summary and "p99" in summary
    assert done.stderr == ""


def test_call_prints_the_answer(demo_url):
    done = quill("call", demo_url, SERVICE, "Echo", "--data", "hello quill")
    assert (done.returncode, done.stdout, done.stderr) == (0, "hello quill", "")
    done = quill("call", demo_url, SERVICE, "Generate", "--json", '{"prompt": "Hello", "max_tokens": 5}')
    assert done.returncode == 0
    answer = json.loads(done.stdout)
    assert len(answer["tokens"]) == 5
    assert [t["id"] for t in answer["tokens"]] == [i for i, _ in ToyLanguageModel().generate("Hello", 5)]


def test_call_from_file_and_to_file(demo_url, tmp_path):
    source = tmp_path / "request.bin"
    source.write_bytes(bytes(range(256)))
    target = tmp_path / "answer.bin"
    done = quill("call", demo_url, SERVICE, "Echo", "--file", str(source), "--output", str(target))
    assert done.returncode == 0 and target.read_bytes() == bytes(range(256))


def test_call_problem_details_is_a_readable_error(demo_url):
    done = quill("call", demo_url, SERVICE, "Missing", "--data", "x")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("quill: error: 404 Method not found\n")
    assert "detail: No handler registered for path: /inference.v1.LLMService/Missing" in done.stderr
    done = quill("call", demo_url, SERVICE, "Generate", "--json", '{"max_tokens": "many"}')
    assert done.returncode == 1 and "400 Invalid request" in done.stderr and "max_tokens" in done.stderr


def test_call_exit_codes_for_usage_and_unreachable(demo_url):
    assert quill("call", demo_url, SERVICE, "Echo", "-H", "no colon").returncode == 2
    assert quill("call", demo_url, SERVICE, "Echo", "--json", "{not json").returncode == 2
    assert quill("call", demo_url, SERVICE).returncode == 2  # missing METHOD
    with __import__("socket").socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = quill("call", f"http://127.0.0.1:{port}", SERVICE, "Echo", "--data", "x", "--timeout-ms", "2000")
    assert done.returncode == 3 and "quill: error:" in done.stderr


@pytest.mark.parametrize("args, fragment", [
    (("SERVICE", "bad/svc", "Echo", "-d", "x"), "invalid service name 'bad/svc'"),
    (("SERVICE", SERVICE, "Ec ho", "-d", "x"), "invalid method name 'Ec ho'"),
    (("SERVICE", SERVICE, "..", "-d", "x"), "invalid method name '..'"),
    (("SERVICE", SERVICE, "Echo", "-d", "x", "-H", "Content-Length: 5"), "'Content-Length'"),
    (("SERVICE", SERVICE, "Echo", "-d", "x", "-H", "Bad Name: 5"), "invalid HTTP header name"),
    (("ftp://127.0.0.1/", SERVICE, "Echo", "-d", "x"), "ftp://127.0.0.1/"),
    (("http://[::1", SERVICE, "Echo", "-d", "x"), "http://[::1"),
    (("http://127.0.0.1:99999", SERVICE, "Echo", "-d", "x"), "99999"),
    (("SERVICE", SERVICE, "Echo", "-d", "x", "-o", "/nonexistent-dir/answer.bin"), "cannot write --output"),
    # a JSON string holding JSON text is JSON encoded twice; a stream sends only an object or array as JSON
    (("SERVICE", SERVICE, "Generate", "--json", '"{\\"prompt\\": \\"hi\\"}"'), "not a str of JSON text"),
    (("SERVICE", SERVICE, "Generate", "--json", '"hi"', "--stream"), "--json with --stream must be a JSON object"),
])
def test_bad_usage_is_exit_2_with_one_line(demo_url, args, fragment):
    args = tuple(demo_url if a == "SERVICE" else a for a in args)
    done = quill("call", *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("quill: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert fragment in done.stderr and "Traceback" not in done.stderr


def test_generate_bad_usage_is_exit_2(demo_url):
    done = quill("generate", demo_url, "Hi", "--service", "bad/svc")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "bad/svc" in done.stderr


def test_generate_logprobs_when_a_token_has_none():
    """A server may send tokens without a logprob: --logprobs prints a dash for them."""
    from quill._core.tokens import Token, TokenBatch
    from quill.server import QuillApp

    app = QuillApp()

    @app.token_stream(f"{SERVICE}/Generate")
    def generate(request, context):
        batch = TokenBatch()
        batch.add(Token(5, 0, text=" with", logprob=-0.25))
        batch.add(Token(6, 1, text=" without"))
        yield batch

    with serve_in_thread(app) as url:
        done = quill("generate", url, "x", "--logprobs", "--quiet")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == ["' with'\t-0.250", "' without'\t-"]


def test_generate_prints_tokens(demo_url):
    done = quill("generate", demo_url, "Tell me", "--max-tokens", "20", "--batch-size", "3")
    assert done.returncode == 0
    expected = "".join(VOCABULARY[i] for i, _ in ToyLanguageModel().generate("Tell me", 20))
    assert done.stdout == expected + "\n"
    assert "20 tokens in" in done.stderr and "tokens/s" in done.stderr


@pytest.mark.parametrize("command", ["serve", "call", "generate", "demo", "bench"])
def test_every_command_has_help(command):
    done = quill(command, "--help")
    assert done.returncode == 0 and "exit codes:" in done.stdout and done.stdout.startswith("usage: quill " + command)


def test_version_and_no_command():
    assert quill("--version").stdout.startswith("quill ")
    done = quill()
    assert done.returncode == 2 and "COMMAND" in done.stderr


USER_APP = '''
import asyncio
from quill.server import QuillApp

app = QuillApp()

@app.unary("greet.v1.Greeter/Hello")
def hello(request, context):
    return b"Hello, " + request + b"!"

@app.server_stream("greet.v1.Greeter/Slow")
async def slow(request, context):
    for i in range(int(request)):
        await asyncio.sleep(0.05)
        yield b"tick %d" % i
'''


def test_serve_user_app_and_stop_gracefully_on_sigterm(tmp_path, engine):
    (tmp_path / "greeter_app.py").write_text(textwrap.dedent(USER_APP))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    server = subprocess.Popen([sys.executable, "-m", "quill", "serve", "greeter_app:app", "--port", "0",
                               "--log-level", "warning", "--engine", engine],
                              stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        first_line = server.stderr.readline()
        assert first_line.startswith("quill: serving greeter_app:app on http://127.0.0.1:"), first_line
        url = first_line.split(" on ", 1)[1].strip()
        http = urllib3.PoolManager(retries=False)
        assert http.request("POST", f"{url}/greet.v1.Greeter/Hello", body=b"Ada").data == b"Hello, Ada!"

        done = quill("call", url, "greet.v1.Greeter", "Hello", "--data", "Bob")
        assert done.stdout == "Hello, Bob!"
        # a slow stream is in flight when SIGTERM arrives: it still completes
        stream = http.request("POST", f"{url}/greet.v1.Greeter/Slow", body=b"10", preload_content=False)
        decoder = MessageStreamDecoder()
        messages = []
        for chunk in stream.read_chunked():
            messages += decoder.feed(chunk)
            if messages == [b"tick 0"]:
                server.send_signal(signal.SIGTERM)
        decoder.finish()
        assert messages == [b"tick %d" % i for i in range(10)]
        assert server.wait(30) == 0
        assert "quill: server stopped" in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_serve_imports_the_app_from_the_working_directory(tmp_path):
    """The ``quill`` console script does not put the working directory on sys.path; serve does."""
    (tmp_path / "cwd_app.py").write_text(textwrap.dedent(USER_APP))
    code = ("import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]; "
            "from quill.cli import main; sys.exit(main(sys.argv[1:]))")  # what the console script does
    server = subprocess.Popen([sys.executable, "-c", code, "serve", "cwd_app:app", "--port", "0", "--log-level", "warning"],
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        first_line = server.stderr.readline()
        assert first_line.startswith("quill: serving cwd_app:app on http://127.0.0.1:"), first_line
        url = first_line.split(" on ", 1)[1].strip()
        r = urllib3.PoolManager(retries=False).request("POST", f"{url}/greet.v1.Greeter/Hello", body=b"Cy")
        assert r.data == b"Hello, Cy!"
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.parametrize("public_metrics", [False, True])
def test_serve_with_auth_keeps_the_probes_open(public_metrics):
    sys.path.insert(0, os.path.dirname(__file__))
    from serve_process import quill_serve

    options = ["--bearer-token", "t0ken"] + (["--public-metrics"] if public_metrics else [])
    http = urllib3.PoolManager(retries=False)
    with quill_serve(*options) as server:
        assert http.request("GET", f"{server.url}/health").status == 200
        assert http.request("GET", f"{server.url}/ready").status == 200
        assert http.request("GET", f"{server.url}/metrics").status == (200 if public_metrics else 401)
        r = http.request("GET", f"{server.url}/metrics", headers={"Authorization": "Bearer t0ken"})
        assert r.status == 200 and b"quill_" in r.data
        assert http.request("POST", f"{server.url}/{SERVICE}/Echo", body=b"x").status == 401


def test_serve_rejects_a_bad_app():
    done = quill("serve", "no_such_module_xyz:app", "--port", "0")
    assert done.returncode == 2 and "cannot load no_such_module_xyz:app" in done.stderr


def test_bench_progress_bar_lines():
    import io

    from quill.cli import _ProgressBar

    out = io.StringIO()
    bar = _ProgressBar(4, stream=out, width=8)
    for label in ("a", "b", "c", "d"):
        bar.step(label)
    bar.finish()
    assert out.getvalue().splitlines() == [
        "[........] 0/4 a", "[##......] 1/4 b", "[####....] 2/4 c", "[######..] 3/4 d", "[########] 4/4 done",
    ]


BLOCK_ENGINES = "import sys; sys.modules.update({name: None for name in %r}); "


def test_missing_server_engines_are_a_clear_error():
    code = BLOCK_ENGINES % ["uvicorn", "hypercorn", "granian"] + "from quill.cli import main; sys.exit(main(['demo']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=NEUTRAL_CWD)
    assert done.returncode == 5
    assert done.stderr.strip() == ("quill: error: serving needs an HTTP server (uvicorn, granian, hypercorn): "
                                   "pip install 'quill-rpc[server]'")
    code = BLOCK_ENGINES % ["granian"] + "from quill.cli import main; sys.exit(main(['serve', '--engine', 'granian']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=NEUTRAL_CWD)
    assert done.returncode == 5
    assert done.stderr.strip() == "quill: error: the granian engine needs granian: pip install 'quill-rpc[server]'"


def test_demo_falls_back_to_an_installed_engine():
    """Without uvicorn (the preferred engine), the demo runs on the next one installed."""
    code = BLOCK_ENGINES % ["uvicorn"] + ("from quill.cli import main; "
                                          "sys.exit(main(['demo', '--max-tokens', '4', '--token-delay-ms', '0']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=NEUTRAL_CWD)
    assert done.returncode == 0, done.stderr
    assert "identical: True" in done.stdout
