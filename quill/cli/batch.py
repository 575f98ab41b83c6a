"""``quill batch``: run every line of a JSON Lines file through one method, into a JSON Lines file.

    quill batch http://127.0.0.1:8080 inference.v1.LLMService Generate \\
        --input prompts.jsonl --output answers.jsonl --concurrency 8

Each non-blank input line is one request, a JSON value sent as JSON (``application/json``;
bytes and tensors have no JSON Lines form, so they are not supported here: use
:meth:`QuillClient.map <quill.QuillClient.map>`). Each gives one output record, in input
order, naming its input line (1-based)::

    {"line": 1, "result": <the JSON answer>}
    {"line": 2, "error": {"type": "rpc", "status": 400, "message": "...", "problem": {...}}}
    {"line": 3, "error": {"type": "bad_json", "message": "not valid JSON: Expecting value ..."}}

``--kind tokens`` reads the answer as a token stream (result ``{"text": ..., "tokens":
[{"id", "text", "logprob", "position", "is_special"}, ...]}``); ``--kind tensor`` as a tensor
(result ``{"dtype", "shape", "data"}``, data as nested lists). A line that fails gets an error
record and the run goes on; error types: ``bad_json`` (the line), ``request`` (the client could
not send it), ``rpc`` (the server's error answer), ``decode`` (an answer that could not be read).
When the server cannot be reached or a call times out, the run stops there.

The output always holds the records of a prefix of the input, so an interrupted run (Ctrl+C,
SIGINT, an unreachable server, a crash) says by its last record which lines are done, and
``--resume`` continues after it (a torn last record is dropped and redone). Without
``--resume`` an existing output file is never overwritten. Next to the output,
``<output>.quill-batch.json`` records the method, ``--kind`` and the input (path, size, SHA-256 of
its first 64 MiB): ``--resume`` with another input or method is refused (exit 2). A run that
ends before its first record (a bad URL, an unreachable server, Ctrl+C) removes the output
and the record it created: the same command simply runs again.

The summary says what this run did, apart from what the output holds after a resume:
``resumed after line 3: 3 lines in 0.4 s (7.5 lines/s), 0 failed; out.jsonl holds lines 1-6:
6 records, 1 failed (the first on line 2, from an earlier run)``. The exit status describes the
output, the product of every run that wrote it, so a run resumed any number of times ends as the
same run done in one go: 0 when every record succeeded; otherwise that of ``quill call`` for the
first failed line, whichever run wrote it (1 server error, 2 bad line or request, 4 undecodable
answer); 3 when the server could not be reached or timed out (run again with ``--resume``); 130
when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import stat
import sys
import time
from collections import deque
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple

from .support import EXIT_OK, EXIT_PROTOCOL, EXIT_RPC_ERROR, EXIT_USAGE, UsageError, add_client_options, \
    check_names, parse_headers, positive_int, run_client_command

__all__ = ["add_parser", "run_batch"]

EXIT_INTERRUPTED = 130
#: error record type -> the exit status ``quill call`` gives for such an error
EXIT_FOR_ERROR = {"bad_json": EXIT_USAGE, "request": EXIT_USAGE, "rpc": EXIT_RPC_ERROR, "decode": EXIT_PROTOCOL}
SHOWN_ERRORS = 10  # per-line errors printed on stderr; the rest are only in the output

# A bad line goes through the map as this request, which no call can encode: it keeps its place
# in the window (and in the output order) and fails before any connection is used.
_NOT_SENT = object()


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``quill batch`` with the CLI's subcommand factory."""
    batch = command("batch", "run each line of a JSON Lines file through a method, with a progress bar",
                    "Send each line of --input (a JSON value per line) to SERVICE/METHOD as JSON, CONCURRENCY "
                    "calls at a time, and write one JSON record per line to --output, in input order: "
                    '{"line": N, "result": ...} or {"line": N, "error": {...}}. Ctrl+C leaves the lines done '
                    "in --output; --resume continues after them.")
    batch.add_argument("url", help="base URL of the server, e.g. http://127.0.0.1:8080")
    batch.add_argument("service", help="package.Service, e.g. inference.v1.LLMService")
    batch.add_argument("method", help="method name, e.g. Generate")
    batch.add_argument("--input", "-i", required=True, help="JSON Lines file of requests ('-' reads stdin)")
    batch.add_argument("--output", "-o", required=True, help="JSON Lines file of records (never overwritten)")
    batch.add_argument("--resume", action="store_true",
                       help="continue an interrupted run: keep --output's records, do the lines after them "
                            "(refused for another --input, method or --kind than theirs)")
    batch.add_argument("--concurrency", "-c", type=positive_int, default=8, help="calls in flight (default 8)")
    batch.add_argument("--kind", choices=["json", "tokens", "tensor"], default="json",
                       help="read each answer as JSON (default), a token stream, or a tensor")
    batch.add_argument("--status-retries", type=int, default=2,
                       help="retry a 429/503 answer this many times, as Retry-After says (default 2)")
    batch.add_argument("--idempotent", action="store_true",
                       help="the method is safe to repeat: resend a request the server may have read "
                            "when its connection fails")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")
    add_client_options(batch)
    batch.set_defaults(run=_cmd_batch)


def _cmd_batch(args: argparse.Namespace) -> int:
    return run_client_command(lambda: run_batch(args))


def run_batch(args: argparse.Namespace) -> int:
    """Run ``quill batch`` with parsed ``args``; the exit status."""
    from ..client import QuillClient
    from ..protocol.calls import redact_url

    headers = parse_headers(args.header)
    check_names(args.service, args.method)
    source = _open_input(args.input)
    try:
        output = BatchOutput.open(args.output, args.resume, _run_record(source, args.input, args))
        try:
            try:
                client = QuillClient(args.url, timeout_ms=args.timeout_ms, enable_compression=args.compress,
                                     max_connections=args.concurrency, status_retries=args.status_retries,
                                     http2=args.http2)
            except ValueError as exc:  # the URL: scheme, host, port
                raise UsageError(f"bad server URL {redact_url(args.url)!r}: {exc}") from None
            return _run(client, source, output, args, headers)
        except BaseException:
            output.abandon()  # a failed start leaves no output behind
            raise
    finally:
        if source is not sys.stdin.buffer:
            source.close()


def _run(client: Any, source: BinaryIO, output: "BatchOutput", args: argparse.Namespace, headers: dict) -> int:
    """Send the lines of ``source`` after the output's last record, write their records; the exit status."""
    total = None if args.no_progress or source is sys.stdin.buffer else _count_requests(args.input)
    progress = BatchProgress(total, output.tally, sys.stderr, quiet=args.no_progress)
    pending: deque = deque()  # (line number, bad-line error or None) of each request the map has read

    def requests() -> Iterator[Any]:
        for number, text in _numbered_lines(source, after=output.last_line):
            try:
                request = json.loads(text)
            except ValueError as exc:
                pending.append((number, f"not valid JSON: {exc}"))
                yield _NOT_SENT
                continue
            pending.append((number, None))
            yield request

    try:
        with client, client.map(args.service, args.method, requests(), kind=args.kind, concurrency=args.concurrency,
                                return_exceptions=True, headers=headers, idempotent=args.idempotent or None) as results:
            for result in results:
                number, bad_line = pending.popleft()
                record = _record(number, result, bad_line, args.kind)
                output.write(record)
                if "error" in record:
                    progress.failed_line(number, _summary(record["error"]), output.path)
                progress.update(output.tally)
    except BaseException as exc:
        removed = output.abandon()  # first: it counts a record written whole just before an interrupt
        progress.stop(output.tally)
        interrupted = isinstance(exc, KeyboardInterrupt)
        if removed:
            print(f"quill: {'interrupted' if interrupted else 'stopped'} before any line was done; {output.path} "
                  "was not kept: run the same command again", file=sys.stderr)
        elif interrupted:
            print(f"quill: interrupted; {output.path} {_holds(output.tally)}: run the same command with --resume "
                  "to continue", file=sys.stderr)
        elif output.records:
            print(f"quill: stopped; {output.path} {_holds(output.tally)} (--resume continues)", file=sys.stderr)
        if interrupted:
            return EXIT_INTERRUPTED
        raise
    output.close()
    progress.finish(output.tally, output.path)
    return EXIT_OK if output.first_error is None else EXIT_FOR_ERROR[output.first_error[1]]


def _holds(tally: "_Tally") -> str:
    return f"holds lines 1-{tally.last_line}" if tally.records else "holds no record yet"


def _record(number: int, result: Any, bad_line: str | None, kind: str) -> dict:
    """The output record of input line ``number``; a connection failure is raised (it ends the run)."""
    from ..errors import DecodeError, EncodeError, QuillConnectionError, QuillTimeoutError, RpcError, \
        StreamCancelledError

    if bad_line is not None:
        return {"line": number, "error": {"type": "bad_json", "message": bad_line}}
    if not isinstance(result, BaseException):
        return {"line": number, "result": _json_result(result, kind)}
    if isinstance(result, (QuillConnectionError, QuillTimeoutError)):
        raise result
    if isinstance(result, RpcError):
        problem = result.problem.to_dict() if result.problem is not None else None
        error = {"type": "rpc", "status": result.status, "message": str(result), "problem": problem}
    elif isinstance(result, (DecodeError, StreamCancelledError)):
        error = {"type": "decode", "message": str(result)}
    elif isinstance(result, (EncodeError, TypeError, ValueError)):
        error = {"type": "request", "message": str(result)}
    else:
        raise result
    return {"line": number, "error": error}


def _summary(error: dict) -> str:
    """An error record in one short line: ``400 Invalid request: detail`` for a server's answer."""
    problem = error.get("problem")
    if problem:
        return f"{problem.get('status')} {problem.get('title')}" + (f": {problem['detail']}" if problem.get("detail") else "")
    return error["message"]


def _json_result(result: Any, kind: str) -> Any:
    """A token stream or tensor as JSON in the server's JSON shapes (NaN and the infinities as
    strings, see :mod:`quill.protocol.json_answers`); a JSON answer as it is."""
    from ..protocol.json_answers import finite_floats, token_dicts

    if kind == "tokens":
        return {"text": "".join(batch.text() for batch in result),
                "tokens": [token for batch in result for token in token_dicts(batch)]}
    if kind == "tensor":
        import numpy as np

        array = result.to_numpy()
        if array.dtype.kind in "biu":
            data = array.tolist()
        else:
            data = array.astype(np.float64).tolist()
            if not np.isfinite(array).all():
                data = finite_floats(data)
        return {"dtype": result.dtype.name, "shape": list(result.shape), "data": data}
    return result


# --------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------
def _open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read --input {path}: {exc.strerror or exc}") from None


def _numbered_lines(source: BinaryIO, after: int) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) of each non-blank line after line ``after``, read as needed."""
    for number, line in enumerate(source, start=1):
        if number > after and line.strip():
            yield number, line


def _count_requests(path: str) -> int:
    """How many non-blank lines ``path`` has (for the progress bar's total and ETA)."""
    with open(path, "rb") as source:
        return sum(1 for line in source if line.strip())


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------
class _Tally(NamedTuple):
    """The records of an output file: the input line of the last (0 for none), how many, how many
    are errors, the first error as (its line, its type), and the file offset after the last."""

    last_line: int = 0
    records: int = 0
    failed: int = 0
    first_error: tuple[int, str] | None = None
    end: int = 0

    def add(self, record: dict, size: int) -> "_Tally":
        error = record.get("error")
        first = self.first_error
        if error is not None and first is None:
            kind = error.get("type") if isinstance(error, dict) else None
            first = (record["line"], kind if kind in EXIT_FOR_ERROR else "rpc")
        return _Tally(record["line"], self.records + 1, self.failed + (error is not None), first, self.end + size)


class BatchOutput:
    """The output file: records appended in input order; on ``--resume``, those already there,
    after checking that they came from the same input and method (:func:`_check_run`).

    ``tally`` counts the records it holds (``last_line``, ``records``, ``failed`` and ``first_error``
    are its fields), ``earlier`` those it held when opened: the records of earlier runs.
    """

    def __init__(self, path: str, handle: BinaryIO):
        self.path = path
        self.created = False  # by this run: abandon() removes it when it holds no record
        self._handle = handle
        self._tally = self._next = self.earlier = _Tally()  # _next: the tally once the record being written is in
        self._flushed = time.monotonic()

    tally = property(lambda self: self._tally)
    last_line = property(lambda self: self._tally.last_line)
    records = property(lambda self: self._tally.records)
    failed = property(lambda self: self._tally.failed)
    first_error = property(lambda self: self._tally.first_error)

    @classmethod
    def open(cls, path: str, resume: bool, run: dict) -> "BatchOutput":
        """The output at ``path`` for ``run`` (:func:`_run_record`), created, or continued with ``resume``."""
        try:
            if not resume or not os.path.exists(path):
                output = cls(path, open(path, "xb"))
                try:
                    output._lock()
                    output.created = True  # and locked by this run: abandon() may remove it
                    _write_run(path, run)
                except BaseException:
                    output.abandon()
                    raise
                return output
            output = cls(path, open(path, "r+b"))
        except FileExistsError:
            raise UsageError(f"--output {path} already exists: add --resume to continue it, or remove it") from None
        except OSError as exc:
            raise UsageError(f"cannot write --output {path}: {exc.strerror or exc}") from None
        try:
            output._lock()
            output._handle.truncate(output._scan())
            _check_run(output, run)
        except BaseException:
            output.close()
            raise
        output._handle.seek(0, os.SEEK_END)
        output.earlier = output.tally
        return output

    def _lock(self) -> None:
        """Refuse to resume a file another run is still writing (where the OS has flock)."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here
            return
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UsageError(f"--output {self.path} is being written by another run: wait for it, or stop it") \
                from None

    def _scan(self) -> int:
        """Count the records already written; the offset after the last whole one."""
        for index, line in enumerate(self._handle, start=1):
            if not line.endswith(b"\n"):
                break  # a torn last record (the run was killed mid-write): dropped, its line is redone
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            number = record.get("line") if isinstance(record, dict) else None
            if not isinstance(number, int) or number <= self.last_line:
                raise UsageError(f"--output {self.path} line {index} is not a record of quill batch "
                                  f"(expected {{\"line\": N, ...}} with N rising): cannot resume it")
            self._tally = self._next = self._tally.add(record, len(line))
        return self._tally.end

    def write(self, record: dict) -> None:
        data = json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
        self._next = self._tally.add(record, len(data))
        self._handle.write(data)
        self._tally = self._next  # one store: an interrupt (Ctrl+C) lands before it or after, see close()
        now = time.monotonic()
        if now - self._flushed > 0.2:
            self._handle.flush()
            self._flushed = now

    def close(self, keep: bool = True) -> bool:
        """Write out what is buffered. A record whose write an interrupt separated from its count
        is counted if it reached the file whole, so ``last_line`` says exactly what the file holds.
        With ``keep=False`` an output this run created and wrote no record to is removed, with its
        run record: True then."""
        if self._handle.closed:
            return False
        try:
            self._handle.flush()
            if self._next is not self._tally and os.fstat(self._handle.fileno()).st_size == self._next.end:
                self._tally = self._next
            if keep or not self.created or self.records:
                return False
            for path in (self.path, self.path + RUN_SUFFIX):  # while locked: no resume has it open
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            return True
        finally:
            self._handle.close()

    def abandon(self) -> bool:
        """Close after a run that failed: an output it created and wrote no record to is removed,
        so that the same command simply runs again (True then)."""
        return self.close(keep=False)


# --------------------------------------------------------------------------------------
# the record of a run, next to its output: which input and method its lines came from
# --------------------------------------------------------------------------------------
RUN_SUFFIX = ".quill-batch.json"
FINGERPRINT_BYTES = 64 * 1024 * 1024  # hashed from the start of the input: all of it up to this size


def _run_record(source: BinaryIO, path: str, args: argparse.Namespace) -> dict:
    """What an output's lines depend on: the method, ``--kind`` and the input: its path, and for a
    regular file its size and the SHA-256 of its first 64 MiB (the whole file when smaller). A pipe
    or stdin cannot be read twice, so only its path is recorded."""
    fingerprint: dict = {"path": "-" if source is sys.stdin.buffer else os.path.abspath(path)}
    if source is not sys.stdin.buffer and stat.S_ISREG(os.fstat(source.fileno()).st_mode):
        digest, hashed = hashlib.sha256(), 0
        while hashed < FINGERPRINT_BYTES and (chunk := source.read(min(FINGERPRINT_BYTES - hashed, 1 << 20))):
            digest.update(chunk)
            hashed += len(chunk)
        source.seek(0)
        fingerprint.update(size=os.fstat(source.fileno()).st_size, sha256=digest.hexdigest(), hashed_bytes=hashed)
    return {"service": args.service, "method": args.method, "kind": args.kind, "input": fingerprint}


def _write_run(output: str, run: dict) -> None:
    """Record ``run`` next to ``output`` (replaced whole: never a half-written record)."""
    path = output + RUN_SUFFIX
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(run, handle, indent=1)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _check_run(output: BatchOutput, run: dict) -> None:
    """Refuse to resume ``output`` with another input or method than the one its records came
    from; with no records yet, record this run instead."""
    path = output.path + RUN_SUFFIX
    try:
        with open(path, encoding="utf-8") as handle:
            recorded = json.load(handle)
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path} (the record of the input of {output.path}): {exc}; remove it "
                         "to resume without checking the input") from None
    if not output.records:
        _write_run(output.path, run)
        return
    holds = f"{output.path} holds lines 1-{output.last_line}"
    if recorded is None:
        print(f"quill: warning: {holds}, but {path} is missing: cannot check that they came from --input "
              f"{run['input']['path']}", file=sys.stderr)
        _write_run(output.path, run)
        return
    if _identity(recorded) != _identity(run):
        raise UsageError(f"--resume: {holds} of another run: {_describe(recorded)} then, {_describe(run)} now; "
                         "resume with that input and method, or write a new --output")
    if "sha256" not in run["input"]:
        print(f"quill: warning: {holds}; {_input_name(run['input'])} is not a file, so it is not checked to be "
              "the input they came from", file=sys.stderr)


def _identity(run: Any) -> tuple | None:
    """What must match to resume: the method, the kind, and the input's content (its path, the
    only thing known of a pipe; a file may have moved)."""
    fingerprint = run.get("input") if isinstance(run, dict) else None
    if not isinstance(fingerprint, dict):
        return None
    checked = "sha256" in fingerprint
    content = (fingerprint.get("size"), fingerprint.get("sha256")) if checked else fingerprint.get("path")
    return run.get("service"), run.get("method"), run.get("kind"), content


def _describe(run: Any) -> str:
    fingerprint = run.get("input") if isinstance(run, dict) else None
    if not isinstance(fingerprint, dict):
        return "an unrecognised run"
    name = _input_name(fingerprint)
    if "sha256" in fingerprint:
        name += f" ({fingerprint.get('size')} bytes, sha256 {str(fingerprint.get('sha256'))[:16]})"
    return f"{run.get('service')}/{run.get('method')} --kind {run.get('kind')} on {name}"


def _input_name(fingerprint: dict) -> str:
    return "stdin" if fingerprint.get("path") == "-" else str(fingerprint.get("path"))


# --------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------
class BatchProgress:
    """Progress on stderr: a bar redrawn in place on a terminal (lines/s, errors, ETA), one
    plain line every few seconds otherwise, nothing with ``quiet`` (errors are still printed).
    The bar counts the whole output; the summary at the end says what this run did apart from
    what ``earlier`` runs did (the tally of the output when this run opened it).

    >>> import io
    >>> out = io.StringIO(); bar = BatchProgress(6, _Tally(2, 2, 1, (1, "rpc")), out)
    >>> bar.finish(_Tally(6, 6, 1, (1, "rpc")), "out.jsonl"); text = out.getvalue()
    >>> text.startswith("quill batch: resumed after line 2: 4 lines in"), text.split(", 0 failed; ")[1].strip()
    (True, 'out.jsonl holds lines 1-6: 6 records, 1 failed (the first on line 1, from an earlier run)')
    """

    def __init__(self, total: int | None, earlier: _Tally, stream: Any, quiet: bool = False):
        self.total = total
        self.earlier = earlier  # the records of earlier runs
        self.stream = stream
        self.quiet = quiet
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._interval = 0.1 if self.interactive else 5.0
        self._drawn = 0.0 if self.interactive else self.started  # plain lines: the first after 5 s
        self._shown_errors = 0

    def update(self, tally: _Tally) -> None:
        now = time.monotonic()
        if not self.quiet and now - self._drawn >= self._interval:
            self._drawn = now
            self._draw(tally)

    def failed_line(self, number: int, message: str, output: str) -> None:
        self._shown_errors += 1
        if self._shown_errors > SHOWN_ERRORS:
            return
        self._clear()
        if self._shown_errors == SHOWN_ERRORS:
            message += f" (further errors are only in {output})"
        print(f"quill: line {number}: {message}", file=self.stream, flush=True)
        if self.interactive:
            self._drawn = 0.0  # the bar was cleared: draw it again at once

    def stop(self, tally: _Tally) -> None:
        """The run ends early: leave the last state on screen."""
        if not self.quiet:
            self._draw(tally)
            if self.interactive:
                self.stream.write("\n")

    def finish(self, tally: _Tally, output: str) -> None:
        """The summary: this run's lines and failures, then (after a resume) the whole output's."""
        if self.interactive:
            self.stop(tally)
        earlier = self.earlier
        done, seconds = tally.records - earlier.records, time.monotonic() - self.started
        text = f"{done} lines in {seconds:.1f} s ({done / seconds if seconds else 0:.1f} lines/s), " \
               f"{tally.failed - earlier.failed} failed"
        if earlier.records:
            text = f"resumed after line {earlier.last_line}: {text}; {output} holds lines 1-{tally.last_line}: " \
                   f"{tally.records} records, {tally.failed} failed"
        else:
            text += f"; output: {output}"
        if tally.first_error is not None:
            line = tally.first_error[0]
            text += f" (the first on line {line}{', from an earlier run' if line <= earlier.last_line else ''})"
        print(f"quill batch: {text}", file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.interactive and not self.quiet:
            self.stream.write("\r\x1b[K")

    def _draw(self, tally: _Tally) -> None:
        records, failed = tally.records, tally.failed
        elapsed = time.monotonic() - self.started
        rate = (records - self.earlier.records) / elapsed if elapsed > 0 else 0.0
        count = f"{records}/{self.total}" if self.total is not None else f"{records}"
        eta = ""
        if self.total is not None and rate > 0:
            eta = f", ETA {_duration(max(self.total - records, 0) / rate)}"
        text = f"{count} lines, {rate:.1f} lines/s, {failed} failed{eta}"
        if self.interactive:
            width = 24
            filled = width * records // self.total if self.total else 0
            self.stream.write(f"\r\x1b[K[{'#' * filled}{'.' * (width - filled)}] {text}")
        else:
            self.stream.write(f"quill batch: {text}\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
