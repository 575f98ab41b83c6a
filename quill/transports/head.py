"""The HTTP/1.1 request head of a :class:`~quill.protocol.requests.Request`, shared by the sync and
asyncio HTTP/1.1 transports.

>>> from quill.protocol.calls import ClientCore
>>> request = ClientCore(dict(base_url="http://h")).request("unary", "s", "M", b"x")
>>> request_head({}, request).split(b"\\r\\n")[0]
b'POST /s/M HTTP/1.1'
"""

from __future__ import annotations

from ..protocol.requests import Request

__all__ = ["request_head"]


def request_head(cache: dict, request: Request) -> bytes:
    """The HTTP/1.1 request line and header block of ``request``, framing headers included (the
    fixed headers are serialized once per ``header_key`` and kept in ``cache``)."""
    key = request.header_key
    fixed = cache.get(key) if key is not None else None
    if fixed is None:
        fixed = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in request.headers)
        if key is not None:
            if len(cache) > 64:
                cache.clear()
            cache[key] = fixed
    body = request.body
    if body is None:
        framing = b""
    elif body.chunks is not None:
        framing = b"Transfer-Encoding: chunked\r\n"
    else:
        framing = b"Content-Length: %d\r\n" % body.length
    if body is not None and body.encoding:
        framing += b"Content-Encoding: " + body.encoding.encode() + b"\r\n"
    return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (request.method.encode(), request.target, fixed, framing)
