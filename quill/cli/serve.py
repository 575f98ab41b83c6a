"""``quill serve``: serve the demo service or your own app on uvicorn, hypercorn or granian.

    quill serve                              # the demo inference.v1.LLMService on 127.0.0.1:8080
    quill serve greeter:app --port 0 --engine granian
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, Callable

from .support import EXIT_OK, EXIT_SERVER_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, error, non_negative_float, \
    octal_mode, positive_int, positive_seconds

__all__ = ["add_parser"]


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``quill serve`` with the CLI's subcommand factory."""
    from ..server.engines import ENGINES, HEAD_TIMEOUT, MAX_CONNECTIONS

    serve = command("serve", "serve the demo service or your own app",
                    "Serve a QuillApp (or any ASGI app) over HTTP, HTTPS or a Unix socket, on uvicorn, "
                    "hypercorn or granian. Without APP, serves the demo inference.v1.LLMService. Stops "
                    "gracefully on Ctrl+C or SIGTERM.")
    serve.add_argument("app", nargs="?", default="quill.demo:app", metavar="APP",
                       help="the app as 'module:attribute' (default: quill.demo:app)")
    serve.add_argument("--app-dir", default=".", help="directory to import APP from (default: the current one)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=port_number, default=8080, help="port to bind (default 8080; 0 picks a free one)")
    serve.add_argument("--uds", metavar="PATH",
                       help="listen on this Unix domain socket instead of TCP (clients use "
                            "http+unix://<percent-encoded path>); removed when the server stops")
    serve.add_argument("--uds-mode", type=octal_mode, default=0o600, metavar="MODE",
                       help="file mode of the --uds socket, octal (default 600: only this user may connect)")
    serve.add_argument("--no-shared-memory", dest="shared_memory", action="store_false",
                       help="with --uds, do not offer shared-memory tensor calls (PATH.shm; docs/shared-memory.md)")
    serve.add_argument("--engine", choices=sorted(ENGINES), default=None,
                       help="the HTTP server: uvicorn (HTTP/1.1), hypercorn (HTTP/1.1 and HTTP/2) or granian "
                            "(HTTP/1.1 and HTTP/2, Rust I/O); default: the preferred one installed")
    serve.add_argument("--certfile", help="serve HTTPS with this PEM certificate (chain)")
    serve.add_argument("--keyfile", help="the PEM private key of --certfile (if not in the same file)")
    serve.add_argument("--ca-certs", metavar="FILE",
                       help="verify client certificates against these CA certificates (PEM)")
    serve.add_argument("--require-client-cert", action="store_true",
                       help="refuse TLS clients without a certificate that --ca-certs verifies")
    serve.add_argument("--token-delay-ms", type=non_negative_float, default=0.0,
                       help="demo service only: simulated compute per generated token (default 0)")
    serve.add_argument("--max-request-mb", type=non_negative_float, default=None,
                       help="largest request body accepted, in MiB (default 64); larger ones get 413")
    serve.add_argument("--bearer-token", action="append", default=[], metavar="TOKEN",
                       help="require 'Authorization: Bearer TOKEN' (repeatable; any listed token or key passes)")
    serve.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="require 'X-API-Key: KEY' (repeatable)")
    serve.add_argument("--public-metrics", action="store_true",
                       help="answer /metrics without credentials (by default only /health and /ready are open "
                            "when --bearer-token or --api-key is given)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="let web pages of ORIGIN (scheme://host[:port], or '*' for any) call the server: "
                            "preflights answered, Access-Control-Allow-Origin sent (repeatable; default: none)")
    serve.add_argument("--idempotency-ttl", type=positive_seconds, default=None, metavar="SECONDS",
                       help="keep the answers of calls that carry an Idempotency-Key this long: a repeated key "
                            "(per method and caller) gets the stored answer without running the handler again "
                            "(default: off; each worker process keeps its own store)")
    serve.add_argument("--idempotency-entries", type=positive_int, default=10_000, metavar="N",
                       help="with --idempotency-ttl: answers kept at most (default 10000; the oldest go first)")
    serve.add_argument("--idempotency-mb", type=non_negative_float, default=64.0, metavar="MB",
                       help="with --idempotency-ttl: MiB of answers kept at most (default 64)")
    serve.add_argument("--workers", type=positive_int, default=1,
                       help="worker processes sharing the listening socket (default 1; more than 1 needs POSIX fork)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--graceful-timeout", type=non_negative_float, default=10.0,
                       help="seconds in-flight calls get to finish at shutdown (default 10)")
    serve.add_argument("--head-timeout", type=positive_seconds, default=HEAD_TIMEOUT, metavar="SECONDS",
                       help=f"drop a client whose request head is not complete this long after it connected "
                            f"(default {HEAD_TIMEOUT:g})")
    serve.add_argument("--max-connections", type=positive_int, default=MAX_CONNECTIONS, metavar="N",
                       help=f"open connections per worker (default {MAX_CONNECTIONS}); beyond them uvicorn answers "
                            "503, hypercorn closes new connections, granian accepts them when one closes")
    serve.set_defaults(run=run)


def port_number(text: str) -> int:
    """A TCP port for ``--port``: 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535 (0: any free one), got {text}")
    return port


def run(args: argparse.Namespace) -> int:
    """Run ``quill serve`` with parsed ``args``; the exit status."""
    from ..server import ApiKeyAuth, BearerAuth, CorsPolicy, IdempotencyStore, QuillApp, load_app, serve
    from ..server.engines import StartupFailed
    from ..server.running import WorkerDied
    from ..server.tls import TLSConfig, TLSFileError

    tls = None
    if args.certfile is not None:
        try:  # reads the files now: a bad one is one line before anything is bound
            tls = TLSConfig(args.certfile, args.keyfile, ca_certs=args.ca_certs,
                            require_client_cert=args.require_client_cert)
        except TLSFileError as exc:
            error(exc.describe(lambda option: "--" + option.replace("_", "-")))
            return EXIT_USAGE
        except ValueError as exc:
            error(f"--require-client-cert: {exc}")
            return EXIT_USAGE
    elif args.keyfile or args.ca_certs or args.require_client_cert:
        error("--keyfile, --ca-certs and --require-client-cert need --certfile")
        return EXIT_USAGE
    if args.app == "quill.demo:app" or args.app is None:
        from ..demo import create_demo_app

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
        if args.idempotency_ttl is not None:
            app.idempotency = IdempotencyStore(max_entries=args.idempotency_entries, ttl_seconds=args.idempotency_ttl,
                                               max_bytes=max(1, int(args.idempotency_mb * 1024 * 1024)))
        if args.cors_origin:
            try:
                app.cors = CorsPolicy([*(app.cors.origins if app.cors else ()), *args.cors_origin])
            except ValueError as exc:
                error(f"--cors-origin: {exc}")
                return EXIT_USAGE
    elif (args.bearer_token or args.api_key or args.max_request_mb is not None or args.public_metrics
          or args.cors_origin or args.idempotency_ttl is not None):
        error(f"{args.app} is not a QuillApp: --bearer-token, --api-key, --public-metrics, --max-request-mb, "
              "--cors-origin and --idempotency-ttl do not apply")
        return EXIT_USAGE

    announced = []

    def listening(url: str) -> None:  # called once the server accepts calls
        announced.append(url)
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
              max_connections=args.max_connections, shared_memory=args.shared_memory)
    except OSError as exc:
        if announced:
            error(f"the server failed: {exc.strerror or exc}")
            return EXIT_SERVER_FAILED
        host = f"[{args.host}]" if ":" in args.host else args.host
        where = args.uds if args.uds is not None else f"{host}:{args.port}"
        error(f"cannot listen on {where}: {exc.strerror or exc}")
        return EXIT_UNREACHABLE
    except (WorkerDied, StartupFailed) as exc:
        error(str(exc))
        return EXIT_SERVER_FAILED
    except SystemExit as exc:
        if exc.code not in (None, EXIT_OK):
            raise
    print("quill: server stopped", file=sys.stderr, flush=True)
    return EXIT_OK
