"""Token and message streams as Server-Sent Events and NDJSON, read by clients nobody on this
project wrote: curl (on loopback, against each engine) and a headless Chromium whose page opens
an EventSource and a streaming fetch() to the server from another origin (CORS for real).

CI installs curl and chromium when the machine lacks them (.ci/run).
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import select
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from quill import QuillClient
from quill._core.tokens import Token, TokenBatch
from quill.demo import SERVICE, VOCABULARY, ToyLanguageModel, create_demo_app
from quill.errors import RpcError
from quill.frames import encode_tensor_frames
from quill.server import BearerAuth, QuillApp, serve_in_thread
from quill.server.event_streams import MAX_QUERY_BYTES
from quill.tensor import Tensor

sys.path.insert(0, os.path.dirname(__file__))
from curl_runs import CURL, curl  # noqa: E402
from serve_process import quill_serve  # noqa: E402

PAGE_ORIGIN = "http://page.example"
MESSAGES = [b'{"word": "a"}', b"\x08\x96\x01binary\x00\xff", b" [1, 2.5, null]", b"{not json", b'{"x": NaN}',
            b"7", b'{"big": 1e400}', "{\"é\": \"\\n\"}".encode()]
gate, gate_passed = threading.Event(), threading.Event()


def final(batch: TokenBatch) -> TokenBatch:
    batch.is_final = True
    return batch


def make_app(**options) -> QuillApp:
    app = QuillApp(**options)
    demo = create_demo_app()
    for path, kind in demo.methods().items():
        app.add_method(path, demo._routes[path].function, kind)

    @app.token_stream("gate.v1.Gate/Tokens")
    async def gated(request, context):
        """One batch, then the next only once the test opens the gate (at most a minute later)."""
        yield TokenBatch.from_tokens([Token(1, 0, "first", logprob=-0.5)], sequence_id=5)
        for _ in range(12000):
            if gate.is_set():
                break
            await asyncio.sleep(0.005)
        gate_passed.set()
        yield final(TokenBatch.from_tokens([Token(2, 1, "second"), Token(2, 2, is_special=True)], sequence_id=5))

    @app.server_stream("msg.v1.Messages/List")
    def messages(request, context):
        yield from MESSAGES

    @app.server_stream("msg.v1.Messages/Split")
    def split(request, context):
        for word in json.loads(request)["text"].split():
            yield json.dumps({"word": word}).encode()

    @app.token_stream("fail.v1.Fail/Tokens")
    async def fail_midway(request, context):
        yield TokenBatch.from_tokens([Token(1, 0, "ok")])
        raise RpcError(429, body="slow down")

    @app.server_stream("fail.v1.Fail/WrongType")
    def wrong_type(request, context):
        yield b'{"fine": true}'
        yield 42

    @app.token_stream("odd.v1.Odd/Logprobs")
    def odd_logprobs(request, context):
        yield final(TokenBatch.from_tokens([Token(1, 0, "n", logprob=float("nan")), Token(2, 1, "i", logprob=-np.inf)]))

    return app


@pytest.fixture(scope="module")
def url(engine):
    with serve_in_thread(make_app(cors_origins=[PAGE_ORIGIN]), engine=engine) as base_url:
        yield base_url


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event type, data) of each event, parsed as the SSE specification says."""
    events, data, event = [], [], "message"
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            if data:
                events.append((event, "\n".join(data)))
            data, event = [], "message"
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
    return events


def expected_batches(url: str, method: str, request: bytes) -> list[dict]:
    """What the binary client receives for the same call, written as the JSON of a batch."""
    service, _, name = method.partition("/")
    with QuillClient(url) as client:
        batches = list(client.stream_tokens(service, name, request))
    return [{"text": "".join(t.text or "" for t in batch), "sequence_id": batch.sequence_id, "is_final": batch.is_final,
             "tokens": [{"id": t.id, "text": t.text, "logprob": t.logprob, "position": t.position,
                         "is_special": t.is_special} for t in batch]} for batch in batches]


GENERATE = b'{"prompt": "Hello", "max_tokens": 40, "batch_size": 3, "sequence_id": 9}'


def test_sse_token_stream_equals_the_binary_stream(url):
    status, headers, body = curl("-N", "-H", "Accept: text/event-stream", f"{url}/{SERVICE}/Generate", data=GENERATE)
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache" and "content-encoding" not in headers
    events = sse_events(body.decode("utf-8"))
    assert events[-1] == ("end", "{}") and {e for e, _ in events[:-1]} == {"message"}
    assert [json.loads(data) for _, data in events[:-1]] == expected_batches(url, f"{SERVICE}/Generate", GENERATE)


def test_ndjson_token_stream_equals_the_binary_stream(url):
    status, headers, body = curl("-N", "-H", "Accept: application/x-ndjson", f"{url}/{SERVICE}/Generate",
                                 data=GENERATE)
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    assert body.endswith(b"\n")
    lines = [json.loads(line) for line in body.decode().split("\n")[:-1]]
    assert lines == expected_batches(url, f"{SERVICE}/Generate", GENERATE)


def test_event_streams_are_never_compressed(url):
    """curl, EventSource and a browser read text: not zstd, even where zstd is accepted."""
    for accept_encoding in ([], ["-H", "Accept-Encoding: zstd"], ["-H", "Accept-Encoding: gzip, deflate, br, zstd"]):
        for form in ("text/event-stream", "application/x-ndjson"):
            status, headers, body = curl("-H", f"Accept: {form}", *accept_encoding, f"{url}/{SERVICE}/Generate",
                                         data=b'{"max_tokens": 2000, "batch_size": 50}')
            assert status == 200 and "content-encoding" not in headers and body.count(b'"position"') == 2000


def read_until(fd: int, marker: bytes, seconds: float = 15.0) -> bytes:
    """Read from ``fd`` until ``marker`` has arrived (a failure if it does not within ``seconds``)."""
    got = b""
    while marker not in got:
        ready, _, _ = select.select([fd], [], [], seconds)
        assert ready, f"nothing more arrived; so far {got!r}"
        chunk = os.read(fd, 65536)
        assert chunk, f"the stream ended before {marker!r}; got {got!r}"
        got += chunk
    return got


@pytest.mark.parametrize("form, marker", [("text/event-stream", b"\n\n"), ("application/x-ndjson", b"\n")])
def test_each_event_leaves_as_it_is_made(url, form, marker):
    """curl -N prints the first event while the handler still holds the second back: nothing
    waits for the end of the stream."""
    gate.clear()
    gate_passed.clear()
    process = subprocess.Popen([CURL, "-sS", "-N", "--max-time", "30", "-H", f"Accept: {form}", "--data", "",
                                f"{url}/gate.v1.Gate/Tokens"], stdout=subprocess.PIPE)
    try:
        first = read_until(process.stdout.fileno(), marker)
        assert not gate_passed.is_set()  # the handler still holds the second batch back
        assert b'"first"' in first and b'"second"' not in first
        gate.set()
        rest = first + process.stdout.read()
        assert process.wait(timeout=20) == 0
    finally:
        gate.set()
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    items = ([json.loads(d) for _, d in sse_events(rest.decode())[:-1]] if form == "text/event-stream"
             else [json.loads(line) for line in rest.decode().splitlines()])
    assert items == expected_batches(url, "gate.v1.Gate/Tokens", b"")


def test_message_stream_as_json_or_base64(url):
    """A JSON object or array message goes as {"message": <its JSON>}, anything else (protobuf,
    a number, broken JSON, NaN, 1e400) as {"data_base64": ...}: nothing lost either way."""
    with QuillClient(url) as client:
        sent = list(client.call_stream("msg.v1.Messages", "List", b""))
    assert sent == MESSAGES
    _, _, sse = curl("-H", "Accept: text/event-stream", f"{url}/msg.v1.Messages/List", data=b"")
    _, _, ndjson = curl("-H", "Accept: application/x-ndjson", f"{url}/msg.v1.Messages/List", data=b"")
    events = sse_events(sse.decode())
    assert events[-1] == ("end", "{}")
    items = [json.loads(data) for _, data in events[:-1]]
    assert items == [json.loads(line) for line in ndjson.decode().splitlines()]
    kinds = [next(iter(item)) for item in items]
    assert kinds == ["message", "data_base64", "message", "data_base64", "data_base64", "data_base64",
                     "data_base64", "message"]
    for item, message in zip(items, MESSAGES):
        assert len(item) == 1
        if "message" in item:
            assert item["message"] == json.loads(message)
        else:
            assert base64.b64decode(item["data_base64"]) == message


def test_a_failure_midway_ends_the_stream_with_its_problem(url):
    _, _, body = curl("-H", "Accept: text/event-stream", f"{url}/fail.v1.Fail/Tokens", data=b"")
    (kind, first), (event, data) = sse_events(body.decode())
    assert kind == "message" and json.loads(first)["text"] == "ok"
    problem = json.loads(data)
    assert event == "error" and problem["status"] == 429 and problem["instance"] == "/fail.v1.Fail/Tokens"
    _, _, body = curl("-H", "Accept: application/x-ndjson", f"{url}/fail.v1.Fail/WrongType", data=b"")
    first, last = [json.loads(line) for line in body.decode().splitlines()]
    assert first == {"message": {"fine": True}}
    assert last["error"]["status"] == 500 and last["error"]["trace_id"]  # no traceback text, a trace id


def test_a_problem_before_the_stream_is_an_http_answer(url):
    status, headers, body = curl("-H", "Accept: text/event-stream", f"{url}/{SERVICE}/Generate",
                                 data=b'{"max_tokens": -1}')
    assert status == 400 and headers["content-type"] == "application/problem+json"
    assert "max_tokens" in json.loads(body)["detail"]


STRICT_JSON = {"parse_constant": lambda name: pytest.fail(f"{name} in JSON")}  # JSON.parse refuses NaN


def test_non_finite_logprobs_are_json_strings_in_the_json_answer(url):
    """JSON has no NaN or infinity: they go as the strings protobuf's JSON mapping uses."""
    _, _, body = curl("-H", "Accept: application/json", f"{url}/odd.v1.Odd/Logprobs", data=b"")
    assert [t["logprob"] for t in json.loads(body, **STRICT_JSON)["tokens"]] == ["NaN", "-Infinity"]


def test_non_finite_logprobs_are_json_strings_in_event_streams(url):
    _, _, body = curl("-H", "Accept: text/event-stream", f"{url}/odd.v1.Odd/Logprobs", data=b"")
    batch = json.loads(sse_events(body.decode())[0][1], **STRICT_JSON)
    assert [t["logprob"] for t in batch["tokens"]] == ["NaN", "-Infinity"]


def test_tensor_json_carries_non_finite_values_as_strings(url):
    tensor = Tensor.from_numpy(np.array([[1.5, np.nan], [np.inf, -np.inf]], dtype=np.float32), name="t")
    with QuillClient(url) as client:
        frames = client.call_tensor(SERVICE, "Echo", tensor)
    assert frames == tensor
    status, _, body = curl("-H", "Content-Type: application/proto; frames=tensor", "-H", "Accept: application/json",
                           f"{url}/{SERVICE}/Echo", data=b"".join(bytes(f) for f in encode_tensor_frames(tensor)))
    answer = json.loads(body, **STRICT_JSON)
    assert status == 200 and answer["data"] == [[1.5, "NaN"], ["Infinity", "-Infinity"]]


def test_get_with_the_request_in_the_query(url):
    request = {"prompt": "Hello", "max_tokens": 12, "batch_size": 5, "sequence_id": 3}
    status, headers, body = curl("-G", "-N", "-H", "Accept: text/event-stream", "--data-urlencode",
                                 f"request={json.dumps(request)}", f"{url}/{SERVICE}/Generate")
    assert status == 200 and headers["content-type"] == "text/event-stream"
    items = [json.loads(d) for _, d in sse_events(body.decode())[:-1]]
    assert items == expected_batches(url, f"{SERVICE}/Generate", json.dumps(request).encode())
    status, _, body = curl("-G", "-H", "Accept: application/x-ndjson", "--data-urlencode",
                           'request={"text": "x y"}', f"{url}/msg.v1.Messages/Split")
    assert status == 200 and body == b'{"message":{"word":"x"}}\n{"message":{"word":"y"}}\n'


@pytest.mark.parametrize("args, status, detail", [
    (["-G", "--data-urlencode", "request=" + "x" * MAX_QUERY_BYTES], 414, "at most 8192"),
    (["-G", "--data", "request=a&other=b"], 400, "Max number of fields"),
    (["-G", "--data", "prompt=a"], 400, "one query parameter, request; got 'prompt'"),
    (["-G", "--data", "request=%FF"], 400, "UTF-8"),
    (["-G", "--data", "request"], 400, "bad query field"),
    (["-X", "GET", "--data", "{}"], 400, "not in a body"),
])
def test_bad_get_calls(url, args, status, detail):
    got, headers, body = curl("-H", "Accept: text/event-stream", *args, f"{url}/{SERVICE}/Generate")
    assert got == status and headers["content-type"] == "application/problem+json"
    assert detail in json.loads(body)["detail"]


@pytest.mark.parametrize("path, accept", [
    (f"{SERVICE}/Generate", "application/proto"),  # a GET only for an event stream
    (f"{SERVICE}/Generate", "application/json"),
    (f"{SERVICE}/Embed", "text/event-stream"),  # a tensor method has no event stream
    ("no.v1.Such/Method", "text/event-stream"),
])
def test_other_gets_are_405(url, path, accept):
    status, headers, body = curl("-H", f"Accept: {accept}", f"{url}/{path}")
    assert status == 405 and headers["allow"] == "POST" and json.loads(body)["status"] == 405


def test_accept_naming_proto_keeps_the_frames(url):
    """quill's clients send Accept: application/proto; listing it keeps the binary stream."""
    status, headers, _ = curl("-H", "Accept: application/proto, text/event-stream", f"{url}/{SERVICE}/Generate",
                              data=b"{}")
    assert status == 200 and headers["content-type"] == "application/proto"


# -- CORS ---------------------------------------------------------------------------------

def preflight(url: str, origin: str, method: str = "POST", headers: str = "authorization, content-type"):
    return curl("-X", "OPTIONS", "-H", f"Origin: {origin}", "-H", f"Access-Control-Request-Method: {method}",
                "-H", f"Access-Control-Request-Headers: {headers}", f"{url}/{SERVICE}/Generate")


def test_cors_preflight_and_answers(url):
    status, headers, body = preflight(url, PAGE_ORIGIN)
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == PAGE_ORIGIN and headers["vary"] == "origin"
    assert {"GET", "POST"} <= {m.strip() for m in headers["access-control-allow-methods"].split(",")}
    assert {"authorization", "content-type", "accept"} <= {
        h.strip() for h in headers["access-control-allow-headers"].split(",")}
    assert int(headers["access-control-max-age"]) > 0
    status, headers, _ = curl("-H", f"Origin: {PAGE_ORIGIN}", "-H", "Accept: text/event-stream",
                              f"{url}/{SERVICE}/Generate", data=b"{}")
    assert status == 200 and headers["access-control-allow-origin"] == PAGE_ORIGIN
    assert "retry-after" in headers["access-control-expose-headers"]
    status, headers, _ = curl("-H", f"Origin: {PAGE_ORIGIN}", f"{url}/no.v1.Such/Method", data=b"")
    assert status == 404 and headers["access-control-allow-origin"] == PAGE_ORIGIN  # a page reads errors too


def test_cors_refuses_other_origins(url):
    status, headers, body = preflight(url, "http://evil.example")
    assert status == 403 and "access-control-allow-origin" not in headers
    assert json.loads(body)["title"] == "Origin not allowed"
    status, headers, _ = curl("-H", "Origin: http://evil.example", f"{url}/{SERVICE}/Generate", data=b"{}")
    assert status == 200 and "access-control-allow-origin" not in headers  # the browser keeps it from the page


def test_cors_is_off_by_default():
    with serve_in_thread(make_app()) as url:
        status, headers, _ = preflight(url, PAGE_ORIGIN)
        assert status == 405 and "access-control-allow-origin" not in headers
        status, headers, _ = curl("-H", f"Origin: {PAGE_ORIGIN}", f"{url}/{SERVICE}/Generate", data=b"{}")
        assert status == 200 and not any(name.startswith("access-control-") for name in headers)


def test_cors_any_origin_with_auth():
    """``*`` admits every page; a preflight needs no credentials, the call itself does (GET as POST);
    the API-key header of the app's auth is allowed."""
    from quill.server import ApiKeyAuth

    app = make_app(cors_origins=["*"], auth=[BearerAuth("s3cret"), ApiKeyAuth("k", header_name="X-Team-Key")])
    with serve_in_thread(app) as url:
        status, headers, _ = preflight(url, "https://anyone.example", headers="x-team-key")
        assert status == 204 and headers["access-control-allow-origin"] == "*" and "vary" not in headers
        assert "x-team-key" in headers["access-control-allow-headers"]
        query = ["-G", "-H", "Accept: text/event-stream", "--data-urlencode", 'request={"max_tokens": 2}']
        status, headers, body = curl(*query, "-H", "Origin: https://anyone.example", f"{url}/{SERVICE}/Generate")
        assert status == 401 and headers["access-control-allow-origin"] == "*"
        status, _, body = curl(*query, "-H", "Authorization: Bearer s3cret", f"{url}/{SERVICE}/Generate")
        assert status == 200 and sse_events(body.decode())[-1] == ("end", "{}")


def test_cors_origins_are_checked():
    for bad in ("https://a.example", ["https://a.example/"], ["a.example"], ["null"], [""]):
        with pytest.raises(ValueError, match="origin"):
            QuillApp(cors_origins=bad)


def test_quill_serve_cors_origin():
    with quill_serve("--cors-origin", PAGE_ORIGIN, "--cors-origin", "http://second.example",
                     "--bearer-token", "t0ken") as server:
        for origin in (PAGE_ORIGIN, "http://second.example"):
            status, headers, _ = preflight(server.url, origin)
            assert status == 204 and headers["access-control-allow-origin"] == origin
        assert preflight(server.url, "http://third.example")[0] == 403
        status, headers, body = curl("-G", "-H", "Accept: text/event-stream", "-H", "Authorization: Bearer t0ken",
                                     "-H", f"Origin: {PAGE_ORIGIN}", "--data-urlencode", 'request={"max_tokens": 3}',
                                     f"{server.url}/{SERVICE}/Generate")
        assert status == 200 and headers["access-control-allow-origin"] == PAGE_ORIGIN
        assert [event for event, _ in sse_events(body.decode())] == ["message"] * 3 + ["end"]


def test_quill_serve_refuses_a_bad_cors_origin():
    command = [sys.executable, "-m", "quill", "serve", "--port", "0", "--cors-origin", "https://a.example/x"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("quill: error: --cors-origin: a CORS origin is '*' or scheme://host[:port] with no "
                                   "path, got 'https://a.example/x'")


# -- a real browser -----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")

BROWSER_PAGE = """<!doctype html><html><body>
<pre id="tokens"></pre><p id="tokens-state">waiting</p>
<pre id="words"></pre><p id="words-state">waiting</p>
<script>
const base = %(base)s, request = %(request)s;
const tokens = document.getElementById("tokens"), tokensState = document.getElementById("tokens-state");
const source = new EventSource(base + "/%(service)s/Generate?request=" + encodeURIComponent(request));
source.onmessage = (event) => { tokens.textContent += JSON.parse(event.data).text; };
source.addEventListener("end", () => { source.close(); tokensState.textContent = "done"; });
source.addEventListener("error", (event) => {
  source.close();
  if (tokensState.textContent === "waiting") tokensState.textContent = event.data ? "problem" : "connection error";
});
const words = document.getElementById("words"), wordsState = document.getElementById("words-state");
(async () => {
  const answer = await fetch(base + "/msg.v1.Messages/Split", {
    method: "POST", body: JSON.stringify({text: "one two three"}),
    headers: {"Authorization": "Bearer s3cret", "Content-Type": "application/json", "Accept": "application/x-ndjson"}});
  const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    pending += value;
    const lines = pending.split("\\n");
    pending = lines.pop();
    for (const line of lines) words.textContent += JSON.parse(line).message.word + ";";
  }
  wordsState.textContent = "done " + answer.status;
})().catch((error) => { wordsState.textContent = "fetch failed"; });
</script></body></html>"""


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.server.page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def browser_dom(cors: bool, tmp_path) -> str:
    """The DOM of the page, served from one loopback origin, once it has called the server on
    another: an EventSource GET for tokens, a streaming fetch() POST (with a preflight) for words."""
    pages = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    origin = f"http://127.0.0.1:{pages.server_address[1]}"
    worker = threading.Thread(target=pages.serve_forever, daemon=True)
    worker.start()
    app = make_app(cors_origins=[origin] if cors else (), auth=BearerAuth("s3cret"),
                   public_paths=["/health", f"/{SERVICE}/Generate"])  # EventSource cannot send credentials
    try:
        with serve_in_thread(app) as url:
            request = json.dumps({"prompt": "Hello", "max_tokens": 25, "batch_size": 2, "token_delay_ms": 2})
            pages.page = BROWSER_PAGE % {"base": json.dumps(url), "request": json.dumps(request), "service": SERVICE}
            done = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                   "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
                                   "--virtual-time-budget=15000", "--dump-dom", origin + "/"],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            return done.stdout
    finally:
        pages.shutdown()
        pages.server_close()
        worker.join(10)


def element_text(dom: str, element_id: str) -> str:
    import html

    start = dom.index(f'id="{element_id}">') + len(f'id="{element_id}">')
    return html.unescape(dom[start:dom.index("</", start)])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_a_browser_reads_tokens_with_event_source_and_words_with_fetch(tmp_path):
    dom = browser_dom(True, tmp_path)
    generated = "".join(VOCABULARY[i] for i, _ in ToyLanguageModel().generate("Hello", 25))
    assert (element_text(dom, "tokens"), element_text(dom, "tokens-state")) == (generated, "done")
    assert (element_text(dom, "words"), element_text(dom, "words-state")) == ("one;two;three;", "done 200")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_without_cors_the_browser_keeps_the_answers_from_the_page(tmp_path):
    dom = browser_dom(False, tmp_path)
    assert (element_text(dom, "tokens"), element_text(dom, "tokens-state")) == ("", "connection error")
    assert (element_text(dom, "words"), element_text(dom, "words-state")) == ("", "fetch failed")

