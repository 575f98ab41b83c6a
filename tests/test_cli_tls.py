"""TLS from the command line: ``--cacert``, ``--cert``/``--key`` and ``--insecure`` on every
command that talks to a server, against ``quill serve --certfile`` (and ``--ca-certs
--require-client-cert``) run as a real subprocess, with certificates made by the openssl command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from quill.cli import main
from quill.demo import SERVICE, VOCABULARY, ToyLanguageModel

sys.path.insert(0, os.path.dirname(__file__))
from certificates import make_certificates  # noqa: E402
from serve_process import quill_serve  # noqa: E402

WARNING = "quill: warning: --insecure: the server's certificate is not verified"
CA_HINT = "give its CA with --cacert FILE"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_url(certs):
    """The demo service over HTTPS, its certificate signed by the private CA ``certs.ca``."""
    with quill_serve("--certfile", certs.server_cert, "--keyfile", certs.server_key) as server:
        yield server.url


@pytest.fixture(scope="module")
def mtls_url(certs):
    """The demo service over HTTPS, refusing clients without a certificate signed by ``certs.ca``."""
    with quill_serve("--certfile", certs.server_cert, "--keyfile", certs.server_key, "--ca-certs", certs.ca,
                     "--require-client-cert") as server:
        yield server.url


def quill(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quill", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def expected_text(prompt: str, count: int) -> str:
    return "".join(VOCABULARY[i] for i, _ in ToyLanguageModel().generate(prompt, count))


def run_command(name: str, url: str, directory, *tls: str) -> subprocess.CompletedProcess:
    """Run ``quill NAME`` against the demo service at ``url``; check its output when it succeeds."""
    if name == "call":
        done = quill("call", url, SERVICE, "Echo", "--data", "over tls", *tls, cwd=directory)
        assert done.returncode or done.stdout == "over tls"
    elif name == "generate":
        done = quill("generate", url, "Hello", "--max-tokens", "5", "--quiet", *tls, cwd=directory)
        assert done.returncode or done.stdout == expected_text("Hello", 5) + "\n"
    elif name == "list":
        done = quill("list", url, "--json", *tls, cwd=directory)
        assert done.returncode or {m["name"] for s in json.loads(done.stdout)["services"] for m in s["methods"]} \
            == {"Generate", "Embed", "Echo"}
    else:
        (directory / "prompts.jsonl").write_text('{"prompt": "Hi", "max_tokens": 3}\n"not an object"\n')
        output = directory / f"answers-{len(os.listdir(directory))}.jsonl"
        done = quill("batch", url, SERVICE, "Generate", "--input", "prompts.jsonl", "--output", str(output),
                     "--no-progress", *tls, cwd=directory)
        if done.returncode in (0, 1):  # line 2 is refused by the server: exit 1, as quill call
            records = [json.loads(line) for line in output.read_text().splitlines()]
            assert records[0] == {"line": 1, "result": records[0]["result"]}
            assert records[0]["result"]["text"] == expected_text("Hi", 3)
            assert records[1]["line"] == 2 and records[1]["error"]["status"] == 400
            done.returncode = 0
        else:
            assert not output.exists()  # a run that did no line leaves no output behind
    return done


COMMANDS = ["call", "generate", "list", "batch"]


@pytest.mark.parametrize("name", COMMANDS)
def test_private_ca_with_cacert(name, tls_url, certs, tmp_path):
    done = run_command(name, tls_url, tmp_path, "--cacert", certs.ca)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("name", COMMANDS)
def test_private_ca_without_cacert_fails_verification(name, tls_url, tmp_path):
    done = run_command(name, tls_url, tmp_path)
    assert done.returncode == 3, done.stderr  # exit 3: the server could not be reached
    first, hint = done.stderr.splitlines()[-2:]
    assert first.startswith("quill: error: ") and "CERTIFICATE_VERIFY_FAILED" in first
    assert CA_HINT in hint and "Traceback" not in done.stderr


@pytest.mark.parametrize("name", COMMANDS)
def test_insecure_works_and_warns_once(name, tls_url, tmp_path):
    done = run_command(name, tls_url, tmp_path, "--insecure")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(WARNING) == 1 and "InsecureRequestWarning" not in done.stderr


def test_bench_with_cacert(certs, tmp_path):
    with quill_serve("quill.cli.bench_service:app", "--certfile", certs.server_cert, "--keyfile",
                     certs.server_key) as server:
        done = quill("bench", server.url, "--quick", "--workload", "unary_100B", "--no-progress",
                     "--cacert", certs.ca, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        rows = [line for line in done.stdout.splitlines() if line.startswith("| unary 100 B |")]
        assert [row.split("|")[3].strip() for row in rows] == ["quill", "urllib3"]
        done = quill("bench", server.url, "--quick", "--workload", "unary_100B", "--no-progress", cwd=tmp_path)
        assert done.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in done.stderr and CA_HINT in done.stderr


def test_bench_tls_options_need_a_url(certs, tmp_path):
    done = quill("bench", "--cacert", certs.ca, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr == "quill: error: --cacert: TLS options need the https:// URL of a server\n"


def test_mutual_tls(mtls_url, certs, tmp_path):
    refused = quill("call", mtls_url, SERVICE, "Echo", "--data", "x", "--cacert", certs.ca, cwd=tmp_path)
    assert refused.returncode == 3 and "with --cert FILE" in refused.stderr, refused.stderr
    done = run_command("call", mtls_url, tmp_path, "--cacert", certs.ca, "--cert", certs.client_cert,
                       "--key", certs.client_key)
    assert done.returncode == 0, done.stderr
    both = tmp_path / "client-and-key.pem"  # a certificate file that holds its key: no --key
    both.write_text(open(certs.client_cert).read() + open(certs.client_key).read())
    for name in COMMANDS:
        done = run_command(name, mtls_url, tmp_path, "--cacert", certs.ca, "--cert", str(both))
        assert done.returncode == 0, (name, done.stderr)
    stranger = quill("call", mtls_url, SERVICE, "Echo", "--data", "x", "--cacert", certs.ca,
                     "--cert", certs.stranger_cert, "--key", certs.stranger_key, cwd=tmp_path)
    assert stranger.returncode == 3, stranger.stderr  # signed by another CA: refused


def bad_options(certs, tmp_path):
    """(options, the one error line) for TLS options that no connection is tried with."""
    missing = str(tmp_path / "missing-ca.pem")
    encrypted = str(tmp_path / "encrypted.key")
    subprocess.run(["openssl", "pkey", "-in", certs.client_key, "-aes256", "-passout", "pass:secret", "-out",
                    encrypted], check=True, capture_output=True)
    return [
        (["--key", certs.client_key], "--key needs --cert (the client certificate the key belongs to)"),
        (["--cacert", missing], f"--cacert {missing}: No such file or directory"),
        (["--cacert", certs.server_key], f"--cacert {certs.server_key} holds no PEM certificate"),
        (["--cert", certs.client_cert], f"--cert {certs.client_cert} holds no private key: pass its key file with --key"),
        (["--cert", certs.client_key, "--key", certs.client_key], f"--cert {certs.client_key} holds no PEM certificate"),
        (["--cert", certs.client_cert, "--key", certs.ca], f"--key {certs.ca} holds no PEM private key"),
        (["--cert", certs.client_cert, "--key", certs.server_key],
         f"--key {certs.server_key} does not match the certificate in {certs.client_cert}"),
        (["--cert", certs.client_cert, "--key", encrypted], f"--key {encrypted} holds an encrypted private key"),
        (["--cert", certs.client_cert, "--key", str(tmp_path)], f"--key {tmp_path}: Is a directory"),
        (["--insecure", "--cacert", certs.ca], "--insecure skips verifying the server"),
    ]


@pytest.mark.parametrize("name", COMMANDS)
def test_bad_tls_options_are_one_line_usage_errors(name, mtls_url, certs, tmp_path):
    cases = bad_options(certs, tmp_path)
    if name != "call":
        cases = cases[:2]  # the checks are shared (quill.cli.support): each command runs them
    for options, message in cases:
        done = run_command(name, mtls_url, tmp_path, *options)
        assert done.returncode == 2, (options, done.stderr)
        assert done.stderr.startswith("quill: error: " + message) and done.stderr.count("\n") == 1, done.stderr


def test_tls_options_need_an_https_url(certs, tmp_path):
    done = quill("call", "http://127.0.0.1:1", SERVICE, "Echo", "--cacert", certs.ca, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        2, "quill: error: --cacert: TLS options need an https:// URL, not an http:// URL\n")


@pytest.mark.parametrize("name", ["call", "generate", "list", "batch", "bench"])
def test_help_names_the_tls_options(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--cacert FILE", "--cert FILE", "--key FILE", "--insecure"))
    assert "docs/connecting.md" in text


def test_bench_workload_names(capsys):
    """--workload (which keeps test_bench_with_cacert short) names the benchmark's workloads."""
    from quill.cli.bench_service import WORKLOADS

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in WORKLOADS)
    assert main(["bench", "--workload", "unary_1B"]) == 2
    assert capsys.readouterr().err == (f"quill: error: --workload unary_1B: no such workload (there are: "
                                       f"{', '.join(WORKLOADS)})\n")
