"""What the ``quill`` subcommands share: exit codes, usage errors, the client options, argument
types, and the mapping of quill's errors to exit codes.

>>> run_client_command(lambda: EXIT_OK)
0
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

__all__ = [
    "EXIT_OK", "EXIT_RPC_ERROR", "EXIT_USAGE", "EXIT_UNREACHABLE", "EXIT_PROTOCOL", "EXIT_MISSING_PACKAGE",
    "EXIT_SERVER_FAILED", "EXIT_CODES_HELP", "COMMAND_FOR_KIND", "UsageError", "error", "print_rpc_error",
    "run_client_command", "parse_headers", "check_names", "make_client", "positive_int", "non_negative_float",
    "positive_seconds", "octal_mode",
    "add_client_options",
]

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_PROTOCOL = 4
EXIT_MISSING_PACKAGE = 5
EXIT_SERVER_FAILED = 6

EXIT_CODES_HELP = """\
exit codes: 0 success, 1 the server answered with an error (Problem Details on stderr),
2 bad command line, 3 server unreachable or timed out, 4 undecodable answer or broken stream,
5 a needed package is missing (an HTTP server: pip install 'quill-rpc[server]'), 6 a server worker died"""


#: The command that calls each kind of method (what a wrong-kind error tells the user to run).
COMMAND_FOR_KIND = {
    "unary": "`quill call`",
    "server_stream": "`quill call --stream`",
    "client_stream": "call_client_stream() from Python (no quill command sends a client stream)",
    "token_stream": "`quill generate`",
    "tensor": "`quill call --json`",
}


class UsageError(Exception):
    """A command-line value that argparse could not check by itself."""


def error(text: str) -> None:
    print(f"quill: error: {text}", file=sys.stderr, flush=True)


def print_rpc_error(exc: Any) -> None:
    """A Problem Details answer, readable: status and title, then the other members; a call of
    the wrong kind as one line naming the command to run instead."""
    from ..errors import WrongKindError
    from ..protocol.kinds import wrong_kind_hint

    if isinstance(exc, WrongKindError):
        method = (exc.call or "the method").rpartition("/")[2]
        error(wrong_kind_hint(method, exc.method_kind, exc.expect, COMMAND_FOR_KIND))
        return
    problem = exc.problem
    if problem is None:
        error(f"the server answered HTTP {exc.status}" + (f": {exc.body.strip()[:500]}" if exc.body else ""))
        return
    error(f"{problem.status} {problem.title}")
    for key, value in problem.to_dict().items():
        if key not in ("status", "title"):
            print(f"  {key}: {value}", file=sys.stderr)


def run_client_command(action: Callable[[], int]) -> int:
    """Run a command that talks to a server; map quill errors to exit codes."""
    from ..errors import (
        DecodeError,
        EncodeError,
        QuillConnectionError,
        QuillTimeoutError,
        RpcError,
        StreamCancelledError,
    )

    try:
        return action()
    except RpcError as exc:
        print_rpc_error(exc)
        return EXIT_RPC_ERROR
    except (QuillConnectionError, QuillTimeoutError) as exc:
        error(str(exc))
        return EXIT_UNREACHABLE
    except (DecodeError, StreamCancelledError) as exc:
        error(str(exc))
        return EXIT_PROTOCOL
    except (UsageError, EncodeError) as exc:  # EncodeError: a request that cannot be sent
        error(str(exc))
        return EXIT_USAGE


def parse_headers(values: Sequence[str]) -> dict[str, str]:
    from ..protocol.names import check_header

    headers = {}
    for value in values:
        name, colon, text = value.partition(":")
        if not colon or not name.strip():
            raise UsageError(f"header {value!r} must look like 'Name: value'")
        try:
            name, text = check_header(name.strip(), text.strip())
        except ValueError as exc:
            raise UsageError(f"-H {value!r}: {exc}") from None
        headers[name] = text
    return headers


def check_names(service: str, method: str) -> None:
    from ..protocol.names import check_rpc_name

    try:
        check_rpc_name("service", service)
        check_rpc_name("method", method)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def make_client(args: argparse.Namespace):
    from ..client import QuillClient
    from ..errors import FeatureUnavailableError
    from ..protocol.calls import redact_url

    try:
        return QuillClient(args.url, timeout_ms=args.timeout_ms, enable_compression=args.compress,
                           http2=args.http2)
    except FeatureUnavailableError as exc:  # --http2 on a build without the HTTP/2 engine
        raise UsageError(str(exc)) from None
    except ValueError as exc:  # the URL: scheme, host, port
        raise UsageError(f"bad server URL {redact_url(args.url)!r}: {exc}") from None


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an octal file mode such as 600, got {text}") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"must be an octal file mode between 000 and 777, got {text}")
    return mode


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="extra request header (repeatable), e.g. -H 'Authorization: Bearer TOKEN'")
    parser.add_argument("--timeout-ms", type=positive_int, default=30_000, help="per-call timeout (default 30000)")
    parser.add_argument("--compress", action="store_true",
                        help="zstd-compress request bodies of 1 KiB or more and accept zstd answers")
    parser.add_argument("--http2", action="store_true",
                        help="speak HTTP/2 (h2c with prior knowledge for http://, ALPN for https://)")
