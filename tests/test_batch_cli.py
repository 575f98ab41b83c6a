"""``quill batch`` end to end: the command in its own process against ``quill serve``, with the
answers checked against direct client calls, the server's own request counts (/metrics) for
``--resume``, SIGINT mid-run (and between a record's write and its count), resumes with another
input, a dead server, and the progress display with and without a tty."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from client_servers import free_port  # noqa: E402
from serve_process import SERVICE, quill_serve  # noqa: E402
from waiting import wait_until  # noqa: E402

from quill import QuillClient, cli  # noqa: E402
from quill.cli import batch  # noqa: E402

TIMEOUT = 120


@pytest.fixture(scope="module")
def server():
    with quill_serve() as served:
        yield served


def prompts(count: int, **extra) -> list[dict]:
    return [{"prompt": f"line {i}", "max_tokens": 4, "seed": i, **extra} for i in range(count)]


def write_lines(path, lines) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def batch_command(url: str, method: str, source: str, output: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "quill", "batch", url, SERVICE, method, "--input", source, "--output", output,
            *options]


def quill_batch(url, method, source, output, *options) -> subprocess.CompletedProcess:
    return subprocess.run(batch_command(url, method, source, output, *options), capture_output=True, text=True,
                          timeout=TIMEOUT)


def records(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def generated(url: str) -> int:
    """How many Generate calls the server has answered with 200 (its /metrics)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    match = re.search(r'quill_requests_total\{method="inference.v1.LLMService/Generate",code="200"\} (\d+)', metrics)
    return int(match.group(1)) if match else 0


# ---------------------------------------------------------------- results and errors

def test_each_line_gets_the_answer_a_direct_call_gets_in_input_order(server, tmp_path):
    requests = prompts(300)
    source, output = write_lines(tmp_path / "in.jsonl", requests), str(tmp_path / "out.jsonl")
    result = quill_batch(server.url, "Generate", source, output, "--concurrency", "6")
    assert result.returncode == 0, result.stderr
    with QuillClient(server.url) as client:
        expected = [client.call_json(SERVICE, "Generate", r) for r in requests]
    assert records(output) == [{"line": i + 1, "result": answer} for i, answer in enumerate(expected)]
    # no terminal: no bar drawn in place, a summary line at the end
    assert "\r" not in result.stderr
    assert re.search(r"quill batch: 300 lines in [\d.]+ s \([\d.]+ lines/s\), 0 failed; output: ", result.stderr)


def test_a_bad_line_and_an_error_answer_are_records_naming_their_line(server, tmp_path):
    lines = [prompts(1)[0], {"prompt": "x", "max_tokens": 2}, "{not json", prompts(1)[0], "   ",
             {"prompt": "x", "max_tokens": -1}, {"prompt": "y", "max_tokens": 1}]
    source, output = write_lines(tmp_path / "in.jsonl", lines), str(tmp_path / "out.jsonl")
    result = quill_batch(server.url, "Generate", source, output)
    got = records(output)
    assert [r["line"] for r in got] == [1, 2, 3, 4, 6, 7]  # the blank line 5 is no request
    assert got[2]["error"]["type"] == "bad_json" and "not valid JSON" in got[2]["error"]["message"]
    assert got[4]["error"]["type"] == "rpc" and got[4]["error"]["status"] == 400
    assert got[4]["error"]["problem"]["title"] == "Invalid request"
    assert "result" in got[5] and got[5]["result"]["text"]
    assert "quill: line 3: not valid JSON" in result.stderr
    assert "quill: line 6: 400 Invalid request: max_tokens must be an integer" in result.stderr
    assert result.returncode == 2  # the first failed line was a bad line, as `quill call` says for bad input


def test_only_server_errors_exit_1(server, tmp_path):
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "a", "max_tokens": 1}, {"max_tokens": "many"}])
    result = quill_batch(server.url, "Generate", source, str(tmp_path / "out.jsonl"))
    assert result.returncode == 1, result.stderr
    assert "1 failed" in result.stderr


def test_token_and_tensor_kinds(server, tmp_path):
    requests = prompts(20)
    source = write_lines(tmp_path / "in.jsonl", requests)
    as_json, as_tokens = str(tmp_path / "json.jsonl"), str(tmp_path / "tokens.jsonl")
    assert quill_batch(server.url, "Generate", source, as_json).returncode == 0
    assert quill_batch(server.url, "Generate", source, as_tokens, "--kind", "tokens").returncode == 0
    # the server's JSON answer and the token stream read by the client say the same
    assert records(as_tokens) == records(as_json)

    embeds = [{"input": [f"text {i}", "more"], "dim": 8} for i in range(5)]
    source, output = write_lines(tmp_path / "embed.jsonl", embeds), str(tmp_path / "embed-out.jsonl")
    assert quill_batch(server.url, "Embed", source, output, "--kind", "tensor").returncode == 0
    with QuillClient(server.url) as client:
        for request, record in zip(embeds, records(output)):
            tensor = client.call_tensor(SERVICE, "Embed", request)
            assert record["result"]["dtype"] == "float32" and record["result"]["shape"] == [2, 8]
            np.testing.assert_array_equal(np.array(record["result"]["data"], dtype=np.float32), tensor.to_numpy())


NON_FINITE_APP = """
import numpy as np
from quill import Token, TokenBatch
from quill.server import QuillApp
from quill.tensor import Tensor

app = QuillApp()

@app.token_stream("inference.v1.LLMService/Generate")
def generate(request, context):
    yield TokenBatch.from_tokens([Token(1, 0, "a", logprob=float("nan")), Token(2, 1, "b", logprob=float("-inf"))])

@app.tensor("inference.v1.LLMService/Embed")
def embed(request, context):
    return Tensor.from_numpy(np.array([0.5, np.nan, np.inf], dtype=np.float32))
"""


def test_non_finite_logprobs_and_elements_are_json_strings(tmp_path):
    """JSON has no NaN or infinity: the records hold the strings the server's JSON answers use,
    and every record line is JSON that a strict parser reads."""
    (tmp_path / "odd_app.py").write_text(NON_FINITE_APP)
    source = write_lines(tmp_path / "in.jsonl", [{}])
    strict = {"parse_constant": lambda name: pytest.fail(f"{name} in a record")}
    with quill_serve("odd_app:app", "--app-dir", str(tmp_path)) as served:
        for method, kind in (("Generate", "tokens"), ("Generate", "json"), ("Embed", "tensor")):
            output = tmp_path / f"{kind}.jsonl"
            assert quill_batch(served.url, method, source, str(output), "--kind", kind).returncode == 0
            [record] = [json.loads(line, **strict) for line in output.read_text().splitlines()]
            data = record["result"]["data"] if kind == "tensor" else [t["logprob"] for t in record["result"]["tokens"]]
            assert data == ([0.5, "NaN", "Infinity"] if kind == "tensor" else ["NaN", "-Infinity"])


# ---------------------------------------------------------------- interrupt and resume

def test_sigint_leaves_the_lines_done_and_resume_does_only_the_rest(tmp_path):
    with quill_serve() as server:
        total = 300
        source = write_lines(tmp_path / "in.jsonl", prompts(total, token_delay_ms=10))  # ~40 ms a call
        output = str(tmp_path / "out.jsonl")
        process = subprocess.Popen(batch_command(server.url, "Generate", source, output, "--concurrency", "4"),
                                   stderr=subprocess.PIPE, text=True)
        wait_until(lambda: os.path.exists(output) and os.path.getsize(output) >= 20_000, TIMEOUT, interval=0.02)
        process.send_signal(signal.SIGINT)
        stderr = process.communicate(timeout=TIMEOUT)[1]
        assert process.returncode == 130, stderr
        done = records(output)
        assert 0 < len(done) < total
        assert [r["line"] for r in done] == list(range(1, len(done) + 1))  # a prefix of the input
        assert f"holds lines 1-{len(done)}" in stderr and "--resume" in stderr

        time.sleep(0.5)  # calls the interrupted run left in flight have ended on the server
        before = generated(server.url)
        resumed = quill_batch(server.url, "Generate", source, output, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert generated(server.url) - before == total - len(done)  # no finished line redone
        with QuillClient(server.url) as client:
            expected = [client.call_json(SERVICE, "Generate", r) for r in prompts(total, token_delay_ms=0)]
        assert records(output) == [{"line": i + 1, "result": answer} for i, answer in enumerate(expected)]


def test_resume_drops_a_torn_last_record(server, tmp_path):
    source, output = write_lines(tmp_path / "in.jsonl", prompts(6)), tmp_path / "out.jsonl"
    assert quill_batch(server.url, "Generate", source, str(output)).returncode == 0
    whole = output.read_bytes()
    lines = whole.splitlines(keepends=True)
    output.write_bytes(b"".join(lines[:3]) + lines[3][:25])  # killed while writing line 4
    result = quill_batch(server.url, "Generate", source, str(output), "--resume")
    assert result.returncode == 0, result.stderr
    assert output.read_bytes() == whole
    assert "3 lines in" in result.stderr


def test_an_interrupt_between_a_write_and_its_count_is_reported_exactly(server, tmp_path, capsys, monkeypatch):
    source, output = write_lines(tmp_path / "in.jsonl", prompts(8)), str(tmp_path / "out.jsonl")

    class InterruptedAtTheThirdRecord(io.BufferedWriter):
        writes = 0

        def write(self, data):
            written = super().write(data)
            InterruptedAtTheThirdRecord.writes += 1
            if InterruptedAtTheThirdRecord.writes == 3:
                signal.raise_signal(signal.SIGINT)  # Ctrl+C, as the third record's bytes are in
            return written

    def opening(path, mode="r", *args, **kwargs):
        if path == output and mode == "xb":
            return InterruptedAtTheThirdRecord(io.FileIO(path, "x"))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(batch, "open", opening, raising=False)
    code = cli.main(["batch", server.url, SERVICE, "Generate", "--input", source, "--output", output,
                     "--no-progress"])
    monkeypatch.undo()
    assert code == 130
    assert [r["line"] for r in records(output)] == [1, 2, 3]
    assert f"{output} holds lines 1-3: run the same command with --resume" in capsys.readouterr().err
    resumed = quill_batch(server.url, "Generate", source, output, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["line"] for r in records(output)] == list(range(1, 9))


def interrupted_after_line_3(server, tmp_path, requests) -> tuple[str, str, bytes]:
    """An input, and an output that holds its lines 1-3 (as an interrupted run leaves it)."""
    source, output = write_lines(tmp_path / "in.jsonl", requests), tmp_path / "out.jsonl"
    assert quill_batch(server.url, "Generate", source, str(output)).returncode == 0
    output.write_bytes(b"".join(output.read_bytes().splitlines(keepends=True)[:3]))
    return source, str(output), output.read_bytes()


def test_resume_with_another_input_or_method_is_refused(server, tmp_path):
    source, output, kept = interrupted_after_line_3(server, tmp_path, prompts(6))
    other = write_lines(tmp_path / "other.jsonl", prompts(6, token_delay_ms=0))
    result = quill_batch(server.url, "Generate", other, output, "--resume")
    assert result.returncode == 2
    assert f"--resume: {output} holds lines 1-3 of another run" in result.stderr
    assert str(tmp_path / "in.jsonl") in result.stderr and str(tmp_path / "other.jsonl") in result.stderr
    original = (tmp_path / "in.jsonl").read_text()
    edited = original.replace('"line 4"', '"line 9"')  # the same path and size, another content
    assert len(edited) == len(original) != edited
    (tmp_path / "in.jsonl").write_text(edited)
    assert quill_batch(server.url, "Generate", source, output, "--resume").returncode == 2
    (tmp_path / "in.jsonl").write_text(original)
    result = quill_batch(server.url, "Echo", source, output, "--resume")
    assert result.returncode == 2 and "LLMService/Echo" in result.stderr
    result = quill_batch(server.url, "Generate", source, output, "--resume", "--kind", "tokens")
    assert result.returncode == 2 and "--kind tokens" in result.stderr
    assert open(output, "rb").read() == kept  # no refused resume touched it


def test_resume_with_the_same_input_under_another_path_continues(server, tmp_path):
    source, output, _ = interrupted_after_line_3(server, tmp_path, prompts(6))
    moved = str(tmp_path / "moved.jsonl")
    shutil.move(source, moved)
    result = quill_batch(server.url, "Generate", moved, output, "--resume")
    assert result.returncode == 0, result.stderr
    assert [r["line"] for r in records(output)] == [1, 2, 3, 4, 5, 6] and "warning" not in result.stderr


def test_resume_without_the_input_record_warns_and_records_it(server, tmp_path):
    source, output, _ = interrupted_after_line_3(server, tmp_path, prompts(6))
    os.remove(output + ".quill-batch.json")  # as an older quill left it
    result = quill_batch(server.url, "Generate", source, output, "--resume")
    assert result.returncode == 0 and "quill-batch.json is missing: cannot check" in result.stderr
    assert json.loads(open(output + ".quill-batch.json").read())["input"]["path"] == source


def test_resume_from_stdin_is_checked_by_name_only(server, tmp_path):
    source, output = write_lines(tmp_path / "in.jsonl", prompts(6)), tmp_path / "out.jsonl"

    def from_stdin(*options):
        with open(source, "rb") as stdin:
            return subprocess.run(batch_command(server.url, "Generate", "-", str(output), *options), stdin=stdin,
                                  capture_output=True, text=True, timeout=TIMEOUT)

    assert from_stdin().returncode == 0
    output.write_bytes(b"".join(output.read_bytes().splitlines(keepends=True)[:3]))
    result = quill_batch(server.url, "Generate", source, str(output), "--resume")
    assert result.returncode == 2 and "on stdin then" in result.stderr
    result = from_stdin("--resume")
    assert result.returncode == 0 and "stdin is not a file, so it is not checked" in result.stderr
    assert [r["line"] for r in records(output)] == [1, 2, 3, 4, 5, 6]


def test_an_output_file_is_never_overwritten_nor_resumed_unless_it_is_batch_output(server, tmp_path):
    source, output = write_lines(tmp_path / "in.jsonl", prompts(2)), tmp_path / "out.jsonl"
    output.write_text("precious\n")
    result = quill_batch(server.url, "Generate", source, str(output))
    assert result.returncode == 2 and "already exists: add --resume" in result.stderr
    result = quill_batch(server.url, "Generate", source, str(output), "--resume")
    assert result.returncode == 2 and "line 1 is not a record of quill batch" in result.stderr
    assert output.read_text() == "precious\n"


def test_an_unreachable_server_at_the_start_leaves_no_output_behind(server, tmp_path):
    """Exit 3 before the first record: no empty output nor run record, so the same command
    runs again as it is (no --resume, no rm)."""
    source, output = write_lines(tmp_path / "in.jsonl", prompts(5)), str(tmp_path / "out.jsonl")
    for options in ((), ("--resume",)):
        result = quill_batch(f"http://127.0.0.1:{free_port()}", "Generate", source, output, *options)
        assert result.returncode == 3 and "cannot connect" in result.stderr
        assert f"{output} was not kept: run the same command again" in result.stderr
        assert os.listdir(tmp_path) == ["in.jsonl"]
    result = quill_batch(server.url, "Generate", source, output)
    assert result.returncode == 0 and [r["line"] for r in records(output)] == [1, 2, 3, 4, 5]


def test_a_server_lost_after_some_records_keeps_them_and_resume_finishes(tmp_path):
    total = 200
    source = write_lines(tmp_path / "in.jsonl", prompts(total, token_delay_ms=10))
    output = str(tmp_path / "out.jsonl")
    with quill_serve() as first:
        process = subprocess.Popen(batch_command(first.url, "Generate", source, output, "--concurrency", "4"),
                                   stderr=subprocess.PIPE, text=True)
        wait_until(lambda: os.path.exists(output) and os.path.getsize(output) >= 5_000, TIMEOUT, interval=0.02)
        first.process.kill()  # the server is gone: calls in flight fail, new ones cannot connect
        stderr = process.communicate(timeout=TIMEOUT)[1]
    assert process.returncode == 3, stderr
    done = records(output)
    assert 0 < len(done) < total and [r["line"] for r in done] == list(range(1, len(done) + 1))
    assert f"holds lines 1-{len(done)} (--resume continues)" in stderr
    assert os.path.exists(output + ".quill-batch.json")
    with quill_serve() as second:
        resumed = quill_batch(second.url, "Generate", source, output, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after line {len(done)}: {total - len(done)} lines in" in resumed.stderr
    assert [r["line"] for r in records(output)] == list(range(1, total + 1))
    assert all("result" in r for r in records(output))


def test_ctrl_c_before_the_first_record_leaves_no_output_behind(server, tmp_path):
    source = write_lines(tmp_path / "in.jsonl", prompts(2, token_delay_ms=1000))  # 4 s a call
    output = str(tmp_path / "out.jsonl")
    process = subprocess.Popen(batch_command(server.url, "Generate", source, output), stderr=subprocess.PIPE,
                               text=True)
    wait_until(lambda: os.path.exists(output + ".quill-batch.json"), TIMEOUT, interval=0.02)
    time.sleep(0.5)  # the first calls are in flight
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=TIMEOUT)[1]
    assert process.returncode == 130, stderr
    assert "interrupted before any line was done" in stderr
    assert os.listdir(tmp_path) == ["in.jsonl"]


def test_a_resumed_run_reports_its_own_lines_apart_from_the_earlier_runs(server, tmp_path):
    """The summary of a resume counts what this run did; the exit status describes the whole
    output (an earlier run's bad line 2 still makes it 2), as one run doing it all would end."""
    lines = [prompts(1)[0], "{not json", *prompts(2), {"prompt": "x", "max_tokens": -1}, prompts(1)[0]]
    source, output = write_lines(tmp_path / "in.jsonl", lines), tmp_path / "out.jsonl"
    whole = quill_batch(server.url, "Generate", source, str(output))
    assert whole.returncode == 2, whole.stderr
    assert re.search(rf"6 lines in [\d.]+ s \([\d.]+ lines/s\), 2 failed; output: {re.escape(str(output))} "
                     r"\(the first on line 2\)\n", whole.stderr)
    complete = output.read_bytes()

    def resume_after(kept: int) -> subprocess.CompletedProcess:
        output.write_bytes(b"".join(complete.splitlines(keepends=True)[:kept]))
        result = quill_batch(server.url, "Generate", source, str(output), "--resume")
        assert output.read_bytes() == complete
        return result

    result = resume_after(3)  # lines 4-6 now, line 5 fails in this run
    assert result.returncode == 2, result.stderr  # as the whole run ended: its first failed line is a bad line
    assert re.search(rf"quill batch: resumed after line 3: 3 lines in [\d.]+ s \([\d.]+ lines/s\), 1 failed; "
                     rf"{re.escape(str(output))} holds lines 1-6: 6 records, 2 failed "
                     r"\(the first on line 2, from an earlier run\)\n", result.stderr)
    assert "quill: line 5: 400 Invalid request" in result.stderr and "quill: line 2:" not in result.stderr
    result = resume_after(5)  # only line 6, which succeeds
    assert result.returncode == 2, result.stderr
    assert re.search(r"resumed after line 5: 1 lines in [\d.]+ s \([\d.]+ lines/s\), 0 failed; "
                     r".* holds lines 1-6: 6 records, 2 failed \(the first on line 2, from an earlier run\)",
                     result.stderr)
    result = resume_after(1)  # lines 2-6: both failures are this run's
    assert result.returncode == 2
    assert "5 lines in" in result.stderr and ", 2 failed; " in result.stderr
    assert "6 records, 2 failed (the first on line 2)\n" in result.stderr


def test_bad_command_lines_exit_2(server, tmp_path):
    source = write_lines(tmp_path / "in.jsonl", prompts(1))
    result = quill_batch(server.url, "Generate", str(tmp_path / "missing.jsonl"), str(tmp_path / "o1.jsonl"))
    assert result.returncode == 2 and "cannot read --input" in result.stderr
    result = quill_batch("ftp://nowhere", "Generate", source, str(tmp_path / "o2.jsonl"))
    assert result.returncode == 2 and "bad server URL" in result.stderr
    result = quill_batch(server.url, "Gen/erate", source, str(tmp_path / "o3.jsonl"))
    assert result.returncode == 2
    result = quill_batch(server.url, "Generate", source, str(tmp_path / "o4.jsonl"), "--concurrency", "0")
    assert result.returncode == 2 and "must be a positive integer" in result.stderr
    for url in ("ftp://nowhere", "http://127.0.0.1:99999", "http://[::1"):
        result = quill_batch(url, "Generate", source, str(tmp_path / "o5.jsonl"), "--resume")
        assert result.returncode == 2 and "bad server URL" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]  # no output, nor its run record, was left


# ---------------------------------------------------------------- progress on a terminal

def test_on_a_terminal_a_bar_is_redrawn_in_place(server, tmp_path):
    source = write_lines(tmp_path / "in.jsonl", prompts(60, token_delay_ms=5))
    controller, terminal = pty.openpty()
    process = subprocess.Popen(batch_command(server.url, "Generate", source, str(tmp_path / "out.jsonl")),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:  # the terminal closed: the command ended
            break
        if not data:
            break
        shown += data
    os.close(controller)
    assert process.wait(timeout=TIMEOUT) == 0
    text = shown.decode()
    assert "\r" in text and "[########################] 60/60 lines" in text
    assert re.search(r"lines/s, 0 failed, ETA \d+:\d\d", text)
