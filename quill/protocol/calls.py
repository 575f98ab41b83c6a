"""The client side of Quill over HTTP, without IO: configuration, headers, and the request of
every call kind. :class:`ClientCore` is shared by :class:`~quill.QuillClient` and
:class:`~quill.AsyncQuillClient`; each pairs it with a transport.

>>> core = ClientCore(dict(base_url="http://127.0.0.1:8080/api"))
>>> request = core.request("unary", "echo.v1.Echo", "Echo", b"hi")
>>> request.method, request.target, request.body.length
('POST', b'/api/echo.v1.Echo/Echo', 2)
>>> ClientCore(dict(base_url="http+unix://%2Ftmp%2Fq.sock")).endpoint.uds
'/tmp/q.sock'
>>> endpoint = Endpoint("http://alice:s3cret@127.0.0.1:8080")
>>> endpoint.base_url, endpoint.authorization
('http://127.0.0.1:8080', 'Basic YWxpY2U6czNjcmV0')
"""

from __future__ import annotations

import base64
import re
import threading
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from ..errors import DecodeError, EncodeError
from ..frames import MessageStreamDecoder, TokenStreamDecoder, encode_tensor_frames
from ..tensor import Tensor
from . import compression
from .constants import COMPRESSION_THRESHOLD, JSON, PREFER, PROTO, TENSOR_FRAMES
from .kinds import DESCRIBE_PATH, form_media
from .names import check_header, check_rpc_name
from .receive_pool import ReceivePool
from .requests import Body, CallInfo, Request, aframe_messages, as_buffer, buffer_size, encode_json, \
    encode_json_request, frame_messages
from .responses import BytesConsumer, FrameConsumer, JsonConsumer, TensorConsumer
from .retries import RetryPolicy
from .shm import DATA_HEADER, SHM_PATH, ShmTensorConsumer
from .tls_files import check_client_files
from .tracing import trace_headers

__all__ = ["ClientCore", "Endpoint", "DEFAULTS", "HEALTH_TIMEOUT_MS", "redact_url"]

HEALTH_TIMEOUT_MS = 2000
#: Every client option and its default (the keyword arguments of both clients).
DEFAULTS: dict[str, Any] = {
    "timeout_ms": 30000,
    "enable_compression": False,
    "max_connections": 10,
    "retries": 2,
    "status_retries": 0,
    "backoff_ms": 50,
    "verify": True,
    "ca_file": None,
    "client_cert": None,
    "client_key": None,
    "max_response_bytes": 1 << 30,
    "max_tensor_bytes": 4 << 30,
    "tensor_chunk_size": 64 * 1024,
    "tensor_pool_bytes": 512 << 20,
    "idempotent_methods": (),
    "shared_memory": "auto",
    "shared_memory_bytes": 1 << 30,
    "http2": False,
    "http2_connections": 1,
    "http2_keepalive_ms": None,
    "http2_keepalive_timeout_ms": 20000,
}
# The Content-Type of a request by its body, and its Accept by the call (docs/protocol.md,
# "Call kinds"): the answer each call reads. send_tensor reads any answer as bytes.
_CONTENT = {"proto": PROTO, "json": JSON, "message-frames": form_media("messages"),
            "tensor-frames": TENSOR_FRAMES, "get": None}
_ACCEPT = {"unary": form_media("none"), "client_stream": form_media("none"), "json": JSON,
           "messages": form_media("messages"), "tokens": form_media("tokens"),
           "tensor": form_media("tensor"), "send_tensor": PROTO, "get": JSON}


def redact_url(url: str) -> str:
    """``url`` with everything up to its last ``@`` after the scheme shown as ``***``: the form of a
    URL in a message, which must never carry a user name or password (even from a malformed URL).

    >>> redact_url("http://alice:s3cret@h:8080/api"), redact_url("http://h:8080/api")
    ('http://***@h:8080/api', 'http://h:8080/api')
    """
    head, at, rest = url.rpartition("@")
    if not at:
        return url
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", head)
    return f"{scheme.group() if scheme else ''}***@{rest}"


def _basic_auth(userinfo: str, shown: str) -> str | None:
    """The ``Authorization: Basic`` value of a URL's percent-encoded ``user:password`` (None when both are empty)."""
    user, _, password = userinfo.partition(":")
    user_bytes, password_bytes = unquote_to_bytes(user), unquote_to_bytes(password)
    if b":" in user_bytes:
        raise EncodeError(f"the user name in base_url {shown!r} contains ':', which Basic auth cannot send")
    if not (user_bytes or password_bytes):
        return None
    return "Basic " + base64.b64encode(user_bytes + b":" + password_bytes).decode("ascii")


class Endpoint:
    """Where a client connects: ``scheme`` (http, https), ``host``/``port`` or ``uds`` (a Unix
    socket path), the path ``prefix``, the ``Host`` header value, the printable ``base_url``
    and ``authorization``: the ``Basic`` credentials of a ``user:password@`` in the URL (None
    without). The credentials are kept nowhere else: ``base_url`` and every message omit them."""

    __slots__ = ("scheme", "host", "port", "uds", "prefix", "host_header", "base_url", "authorization")

    def __init__(self, base_url: str):
        if not isinstance(base_url, str):
            raise TypeError(f"base_url must be a str, got {type(base_url).__name__}")
        shown = redact_url(base_url)
        parts = urlsplit(base_url)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        host = hostport if parts.scheme == "http+unix" else parts.hostname
        if parts.scheme not in ("http", "https", "http+unix") or not host:
            raise ValueError(f"base_url must be an http://, https:// or http+unix:// URL with a host "
                             f"(http+unix: the percent-encoded socket path), got {shown!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must not have a query or fragment: {shown!r}")
        if "@" in parts.path:
            raise ValueError(f"base_url has an '@' after its host: {shown!r} (percent-encode '/', '?', '#' and "
                             "'@' in a user name or password)")
        self.authorization = _basic_auth(userinfo, shown) if at else None
        self.prefix = parts.path.rstrip("/")
        if parts.scheme == "http+unix":
            self.scheme, self.host, self.port, self.uds = "http", "localhost", None, unquote(hostport)
            self.host_header = "localhost"
        else:
            self.scheme, self.host, self.uds = parts.scheme, parts.hostname, None
            default_port = 443 if parts.scheme == "https" else 80
            try:
                self.port = parts.port or default_port
            except ValueError as exc:
                raise ValueError(f"bad port in base_url {shown!r}: {exc}") from None
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        self.base_url = f"{parts.scheme}://{hostport}{self.prefix}"


def _check_config(config: dict) -> None:
    unknown = set(config) - set(DEFAULTS) - {"base_url"}
    if unknown:
        raise TypeError(f"unknown client option(s): {', '.join(sorted(unknown))}")
    if config["timeout_ms"] is None or config["timeout_ms"] <= 0:
        raise ValueError(f"timeout_ms must be positive, got {config['timeout_ms']!r}")
    if config["max_connections"] < 1:
        raise ValueError(f"max_connections must be at least 1, got {config['max_connections']!r}")
    if not 1 <= config["tensor_chunk_size"] <= 0xFFFFFFFF:
        raise ValueError(f"tensor_chunk_size must be 1..2**32-1, got {config['tensor_chunk_size']!r}")
    check_client_files(config["ca_file"], config["client_cert"], config["client_key"])
    if config["shared_memory"] not in ("auto", True, False):
        raise ValueError(f"shared_memory must be 'auto', True or False, got {config['shared_memory']!r}")
    if type(config["shared_memory_bytes"]) is not int or config["shared_memory_bytes"] < 0:
        raise ValueError(f"shared_memory_bytes must be a non-negative int, got {config['shared_memory_bytes']!r}")
    if type(config["http2_connections"]) is not int or config["http2_connections"] < 1:
        raise ValueError(f"http2_connections must be an int of at least 1, got {config['http2_connections']!r}")
    for name in ("http2_keepalive_ms", "http2_keepalive_timeout_ms"):
        value = config[name]
        if (value is not None or name == "http2_keepalive_timeout_ms") and (
                type(value) not in (int, float) or not 0 < value < float("inf")):
            raise ValueError(f"{name} must be a positive number of milliseconds"
                             f"{' or None' if name == 'http2_keepalive_ms' else ''}, got {value!r}")
    if config["enable_compression"] and not compression.available():
        raise ImportError("enable_compression=True needs zstd support: pip install 'urllib3[zstd]'")


def _method_key(path: str) -> tuple[str, str]:
    service, slash, method = str(path).lstrip("/").partition("/")
    if not slash:
        raise ValueError(f"idempotent_methods entries look like 'package.Service/Method', got {path!r}")
    return check_rpc_name("service", service), check_rpc_name("method", method)


class _HeaderSet:
    """One version of a client's headers, never changed once published: the names set
    ({lower-case name: (name, value)}), the generation that keys the request heads transports
    cache, and the header tuple of each (body, call) form, built from these on first use."""

    __slots__ = ("headers", "generation", "fixed")

    def __init__(self, headers: dict[str, tuple[str, str]], generation: int):
        self.headers = headers
        self.generation = generation
        self.fixed: dict[str, tuple] = {}  # the same tuple whoever builds it first


class ClientCore:
    """Configuration, headers and request building for one client (thread-safe: a header change
    publishes a new :class:`_HeaderSet` under a lock; a request reads the published one once and
    uses only it, so it never mixes two versions, and one built after ``set_header()`` returned
    carries the new value)."""

    def __init__(self, config: Mapping[str, Any], headers: Mapping[str, str] | None = None):
        merged = dict(DEFAULTS)
        merged.update(config)
        _check_config(merged)
        self.config = merged
        self.endpoint = Endpoint(merged["base_url"])
        self.timeout_ms = merged["timeout_ms"]
        self.compression = bool(merged["enable_compression"])
        self.retry_policy = RetryPolicy(merged["retries"], merged["status_retries"], max(0, merged["backoff_ms"]) / 1000)
        self._idempotent = frozenset(_method_key(path) for path in merged["idempotent_methods"])
        self.receive_pool = ReceivePool(merged["tensor_pool_bytes"])
        self._header_lock = threading.Lock()
        self._header_set = _HeaderSet({}, 0)
        self._calls: dict[tuple[str, str], CallInfo] = {}
        from .._version import __version__

        self._user_agent = f"quill-python/{__version__}"
        for name, value in (headers or {}).items():
            self.set_header(name, value)

    # -- headers ------------------------------------------------------------------------
    def set_header(self, name: str, value: str) -> None:
        name, value = check_header(name, value)
        with self._header_lock:
            headers = dict(self._header_set.headers)
            headers[name.lower()] = (name, value)
            self._publish(headers)

    def remove_header(self, name: str) -> None:
        with self._header_lock:
            headers = dict(self._header_set.headers)
            if headers.pop(str(name).lower(), None) is not None:
                self._publish(headers)

    def _publish(self, headers: dict) -> None:
        """Make ``headers`` the client's (with ``_header_lock`` held: generations never repeat)."""
        self._header_set = _HeaderSet(headers, self._header_set.generation + 1)

    def get_headers(self) -> dict[str, str]:
        return dict(self._header_set.headers.values())

    def _header_list(self, header_set: _HeaderSet, media: tuple[str, str], extra: Mapping[str, str] | None) -> tuple:
        content_type, accept = _CONTENT[media[0]], _ACCEPT[media[1]]
        merged: dict[str, Any] = {
            "host": ("Host", self.endpoint.host_header),
            "user-agent": ("User-Agent", self._user_agent),
            "content-type": ("Content-Type", content_type) if content_type else None,
            "accept": ("Accept", accept),
            "prefer": ("Prefer", PREFER),
        }
        if self.compression:
            merged["accept-encoding"] = ("Accept-Encoding", "zstd")
        if self.endpoint.authorization:  # the URL's user:password; an Authorization header set wins
            merged["authorization"] = ("Authorization", self.endpoint.authorization)
        merged.update(header_set.headers)
        for name, value in (extra or {}).items():
            name, value = check_header(name, value)
            merged[name.lower()] = (name, value)
        return tuple(pair for pair in merged.values() if pair is not None)

    def _headers_for(self, media: tuple[str, str], extra: Mapping[str, str] | None) -> tuple[tuple, Any]:
        """(headers, key): the fixed header tuple per (body, call) is built once per header change."""
        header_set = self._header_set  # read once: this request uses this version only
        if extra:
            return self._header_list(header_set, media, extra), None
        headers = header_set.fixed.get(media)
        if headers is None:
            headers = header_set.fixed[media] = self._header_list(header_set, media, None)
        return headers, (media, header_set.generation)

    # -- calls --------------------------------------------------------------------------
    def call_info(self, service: str, method: str) -> CallInfo:
        key = (service, method)
        info = self._calls.get(key)
        if info is None:
            check_rpc_name("service", service)
            check_rpc_name("method", method)
            path = f"/{service}/{method}"
            info = CallInfo(f"{service}/{method}", (self.endpoint.prefix + path).encode("ascii"),
                            self.endpoint.base_url + path, key in self._idempotent)
            if len(self._calls) < 4096:
                self._calls[key] = info
        return info

    def timeout_s(self, timeout_ms: int | None) -> float:
        if timeout_ms is None:
            return self.timeout_ms / 1000.0
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, got {timeout_ms!r}")
        return timeout_ms / 1000.0

    def request(self, expect: str, service: str, method: str, payload: Any = b"", *,
                timeout_ms: int | None = None, headers: Mapping[str, str] | None = None,
                idempotent: bool | None = None) -> Request:
        """The request of a call. ``expect``: unary, json, messages, tokens, tensor (answer read as
        a Tensor), client_stream (``payload`` an iterable of messages) or send_tensor."""
        info = self.call_info(service, method)
        timeout = self.timeout_s(timeout_ms)
        if expect == "json":
            body, media = self._bytes_body(encode_json_request(payload)), "json"
        elif expect == "client_stream":
            body, media = self._stream_body(payload), "message-frames"
        elif expect == "unary":
            body, media = self._bytes_body(as_buffer(payload)), "proto"
        else:
            body, media = self._payload_body(payload)
        header_list, key = self._headers_for((media, expect), headers)
        trace = trace_headers()
        if trace:  # the current span's context, per call: never cached
            header_list, key = header_list + trace, None
        marked = info.idempotent if idempotent is None else bool(idempotent)
        answer = "bytes" if expect in ("unary", "client_stream", "send_tensor") else expect
        tensor = payload if isinstance(payload, Tensor) and expect in ("tensor", "send_tensor") else None
        return Request("POST", info, header_list, key, body, timeout, marked, answer, tensor)

    def health_request(self, timeout_ms: int) -> Request:
        timeout = min(self.timeout_s(timeout_ms), self.timeout_ms / 1000.0)
        return self._get_request("health", "/health", timeout, "bytes")

    def shm_request(self) -> Request:
        """``GET /.well-known/quill/shm`` (docs/shared-memory.md), its answer read as JSON."""
        return self._get_request("shared memory", SHM_PATH, self.timeout_s(HEALTH_TIMEOUT_MS), "json")

    def describe_request(self, timeout_ms: int | None, headers: Mapping[str, str] | None = None) -> Request:
        """``GET /.well-known/quill/methods``, its answer read as JSON."""
        return self._get_request("methods", DESCRIBE_PATH, self.timeout_s(timeout_ms), "json", headers)

    def _get_request(self, name: str, path: str, timeout: float, expect: str,
                     headers: Mapping[str, str] | None = None) -> Request:
        endpoint = self.endpoint
        info = CallInfo(name, f"{endpoint.prefix}{path}".encode("ascii"), f"{endpoint.base_url}{path}", True)
        header_list, key = self._headers_for(("get", "get"), headers)
        return Request("GET", info, header_list, key, None, timeout, True, expect)

    def _bytes_body(self, data: Any) -> Body:
        if self.compression and buffer_size(data) >= COMPRESSION_THRESHOLD:
            return Body.of_buffer(compression.compress(data), encoding="zstd")
        return Body.of_buffer(data)

    def _payload_body(self, payload: Any) -> tuple[Body, str]:
        """A streaming or tensor call's body: Tensor -> tensor frames, dict/list -> JSON, else bytes."""
        if isinstance(payload, Tensor):
            parts = list(encode_tensor_frames(payload, chunk_size=self.config["tensor_chunk_size"]))
            length = sum(buffer_size(p) for p in parts)
            if self.compression and length >= COMPRESSION_THRESHOLD:
                return Body(chunks=lambda: compression.compress_stream(parts), encoding="zstd"), "tensor-frames"
            return Body(parts, length), "tensor-frames"
        if isinstance(payload, (dict, list)):
            return self._bytes_body(encode_json(payload)), "json"
        if isinstance(payload, str):
            raise TypeError("request must be bytes-like, a Tensor, or a dict or list (sent as JSON), not a str: "
                            "pass json.loads(text) for JSON text, or text.encode() for its bytes")
        return self._bytes_body(as_buffer(payload)), "proto"

    def _stream_body(self, messages: Iterable) -> Body:
        if hasattr(messages, "__aiter__"):  # the async client's async iterables: compressed from the start
            compressor = compression.StreamCompressor() if self.compression else None
            return Body(chunks=lambda: aframe_messages(messages, compressor),
                        encoding="zstd" if compressor else None, rewindable=False)
        frames = frame_messages(messages)
        if not self.compression:
            return Body(chunks=lambda: frames, rewindable=False)
        # Compress once at least 1,024 bytes are on their way; a shorter stream goes out plain.
        head, size = [], 0
        for part in frames:
            head.append(part)
            size += buffer_size(part)
            if size >= COMPRESSION_THRESHOLD:
                break
        else:
            return Body(head, size)

        def pieces():
            yield from head
            yield from frames

        return Body(chunks=lambda: compression.compress_stream(pieces()), encoding="zstd", rewindable=False)

    # -- answers ------------------------------------------------------------------------
    def consumer(self, request: Request, headers: Mapping[str, str], out: Any = None, shared: Any = None) -> Any:
        """The consumer that reads a 2xx answer to ``request`` (``headers``: lower-case names);
        ``out`` is the destination buffer of a tensor answer (None: one from the receive pool);
        ``shared`` resolves the regions of an answer left in shared memory (the response's)."""
        call = request.call.describe()
        expect = request.expect
        if expect == "tensor" and DATA_HEADER.lower() in headers:
            if shared is None:
                raise DecodeError(f"{call}: the answer is in shared memory ({DATA_HEADER}), which the call did not offer")
            return ShmTensorConsumer(headers, call, shared, out)
        if expect == "bytes":
            return BytesConsumer(headers, self.config["max_response_bytes"], call)
        if expect == "json":
            return JsonConsumer(headers, self.config["max_response_bytes"], call)
        if expect == "messages":
            return FrameConsumer(headers, MessageStreamDecoder(), call, "message stream")
        if expect == "tokens":
            return FrameConsumer(headers, TokenStreamDecoder(), call, "token stream")
        allocate = self.receive_pool.allocate if out is None else None
        return TensorConsumer(headers, self.config["max_tensor_bytes"], call, out, allocate)
