"""Auth hooks: callables that get the call's :class:`~quill.server.context.Context` and say
whether it may proceed (True, or an awaitable of it). A :class:`~quill.server.QuillApp`
accepts a call when any of its hooks does; otherwise it answers 401 with each hook's
``challenge`` as a ``WWW-Authenticate`` header.

>>> from quill.server.context import Context
>>> BearerAuth("s3cret")(Context("a.B/C", {"authorization": "Bearer s3cret"}))
True
"""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable

from .context import Context

__all__ = ["AuthHook", "BearerAuth", "ApiKeyAuth"]

AuthHook = Callable[[Context], "bool | Awaitable[bool]"]


class BearerAuth:
    """Auth hook accepting ``Authorization: Bearer <token>`` for any of ``tokens``.

    >>> auth = BearerAuth("s3cret")
    >>> auth(Context("a.B/C", {"authorization": "Bearer s3cret"})), auth(Context("a.B/C", {}))
    (True, False)
    """

    challenge = 'Bearer realm="quill"'

    def __init__(self, *tokens: str):
        if not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError("BearerAuth needs at least one non-empty token string")
        self._tokens = [t.encode() for t in tokens]

    def __call__(self, context: Context) -> bool:
        scheme, _, token = context.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        offered = token.strip().encode()
        return any(hmac.compare_digest(offered, t) for t in self._tokens)


class ApiKeyAuth:
    """Auth hook accepting any of ``keys`` in the ``header_name`` header (``X-API-Key``).

    >>> auth = ApiKeyAuth("k1", header_name="X-Key")
    >>> auth(Context("a.B/C", {"x-key": "k1"})), auth(Context("a.B/C", {"x-key": "k2"}))
    (True, False)
    """

    challenge = None

    def __init__(self, *keys: str, header_name: str = "X-API-Key"):
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError("ApiKeyAuth needs at least one non-empty key string")
        self._keys = [k.encode() for k in keys]
        self.header_name = header_name.lower()

    def __call__(self, context: Context) -> bool:
        offered = context.headers.get(self.header_name, "").encode()
        return any(hmac.compare_digest(offered, k) for k in self._keys)
