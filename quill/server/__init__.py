"""The reference Quill server: an ASGI application speaking docs/protocol.md section 6, and the
ways to run it.

Register handlers on a :class:`QuillApp` by decorator (or :meth:`QuillApp.add_method`) and
run it under any ASGI server; ``quill serve module:app`` runs it on uvicorn::

    from quill.server import QuillApp

    app = QuillApp()

    @app.unary("echo.v1.EchoService/Echo")
    def echo(request: bytes, context) -> bytes:
        return request

Five handler kinds, sync or async:

===================  ==============================================  ==========================================
kind                 handler                                         response body
===================  ==============================================  ==========================================
``unary``            ``f(request: bytes, ctx) -> bytes``             the message
``server_stream``    ``f(request: bytes, ctx) -> (async) iterator``  message-stream frames, then END_STREAM
``client_stream``    ``async f(messages: AsyncIterator, ctx)``       the message (request: message frames)
``token_stream``     ``f(request: bytes, ctx) -> iter[TokenBatch]``  TOKEN_BATCH frames, then END_STREAM
``tensor``           ``f(request: bytes | Tensor, ctx) -> Tensor``   tensor frames (the Tensor's memory, uncopied)
===================  ==============================================  ==========================================

A tensor handler gets a :class:`~quill.tensor.Tensor` when the request's Content-Type is
``application/proto; frames=tensor`` (:data:`quill.protocol.constants.TENSOR_FRAMES`, what
the client sends with a Tensor), and the body's bytes otherwise: the body's first byte cannot
tell them apart (0x10 is TENSOR_META and also the protobuf tag of field 2).

Errors become ``application/problem+json`` answers: a handler may return a
:class:`~quill.errors.ProblemDetails` or raise a quill error (``RpcError(404, problem)``
answers exactly that); unexpected exceptions answer 500 without leaking the traceback
(it is logged with the ``trace_id`` the client sees). A handler failing after its
stream started ends the stream with a CANCEL frame carrying the reason, so the client
sees an error, never a normal end. The app also answers ``GET /health``, ``/ready``,
``/metrics`` (Prometheus text) and ``/.well-known/quill/methods`` (its methods, kinds and
docstrings); with ``auth`` set, ``/metrics`` and the method list need credentials and the two
probes do not (``public_paths`` changes that). A call whose headers declare another kind than
its method's is refused with 415 or 406 naming the method's kind.

Plain HTTP tools and browsers read the two streams too: with ``Accept: text/event-stream`` or
``application/x-ndjson`` they come as Server-Sent Events or NDJSON, one JSON object per token
batch or message, and such a call may be a GET (``?request=...``, what ``EventSource`` sends).
``cors_origins`` lets the pages of other origins call.

The package, one concept per module: :mod:`~quill.server.app` (QuillApp: routing, auth,
built-in paths, lifespan), :mod:`~quill.server.kinds` (serving each handler kind),
:mod:`~quill.server.handlers` (calling handlers from the event loop),
:mod:`~quill.server.discovery` (the method list, wrong-kind refusals),
:mod:`~quill.server.exchange` (reading the request, sending the answer),
:mod:`~quill.server.event_streams` (SSE and NDJSON), :mod:`~quill.server.cors` (calls from
other origins),
:mod:`~quill.server.problems` (failures as Problem Details), :mod:`~quill.server.auth`,
:mod:`~quill.server.context`; running it: :mod:`~quill.server.running` (serve,
serve_in_thread, workers), :mod:`~quill.server.engines` (uvicorn, hypercorn, granian),
:mod:`~quill.server.limits` (the head deadline and connection cap an engine lacks),
:mod:`~quill.server.sockets` (TCP and Unix listening sockets, their URLs),
:mod:`~quill.server.tls`.
"""

from __future__ import annotations

from ..protocol.kinds import DESCRIBE_PATH
from .app import BUILTIN_PATHS, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_PUBLIC_PATHS, QuillApp
from .auth import ApiKeyAuth, AuthHook, BearerAuth
from .context import Context
from .cors import CorsPolicy
from .handlers import HANDLER_KINDS
from .idempotency import IdempotencyStore
from .running import load_app, serve, serve_in_thread
from .sockets import unix_url
from .tls import TLSConfig

__all__ = [
    "QuillApp",
    "Context",
    "AuthHook",
    "BearerAuth",
    "ApiKeyAuth",
    "CorsPolicy",
    "IdempotencyStore",
    "serve_in_thread",
    "serve",
    "load_app",
    "unix_url",
    "TLSConfig",
    "HANDLER_KINDS",
    "BUILTIN_PATHS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_PUBLIC_PATHS",
    "DESCRIBE_PATH",
]
