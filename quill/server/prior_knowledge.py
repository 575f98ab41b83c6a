"""The answer the uvicorn engine (HTTP/1.1 only) gives an HTTP/2 client with prior knowledge (h2c).

Such a client (``curl --http2-prior-knowledge``, ``httpx.Client(http1=False, http2=True)``) opens
with the HTTP/2 preface, which uvicorn's HTTP/1.1 parser refuses by closing the connection without
a word: curl says "Empty reply from server", httpx a broken pipe or a disconnect. quill answers in
HTTP/2 instead, as RFC 9113 provides: its SETTINGS, then GOAWAY with the error code
HTTP_1_1_REQUIRED (0xd), no stream processed, and a sentence saying what to do; then it closes.

>>> is_preface(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n"), is_preface(b"POST / HTTP/1.1\\r\\n")
(True, False)
>>> HTTP1_ONLY_ANSWER[:9].hex()  # an empty SETTINGS frame: the server's preface
'000000040000000000'
"""

from __future__ import annotations

import struct

__all__ = ["is_preface", "HTTP1_ONLY_ANSWER", "HTTP1_ONLY_TEXT", "HTTP_1_1_REQUIRED"]

#: The start of the HTTP/2 connection preface: no HTTP/1.1 request begins this way.
PREFACE_START = b"PRI * HTTP/2.0\r\n"
#: The HTTP/2 error code that tells a client to use HTTP/1.1 (RFC 9113, section 7).
HTTP_1_1_REQUIRED = 0xD
HTTP1_ONLY_TEXT = ("this server (quill on uvicorn) speaks HTTP/1.1 only: call it over HTTP/1.1, "
                   "or serve with --engine hypercorn or granian for HTTP/2")


def _frame(kind: int, payload: bytes) -> bytes:
    """An HTTP/2 frame on stream 0 without flags: 24-bit length, type, flags, stream id."""
    return struct.pack(">I", len(payload))[1:] + bytes((kind, 0)) + bytes(4) + payload


#: SETTINGS (type 4, empty), then GOAWAY (type 7: last stream 0, HTTP_1_1_REQUIRED, the text).
HTTP1_ONLY_ANSWER = _frame(4, b"") + _frame(7, struct.pack(">II", 0, HTTP_1_1_REQUIRED) + HTTP1_ONLY_TEXT.encode())


def is_preface(data: bytes) -> bool:
    """True when the first bytes of a connection are HTTP/2's preface."""
    return data.startswith(PREFACE_START)
