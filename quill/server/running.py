"""Running a QuillApp (or any ASGI app): :func:`serve` in the foreground until SIGINT or SIGTERM,
optionally with forked workers sharing one listening socket; :func:`serve_in_thread` in a
background thread for tests and embedding; :func:`load_app` for ``module:attribute`` specs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Iterator

from .sockets import bind_tcp, socket_url

__all__ = ["serve", "serve_in_thread", "load_app"]


def load_app(spec: str) -> Any:
    """Import ``"package.module:attribute"`` and return the ASGI app it names.

    >>> load_app("quill.demo:app").methods()["inference.v1.LLMService/Generate"]
    'token_stream'
    """
    import importlib

    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"app must be given as 'module:attribute', got {spec!r}")
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{spec} is not an ASGI application (not callable)")
    return target


def _uvicorn_server(app: Any, log_level: str, graceful_timeout: float, access_log: bool):
    try:
        import uvicorn
    except ImportError:
        raise ImportError("serving needs uvicorn: pip install 'quill[server]'") from None
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="auto",
        timeout_graceful_shutdown=graceful_timeout,
        server_header=False,
    )
    return uvicorn.Server(config)


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    log_level: str = "info",
    access_log: bool = False,
    graceful_timeout: float = 10.0,
    on_listening: Callable[[str], None] | None = None,
    workers: int = 1,
) -> None:
    """Serve ``app`` on uvicorn until SIGINT or SIGTERM, then shut down gracefully.

    In-flight requests get ``graceful_timeout`` seconds to finish. ``on_listening`` is
    called with the base URL once the socket is bound (``port=0`` picks a free port).
    ``workers`` > 1 forks that many worker processes (POSIX only) that share the one
    listening socket, so every worker keeps TCP_NODELAY (see :func:`~quill.server.sockets.bind_tcp`).

    >>> serve(app, "127.0.0.1", 8080, workers=4)  # doctest: +SKIP
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    if workers > 1 and not hasattr(os, "fork"):
        raise ValueError("workers > 1 needs os.fork (POSIX); run one process per port instead")
    sock = bind_tcp(host, port)
    try:
        if on_listening is not None:
            on_listening(socket_url(sock))
        if workers == 1:
            _uvicorn_server(app, log_level, graceful_timeout, access_log).run(sockets=[sock])
        else:
            _run_workers(app, sock, workers, log_level, graceful_timeout, access_log)
    finally:
        sock.close()


def _run_workers(app: Any, sock: socket.socket, workers: int, log_level: str, graceful_timeout: float,
                 access_log: bool) -> None:
    """Fork ``workers`` uvicorn servers on the shared socket; SIGINT/SIGTERM stop them all.

    Forked rather than spawned: the workers inherit ``app`` as built (a QuillApp with its
    handlers and options need not be importable or picklable) and the socket object itself.
    """
    children: list[int] = []

    def stop_children(signum: int, frame: Any) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # SIGTERM: a worker that also got the SIGINT does not force-quit

    previous = {sig: signal.signal(sig, stop_children) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:  # the worker: serve until told to stop, never return into the caller's code
                code = 1
                try:
                    for sig in previous:
                        signal.signal(sig, signal.SIG_DFL)  # uvicorn installs its own while it runs
                    _uvicorn_server(app, log_level, graceful_timeout, access_log).run(sockets=[sock])
                    code = 0
                except BaseException:
                    logging.getLogger("uvicorn.error").exception("quill worker %d failed", os.getpid())
                finally:
                    os._exit(code)
            children.append(pid)
        while children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid in children:
                children.remove(pid)
    finally:
        stop_children(signal.SIGTERM, None)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    graceful_timeout: float = 2.0,
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Run ``app`` on uvicorn in a background thread; yields its base URL.

    A free loopback port is picked unless ``port`` is given. Leaving the block shuts the
    server down (in-flight streams get ``graceful_timeout`` seconds).

    >>> with serve_in_thread(app) as base_url:  # doctest: +SKIP
    ...     QuillClient(base_url).call("echo.v1.EchoService", "Echo", b"hi")
    """
    sock = bind_tcp(host, port)
    server = _uvicorn_server(app, log_level, graceful_timeout, access_log=False)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"quill-server-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(startup_timeout)
            sock.close()
            raise RuntimeError("quill server failed to start") from (failure[0] if failure else None)
        time.sleep(0.005)
    try:
        yield socket_url(sock)
    finally:
        server.should_exit = True
        thread.join(graceful_timeout + 5.0)
        sock.close()
