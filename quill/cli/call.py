"""``quill call``: call one method and print its answer (JSON pretty-printed, bytes raw to a pipe).

    quill call http://127.0.0.1:8080 inference.v1.LLMService Embed --json '{"input": "hi", "dim": 4}'
    quill call http://127.0.0.1:8080 inference.v1.LLMService Echo --data hello
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from .support import EXIT_OK, UsageError, add_client_options, check_names, make_client, parse_headers, \
    run_client_command

__all__ = ["add_parser"]


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``quill call`` with the CLI's subcommand factory."""
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
    call.add_argument("--output", "-o", help="write the answer's bytes to this file (to a pipe they go exactly as "
                                              "received, no newline added; a terminal gets a final newline)")
    add_client_options(call)
    call.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``quill call`` with parsed ``args``; the exit status."""
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
                    if not isinstance(obj, (dict, list)):  # only those go as JSON on a stream
                        raise UsageError(f"--json with --stream must be a JSON object or array, got "
                                         f"{type(obj).__name__}: use --data for a body that is not JSON")
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
