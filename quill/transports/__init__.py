"""Transports: they move a :class:`~quill.protocol.requests.Request` to a server and hand back
the answer's status, headers and raw body chunks. Every failure leaves a transport as a
:class:`~quill.protocol.retries.TransportError` (mapped once, here at the boundary); what to do
about it is the protocol layer's decision.

The interface, for the sync transport (the async one has the same methods as coroutines):

``open(request) -> response``
    Send the request and read the status line and headers. ``response.status`` (int),
    ``response.headers`` (dict, lower-case names, repeated headers joined with ", ").
``response.read() -> bytes``
    The next raw chunk of the body (after HTTP framing, before content decoding); b"" at its end.
``response.read_all(limit) -> bytes``
    The rest of the body in one piece (``limit`` bounds it: LimitExceededError past it).
``response.release(reusable)``
    Give the connection back: kept alive when ``reusable``, the server allows and the whole
    request went out (not cut short by an early answer), else closed.
``response.abort()``
    Close the connection now, from any thread; a pending read fails.
``close()``
    Close every pooled connection.
``response.shared(region) -> buffer`` (optional)
    The memory of a region named by an answer left in shared memory (only the shared-memory
    transport's responses have it).

- :mod:`quill.transports.http11`: sync HTTP/1.1 on a urllib3 connection pool (TCP, TLS, Unix sockets).
- :mod:`quill.transports.aio_http11`: asyncio HTTP/1.1 with httptools (TCP, TLS, Unix sockets).
- :mod:`quill.transports.aio_connect`: the asyncio transports' connect and any-thread call.
- :mod:`quill.transports.shm`: tensors through shared memory over a Unix socket (Linux), wrapping
  either of the two.
- :mod:`quill.transports.aio_http2`: asyncio HTTP/2 on the compiled libnghttp2 engine, every call
  multiplexed over one connection (h2c, TLS with ALPN; ``http2=True``).
- :mod:`quill.transports.http2`: sync HTTP/2, the asyncio one on a loop in a daemon thread.
"""
