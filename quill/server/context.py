"""What a handler knows about its call: :class:`Context`.

>>> ctx = Context("echo.v1.EchoService/Echo", {"x-user": "ada"})
>>> ctx.service, ctx.method, ctx.headers["x-user"]
('echo.v1.EchoService', 'Echo', 'ada')
"""

from __future__ import annotations

__all__ = ["Context"]


class Context:
    """What a handler knows about its call.

    ``method_path`` is ``"package.Service/Method"``; ``headers`` holds the request
    headers with lower-case names (repeated headers joined by ``", "``); ``client`` is
    the peer's ``(host, port)`` when the ASGI server reports it.
    """

    __slots__ = ("method_path", "headers", "client")

    def __init__(self, method_path: str, headers: dict[str, str], client: tuple[str, int] | None = None):
        self.method_path = method_path
        self.headers = headers
        self.client = client

    @property
    def service(self) -> str:
        return self.method_path.partition("/")[0]

    @property
    def method(self) -> str:
        return self.method_path.partition("/")[2]

    def __repr__(self) -> str:
        return f"Context({self.method_path!r}, client={self.client!r})"
