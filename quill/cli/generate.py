"""``quill generate``: stream generated tokens to the terminal as they arrive.

    quill generate http://127.0.0.1:8080 "Tell me a story" --max-tokens 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Callable

from .support import EXIT_OK, add_client_options, check_names, make_client, parse_headers, positive_int, \
    run_client_command

__all__ = ["add_parser", "DEMO_SERVICE"]

DEMO_SERVICE = "inference.v1.LLMService"


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``quill generate`` with the CLI's subcommand factory."""
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
    generate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``quill generate`` with parsed ``args``; the exit status."""
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
            try:
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
            finally:  # the text ends its line however the stream ends (done, Ctrl+C, an error)
                if not args.logprobs:
                    with contextlib.suppress(BrokenPipeError):
                        sys.stdout.write("\n")
                        sys.stdout.flush()
        seconds = time.perf_counter() - started
        if not args.quiet:
            print(f"[{count} tokens in {seconds:.2f} s, {count / seconds if seconds else 0:.1f} tokens/s, "
                  f"first token after {(first_token or 0) * 1000:.0f} ms]", file=sys.stderr)
        return EXIT_OK

    return run_client_command(action)
