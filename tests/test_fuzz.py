"""Run every atheris fuzz target under tests/fuzz/ for a bounded time.

Each ``tests/fuzz/fuzz_*.py`` runs as its own process (libFuzzer owns the process) with
a time and memory budget; a crash, an unexpected exception, a broken invariant, a timeout
or a memory blow-up makes libFuzzer exit non-zero and this test fail, with the input that
did it written under the test's temporary directory. The targets run two at a time (one
per core), so the nine of them take about a minute. atheris is part of the ``test`` extra
on Linux: when it cannot be imported the test fails rather than skips.

A long run of one target (the figures in docs/bad-inputs.md came from 600 s each):

    python tests/fuzz/fuzz_tensor_receiver.py CORPUS_DIR -max_total_time=600 -rss_limit_mb=2048
"""

import concurrent.futures
import importlib.util
import os
import platform
import pathlib
import subprocess
import sys

import pytest

FUZZ_DIR = pathlib.Path(__file__).parent / "fuzz"
TARGETS = sorted(FUZZ_DIR.glob("fuzz_*.py"))
SECONDS_PER_TARGET = 10
TARGETS_AT_ONCE = 2


ATHERIS_PLATFORM = platform.system() == "Linux" and platform.machine() == "x86_64"


def run_target(target, workdir):
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, str(target), f"-max_total_time={SECONDS_PER_TARGET}", "-rss_limit_mb=2048",
         "-timeout=20", "-print_final_stats=1", f"-artifact_prefix={workdir}/"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=SECONDS_PER_TARGET + 120)
    return proc.returncode, (proc.stdout + proc.stderr)[-6000:]


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory):
    """Start every target, TARGETS_AT_ONCE at a time; each test waits for its own result."""
    if not ATHERIS_PLATFORM:
        pytest.skip(f"atheris has no wheels for {platform.system()} {platform.machine()} (the test extra "
                    "installs it on x86_64 Linux, where these targets run)")
    assert importlib.util.find_spec("atheris") is not None, (
        "atheris is not installed; it is part of the test extra on x86_64 Linux (pip install '.[test]')")
    with concurrent.futures.ThreadPoolExecutor(max_workers=TARGETS_AT_ONCE) as pool:
        yield {target: pool.submit(run_target, target, tmp_path_factory.mktemp(target.stem))
               for target in TARGETS}


def test_fuzz_targets_exist():
    assert TARGETS, f"no fuzz targets found in {FUZZ_DIR}"


@pytest.mark.parametrize("target", TARGETS, ids=[t.stem for t in TARGETS])
def test_fuzz_target(target, fuzz_runs):
    returncode, report = fuzz_runs[target].result()
    assert returncode == 0, f"{target.name} failed (exit {returncode}):\n{report}"
    assert "Done" in report and "stat::number_of_executed_units" in report, report
