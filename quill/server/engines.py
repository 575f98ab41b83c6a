"""The HTTP servers ("engines") that run an ASGI app on a socket quill bound itself.

===========  =============================  =============================================
engine       HTTP                           installed by
===========  =============================  =============================================
uvicorn      HTTP/1.1                       ``pip install quill-rpc`` (with httptools and
                                            uvloop)
hypercorn    HTTP/1.1, HTTP/2 (h2c prior    ``pip install 'quill-rpc[http2]'``
             knowledge, and ALPN over TLS)
granian      HTTP/1.1, HTTP/2 (Rust I/O)    ``pip install 'quill-rpc[server]'``
===========  =============================  =============================================

Every engine serves the socket it is given (TCP or Unix), so the port is known before it starts,
forked workers share that one socket, and TCP_NODELAY is set on every accepted connection
(see :func:`~quill.server.sockets.bind_tcp`). :func:`prepare` returns a :class:`Running`
server: ``run()`` blocks until ``stop()`` (thread-safe) or, in the main thread, SIGINT or
SIGTERM; in-flight calls then get ``graceful_timeout`` seconds.

TLS: every engine serves the certificate and can require client certificates; granian cannot
ask for an optional one (``ca_certs`` without ``require_client_cert``), so there a client
certificate is then not requested at all.

HTTP/2 limits: at most 100 concurrent streams per connection and frames of at most 16 KiB (the
protocol default) on both; flow-control windows of 1 MiB per stream and connection on granian,
the protocol's 64 KiB on hypercorn (which does not make them configurable); no cap on the requests
of one connection (hypercorn's own default closes it after 1,000). uvicorn answers an HTTP/2
prior-knowledge client with GOAWAY HTTP_1_1_REQUIRED (:mod:`quill.server.prior_knowledge`).

Slow and numerous clients (per worker process; :mod:`quill.server.limits` makes what an engine
lacks): the head of each request must be complete ``head_timeout`` seconds after the connection
opened (uvicorn: or after the first byte of a later request; hypercorn and granian: or after the
previous answer), or the connection is closed without an answer. Beyond ``max_connections`` open
connections, a new one is

===========  ===========================================================  =========================
engine       beyond ``max_connections``                                   the head deadline is
===========  ===========================================================  =========================
uvicorn      accepted, its requests answered 503 (``Connection: close``)  quill's protocol subclass
hypercorn    accepted and closed at once, before any answer               ``keep_alive_timeout``
granian      not accepted until one closes (it waits in the listen        ``header_read_timeout``
             backlog)                                                     (HTTP/1.1)
===========  ===========================================================  =========================

uvicorn's keep-alive timeout (5 s) still closes an idle connection between requests; on
hypercorn and granian one timer covers that idle time and the head, so both are
``head_timeout``. granian does not time out a connection that sends nothing at all, or only
part of the HTTP/2 preface (hyper-util's HTTP/1-or-2 detection has no timer: hyperium/hyper#3962):
such connections count against ``max_connections`` until their clients leave, so facing
untrusted clients prefer uvicorn or hypercorn, or a proxy. The TLS handshake has the engines'
own limit (60 s on uvicorn and hypercorn).

>>> sorted(ENGINES)
['granian', 'hypercorn', 'uvicorn']
"""

from __future__ import annotations

import abc
import asyncio
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import QuillError
from .sockets import BACKLOG
from .tls import TLSConfig

__all__ = [
    "ENGINES", "HEAD_TIMEOUT", "MAX_CONNECTIONS", "ServeOptions", "Running", "StartupFailed", "prepare", "check_engine",
    "available_engines", "default_engine",
]

logger = logging.getLogger("quill.server")

#: HTTP/2 limits given to the engines that speak it.
H2_MAX_CONCURRENT_STREAMS = 100
H2_MAX_FRAME_SIZE = 16 * 1024
H2_WINDOW_BYTES = 1024 * 1024

#: Requests per connection on hypercorn, whose own default (1,000) closes a connection, HTTP/2 or
#: HTTP/1.1, after that many: an HTTP/2 client loses the calls in flight. Unlimited, as on uvicorn
#: and granian (an HTTP/2 client runs out of stream ids after 2**30 requests and opens another).
MAX_REQUESTS_PER_CONNECTION = sys.maxsize

#: The default deadline for a request head, in seconds: a quill client sends its head in one write
#: as soon as it is connected, and 10 s leaves room for a lossy link's retransmissions (TCP waits
#: 1, 2, 4 s: 7 s for three lost packets) while a client trickling bytes is dropped soon.
HEAD_TIMEOUT = 10.0
#: The default cap on open connections per worker: room for a hundred or more clients with a
#: pool of ten connections each, while a flood of slow clients holds at most ~2048 partial heads
#: (of 16 to 64 KiB) and descriptors; :func:`quill.server.serve` raises the open-file limit to fit.
MAX_CONNECTIONS = 2048


class ServeOptions:
    """What every engine is told: logging, graceful shutdown time, TLS, the limits on clients."""

    __slots__ = ("log_level", "access_log", "graceful_timeout", "tls", "head_timeout", "max_connections")

    def __init__(self, *, log_level: str = "info", access_log: bool = False, graceful_timeout: float = 10.0,
                 tls: TLSConfig | None = None, head_timeout: float = HEAD_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS):
        if not (isinstance(head_timeout, (int, float)) and 0 < head_timeout < float("inf")):
            raise ValueError(f"head_timeout must be a number of seconds > 0, got {head_timeout!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be an integer >= 1, got {max_connections!r}")
        self.log_level = log_level
        self.access_log = access_log
        self.graceful_timeout = graceful_timeout
        self.tls = tls
        self.head_timeout = head_timeout
        self.max_connections = max_connections


class StartupFailed(QuillError, RuntimeError):
    """The app's lifespan startup failed (it sent ``lifespan.startup.failed``): nothing was served."""


class Running(abc.ABC):
    """A server ready to run on its socket."""

    http2 = False

    def __init__(self) -> None:
        self._started = threading.Event()
        self._settled = threading.Event()  # started, or run() is over
        self._startup_failure: str | None = None

    def run(self) -> None:
        """Serve until :meth:`stop`, or SIGINT/SIGTERM when run in the main thread."""
        try:
            self._run()
        finally:
            self._settled.set()

    @abc.abstractmethod
    def _run(self) -> None:
        """Serve (what :meth:`run` does)."""

    @property
    def started(self) -> bool:
        """True once the server accepts calls (lifespan startup done)."""
        return self._started.is_set()

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the server accepts calls (True), or :meth:`run` ended first or ``timeout``
        seconds passed (False)."""
        self._settled.wait(timeout)
        return self.started

    def _mark_started(self) -> None:
        self._started.set()
        self._settled.set()

    def _failed_startup(self) -> StartupFailed | None:
        """The app's lifespan startup failure, if it failed (what :meth:`_run` raises then)."""
        if self._startup_failure is None or self.started:
            return None
        return StartupFailed(f"the app's startup failed: {self._startup_failure}")

    def _lifespan_watcher(self, app: Any, marks_start: bool = True) -> Any:
        """``app`` wrapped so that its lifespan startup (or its lack of one) marks the start
        (unless the engine marks it itself), and a failed startup is noted."""

        async def watched(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "lifespan":
                await app(scope, receive, send)
                return

            async def send_watched(message: dict) -> None:
                if message["type"] == "lifespan.startup.failed":
                    self._startup_failure = message.get("message") or "no reason given"
                await send(message)
                if message["type"] == "lifespan.startup.complete" and marks_start:
                    self._mark_started()

            try:
                await app(scope, receive, send_watched)
            finally:
                if marks_start and self._startup_failure is None:
                    self._mark_started()  # an app without lifespan support raises at once; it serves anyway

        return watched

    @abc.abstractmethod
    def stop(self) -> None:
        """Begin a graceful shutdown (from any thread)."""


# --------------------------------------------------------------------------------------
# uvicorn
# --------------------------------------------------------------------------------------
class _Uvicorn(Running):
    def __init__(self, app: Any, sock: socket.socket, options: ServeOptions):
        super().__init__()
        import uvicorn

        tls = options.tls
        tls_options = {} if tls is None else {
            "ssl_certfile": tls.certfile, "ssl_keyfile": tls.keyfile, "ssl_ca_certs": tls.ca_certs,
            "ssl_cert_reqs": int(tls.verify_mode),
        }
        from .limits import uvicorn_protocol

        config = uvicorn.Config(self._lifespan_watcher(app, marks_start=False), log_level=options.log_level, access_log=options.access_log, lifespan="auto",
                                timeout_graceful_shutdown=options.graceful_timeout, server_header=False,
                                http=uvicorn_protocol(options.head_timeout, options.max_connections),
                                backlog=BACKLOG, **tls_options)
        mark_started = self._mark_started

        class Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets)
                if self.started:  # lifespan startup done and the socket served
                    mark_started()

        self._server = Server(config)
        self._sock = sock

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])  # uvicorn handles SIGINT/SIGTERM in the main thread
        except SystemExit:  # uvicorn exits (3) when the app's startup failed
            failure = self._failed_startup()
            if failure is None:
                raise
            raise failure from None

    def stop(self) -> None:
        self._server.should_exit = True


# --------------------------------------------------------------------------------------
# The asyncio-driven engines: hypercorn and embedded granian
# --------------------------------------------------------------------------------------
class _AsyncioEngine(Running):
    """An engine driven from an asyncio loop this object runs; stops on an event."""

    def __init__(self) -> None:
        super().__init__()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = threading.Event()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # hypercorn and granian raise their own errors when the app's startup failed
            failure = self._failed_startup()
            if failure is None:
                raise
            raise failure from None
        failure = self._failed_startup()
        if failure is not None:
            raise failure

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stop_event.set)
        if self._stop_requested.is_set():
            self._stop_event.set()
        await self._serve()

    @abc.abstractmethod
    async def _serve(self) -> None:
        """Serve until ``self._stop_event`` is set."""

    def stop(self) -> None:
        self._stop_requested.set()
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)


class _Hypercorn(_AsyncioEngine):
    http2 = True

    def __init__(self, app: Any, sock: socket.socket, options: ServeOptions):
        super().__init__()
        from hypercorn.config import Config

        config = Config()
        config.graceful_timeout = options.graceful_timeout
        config.loglevel = options.log_level.upper()
        config.accesslog = "-" if options.access_log else None
        config.errorlog = "-"
        config.include_server_header = False
        config.h2_max_concurrent_streams = H2_MAX_CONCURRENT_STREAMS
        config.h2_max_inbound_frame_size = H2_MAX_FRAME_SIZE
        config.keep_alive_max_requests = MAX_REQUESTS_PER_CONNECTION
        config.keep_alive_timeout = options.head_timeout  # runs from the connection (or the last answer) to a head
        config.backlog = BACKLOG  # asyncio listens again with it: hypercorn's 100 would shrink quill's
        tls = options.tls
        if tls is not None:
            # hypercorn serves TLS only with both files named: a key inside the certificate file is named twice
            config.certfile, config.keyfile, config.ca_certs = tls.certfile, tls.keyfile or tls.certfile, tls.ca_certs
            config.verify_mode = tls.verify_mode
        self._config = config
        self._sock, self._secure, self._max_connections = sock, tls is not None, options.max_connections
        from hypercorn.utils import wrap_app

        self._app = wrap_app(self._lifespan_watcher(app), config.wsgi_max_body_size, "asgi")

    async def _serve(self) -> None:
        from hypercorn.asyncio.run import worker_serve
        from hypercorn.config import Sockets

        from .limits import CappedListener

        with CappedListener(self._sock, self._max_connections) as listener:
            secure = [listener] if self._secure else []
            sockets = Sockets(secure_sockets=secure, insecure_sockets=[] if secure else [listener], quic_sockets=[])
            await worker_serve(self._app, self._config, sockets=sockets, shutdown_trigger=self._stop_event.wait)


class _Granian(_AsyncioEngine):
    """granian's embedded server (its Rust HTTP stack in this process), given quill's socket."""

    http2 = True

    def __init__(self, app: Any, sock: socket.socket, options: ServeOptions):
        super().__init__()
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings, HTTP2Settings
        from granian.log import LogLevels
        from granian.net import SocketHolder
        from granian.server.embed import Server

        tls = options.tls
        tls_options = {} if tls is None else {
            "ssl_cert": Path(tls.certfile), "ssl_key": Path(tls.keyfile or tls.certfile),
            "ssl_ca": Path(tls.ca_certs) if tls.ca_certs else None, "ssl_client_verify": tls.require_client_cert,
        }
        if tls is not None:
            from granian.constants import SSLProtocols

            tls_options["ssl_protocol_min"] = SSLProtocols.tls12
        # granian closes the descriptor it serves when it stops: give it its own copy
        holder = SocketHolder(os.dup(sock.fileno()), sock.family == socket.AF_UNIX, BACKLOG)

        class QuillSocketServer(Server):
            def _init_shared_socket(self) -> None:  # serve quill's socket instead of binding one
                self._ssp, self._shd = None, holder

        self._server = QuillSocketServer(
            self._lifespan_watcher(_announcing_send_bytes(app)), interface=Interfaces.ASGI, http=HTTPModes.auto,
            websockets=False, log_level=LogLevels(options.log_level),
            log_access=options.access_log,
            backpressure=options.max_connections,  # connections served at once; the next wait to be accepted
            http1_settings=HTTP1Settings(header_read_timeout=max(1, round(options.head_timeout * 1000))),
            http2_settings=HTTP2Settings(max_concurrent_streams=H2_MAX_CONCURRENT_STREAMS,
                                         max_frame_size=H2_MAX_FRAME_SIZE,
                                         initial_stream_window_size=H2_WINDOW_BYTES,
                                         initial_connection_window_size=H2_WINDOW_BYTES),
            **tls_options,
        )
        self._server.workers_kill_timeout = options.graceful_timeout
        logging.getLogger("_granian").addFilter(_quiet_embedded_lines)

    async def _serve(self) -> None:
        async def stop_on_request() -> None:
            await self._stop_event.wait()
            self._server.stop()

        stopper = asyncio.ensure_future(stop_on_request())
        before = _native_threads()
        try:
            await self._server.serve()
        finally:
            stopper.cancel()
            await _threads_gone(before, self._server.workers_kill_timeout or 1.0)


def _native_threads() -> set[str]:
    """The ids of this process's threads, Python's and native ones (Linux; empty elsewhere)."""
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


async def _threads_gone(before: set[str], timeout: float) -> None:
    """Wait (up to ``timeout`` seconds) until no native thread started since ``before`` is left
    (threads that Python's threading started, such as executors', may stay): granian's
    Rust runtime threads outlive its ``serve()`` a moment, and one still running when the
    interpreter finalizes aborts the process (a panic that cannot unwind)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        python_threads = {str(thread.native_id) for thread in threading.enumerate()}  # executors stay
        if not _native_threads() - before - python_threads:
            return
        await asyncio.sleep(0.01)


def _announcing_send_bytes(app: Any) -> Any:
    """``app`` told, through its scope, that this engine wants ``bytes`` response bodies
    (granian extracts a memoryview element by element)."""
    from .exchange import SEND_BYTES_EXTENSION

    async def announced(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            extensions = scope.get("extensions")
            scope["extensions"] = {**extensions, SEND_BYTES_EXTENSION: {}} if extensions else {SEND_BYTES_EXTENSION: {}}
        await app(scope, receive, send)

    return announced


def _quiet_embedded_lines(record: logging.LogRecord) -> bool:
    """Two lines granian's embedded server logs at every start are dropped: that it is experimental
    (quill chose it: it serves quill's own socket in this process, and is tested), and "Listening at:
    http://127.0.0.1:8000", its default address whatever socket quill gave it (the real address is
    quill's to announce: ``quill serve`` prints it once the server accepts calls)."""
    message = record.getMessage()
    return "Embedded server is experimental" not in message and not message.startswith("Listening at:")


#: Engine name -> (the module that must be importable, the class that runs it).
ENGINES: dict[str, tuple[str, type]] = {
    "uvicorn": ("uvicorn", _Uvicorn),
    "hypercorn": ("hypercorn", _Hypercorn),
    "granian": ("granian", _Granian),
}

#: The order in which the default engine is picked among those installed (measured:
#: benchmarks/bench_server.py; see the README's server table).
PREFERENCE = ("uvicorn", "granian", "hypercorn")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules[module] is None: imports of it are blocked
        return False


def available_engines() -> list[str]:
    """The engines importable here, in order of preference."""
    return [name for name in PREFERENCE if _installed(ENGINES[name][0])]


def default_engine() -> str:
    """The preferred installed engine (ImportError when none is)."""
    names = available_engines()
    if not names:
        raise ImportError(f"serving needs an HTTP server ({', '.join(PREFERENCE)}): pip install 'quill-rpc[server]'")
    return names[0]


def check_engine(engine: str | None) -> str:
    """The engine to use: ``engine`` if it is installed, else ImportError naming the package
    to install (ValueError for an unknown name); None picks :func:`default_engine`."""
    name = default_engine() if engine is None else engine
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")
    module = ENGINES[name][0]
    if not _installed(module):
        extra = "http2" if name == "hypercorn" else "server"
        raise ImportError(f"the {name} engine needs {module}: pip install 'quill-rpc[{extra}]'")
    return name


def prepare(app: Any, sock: socket.socket, options: ServeOptions, engine: str | None = None) -> Running:
    """A :class:`Running` server for ``app`` on ``sock`` with the named ``engine`` (see
    :func:`check_engine`)."""
    return ENGINES[check_engine(engine)][1](app, sock, options)
