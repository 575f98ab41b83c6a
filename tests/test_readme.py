"""Every ```python block of README.md runs as written (each in a fresh namespace, as a script)."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
GREETER = next(block for block in BLOCKS if "greet.v1.Greeter" in block)


def test_readme_has_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    # "__main__": what `python example.py` runs, self-tests included
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "__main__"})


def test_the_greeter_prints_its_self_test_as_a_script_only(tmp_path):
    """`quill serve greeter:app` imports the module: its self-test must not run then."""
    (tmp_path / "greeter.py").write_text(GREETER)
    imported = subprocess.run([sys.executable, "-c", "import greeter; print(sorted(greeter.app.methods()))"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "['greet.v1.Greeter/Hello', 'greet.v1.Greeter/Spell']"
    script = subprocess.run([sys.executable, "greeter.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert script.stdout.splitlines() == ["b'Hello, Ada!'", "quill"], script.stderr
