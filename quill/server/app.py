"""The ASGI application: :class:`QuillApp` registers handlers by path and kind, routes each
call, checks auth and the call's kind, answers the built-in ``/health``, ``/ready``,
``/metrics`` and the method description (``/.well-known/quill/methods``), runs the lifespan
hooks, and turns failures into Problem Details answers.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from typing import Callable, Iterable, Sequence

from ..errors import LimitExceededError
from ..metrics import UNMATCHED_METHOD, ServerMetrics
from ..protocol.constants import JSON
from ..protocol.kinds import DESCRIBE_PATH
from ..protocol.problems import problem
from ..protocol.retries import IDEMPOTENCY_KEY
from ..protocol.shm import SHM_PATH
from .auth import AuthHook
from .context import Context
from .cors import CorsPolicy
from .event_streams import request_from_query, takes_get
from .discovery import check_call_kind, describe_routes
from .exchange import Exchange
from .handlers import HANDLER_KINDS, Route, invoke
from .idempotency import IdempotencyStore, caller_identity
from .kinds import SERVE_KIND
from . import tracing
from .problems import ClientGone, HttpProblem, problem_for

__all__ = ["QuillApp", "DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_PUBLIC_PATHS", "BUILTIN_PATHS"]

logger = logging.getLogger("quill.server")

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
BUILTIN_PATHS = ("/health", "/ready", "/metrics", DESCRIBE_PATH, SHM_PATH)
#: Paths a QuillApp with ``auth`` still answers without credentials (the health probes).
DEFAULT_PUBLIC_PATHS = ("/health", "/ready")


class QuillApp:
    """An ASGI application serving Quill RPC methods.

    ``max_request_bytes`` bounds every request body, on the wire and after zstd
    decompression (None: no limit); larger bodies get 413. ``auth`` is an optional
    hook (or a list of hooks, any of which may accept) called with the
    :class:`Context` before routing; returning False answers 401.

    ``public_paths`` are the paths answered without auth: by default the probes
    ``/health`` and ``/ready`` (load balancers and orchestrators call them without
    credentials), while ``/metrics`` and the method description (``DESCRIBE_PATH``) need
    credentials like any RPC once ``auth`` is set. Pass ``DEFAULT_PUBLIC_PATHS + ("/metrics",)``
    for an open scrape endpoint, ``()`` to protect everything, or add RPC paths
    (``"/pkg.Service/Method"``) to open them.

    A call whose headers declare another kind than its method's (docs/protocol.md, "Call
    kinds") is refused with a 415 or 406 Problem naming the method's kind.

    ``cors_origins`` are the origins (``"https://app.example"``, or ``"*"`` for any) whose web
    pages may call the app; none by default. The :class:`~quill.server.cors.CorsPolicy` made of
    them is the ``cors`` attribute (None: CORS off).

    ``idempotency`` is an optional :class:`~quill.server.idempotency.IdempotencyStore`: a POST
    that repeats an ``Idempotency-Key`` (per method and caller) is answered from it without
    running the handler again (docs/protocol.md, "Idempotency keys"). None: keys are ignored.

    >>> app = QuillApp()
    >>> @app.unary("echo.v1.EchoService/Echo")
    ... def echo(request, context):
    ...     return request
    >>> app.methods()
    {'echo.v1.EchoService/Echo': 'unary'}
    """

    def __init__(
        self,
        *,
        max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES,
        auth: AuthHook | Sequence[AuthHook] | None = None,
        public_paths: Iterable[str] = DEFAULT_PUBLIC_PATHS,
        cors_origins: Iterable[str] = (),
        idempotency: IdempotencyStore | None = None,
    ):
        public_paths = tuple(public_paths)
        for path in public_paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"public_paths holds request paths starting with '/', got {path!r}")
        self.public_paths = frozenset(public_paths)
        if max_request_bytes is not None and max_request_bytes < 0:
            raise ValueError(f"max_request_bytes must be >= 0 or None, got {max_request_bytes}")
        self.max_request_bytes = max_request_bytes
        self.auth = auth
        origins = cors_origins if isinstance(cors_origins, str) else tuple(cors_origins)
        self.cors: CorsPolicy | None = CorsPolicy(origins) if origins != () else None
        self.idempotency = idempotency
        self.metrics = ServerMetrics()
        #: ``GET /health`` answers 503 while this is False.
        self.healthy = True
        #: ``GET /ready`` answers 503 while this is False (also during lifespan shutdown).
        self.ready = True
        self._routes: dict[str, Route] = {}
        self._startup: list[Callable] = []
        self._shutdown: list[Callable] = []
        self._started_at = time.monotonic()
        self._shm = None

    # -- registration ---------------------------------------------------------------
    def add_method(self, path: str, function: Callable, kind: str = "unary") -> None:
        """Register ``function`` for ``"package.Service/Method"`` as one of :data:`HANDLER_KINDS`.

        >>> app = QuillApp()
        >>> app.add_method("a.v1.S/M", lambda request, context: request)
        """
        if kind not in HANDLER_KINDS:
            raise ValueError(f"unknown handler kind {kind!r}; expected one of {', '.join(HANDLER_KINDS)}")
        path = path.lstrip("/")
        service, slash, method = path.partition("/")
        if not service or not slash or not method or "/" in method:
            raise ValueError(f"method path must look like 'package.Service/Method', got {path!r}")
        if path in self._routes:
            raise ValueError(f"a handler is already registered for {path!r}")
        if kind == "client_stream" and not inspect.iscoroutinefunction(function):
            raise TypeError(f"client_stream handler for {path} must be an async def (it iterates with async for)")
        if not callable(function):
            raise TypeError(f"handler for {path} is not callable")
        self._routes[path] = Route(path, kind, function)

    def _decorator(self, path: str, kind: str) -> Callable[[Callable], Callable]:
        def register(function: Callable) -> Callable:
            self.add_method(path, function, kind)
            return function

        return register

    def unary(self, path: str) -> Callable[[Callable], Callable]:
        """Decorator: ``f(request: bytes, context) -> bytes | ProblemDetails``."""
        return self._decorator(path, "unary")

    def server_stream(self, path: str) -> Callable[[Callable], Callable]:
        """Decorator: ``f(request: bytes, context)`` returning an iterator or async iterator of bytes."""
        return self._decorator(path, "server_stream")

    def client_stream(self, path: str) -> Callable[[Callable], Callable]:
        """Decorator: ``async f(messages: AsyncIterator[bytes], context) -> bytes``."""
        return self._decorator(path, "client_stream")

    def token_stream(self, path: str) -> Callable[[Callable], Callable]:
        """Decorator: ``f(request: bytes, context)`` yielding :class:`TokenBatch` objects."""
        return self._decorator(path, "token_stream")

    def tensor(self, path: str) -> Callable[[Callable], Callable]:
        """Decorator: ``f(request: bytes | Tensor, context) -> Tensor`` (bytes answer as a unary body)."""
        return self._decorator(path, "tensor")

    def on_startup(self, function: Callable) -> Callable:
        """Run ``function`` (sync or async) at ASGI lifespan startup; usable as a decorator."""
        self._startup.append(function)
        return function

    def on_shutdown(self, function: Callable) -> Callable:
        """Run ``function`` (sync or async) at ASGI lifespan shutdown; usable as a decorator."""
        self._shutdown.append(function)
        return function

    def attach_shared_memory(self, channel) -> None:
        """Offer shared-memory tensor calls through ``channel`` (a
        :class:`~quill.server.shm_channel.ShmChannel`; None: stop offering them). ``serve`` and
        ``serve_in_thread`` do this on a Unix socket (docs/shared-memory.md)."""
        self._shm = channel

    def methods(self) -> dict[str, str]:
        """Registered method paths and their kinds."""
        return {path: route.kind for path, route in self._routes.items()}

    def describe(self) -> bytes:
        """The JSON this app answers on ``GET /.well-known/quill/methods``: every method's service,
        name, kind, content types and docstring (docs/protocol.md, "Method discovery")."""
        return describe_routes(self._routes.values())

    # -- ASGI entry point -------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if not await self._run_hooks("startup", self._startup, send):
                    return
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                await self._run_hooks("shutdown", self._shutdown, send)
                return

    @staticmethod
    async def _run_hooks(phase: str, hooks: list[Callable], send: Callable) -> bool:
        """Run lifespan hooks; report ``lifespan.<phase>.complete`` or ``.failed`` (False)."""
        try:
            for hook in hooks:
                await invoke(hook)
        except Exception as exc:
            logger.exception("%s hook failed", phase)
            await send({"type": f"lifespan.{phase}.failed", "message": str(exc)})
            return False
        await send({"type": f"lifespan.{phase}.complete"})
        return True

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope["path"]
        http_method = scope["method"]
        if self.cors is not None:
            send = await self.cors.handle(scope, send, self._auth_header_names)
            if send is None:  # a preflight, answered
                return
        if path in BUILTIN_PATHS:
            exchange = Exchange(scope, receive, send, path, self.max_request_bytes)
            exchange.body_complete = True  # GET: nothing to drain
            try:
                if http_method not in ("GET", "HEAD"):
                    raise HttpProblem(problem(405, "Method not allowed", f"{path} answers GET and HEAD"),
                                      [("allow", "GET, HEAD")])
                await self._check_auth(exchange)
            except HttpProblem as exc:
                await exchange.respond_problem(exc.problem, exc.headers)
                return
            await self._builtin(exchange, path)
            return
        method_path = path[1:]
        route = self._routes.get(method_path)
        exchange = Exchange(scope, receive, send, method_path if route else UNMATCHED_METHOD, self.max_request_bytes)
        exchange.shm_channel = self._shm
        started = time.perf_counter()
        self.metrics.request_started()
        try:
            if tracing.active():
                with tracing.call_span(exchange):
                    await self._rpc(exchange, route, http_method)
            else:
                await self._rpc(exchange, route, http_method)
        finally:
            self.metrics.request_finished()
            self.metrics.observe(
                exchange.context.method_path,
                exchange.status or 499,  # 499: the client left before any answer
                time.perf_counter() - started,
                request_bytes=exchange.bytes_in,
                response_bytes=exchange.bytes_out,
                error=exchange.stream_failed or not exchange.status or exchange.status >= 400,
            )

    async def _rpc(self, exchange: Exchange, route: Route | None, http_method: str) -> None:
        try:
            get = http_method == "GET" and takes_get(route, exchange.headers)
            if http_method != "POST" and not get:
                raise HttpProblem(
                    problem(405, "Method not allowed", "Only POST is supported for RPC calls (and GET for a streaming "
                            "method asked for text/event-stream or application/x-ndjson)"), [("allow", "POST")]
                )
            await self._check_auth(exchange)
            if route is None:
                raise HttpProblem(
                    problem(404, "Method not found", f"No handler registered for path: {exchange.scope['path']}")
                )
            check_call_kind(exchange.headers, route)
            if get:
                request_from_query(exchange)
            serve = SERVE_KIND[route.kind]
            if self.idempotency is not None and not get and IDEMPOTENCY_KEY in exchange.headers:
                identity = caller_identity(exchange.headers, self._auth_header_names()) if self.auth else ""
                await self.idempotency.serve(exchange, identity, lambda: serve(exchange, route))
            else:
                await serve(exchange, route)
        except ClientGone:
            logger.info("client left %s before sending its whole request", exchange.context.method_path)
        except Exception as exc:
            if exchange.status:  # the response had started: nothing more can be said
                logger.error("failure after the response to %s started", exchange.context.method_path, exc_info=exc)
                return
            answer, headers = problem_for(exc, exchange.context.method_path)
            if not isinstance(exc, LimitExceededError):
                await exchange.discard_small_body()
            await exchange.respond_problem(answer, headers)
            await exchange.linger_after_early_answer()

    async def _check_auth(self, exchange: Exchange) -> None:
        """Raise a 401 problem unless auth is off, the path is public, or a hook accepts."""
        if self.auth is None or exchange.scope["path"] in self.public_paths:
            return
        if not await self._authorized(exchange.context):
            challenges = [h.challenge for h in self._auth_hooks() if getattr(h, "challenge", None)]
            raise HttpProblem(
                problem(401, "Unauthorized", "missing or invalid credentials"),
                [("www-authenticate", c) for c in challenges],
            )

    def _auth_hooks(self) -> Sequence[AuthHook]:
        return self.auth if isinstance(self.auth, (list, tuple)) else [self.auth]

    def _auth_header_names(self) -> list[str]:
        """The request headers the auth hooks read credentials from, beyond Authorization (for CORS)."""
        if self.auth is None:
            return []
        return [name for name in (getattr(hook, "header_name", None) for hook in self._auth_hooks()) if name]

    async def _authorized(self, context: Context) -> bool:
        for hook in self._auth_hooks():
            verdict = hook(context)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if verdict:
                return True
        return False

    async def _builtin(self, exchange: Exchange, path: str) -> None:
        if path == "/metrics":
            body = self.metrics.render().encode()
            await exchange.respond(200, body, "text/plain; version=0.0.4; charset=utf-8")
            return
        if path == DESCRIBE_PATH:
            await exchange.respond(200, self.describe(), JSON)
            return
        if path == SHM_PATH:
            if self._shm is None:
                await exchange.respond_problem(problem(404, "Not found", "this server offers no shared memory"))
            else:
                await exchange.respond(200, json.dumps(self._shm.announce()).encode(), JSON)
            return
        if path == "/health":
            ok = bool(self.healthy)
            payload = {
                "healthy": ok,
                "methods": len(self._routes),
                "uptime_seconds": round(time.monotonic() - self._started_at, 3),
            }
        else:
            ok = bool(self.ready)
            payload = {"ready": ok}
        await exchange.respond(200 if ok else 503, json.dumps(payload).encode(), JSON)
