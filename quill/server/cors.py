"""Calls from web pages of other origins (CORS): off unless a :class:`~quill.server.QuillApp` names
the origins it admits (``cors_origins``, ``quill serve --cors-origin``); docs/protocol.md,
section 6, "CORS".

A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an admitted origin gets 204
and what may be sent, without auth (browsers send no credentials with it); one from another
origin gets 403. Every other answer to an admitted origin carries ``Access-Control-Allow-Origin``.

>>> policy = CorsPolicy(["https://app.example"])
>>> policy.allows("https://app.example"), policy.allows("https://other.example")
(True, False)
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from ..protocol.constants import PROBLEM_JSON
from ..protocol.problems import problem

__all__ = ["CorsPolicy", "ALLOW_METHODS", "ALLOW_HEADERS", "EXPOSE_HEADERS", "MAX_AGE_SECONDS"]

ALLOW_METHODS = "GET, HEAD, POST"
#: The request headers a page may send (the API-key headers of the app's auth hooks are added).
ALLOW_HEADERS = ("accept", "authorization", "content-type", "content-encoding", "prefer", "x-api-key",
                 "traceparent", "tracestate")
#: The answer headers beyond the CORS-safelisted ones that a page may read.
EXPOSE_HEADERS = "retry-after, www-authenticate"
#: How long a browser may keep a preflight's answer.
MAX_AGE_SECONDS = 600

_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/?#@]+\Z")  # scheme://host[:port], as browsers send it


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class CorsPolicy:
    """The origins whose pages may call (``"*"``: any page), as ``scheme://host[:port]`` with no
    path; a malformed origin is a ValueError."""

    def __init__(self, origins: Iterable[str]):
        if isinstance(origins, str):
            raise ValueError(f"cors origins are a list of origins, got the string {origins!r}")
        checked = []
        for origin in origins:
            if not isinstance(origin, str) or (origin != "*" and not _ORIGIN.match(origin.lower())):
                raise ValueError(f"a CORS origin is '*' or scheme://host[:port] with no path, got {origin!r}")
            checked.append(origin.lower())
        if not checked:
            raise ValueError("CorsPolicy needs at least one origin ('*' for any)")
        self.origins = frozenset(checked)

    def allows(self, origin: str) -> bool:
        return "*" in self.origins or origin.lower() in self.origins

    def _allow_origin(self, origin: str) -> list[tuple[bytes, bytes]]:
        if "*" in self.origins:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"origin")]

    async def handle(self, scope: dict, send: Callable, extra_headers: Callable[[], Iterable[str]]) -> Callable | None:
        """The ``send`` to answer ``scope`` with (adding the CORS headers when its origin is
        admitted), or None when this was a preflight, answered here (``extra_headers()``: more
        request headers to allow)."""
        origin = _header(scope, b"origin")
        if origin is None:
            return send
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            await self._preflight(origin, send, extra_headers())
            return None
        if not self.allows(origin):
            return send
        added = [*self._allow_origin(origin), (b"access-control-expose-headers", EXPOSE_HEADERS.encode())]

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *added]}
            await send(message)

        return send_with_cors

    async def _preflight(self, origin: str, send: Callable, extra_headers: Iterable[str]) -> None:
        if not self.allows(origin):
            detail = f"this server admits no cross-origin calls from {origin}"
            body = problem(403, "Origin not allowed", detail).to_json()
            headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        allowed = ", ".join(dict.fromkeys([*ALLOW_HEADERS, *(name.lower() for name in extra_headers)]))
        headers = [*self._allow_origin(origin),
                   (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                   (b"access-control-allow-headers", allowed.encode("latin-1")),
                   (b"access-control-max-age", str(MAX_AGE_SECONDS).encode())]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
