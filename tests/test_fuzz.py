"""Run every atheris fuzz target under tests/fuzz/ for a bounded time.

Each ``tests/fuzz/fuzz_*.py`` runs as its own process (libFuzzer owns the process) with
a time and memory budget; a crash, an unexpected exception, a timeout or a memory blow-up
makes libFuzzer exit non-zero and this test fail. atheris is part of the ``test`` extra
on Linux: when it cannot be imported the test fails rather than skips.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

FUZZ_DIR = pathlib.Path(__file__).parent / "fuzz"
TARGETS = sorted(FUZZ_DIR.glob("fuzz_*.py"))
SECONDS_PER_TARGET = 10


def test_fuzz_targets_exist():
    assert TARGETS, f"no fuzz targets found in {FUZZ_DIR}"


@pytest.mark.parametrize("target", TARGETS, ids=[t.stem for t in TARGETS])
def test_fuzz_target(target, tmp_path):
    assert importlib.util.find_spec("atheris") is not None, (
        "atheris is not installed; it is part of the test extra on Linux (pip install '.[test]')")
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, str(target), f"-max_total_time={SECONDS_PER_TARGET}", "-rss_limit_mb=2048",
         "-timeout=20", "-print_final_stats=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SECONDS_PER_TARGET + 120)
    report = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"{target.name} failed (exit {proc.returncode}):\n{report}"
    assert "Done" in report and "stat::number_of_executed_units" in report, report
