"""``quill list``: the services and methods a server describes, as ``grpcurl list`` does for gRPC.

    quill list http://127.0.0.1:8080
    quill list http://127.0.0.1:8080 inference.v1.LLMService --long
    quill list http://127.0.0.1:8080 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Callable

from .support import EXIT_OK, EXIT_RPC_ERROR, add_client_options, error, make_client, parse_headers, \
    run_client_command

__all__ = ["add_parser"]


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``quill list`` with the CLI's subcommand factory."""
    parser = command("list", "list the server's services and methods",
                     "List the services and methods the server at URL describes: each method's kind "
                     "and the first line of its docstring. A SERVICE that the server does not have "
                     "exits with code 1.")
    parser.add_argument("url", help="base URL of the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("service", nargs="?", help="only this service (package.Service)")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--long", "-l", action="store_true",
                       help="also each method's content types and its whole docstring")
    shape.add_argument("--json", action="store_true", help="the description as JSON (the server's schema)")
    add_client_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``quill list`` with parsed ``args``; the exit status."""
    from ..errors import RpcError
    from ..protocol.discovery import describe_document
    from ..protocol.kinds import DESCRIBE_PATH, KIND_PHRASES

    def action() -> int:
        headers = parse_headers(args.header)
        with make_client(args) as client:
            try:
                methods = client.list_methods(headers=headers)
            except RpcError as exc:
                if exc.status not in (404, 405):
                    raise
                error(f"the server at {args.url} does not describe its methods (GET {DESCRIBE_PATH} answered "
                      f"{exc.status}: not a quill server, or one older than method discovery)")
                return EXIT_RPC_ERROR
        if args.service is not None:
            services = list(dict.fromkeys(m.service for m in methods))
            methods = [m for m in methods if m.service == args.service]
            if not methods:
                error(f"the server has no service {args.service!r} (it has: {', '.join(services) or 'none'})")
                return EXIT_RPC_ERROR
        if args.json:
            print(json.dumps(describe_document(methods), indent=2, ensure_ascii=False))
            return EXIT_OK
        width = max((len(m.name) for m in methods), default=0)
        kinds = {kind: phrase.removeprefix("a ") for kind, phrase in KIND_PHRASES.items()}
        kind_width = max(len(phrase) for phrase in kinds.values())
        service = None
        for method in methods:
            if method.service != service:
                service = method.service
                print(service)
            line = f"  {method.name:<{width}}  {kinds.get(method.kind, method.kind):<{kind_width}}  {method.summary}"
            print(line.rstrip())
            if args.long:
                _print_details(method)
        sys.stdout.flush()
        return EXIT_OK

    return run_client_command(action)


def _print_details(method) -> None:
    """The content types, then the docstring past its first line (printed on the method's line)."""
    indent = " " * 6
    print(f"{indent}request:  {' | '.join(method.request)}")
    print(f"{indent}response: {' | '.join(method.response)}")
    rest = (method.doc or "").strip().partition("\n")[2].strip("\n")
    if rest:
        print(textwrap.indent(textwrap.dedent(rest), indent))
