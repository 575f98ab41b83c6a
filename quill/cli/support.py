"""What the ``quill`` subcommands share: exit codes, usage errors, the client options (TLS
included), argument types, and the mapping of quill's errors to exit codes.

>>> run_client_command(lambda: EXIT_OK)
0
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any, Callable, Sequence

__all__ = [
    "EXIT_OK", "EXIT_RPC_ERROR", "EXIT_USAGE", "EXIT_UNREACHABLE", "EXIT_PROTOCOL", "EXIT_MISSING_PACKAGE",
    "EXIT_SERVER_FAILED", "EXIT_CODES_HELP", "COMMAND_FOR_KIND", "UsageError", "error", "print_rpc_error",
    "run_client_command", "parse_headers", "check_names", "make_client", "positive_int", "non_negative_float",
    "positive_seconds", "octal_mode",
    "add_client_options", "add_tls_options", "tls_options",
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
        with warnings.catch_warnings():  # what --insecure silences ends with the command
            return action()
    except RpcError as exc:
        print_rpc_error(exc)
        return EXIT_RPC_ERROR
    except (QuillConnectionError, QuillTimeoutError) as exc:
        error(str(exc))
        hint = _tls_hint(str(exc))
        if hint:
            print(f"  {hint}", file=sys.stderr)
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


def make_client(args: argparse.Namespace, **options: Any):
    """The QuillClient of a command's URL and client options (``options``: more keyword arguments)."""
    from ..client import QuillClient
    from ..errors import FeatureUnavailableError
    from ..protocol.calls import redact_url

    tls = tls_options(args)
    try:
        return QuillClient(args.url, timeout_ms=args.timeout_ms, enable_compression=args.compress, http2=args.http2,
                           **tls, **options)
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
    add_tls_options(parser)


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    """--cacert, --cert, --key and --insecure: how an https:// server is verified and who we are."""
    tls = parser.add_argument_group("TLS (https:// URLs; docs/connecting.md)")
    tls.add_argument("--cacert", metavar="FILE",
                     help="verify the server's certificate with the CA certificates in FILE (PEM), "
                          "e.g. a private CA's; default: the system's store (or $SSL_CERT_FILE)")
    tls.add_argument("--cert", metavar="FILE",
                     help="present this client certificate (PEM) to a server that asks for one (mutual TLS); "
                          "FILE may hold the private key too")
    tls.add_argument("--key", metavar="FILE", help="the PEM private key of --cert, when not in the same file")
    tls.add_argument("--insecure", action="store_true",
                     help="do not verify the server's certificate (testing only: anyone on the path can "
                          "read and change the calls)")


#: The flags of the clients' TLS files.
_TLS_FLAGS = {"ca_file": "--cacert", "client_cert": "--cert", "client_key": "--key"}


def tls_options(args: argparse.Namespace) -> dict[str, Any]:
    """The client keyword arguments (``verify``, ``ca_file``, ``client_cert``, ``client_key``) of
    the TLS options, after checking that the files load; a bad one raises :class:`UsageError`
    naming it and the cause. ``--insecure`` prints its warning here, once, and silences the
    clients' own warning of each connection.

    >>> tls_options(argparse.Namespace(url="https://h", cacert=None, cert=None, key=None, insecure=False))
    {}
    """
    given = [flag for flag, value in (("--cacert", args.cacert), ("--cert", args.cert), ("--key", args.key),
                                      ("--insecure", args.insecure)) if value]
    if not given:
        return {}
    if args.key and not args.cert:
        raise UsageError("--key needs --cert (the client certificate the key belongs to)")
    if args.insecure and args.cacert:
        raise UsageError("--insecure skips verifying the server, so --cacert would not be used: give one of them")
    url = args.url or ""
    if not url.lower().startswith("https://"):
        where = f"{url.split('://', 1)[0]}:// URL" if "://" in url else "URL"
        raise UsageError(f"{', '.join(given)}: TLS options need an https:// URL, not an {where}"
                         if url else f"{', '.join(given)}: TLS options need the https:// URL of a server")
    from ..protocol.tls_files import TLSFileError, check_client_files

    try:
        check_client_files(args.cacert, args.cert, args.key)
    except TLSFileError as exc:
        raise UsageError(exc.describe(_TLS_FLAGS.__getitem__, _TLS_FLAGS.__getitem__)) from None
    if args.insecure:
        from urllib3.exceptions import InsecureRequestWarning

        warnings.filterwarnings("ignore", category=InsecureRequestWarning)
        print("quill: warning: --insecure: the server's certificate is not verified, so anyone on the path "
              "can read and change the calls", file=sys.stderr, flush=True)
        return {"verify": False, "client_cert": args.cert, "client_key": args.key}
    return {"ca_file": args.cacert, "client_cert": args.cert, "client_key": args.key}


def _tls_hint(message: str) -> str | None:
    """What to do about a TLS failure, from the client's message; None for other failures.

    >>> _tls_hint("s/M at https://h/s/M: TLS handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
    ...           "verify failed: self-signed certificate in certificate chain (_ssl.c:1006)")[:40]
    "the server's certificate is not signed b"
    """
    if "CERTIFICATE_VERIFY_FAILED" in message and "mismatch" not in message:
        return ("the server's certificate is not signed by a CA this machine trusts: give its CA "
                "with --cacert FILE (--insecure skips verification, for testing only)")
    if " at https://" in message and ("closed connection without response" in message
                                      or "CERTIFICATE_REQUIRED" in message or "certificate required" in message):
        return ("the server ended the TLS connection before answering: if it requires a client "
                "certificate, give one it trusts with --cert FILE (and --key FILE)")
    return None
