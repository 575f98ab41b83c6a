"""Generate the sync client from the async one, so the two cannot drift apart.

    python tools/unasync.py          # rewrite quill/client/_sync_*.py
    python tools/unasync.py --check  # exit 1 if they are not what the async files generate

The rewrite is word-level: ``async def`` -> ``def``, ``await x`` -> ``x``, ``async for/with`` ->
``for/with``, the async dunders and names to their sync twins (table below). Tests run ``--check``.
"""

from __future__ import annotations

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "quill" / "client"
FILES = {"_async_client.py": "_sync_client.py", "_async_streams.py": "_sync_streams.py"}
WORDS = {
    "AsyncQuillClient": "QuillClient",
    "AsyncFrameStream": "FrameStream",
    "AsyncMessageStream": "MessageStream",
    "AsyncTokenStream": "TokenStream",
    "AsyncTokenArrowExport": "TokenArrowExport",
    "AsyncHTTP11Transport": "HTTP11Transport",
    "AsyncSharedMemoryTransport": "SharedMemoryTransport",
    "aio_http11": "http11",
    "AsyncHTTP2Transport": "HTTP2Transport",
    "aio_http2": "http2",
    "_async_streams": "_sync_streams",
    "_async_client": "_sync_client",
    "AsyncMapResults": "MapResults",
    "_map_tasks": "_map_threads",
    "AsyncIterable": "Iterable",
    "AsyncIterator": "Iterator",
    "StopAsyncIteration": "StopIteration",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "aclose": "close",
    "asyncio": "time",
    "async iterators": "iterators",
    "async iterable": "iterable",
    "loop_owner": "thread_owner",
}
HEADER = "# Generated from {source} by tools/unasync.py: do not edit; edit {source} and run it again.\n"


def unasync(text: str) -> str:
    text = re.sub(r"\basync def\b", "def", text)
    text = re.sub(r"\basync (for|with)\b", r"\1", text)
    text = re.sub(r"\bawait ", "", text)
    pattern = re.compile(r"\b(" + "|".join(re.escape(word) for word in sorted(WORDS, key=len, reverse=True)) + r")\b")
    return pattern.sub(lambda match: WORDS[match.group(1)], text)


def generated() -> dict[pathlib.Path, str]:
    return {
        ROOT / target: HEADER.format(source=source) + unasync((ROOT / source).read_text())
        for source, target in FILES.items()
    }


def main(argv: list[str]) -> int:
    stale = [path for path, text in generated().items() if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path} is out of date: run python tools/unasync.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in generated().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
