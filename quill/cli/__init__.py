"""The ``quill`` command (also ``python -m quill``): serve, list, call, generate, demo, bench, batch.

One module per subcommand, each with ``add_parser(command)``; what they share (exit codes,
client options, argument types, error handling) is in :mod:`quill.cli.support`.

Exit codes a script can rely on:

== =========================================================================
0  success
1  the server answered with an error (Problem Details printed on stderr)
2  bad command line: arguments, names, headers, server URL, TLS files, --output file
3  the server could not be reached, or the call timed out
4  the answer could not be decoded, or the stream was cancelled or cut short
5  a package the command needs is missing (an HTTP server for serve, demo, bench)
6  serve: a worker process died on its own (the others were stopped)
== =========================================================================

>>> main(["call", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Sequence

from . import batch, bench, call, demo, generate, serve
from . import list as list_command  # (as: the module's name is the builtin's)
from .bench import ProgressBar as _ProgressBar  # noqa: F401 -- importable here since quill 0.1
from .support import EXIT_CODES_HELP, EXIT_MISSING_PACKAGE, EXIT_OK, error

__all__ = ["main", "build_parser"]

SUBCOMMANDS = (serve, list_command, call, generate, demo, bench, batch)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``quill`` command."""
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="quill",
        description="Quill RPC from the command line: serve an app, call methods, stream tokens, benchmark.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"quill {__version__} (distribution quill-rpc)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=textwrap.fill(description, 88),
                                   epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)

    for subcommand in SUBCOMMANDS:
        subcommand.add_parser(command)
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
