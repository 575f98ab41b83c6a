# Generated from _async_client.py by tools/unasync.py: do not edit; edit _async_client.py and run it again.
"""QuillClient: Quill RPCs over one pool of keep-alive connections.

The sync QuillClient is generated from this file by tools/unasync.py: edit this one, then run
``python tools/unasync.py`` (a test checks that the two agree).

One client holds one pool of keep-alive connections. Unary calls send bytes or JSON; streaming
calls give iterators of messages, token batches or a tensor as the frames arrive.

>>> with QuillClient("http://127.0.0.1:8080", timeout_ms=5000) as client:  # doctest: +SKIP
...     client.call("echo.v1.EchoService", "Echo", b"hi")
b'hi'
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

from ..errors import DecodeError, LimitExceededError, QuillConnectionError, QuillTimeoutError, RpcError
from ..protocol.calls import HEALTH_TIMEOUT_MS, ClientCore
from ..protocol.discovery import MethodInfo, parse_methods
from ..protocol.requests import Request
from ..protocol.retries import RetryState, TransportError, quill_error_for, resendable
from ..tensor import Tensor
from ..transports.http11 import HTTP11Transport
from ..transports.http2 import HTTP2Transport
from ..transports.shm import SharedMemoryTransport, shared_memory_wanted
from ._sync_streams import MessageStream, TokenStream, read_body
from ._error_body import ErrorBody
from ._map import MapCall
from ._map_threads import MapResults

__all__ = ["QuillClient"]


class QuillClient:
    """A Quill RPC client: unary, JSON, streaming, token and tensor calls over one connection pool.

    ``base_url`` is ``http://host:port[/prefix]``, ``https://...`` or, for a Unix domain socket,
    ``http+unix://<percent-encoded path>[/prefix]`` (``http+unix://%2Ftmp%2Fquill.sock``).
    ``timeout_ms`` bounds connecting and every wait for the server (per call overridable).
    Failures before any byte of a request was sent are retried ``retries`` times with exponential
    backoff from ``backoff_ms``; a request that may have reached the server is resent only when
    the call is idempotent (``idempotent=True`` per call, ``idempotent_methods`` such as
    ``["echo.v1.EchoService/Echo"]``, or an ``Idempotency-Key`` header).
    ``status_retries`` opts in to retrying 429/503 answers, waiting as ``Retry-After`` says. Retries resend the body already built, never a copy.
    For ``https://``, certificates are verified unless ``verify=False``; ``ca_file`` adds a CA
    bundle, ``client_cert``/``client_key`` present a client certificate. A ``user:password@`` in
    the URL is sent as ``Authorization: Basic`` (an Authorization header set on the client or per
    call wins) and shown nowhere: ``base_url``, ``repr`` and errors leave it out. Headers may be
    set from any thread; a call made after ``set_header()`` returns sends the new value.
    ``tensor_pool_bytes`` bounds the receive buffers kept for reuse (see :meth:`call_tensor`; 0: none).
    ``shared_memory`` (Linux, ``http+unix://`` URLs): ``"auto"`` moves tensors of 64 KiB or more
    through shared memory when the server offers it and sends HTTP bodies otherwise; True
    requires it (QuillConnectionError when the server does not offer it); False never uses it.
    ``shared_memory_bytes`` bounds the arenas (docs/shared-memory.md).
    ``http2=True`` speaks HTTP/2 (docs/http2.md): every call multiplexed over one connection, h2c
    with prior knowledge for ``http://`` and Unix sockets, ALPN for ``https://`` (HTTP/1.1 if the
    server picks it); it needs the compiled engine (libnghttp2, in every wheel).
    ``http2_connections`` (default 1) lets calls that find every connection at the server's
    ``SETTINGS_MAX_CONCURRENT_STREAMS`` open another, up to that many (beyond, they queue).
    ``http2_keepalive_ms`` (default None: off) sends a PING on a connection idle that long; with no
    ACK within ``http2_keepalive_timeout_ms`` (20 s) it is dead: its calls fail (QuillConnectionError).

    >>> with QuillClient("http://127.0.0.1:8080") as client:  # doctest: +SKIP
    ...     client.set_api_key("key-123")
    ...     client.call_json("inference.v1.LLMService", "Generate", {"prompt": "Hello"})
    {'text': '...'}
    """

    def __init__(
        self,
        base_url: str,
        timeout_ms: int = 30000,
        enable_compression: bool = False,
        *,
        max_connections: int = 10,
        retries: int = 2,
        status_retries: int = 0,
        backoff_ms: int = 50,
        verify: bool = True,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        max_response_bytes: int = 1 << 30,
        max_tensor_bytes: int = 4 << 30,
        tensor_chunk_size: int = 64 * 1024,
        tensor_pool_bytes: int = 512 << 20,
        idempotent_methods: tuple = (),
        headers: Mapping[str, str] | None = None,
        shared_memory: bool | str = "auto",
        shared_memory_bytes: int = 1 << 30,
        http2: bool = False,
        http2_connections: int = 1,
        http2_keepalive_ms: float | None = None,
        http2_keepalive_timeout_ms: float = 20000,
    ):
        config = dict(
            base_url=base_url, timeout_ms=timeout_ms, enable_compression=enable_compression,
            max_connections=max_connections, retries=retries, status_retries=status_retries,
            backoff_ms=backoff_ms, verify=verify, ca_file=ca_file, client_cert=client_cert,
            client_key=client_key, max_response_bytes=max_response_bytes, max_tensor_bytes=max_tensor_bytes,
            tensor_chunk_size=tensor_chunk_size, tensor_pool_bytes=tensor_pool_bytes,
            idempotent_methods=tuple(idempotent_methods), shared_memory=shared_memory,
            shared_memory_bytes=shared_memory_bytes, http2=bool(http2), http2_connections=http2_connections,
            http2_keepalive_ms=http2_keepalive_ms, http2_keepalive_timeout_ms=http2_keepalive_timeout_ms,
        )
        self._setup(ClientCore(config, headers or {}))

    def _setup(self, core: ClientCore) -> None:
        """Use ``core`` (config, headers, receive pool) and open a transport of this client's kind
        on it (``QuillClient.map`` runs its calls through an async client set up on its core)."""
        self._core = core
        transport = (HTTP2Transport if core.config.get("http2") else HTTP11Transport)(core)
        self._transport = SharedMemoryTransport(core, transport) if shared_memory_wanted(core) else transport

    def __getstate__(self) -> dict:
        return {"config": dict(self._core.config), "headers": self._core.get_headers()}

    def __setstate__(self, state: dict) -> None:
        self._setup(ClientCore(state["config"], state["headers"]))

    def close(self) -> None:
        """Close every pooled connection and drop the receive pool; later calls raise
        :class:`QuillConnectionError`."""
        self._core.receive_pool.clear()
        self._transport.close()

    def __enter__(self) -> "QuillClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.base_url!r}, timeout_ms={self.timeout_ms}, "
            f"enable_compression={self.compression_enabled})"
        )

    # ------------------------------------------------------------------ properties, headers

    @property
    def base_url(self) -> str:
        """The server URL calls go to (without a trailing slash)."""
        return self._core.endpoint.base_url

    @property
    def timeout_ms(self) -> int:
        """The default timeout of a call in milliseconds."""
        return self._core.timeout_ms

    @property
    def compression_enabled(self) -> bool:
        """Whether request bodies of 1,024 bytes or more are sent zstd-compressed."""
        return self._core.compression

    def set_header(self, name: str, value: str) -> None:
        """Send ``name: value`` with every request (replacing a header of the same name)."""
        self._core.set_header(name, value)

    def remove_header(self, name: str) -> None:
        """Stop sending header ``name`` (case-insensitive); absent names are ignored."""
        self._core.remove_header(name)

    def get_headers(self) -> dict[str, str]:
        """The headers set on this client, as {name: value}."""
        return self._core.get_headers()

    def set_bearer_token(self, token: str) -> None:
        """Send ``Authorization: Bearer <token>`` with every request."""
        self.set_header("Authorization", f"Bearer {token}")

    def set_api_key(self, key: str, header_name: str | None = None) -> None:
        """Send the API key in ``header_name`` (default ``X-API-Key``) with every request."""
        self.set_header(header_name or "X-API-Key", key)

    # ------------------------------------------------------------------ one exchange

    def _open(self, request: Request, status_retries: int | None = None) -> Any:
        """Send ``request`` (resending as the retry policy allows); the 2xx response, or raise."""
        policy = self._core.retry_policy
        state = RetryState()
        while True:
            try:
                response = self._transport.open(request)
            except TransportError as failure:
                wait = policy.delay(failure, request.replayable, resendable(request), request.timeout, state)
                if wait is None:
                    raise quill_error_for(failure, request.call.describe(), request.timeout) from failure
                time.sleep(wait)
                continue
            if 200 <= response.status < 300:
                return response
            error = self._status_error(response, request)
            wait = policy.delay(error, request.replayable, True, request.timeout, state, status_retries)
            if wait is None:
                raise error
            time.sleep(wait)

    def _status_error(self, response: Any, request: Request) -> RpcError:
        """Read the start of an error body (:class:`ErrorBody`), release the connection (reused only
        when the whole body was read), build the RpcError."""
        body = ErrorBody(response.headers, request.call.describe())
        try:
            while True:
                data = response.read()
                if not data:
                    body.finish()
                    break
                if body.feed(data):
                    break  # the rest is dropped, with the connection
        except (TransportError, DecodeError) as failure:
            body.failed(failure)
        finally:
            response.release(body.complete)
        return body.error(response.status, response.headers, request.call, request.expect)

    def _read_whole(self, response: Any, request: Request, out: Any = None) -> Any:
        """Read a 2xx answer through its consumer, then release the connection."""
        ok = False
        try:
            consumer = self._core.consumer(request, response.headers, out, getattr(response, "shared", None))
            if request.expect == "tensor":
                ended = False
                while not ended:
                    _, ended = read_body(response, consumer)
            else:
                limit = self._core.config["max_response_bytes"]
                consumer.feed(response.read_all(limit, request.call.describe()))
            result = consumer.finish()
            ok = True
            return result
        except TransportError as failure:
            when = "while receiving the tensor" if request.expect == "tensor" else "while reading the response"
            raise quill_error_for(failure, request.call.describe(), request.timeout, when) from failure
        finally:
            response.release(ok)

    def _unary(self, expect: str, service: str, method: str, payload: Any, timeout_ms: int | None,
                     headers: Mapping[str, str] | None, idempotent: bool | None, out: Any = None) -> Any:
        request = self._core.request(expect, service, method, payload, timeout_ms=timeout_ms, headers=headers,
                                     idempotent=idempotent)
        return self._read_whole(self._open(request), request, out)

    def _stream(self, stream_class: type, expect: str, service: str, method: str, payload: Any,
                      timeout_ms: int | None, headers: Mapping[str, str] | None, idempotent: bool | None) -> Any:
        request = self._core.request(expect, service, method, payload, timeout_ms=timeout_ms, headers=headers,
                                     idempotent=idempotent)
        response = self._open(request)
        try:
            consumer = self._core.consumer(request, response.headers)
        except BaseException:
            response.release(False)
            raise
        return stream_class(response, consumer, request)

    # ------------------------------------------------------------------ unary calls

    def call(self, service: str, method: str, request: Any, *, timeout_ms: int | None = None,
                   headers: Mapping[str, str] | None = None, idempotent: bool | None = None) -> bytes:
        """Unary RPC: POST the request bytes (any bytes-like object), return the response bytes.

        >>> client.call("echo.v1.EchoService", "Echo", b"hello")  # doctest: +SKIP
        b'hello'
        """
        return self._unary("unary", service, method, request, timeout_ms, headers, idempotent)

    def call_json(self, service: str, method: str, obj: Any, *, timeout_ms: int | None = None,
                        headers: Mapping[str, str] | None = None, idempotent: bool | None = None) -> Any:
        """Unary RPC with JSON both ways (None for an empty answer).

        ``obj`` is the request as a Python object (dict, list, str, number, bool, None), sent as
        JSON: a str goes as a JSON string. A str holding the JSON text of an object or array, or
        bytes, raises :class:`~quill.errors.EncodeError` (JSON encoded already, it would arrive
        encoded twice): pass ``json.loads(text)``.

        >>> client.call_json("inference.v1.LLMService", "Generate", {"prompt": "Hi"})  # doctest: +SKIP
        {'text': 'Hello!'}
        """
        return self._unary("json", service, method, obj, timeout_ms, headers, idempotent)

    def health_check(self, timeout_ms: int = HEALTH_TIMEOUT_MS) -> bool:
        """``GET /health`` with a short timeout: True only for a 2xx answer, False otherwise."""
        request = self._core.health_request(timeout_ms)
        try:
            self._read_whole(self._open(request, status_retries=0), request)
        except (RpcError, QuillConnectionError, QuillTimeoutError, LimitExceededError, DecodeError):
            return False
        return True

    def list_methods(self, service: str | None = None, *, timeout_ms: int | None = None,
                           headers: Mapping[str, str] | None = None) -> list[MethodInfo]:
        """The methods the server describes (``GET /.well-known/quill/methods``), each a
        :class:`~quill.protocol.discovery.MethodInfo` with its kind, content types and docstring;
        only those of ``service`` when given. A server without discovery answers 404
        (:class:`~quill.errors.NotFoundError`), a quill server older than it 405.

        >>> [(m.name, m.kind) for m in client.list_methods("inference.v1.LLMService")]  # doctest: +SKIP
        [('Generate', 'token_stream'), ('Embed', 'tensor'), ('Echo', 'tensor')]
        """
        request = self._core.describe_request(timeout_ms, headers)
        methods = parse_methods(self._read_whole(self._open(request), request))
        return [m for m in methods if service is None or m.service == service]

    def call_client_stream(self, service: str, method: str, messages: Any, *, timeout_ms: int | None = None,
                                 headers: Mapping[str, str] | None = None, idempotent: bool | None = None) -> bytes:
        """Client-streaming RPC: send each message of ``messages`` (an iterable of bytes-like objects,
        or an iterable with the async client), consumed lazily, as stream frames; return the
        response bytes."""
        return self._unary("client_stream", service, method, messages, timeout_ms, headers, idempotent)

    def call_tensor(self, service: str, method: str, request: Any, *, timeout_ms: int | None = None,
                          headers: Mapping[str, str] | None = None, idempotent: bool | None = None,
                          out: Any = None) -> Tensor:
        """Tensor RPC: send ``request`` (a Tensor as tensor frames, bytes, or a dict as JSON) and receive a
        Tensor, written straight into one buffer (limit ``max_tensor_bytes``), or into ``out`` (any
        writable buffer, reused across calls to skip the page faults of fresh memory; the Tensor then
        shares its memory, and a larger tensor is refused with LimitExceededError).

        Without ``out``, a tensor of 1 MiB or more lands in a buffer of the client's receive pool
        (at most ``tensor_pool_bytes`` in all, in size classes up to 12.5% larger than the tensor):
        the buffer stays the Tensor's for as long as anything refers to its memory (the Tensor, an
        array from ``to_numpy()``, a memoryview, a DLPack capsule), and is reused by a later call
        only once nothing does. Free buffers stay pooled until ``close()``; with all
        of them in use, a tensor gets fresh memory.

        >>> out = np.empty(64 << 20, dtype=np.uint8)                                   # doctest: +SKIP
        >>> t = client.call_tensor("demo.v1.Model", "Weights", b"", out=out)       # doctest: +SKIP
        """
        return self._unary("tensor", service, method, request, timeout_ms, headers, idempotent, out)

    def empty(self, shape: Any, dtype: Any) -> Any:
        """A numpy array (uninitialised) that lives in shared memory when the client uses it
        (docs/shared-memory.md), else in ordinary memory: a Tensor over it is sent without a
        copy. Do not write to it while a call that sends it is in flight.

        >>> a = client.empty((1024, 1024), "float32"); a[:] = 1.0                   # doctest: +SKIP
        >>> t = client.call_tensor("demo.v1.Model", "Echo", Tensor.from_numpy(a))   # doctest: +SKIP
        """
        empty = getattr(self._transport, "empty", None)
        if empty is None:
            import numpy as np

            return np.empty(shape, dtype=dtype)
        return empty(shape, dtype)

    def send_tensor(self, service: str, method: str, tensor: Tensor, *, timeout_ms: int | None = None,
                          headers: Mapping[str, str] | None = None, idempotent: bool | None = None) -> bytes:
        """Send a Tensor as tensor frames straight from its memory; return the response bytes."""
        if not isinstance(tensor, Tensor):
            raise TypeError(f"send_tensor needs a quill Tensor, got {type(tensor).__name__}")
        return self._unary("send_tensor", service, method, tensor, timeout_ms, headers, idempotent)

    # ------------------------------------------------------------------ streaming calls

    def call_stream(self, service: str, method: str, request: Any = b"", *, timeout_ms: int | None = None,
                          headers: Mapping[str, str] | None = None,
                          idempotent: bool | None = None) -> MessageStream:
        """Server-streaming RPC: the response messages as their frames arrive. ``request`` is bytes
        (application/proto) or a dict/list (JSON). Close or cancel the stream to stop early.

        >>> with client.call_stream("demo.v1.Feed", "Watch", b"topic") as stream:  # doctest: +SKIP
        ...     for message in stream:
        ...         handle(message)
        """
        return self._stream(MessageStream, "messages", service, method, request, timeout_ms, headers,
                                  idempotent)

    def stream_tokens(self, service: str, method: str, request: Any = b"", *, timeout_ms: int | None = None,
                            headers: Mapping[str, str] | None = None,
                            idempotent: bool | None = None) -> TokenStream:
        """Token-streaming RPC: a TokenBatch for each TOKEN_BATCH frame as it arrives.

        >>> for batch in client.stream_tokens("inference.v1.LLMService", "Generate", {"prompt": "Hi"}):  # doctest: +SKIP
        ...     print(batch.text(), end="")
        """
        return self._stream(TokenStream, "tokens", service, method, request, timeout_ms, headers,
                                  idempotent)

    # ------------------------------------------------------------------ many calls

    def map(self, service: str, method: str, requests: Iterable, *, kind: str | None = None, concurrency: int = 8,
            ordered: bool = True, return_exceptions: bool = False,
            progress: Callable[[int, int], Any] | None = None, timeout_ms: int | None = None,
            headers: Mapping[str, str] | None = None, idempotent: bool | None = None) -> MapResults:
        """Call ``service/method`` once per request of ``requests``, ``concurrency`` calls at a time.

        ``kind`` picks the call: ``"unary"`` (bytes -> bytes), ``"json"`` (JSON -> JSON),
        ``"tensor"`` (-> Tensor), ``"tokens"`` (-> the list of TokenBatch of the stream) or
        ``"messages"`` (-> the list of messages); None goes by each request's type (bytes-like
        -> unary, Tensor -> tensor, anything else -> json). The input is read lazily: at most
        ``2 * concurrency`` requests are held at a time (in flight, queued or done and not yet
        handed out), so a generator of millions is never materialised. ``concurrency`` may not
        exceed ``max_connections``.

        Results come in input order; with ``ordered=False``, as they complete, as ``(index,
        result)`` pairs. An item's error is raised at that item (with a note naming its index)
        and stops the rest; with ``return_exceptions=True`` it is the item's result instead.
        Each call retries as any call of this client does (``idempotent``, ``status_retries``).
        ``progress(done, failed)`` is called for each item done, in the iterating thread or task
        (as it collects results: in order, once the next result has arrived).
        Leaving the loop early (``break``, ``close()``, an error, a cancelled task) stops the
        input and cancels the calls in flight. ``timeout_ms``, ``headers`` and ``idempotent``
        apply to every call.

        >>> for answer in client.map("echo.v1.EchoService", "Echo", [b"a", b"b"]):  # doctest: +SKIP
        ...     print(answer)
        b'a'
        b'b'
        """
        call = MapCall(service, method, kind, {"timeout_ms": timeout_ms, "headers": headers, "idempotent": idempotent})
        return MapResults(self, call, requests, concurrency=concurrency, ordered=ordered,
                               return_exceptions=return_exceptions, progress=progress)
