"""The start of a non-2xx answer's body, shared by both clients: at most ``ERROR_BODY_LIMIT``
bytes are kept (decoded), the rest is dropped, and the RpcError says when it was.

>>> body = ErrorBody({"content-type": "text/plain"}, "s/M")
>>> body.feed(b"x" * (ERROR_BODY_LIMIT + 1)), body.complete
(True, False)
>>> error = body.error(500, {"content-type": "text/plain"}, None)
>>> len(error.body), error.__notes__
(65536, ['the error body was longer than 65536 bytes: only its first 65536 are kept'])
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import DecodeError, RpcError
from ..protocol.compression import ZstdDecoder
from ..protocol.responses import ERROR_BODY_LIMIT, ContentDecoder, error_for_response

__all__ = ["ErrorBody"]


class ErrorBody:
    """Collects an error body: ``feed()`` each chunk read until it returns True (enough kept) or
    the body ends (then ``finish()``); ``error()`` builds the RpcError. ``complete`` says whether
    the whole body was read, so that the connection may be reused."""

    __slots__ = ("_zstd", "_pieces", "_size", "complete", "notes")

    def __init__(self, headers: Mapping[str, str], call: str):
        self._pieces: list = []
        self._size = 0
        self.complete = False
        self.notes: list[str] = []  # how the error's body differs from the whole body, if it does
        self._zstd = None
        what = f"{call}: the error body"
        try:
            if not ContentDecoder(headers, None, what).identity:
                self._zstd = ZstdDecoder(None, what)  # zstd: decoded piece by piece below
        except DecodeError as exc:  # an encoding not undone here: the bytes are kept as they came
            self.notes.append(f"{exc}: the error body is kept undecoded")

    def feed(self, raw: Any) -> bool:
        """Keep the start of ``raw``; True once more than ``ERROR_BODY_LIMIT`` bytes came (stop reading)."""
        room = ERROR_BODY_LIMIT - self._size
        if self._zstd is None:
            piece = bytes(raw[:room + 1])
        else:  # one byte past the room shows that there is more, and bounds what a bomb expands to
            piece = self._zstd.decompress(raw, room + 1)
        self._size += len(piece)
        self._pieces.append(piece)
        if self._size > ERROR_BODY_LIMIT:
            self.notes.append(f"the error body was longer than {ERROR_BODY_LIMIT} bytes: "
                              f"only its first {ERROR_BODY_LIMIT} are kept")
            return True
        return False

    def finish(self) -> None:
        """The body ended (raises DecodeError when a zstd frame was cut short)."""
        if self._zstd is not None:
            self._zstd.finish()
        self.complete = True

    def failed(self, error: Exception) -> None:
        """Reading the rest failed: the error keeps what arrived."""
        self.notes.append(f"the error body could not be read whole ({error}): the error holds what arrived")

    def error(self, status: int, headers: Mapping[str, str], call: Any, expect: str | None = None) -> RpcError:
        """The RpcError (see :func:`~quill.protocol.responses.error_for_response`): Problem Details
        only from a whole body, with a note for each way it is not."""
        body = b"".join(self._pieces)[:ERROR_BODY_LIMIT]
        if not self.notes:
            return error_for_response(status, headers, body, call, expect)
        partial = {name: value for name, value in headers.items() if name != "content-type"}  # never parsed
        error = error_for_response(status, partial, body, call, expect)
        for note in self.notes:
            error.add_note(note)
        return error
