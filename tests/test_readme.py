"""Every ```python block of README.md runs as written (each in a fresh namespace, as a script)."""

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from doc_blocks import ROOT, fenced_blocks, run_python_block  # noqa: E402

README = ROOT / "README.md"
BLOCKS = fenced_blocks(README, "python")
GREETER = next(block for block in BLOCKS if "greet.v1.Greeter" in block)


def test_readme_has_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    # "__main__": what `python example.py` runs, self-tests included
    run_python_block(BLOCKS[index], f"README.md python block {index}")


def test_the_greeter_prints_its_self_test_as_a_script_only(tmp_path):
    """`quill serve greeter:app` imports the module: its self-test must not run then."""
    (tmp_path / "greeter.py").write_text(GREETER)
    imported = subprocess.run([sys.executable, "-c", "import greeter; print(sorted(greeter.app.methods()))"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "['greet.v1.Greeter/Hello', 'greet.v1.Greeter/Spell']"
    script = subprocess.run([sys.executable, "greeter.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert script.stdout.splitlines() == ["b'Hello, Ada!'", "quill"], script.stderr
