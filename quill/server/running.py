"""Running a QuillApp (or any ASGI app): :func:`serve` in the foreground until SIGINT or SIGTERM,
optionally with forked workers sharing one listening socket; :func:`serve_in_thread` in a
background thread for tests and embedding; :func:`load_app` for ``module:attribute`` specs.

Both listen on TCP (``host``/``port``) or on a Unix domain socket (``uds``: a path, file mode
0600 unless ``uds_mode`` says otherwise, removed when the server stops), optionally with TLS,
on any engine of :mod:`quill.server.engines`. Both limit slow and numerous clients: a request
head must arrive within ``head_timeout`` seconds, and at most ``max_connections`` connections
are open per worker (what happens beyond that depends on the engine: see its module).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any, Callable, Iterator

from .engines import HEAD_TIMEOUT, MAX_CONNECTIONS, ServeOptions, StartupFailed, check_engine, prepare
from .sockets import bind_tcp, bind_unix, remove_unix_socket, socket_url
from .tls import TLSConfig

__all__ = ["serve", "serve_in_thread", "load_app", "WorkerDied"]

logger = logging.getLogger("quill.server")


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


@contextlib.contextmanager
def _shared_memory(app: Any, uds: str | None, uds_mode: int, enabled: bool, workers: int = 1) -> Iterator[None]:
    """Offer shared-memory tensor calls (docs/shared-memory.md) beside a Unix socket: on Linux, with
    one worker process, for an app that takes them (a QuillApp); its channel is ``<uds>.shm``."""
    attach = getattr(app, "attach_shared_memory", None)
    if not (enabled and uds is not None and attach is not None and sys.platform.startswith("linux")):
        yield
        return
    if workers > 1:
        logger.info("quill: shared memory is offered with one worker only; serving HTTP bodies")
        yield
        return
    from .shm_channel import ShmChannel

    channel = ShmChannel(os.fspath(uds) + ".shm", mode=uds_mode)
    channel.start()
    attach(channel)
    try:
        yield
    finally:
        attach(None)
        channel.close()


def _listen(host: str, port: int, uds: str | None, uds_mode: int) -> socket.socket:
    return bind_unix(uds, uds_mode) if uds is not None else bind_tcp(host, port)


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    uds: str | None = None,
    uds_mode: int = 0o600,
    tls: TLSConfig | None = None,
    engine: str | None = None,
    log_level: str = "info",
    access_log: bool = False,
    graceful_timeout: float = 10.0,
    on_listening: Callable[[str], None] | None = None,
    workers: int = 1,
    head_timeout: float = HEAD_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    shared_memory: bool = True,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down gracefully.

    In-flight requests get ``graceful_timeout`` seconds to finish. ``on_listening`` is
    called (from another thread) with the base URL once the server accepts calls: its lifespan
    startup is done, on every worker (``port=0`` picks a free port; with ``uds`` the URL is
    ``http+unix://<percent-encoded path>``); a server that fails to start never calls it. ``workers`` > 1 forks that many
    worker processes (POSIX only) that share the one listening socket, so every worker keeps
    TCP_NODELAY (see :func:`~quill.server.sockets.bind_tcp`). ``engine`` names the HTTP server
    (:mod:`quill.server.engines`; default: the preferred one installed). A client whose request
    head is not complete ``head_timeout`` seconds after it connected is dropped; each worker holds
    at most ``max_connections`` open (the soft open-file limit is raised to fit, up to the hard one).
    On a Unix socket (Linux, one worker) shared-memory tensor calls are offered unless
    ``shared_memory=False`` (docs/shared-memory.md).

    >>> serve(app, "127.0.0.1", 8080, workers=4)  # doctest: +SKIP
    >>> serve(app, uds="/run/quill.sock")  # doctest: +SKIP
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    if workers > 1 and not hasattr(os, "fork"):
        raise ValueError("workers > 1 needs os.fork (POSIX); run one process per port instead")
    options = ServeOptions(log_level=log_level, access_log=access_log, graceful_timeout=graceful_timeout, tls=tls,
                           head_timeout=head_timeout, max_connections=max_connections)
    engine = check_engine(engine)  # a missing engine is an ImportError before anything is bound
    _allow_open_files(max_connections)
    sock = _listen(host, port, uds, uds_mode)
    url = socket_url(sock, tls=tls is not None)
    announce = None if on_listening is None else lambda: on_listening(url)
    try:
        with _shared_memory(app, uds, uds_mode, shared_memory, workers):
            if workers == 1:
                server = prepare(app, sock, options, engine)
                if announce is not None:
                    _call_in_thread(lambda: server.wait_started() and announce())
                server.run()
            else:
                _run_workers(lambda: prepare(app, sock, options, engine), workers, announce)
    finally:
        if uds is not None:
            remove_unix_socket(uds)
        sock.close()


def _allow_open_files(max_connections: int) -> None:
    """Raise the soft open-file limit so that ``max_connections`` fit (a few descriptors spare);
    where the hard limit is lower, warn: connections beyond it fail to be accepted instead."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return
    wanted = max_connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # macOS caps it below RLIM_INFINITY
        target = soft
    if target < wanted:
        logger.warning("quill: the open-file limit (%d) is below max_connections (%d) and cannot be raised",
                       target, max_connections)


class WorkerDied(RuntimeError):
    """A forked worker exited while the server was not stopping; the others were stopped."""


def _call_in_thread(action: Callable[[], Any]) -> None:
    threading.Thread(target=action, name="quill-announce", daemon=True).start()


def _run_workers(make_server: Callable[[], Any], workers: int, on_started: Callable[[], None] | None = None) -> None:
    """Fork ``workers`` servers on the shared socket; SIGINT/SIGTERM stop them all (each
    finishes its in-flight calls). ``on_started`` is called once every worker accepts calls
    (each writes a byte to a pipe then). A worker that dies on its own takes the others down and
    raises :class:`WorkerDied`: no worker is left behind, and a supervisor (systemd, Kubernetes)
    sees the failure and restarts the whole server.

    Forked rather than spawned: the workers inherit the app as built (a QuillApp with its
    handlers and options need not be importable or picklable) and the socket object itself.
    """
    children: list[int] = []
    stopping = False

    def stop_children(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # SIGTERM: a worker that also got the SIGINT does not force-quit

    previous = {sig: signal.signal(sig, stop_children) for sig in (signal.SIGINT, signal.SIGTERM)}
    died = None
    started_read, started_write = os.pipe()
    try:
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:  # the worker: serve until told to stop, never return into the caller's code
                code = 1
                try:
                    os.close(started_read)
                    for sig in previous:
                        signal.signal(sig, signal.SIG_DFL)  # the engine installs its own while it runs
                    server = make_server()
                    _call_in_thread(lambda: server.wait_started() and os.write(started_write, b"s"))
                    server.run()
                    code = 0
                except StartupFailed as exc:
                    logger.error("quill worker %d: %s", os.getpid(), exc)
                except BaseException:
                    logger.exception("quill worker %d failed", os.getpid())
                finally:
                    os._exit(code)
            children.append(pid)
        os.close(started_write)  # the workers hold the pipe open: EOF once none is left
        started_write = -1
        _call_in_thread(lambda: _await_workers(started_read, workers, on_started))
        while children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid in children:
                children.remove(pid)
                if not stopping and died is None:
                    died = (pid, os.waitstatus_to_exitcode(status))
                    logger.error("quill worker %d exited (%d) on its own; stopping the others", *died)
                    stop_children(signal.SIGTERM, None)
    finally:
        stop_children(signal.SIGTERM, None)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started_write != -1:  # never handed to _await_workers
            os.close(started_write)
            os.close(started_read)
    if died is not None:
        raise WorkerDied(f"worker {died[0]} exited with status {died[1]}; the other workers were stopped")


def _await_workers(pipe: int, workers: int, on_started: Callable[[], None] | None) -> None:
    """Read a byte from each of ``workers`` started workers on ``pipe``, then call ``on_started``
    (never, if the pipe ends first: a worker died before it started)."""
    try:
        count = 0
        while count < workers:
            got = os.read(pipe, workers - count)
            if not got:
                return
            count += len(got)
        if on_started is not None:
            on_started()
    finally:
        os.close(pipe)


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    uds: str | None = None,
    uds_mode: int = 0o600,
    tls: TLSConfig | None = None,
    engine: str | None = None,
    log_level: str = "warning",
    graceful_timeout: float = 2.0,
    startup_timeout: float = 10.0,
    head_timeout: float = HEAD_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    shared_memory: bool = True,
) -> Iterator[str]:
    """Run ``app`` in a background thread; yields its base URL, or with ``uds`` the socket's path.

    A free loopback port is picked unless ``port`` is given; with ``uds`` the server listens on
    that Unix socket path instead (:func:`~quill.server.sockets.unix_url` of the path is the URL
    :class:`~quill.client.QuillClient` takes: ``http+unix://<percent-encoded path>``). Leaving
    the block shuts the server down (in-flight streams get ``graceful_timeout`` seconds) and
    removes the socket file. ``head_timeout``, ``max_connections`` and ``shared_memory`` are those
    of :func:`serve` (the open-file limit is left as it is).

    >>> with serve_in_thread(app) as base_url:  # doctest: +SKIP
    ...     QuillClient(base_url).call("echo.v1.EchoService", "Echo", b"hi")
    >>> with serve_in_thread(app, uds="/tmp/q.sock") as path:  # doctest: +SKIP
    ...     QuillClient(unix_url(path)).call("echo.v1.EchoService", "Echo", b"hi")
    """
    options = ServeOptions(log_level=log_level, graceful_timeout=graceful_timeout, tls=tls, head_timeout=head_timeout,
                           max_connections=max_connections)
    engine = check_engine(engine)
    sock = _listen(host, port, uds, uds_mode)
    try:
        server = prepare(app, sock, options, engine)
    except BaseException:
        _close(sock, uds)
        raise
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    offer = _shared_memory(app, uds, uds_mode, shared_memory)
    offer.__enter__()
    thread = threading.Thread(target=run, name="quill-server", daemon=True)
    thread.start()
    if not server.wait_started(startup_timeout):
        server.stop()
        thread.join(startup_timeout)
        offer.__exit__(None, None, None)
        _close(sock, uds)
        raise RuntimeError("quill server failed to start") from (failure[0] if failure else None)
    try:
        yield uds if uds is not None else socket_url(sock, tls=tls is not None)
    finally:
        server.stop()
        thread.join(graceful_timeout + 5.0)
        offer.__exit__(None, None, None)
        _close(sock, uds)


def _close(sock: socket.socket, uds: str | None) -> None:
    if uds is not None:
        remove_unix_socket(uds)
    sock.close()
