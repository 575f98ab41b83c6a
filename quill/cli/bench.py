"""``quill bench``: the client benchmarks (:mod:`quill.cli.bench_service`) with a progress bar.

    quill bench --quick          # starts a benchmark server for the run
    quill bench https://10.0.0.5:8443 --cacert ca.pem
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from .support import EXIT_OK, UsageError, add_tls_options, run_client_command, tls_options

__all__ = ["add_parser", "ProgressBar"]


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``quill bench`` with the CLI's subcommand factory."""
    bench = command("bench", "benchmark quill and urllib3 against a server and print the table",
                    "Run the client benchmarks (quill.cli.bench_service) against the server at URL, which must serve "
                    "quill.cli.bench_service:app, or against one started for the run when URL is omitted; show a "
                    "progress bar on stderr and print a Markdown table.")
    bench.add_argument("url", nargs="?", default=None,
                       help="base URL of a server running quill.cli.bench_service:app (default: start one)")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions (a rough number in seconds)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    bench.add_argument("--workload", action="append", default=None, metavar="NAME",
                       help="run only this workload (repeatable): unary_100B, unary_1MiB, stream_256MiB or "
                            "tensor_256MiB (default: all of them)")
    add_tls_options(bench)
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``quill bench`` with parsed ``args``; the exit status."""
    from . import bench_service as benchmark

    def action() -> int:
        tls = tls_options(args)  # for an https:// URL; the server started here is http://
        names = args.workload or list(benchmark.WORKLOADS)
        unknown = [name for name in names if name not in benchmark.WORKLOADS]
        if unknown:
            raise UsageError(f"--workload {unknown[0]}: no such workload (there are: {', '.join(benchmark.WORKLOADS)})")
        bar = ProgressBar(2 * len(names)) if not args.no_progress else None
        process, url = (None, args.url)
        if url is None:
            print("quill: starting a benchmark server (quill serve quill.cli.bench_service:app)", file=sys.stderr, flush=True)
            process, url = benchmark.start_server()
        try:
            rows = benchmark.run_benchmarks(url, names, repeats=1 if args.quick else 3,
                                            progress=bar.step if bar else None, tls=tls)
            if bar:
                bar.finish()
        finally:
            if process is not None:
                process.terminate()
                process.wait()
        print(benchmark.format_table(rows), flush=True)
        return EXIT_OK

    return run_client_command(action)


class ProgressBar:
    """A one-line progress bar on stderr (one line per step when stderr is not a terminal).

    >>> import io
    >>> bar = ProgressBar(4, stream=io.StringIO()); bar.step("first"); bar.finish()
    """

    def __init__(self, total: int, stream: Any = None, width: int = 28):
        self.total = total
        self.done = -1
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def step(self, label: str) -> None:
        """Called as each step starts: the previous one is complete."""
        self.done += 1
        self._draw(label)

    def finish(self) -> None:
        self.done = self.total
        self._draw("done")
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, label: str) -> None:
        filled = self.width * self.done // max(self.total, 1)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        if self.interactive:
            self.stream.write("\r" + line[:119].ljust(119))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
