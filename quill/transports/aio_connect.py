"""Connecting for the asyncio transports (HTTP/1.1 and HTTP/2): one connect for TCP, TLS and Unix
sockets with its failures mapped to :class:`~quill.protocol.retries.TransportError`, and one way
to run a call on a connection's loop from any thread."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from typing import Any

from urllib3.exceptions import InsecureRequestWarning

from ..protocol.retries import TransportError

__all__ = ["connect", "on_loop"]


def on_loop(loop: asyncio.AbstractEventLoop, function: Any, *args: Any) -> None:
    """Call ``function(*args)`` on ``loop``: now when called on it, else soon, from any thread
    (nothing once the loop is closed)."""
    if loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        function(*args)
    else:
        loop.call_soon_threadsafe(function, *args)


async def connect(protocol: Any, endpoint: Any, context: ssl.SSLContext | None, verify: bool, timeout: float) -> Any:
    """Connect ``protocol`` to ``endpoint`` (TCP, TLS with ``context``, or a Unix socket) on the
    running loop; the asyncio transport, or TransportError."""
    loop = asyncio.get_running_loop()
    try:
        if endpoint.uds is not None:
            connecting = loop.create_unix_connection(lambda: protocol, endpoint.uds)
        else:
            connecting = loop.create_connection(lambda: protocol, endpoint.host, endpoint.port, ssl=context,
                                                server_hostname=endpoint.host if context else None)
        transport, _ = await asyncio.wait_for(connecting, timeout)
    except asyncio.TimeoutError:
        raise TransportError("connect", sent=False, detail="timed out", timeout=True) from None
    except ssl.SSLError as exc:
        raise TransportError("tls", sent=False, detail=str(exc)) from exc
    except OSError as exc:
        raise TransportError("connect", sent=False, detail=str(exc)) from exc
    if context is not None and not verify:
        warnings.warn(
            f"Unverified HTTPS request is being made to host '{endpoint.host}' (verify=False). "
            "Adding certificate verification is strongly advised.",
            InsecureRequestWarning,  # urllib3's, as the sync transport warns
            stacklevel=6,
        )
    return transport
