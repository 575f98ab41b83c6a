"""The ``quill`` command (also ``python -m quill``): serve, call, generate, demo, bench.

Exit codes a script can rely on:

== =========================================================================
0  success
1  the server answered with an error (Problem Details printed on stderr)
2  bad command line: arguments, names, headers, server URL, --output file
3  the server could not be reached, or the call timed out
4  the answer could not be decoded, or the stream was cancelled or cut short
5  a package the command needs is missing (an HTTP server for serve, demo, bench)
6  serve: a worker process died on its own (the others were stopped)
== =========================================================================

>>> main(["call", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
import time
from typing import Any, Sequence

from .cli_support import (
    EXIT_CODES_HELP,
    EXIT_MISSING_PACKAGE,
    EXIT_OK,
    EXIT_SERVER_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
    add_client_options,
    check_names,
    error,
    make_client,
    parse_headers,
    positive_int,
    run_client_command,
)

DEMO_SERVICE = "inference.v1.LLMService"


def _write_bytes(data: bytes, output: str | None) -> None:
    """Write a binary answer: to a file, raw to a pipe, or as text / a hex preview on a terminal."""
    if output:
        try:
            with open(output, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            raise UsageError(f"cannot write --output {output}: {exc.strerror or exc}") from None
        print(f"wrote {len(data)} bytes to {output}", file=sys.stderr)
        return
    if not sys.stdout.isatty():
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and (text.isprintable() or all(c.isprintable() or c in "\n\r\t" for c in text)):
        print(text)
    else:
        print(f"<{len(data)} bytes of binary data; use --output FILE or a pipe to get them> {data[:48].hex(' ')}"
              + (" ..." if len(data) > 48 else ""))


# --------------------------------------------------------------------------------------
# quill serve
# --------------------------------------------------------------------------------------
def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import ApiKeyAuth, BearerAuth, QuillApp, load_app, serve
    from .server.running import WorkerDied
    from .server.tls import TLSConfig

    tls = None
    if args.certfile is not None:
        try:
            tls = TLSConfig(args.certfile, args.keyfile, ca_certs=args.ca_certs,
                            require_client_cert=args.require_client_cert)
        except ValueError as exc:
            error(f"--require-client-cert: {exc}")
            return EXIT_USAGE
    elif args.keyfile or args.ca_certs or args.require_client_cert:
        error("--keyfile, --ca-certs and --require-client-cert need --certfile")
        return EXIT_USAGE
    if args.app == "quill.demo:app" or args.app is None:
        from .demo import create_demo_app

        app = create_demo_app(token_delay=args.token_delay_ms / 1000.0)
        name = "the demo service (quill.demo:app)"
    else:
        # like uvicorn: the app's module is found from the working directory (or --app-dir),
        # which the `quill` console script does not put on sys.path by itself
        sys.path.insert(0, os.path.abspath(args.app_dir))
        try:
            app = load_app(args.app)
        except (ImportError, ValueError) as exc:
            error(f"cannot load {args.app}: {exc}")
            return EXIT_USAGE
        name = args.app
    if isinstance(app, QuillApp):
        if args.max_request_mb is not None:
            app.max_request_bytes = int(args.max_request_mb * 1024 * 1024)
        hooks = ([BearerAuth(*args.bearer_token)] if args.bearer_token else []) + (
            [ApiKeyAuth(*args.api_key)] if args.api_key else [])
        if hooks:
            app.auth = hooks
        if args.public_metrics:
            app.public_paths = app.public_paths | {"/metrics"}
    elif args.bearer_token or args.api_key or args.max_request_mb is not None or args.public_metrics:
        error(f"{args.app} is not a QuillApp: --bearer-token, --api-key, --public-metrics and --max-request-mb "
               "do not apply")
        return EXIT_USAGE

    def listening(url: str) -> None:
        methods = ", ".join(sorted(app.methods())) if isinstance(app, QuillApp) else "an ASGI app"
        print(f"quill: serving {name} on {url}\n  methods: {methods}\n  stop with Ctrl+C or SIGTERM "
              f"(in-flight calls get {args.graceful_timeout:g} s to finish)", file=sys.stderr, flush=True)

    def stop(signum: int, frame: Any) -> None:
        # uvicorn handles the first signal itself (graceful shutdown) and re-raises it
        # afterwards; landing here means the shutdown is complete.
        raise SystemExit(EXIT_OK)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        serve(app, args.host, args.port, uds=args.uds, uds_mode=args.uds_mode, tls=tls, engine=args.engine,
              log_level=args.log_level, access_log=args.access_log, graceful_timeout=args.graceful_timeout,
              on_listening=listening, workers=args.workers, head_timeout=args.head_timeout,
              max_connections=args.max_connections)
    except OSError as exc:
        where = args.uds if args.uds is not None else f"{args.host}:{args.port}"
        error(f"cannot listen on {where}: {exc.strerror or exc}")
        return EXIT_UNREACHABLE
    except WorkerDied as exc:
        error(str(exc))
        return EXIT_SERVER_FAILED
    except SystemExit as exc:
        if exc.code not in (None, EXIT_OK):
            raise
    print("quill: server stopped", file=sys.stderr, flush=True)
    return EXIT_OK


# --------------------------------------------------------------------------------------
# quill call / quill generate
# --------------------------------------------------------------------------------------
def _cmd_call(args: argparse.Namespace) -> int:
    def action() -> int:
        headers = parse_headers(args.header)
        check_names(args.service, args.method)
        with make_client(args) as client:
            if args.json is not None:
                try:
                    obj = json.loads(args.json)
                except ValueError as exc:
                    raise UsageError(f"--json is not valid JSON: {exc}") from None
                if args.stream:
                    for message in client.call_stream(args.service, args.method, obj, headers=headers):
                        _print_message(message)
                    return EXIT_OK
                answer = client.call_json(args.service, args.method, obj, headers=headers)
                print(json.dumps(answer, indent=2, ensure_ascii=False))
                return EXIT_OK
            if args.file is not None:
                try:
                    request = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
                except OSError as exc:
                    raise UsageError(f"cannot read --file {args.file}: {exc.strerror or exc}") from None
            else:
                request = (args.data or "").encode()
            if args.stream:
                for message in client.call_stream(args.service, args.method, request, headers=headers):
                    _print_message(message)
                return EXIT_OK
            _write_bytes(client.call(args.service, args.method, request, headers=headers), args.output)
            return EXIT_OK

    return run_client_command(action)


def _print_message(message: bytes) -> None:
    try:
        print(message.decode("utf-8"), flush=True)
    except UnicodeDecodeError:
        print(message.hex(" "), flush=True)


def _cmd_generate(args: argparse.Namespace) -> int:
    def action() -> int:
        headers = parse_headers(args.header)
        check_names(args.service, args.method)
        request = {"prompt": args.prompt, "max_tokens": args.max_tokens, "batch_size": args.batch_size}
        if args.seed is not None:
            request["seed"] = args.seed
        started = time.perf_counter()
        first_token = None
        count = 0
        with make_client(args) as client:
            # bytes, so the answer comes as TOKEN_BATCH frames (a dict would ask for JSON)
            stream = client.stream_tokens(args.service, args.method, json.dumps(request).encode(), headers=headers)
            for batch in stream:
                if first_token is None:
                    first_token = time.perf_counter() - started
                for token in batch:
                    if args.logprobs:
                        logprob = "-" if token.logprob is None else f"{token.logprob:.3f}"
                        sys.stdout.write(f"{token.text!r}\t{logprob}\n")
                    else:
                        sys.stdout.write(token.text or "")
                sys.stdout.flush()
                count += len(batch)
        seconds = time.perf_counter() - started
        if not args.logprobs:
            sys.stdout.write("\n")
        if not args.quiet:
            print(f"[{count} tokens in {seconds:.2f} s, {count / seconds if seconds else 0:.1f} tokens/s, "
                  f"first token after {(first_token or 0) * 1000:.0f} ms]", file=sys.stderr)
        return EXIT_OK

    return run_client_command(action)


# --------------------------------------------------------------------------------------
# quill demo / quill bench
# --------------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    def action() -> int:
        run_demo(max_tokens=args.max_tokens, token_delay=args.token_delay_ms / 1000.0)
        return EXIT_OK

    return run_client_command(action)


class _ProgressBar:
    """A one-line progress bar on stderr (one line per step when stderr is not a terminal).

    >>> import io
    >>> bar = _ProgressBar(4, stream=io.StringIO()); bar.step("first"); bar.finish()
    """

    def __init__(self, total: int, stream: Any = None, width: int = 28):
        self.total = total
        self.done = -1
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def step(self, label: str) -> None:
        """Called as each step starts: the previous one is complete."""
        self.done += 1
        self._draw(label)

    def finish(self) -> None:
        self.done = self.total
        self._draw("done")
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, label: str) -> None:
        filled = self.width * self.done // max(self.total, 1)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        if self.interactive:
            self.stream.write("\r" + line[:119].ljust(119))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import benchmark

    def action() -> int:
        names = list(benchmark.WORKLOADS)
        bar = _ProgressBar(2 * len(names)) if not args.no_progress else None
        process, url = (None, args.url)
        if url is None:
            print("quill: starting a benchmark server (quill serve quill.benchmark:app)", file=sys.stderr, flush=True)
            process, url = benchmark.start_server()
        try:
            rows = benchmark.run_benchmarks(url, names, repeats=1 if args.quick else 3,
                                            progress=bar.step if bar else None)
            if bar:
                bar.finish()
        finally:
            if process is not None:
                process.terminate()
                process.wait()
        print(benchmark.format_table(rows), flush=True)
        return EXIT_OK

    return run_client_command(action)


# --------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------
def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an octal file mode such as 600, got {text}") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"must be an octal file mode between 000 and 777, got {text}")
    return mode


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``quill`` command."""
    from . import __version__
    from .server.engines import ENGINES, HEAD_TIMEOUT, MAX_CONNECTIONS

    parser = argparse.ArgumentParser(
        prog="quill",
        description="Quill RPC from the command line: serve an app, call methods, stream tokens, benchmark.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"quill {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=textwrap.fill(description, 88),
                                   epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)

    serve = command("serve", "serve the demo service or your own app",
                    "Serve a QuillApp (or any ASGI app) over HTTP, HTTPS or a Unix socket, on uvicorn, "
                    "hypercorn or granian. Without APP, serves the demo inference.v1.LLMService. Stops "
                    "gracefully on Ctrl+C or SIGTERM.")
    serve.add_argument("app", nargs="?", default="quill.demo:app", metavar="APP",
                       help="the app as 'module:attribute' (default: quill.demo:app)")
    serve.add_argument("--app-dir", default=".", help="directory to import APP from (default: the current one)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default 8080; 0 picks a free one)")
    serve.add_argument("--uds", metavar="PATH",
                       help="listen on this Unix domain socket instead of TCP (clients use "
                            "http+unix://<percent-encoded path>); removed when the server stops")
    serve.add_argument("--uds-mode", type=_octal_mode, default=0o600, metavar="MODE",
                       help="file mode of the --uds socket, octal (default 600: only this user may connect)")
    serve.add_argument("--engine", choices=sorted(ENGINES), default=None,
                       help="the HTTP server: uvicorn (HTTP/1.1), hypercorn (HTTP/1.1 and HTTP/2) or granian "
                            "(HTTP/1.1 and HTTP/2, Rust I/O); default: the preferred one installed")
    serve.add_argument("--certfile", help="serve HTTPS with this PEM certificate (chain)")
    serve.add_argument("--keyfile", help="the PEM private key of --certfile (if not in the same file)")
    serve.add_argument("--ca-certs", metavar="FILE",
                       help="verify client certificates against these CA certificates (PEM)")
    serve.add_argument("--require-client-cert", action="store_true",
                       help="refuse TLS clients without a certificate that --ca-certs verifies")
    serve.add_argument("--token-delay-ms", type=_non_negative_float, default=0.0,
                       help="demo service only: simulated compute per generated token (default 0)")
    serve.add_argument("--max-request-mb", type=_non_negative_float, default=None,
                       help="largest request body accepted, in MiB (default 64); larger ones get 413")
    serve.add_argument("--bearer-token", action="append", default=[], metavar="TOKEN",
                       help="require 'Authorization: Bearer TOKEN' (repeatable; any listed token or key passes)")
    serve.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="require 'X-API-Key: KEY' (repeatable)")
    serve.add_argument("--public-metrics", action="store_true",
                       help="answer /metrics without credentials (by default only /health and /ready are open "
                            "when --bearer-token or --api-key is given)")
    serve.add_argument("--workers", type=positive_int, default=1,
                       help="worker processes sharing the listening socket (default 1; more than 1 needs POSIX fork)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--graceful-timeout", type=_non_negative_float, default=10.0,
                       help="seconds in-flight calls get to finish at shutdown (default 10)")
    serve.add_argument("--head-timeout", type=_positive_seconds, default=HEAD_TIMEOUT, metavar="SECONDS",
                       help=f"drop a client whose request head is not complete this long after it connected "
                            f"(default {HEAD_TIMEOUT:g})")
    serve.add_argument("--max-connections", type=positive_int, default=MAX_CONNECTIONS, metavar="N",
                       help=f"open connections per worker (default {MAX_CONNECTIONS}); beyond them uvicorn answers "
                            "503, hypercorn closes new connections, granian accepts them when one closes")
    serve.set_defaults(run=_cmd_serve)

    call = command("call", "call one method and print the answer",
                   "Call SERVICE/METHOD on the server at URL and print the answer. A Problem Details "
                   "error is printed on stderr, with exit code 1.")
    call.add_argument("url", help="base URL of the server, e.g. http://127.0.0.1:8080")
    call.add_argument("service", help="package.Service, e.g. inference.v1.LLMService")
    call.add_argument("method", help="method name, e.g. Echo")
    body = call.add_mutually_exclusive_group()
    body.add_argument("--data", "-d", help="request body as text (sent as application/proto bytes)")
    body.add_argument("--json", "-j", help="request as JSON (sent as application/json; the JSON answer is pretty-printed)")
    body.add_argument("--file", "-f", help="request body from a file ('-' reads stdin)")
    call.add_argument("--stream", action="store_true",
                      help="server-streaming method: print each message of the stream on its own line")
    call.add_argument("--output", "-o", help="write the answer's bytes to this file")
    add_client_options(call)
    call.set_defaults(run=_cmd_call)

    generate = command("generate", "stream generated tokens to the terminal",
                       "Call a token-streaming Generate method and print tokens as they arrive.")
    generate.add_argument("url", help="base URL of the server, e.g. http://127.0.0.1:8080")
    generate.add_argument("prompt", help="the prompt text")
    generate.add_argument("--max-tokens", type=int, default=64, help="tokens to generate (default 64)")
    generate.add_argument("--batch-size", type=positive_int, default=1, help="tokens per TokenBatch (default 1)")
    generate.add_argument("--seed", type=int, default=None, help="sampling seed")
    generate.add_argument("--service", default=DEMO_SERVICE, help=f"service (default {DEMO_SERVICE})")
    generate.add_argument("--method", default="Generate", help="method (default Generate)")
    generate.add_argument("--logprobs", action="store_true", help="print one token per line with its logprob ('-' for a token sent without one)")
    generate.add_argument("--quiet", "-q", action="store_true", help="no statistics line on stderr")
    add_client_options(generate)
    generate.set_defaults(run=_cmd_generate)

    demo = command("demo", "run the demo end to end on an embedded server (offline, a few seconds)",
                   "Start the demo inference service on a free loopback port, stream a generation to the "
                   "terminal, round-trip an embedding tensor, and print tokens/s, MB/s and latencies.")
    demo.add_argument("--max-tokens", type=positive_int, default=48, help="tokens to stream (default 48)")
    demo.add_argument("--token-delay-ms", type=_non_negative_float, default=25.0,
                      help="simulated compute per token on the server (default 25)")
    demo.set_defaults(run=_cmd_demo)

    bench = command("bench", "benchmark quill and urllib3 against a server and print the table",
                    "Run the client benchmarks (quill.benchmark) against the server at URL, which must serve "
                    "quill.benchmark:app, or against one started for the run when URL is omitted; show a "
                    "progress bar on stderr and print a Markdown table.")
    bench.add_argument("url", nargs="?", default=None,
                       help="base URL of a server running quill.benchmark:app (default: start one)")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions (a rough number in seconds)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    bench.set_defaults(run=_cmd_bench)

    from .batch import add_batch_command

    add_batch_command(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quill`` command; returns the exit code.

    >>> main(["--version"])  # doctest: +SKIP
    quill 0.1.0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("quill: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:  # an optional dependency (an HTTP server engine) is not installed
        error(str(exc))
        return EXIT_MISSING_PACKAGE
    except BrokenPipeError:  # `quill generate ... | head`
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover - python -m quill.cli
    sys.exit(main())
