"""Every ```python block of docs/pipelines.md runs as written, each as a script in a process of
its own (the engines start and stop their own workers); a block that uses Ray, Dask or Spark
carries that engine's marker."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
BLOCKS = re.findall(r"```python\n(.*?)```", (DOCS / "pipelines.md").read_text(encoding="utf-8"), flags=re.S)
ENGINES = {"ray": "import ray", "dask": "import dask", "spark": "from pyspark"}


def marks(block: str) -> list:
    return [getattr(pytest.mark, engine) for engine, line in ENGINES.items() if line in block]


def test_every_engine_has_an_example():
    assert {engine for block in BLOCKS for engine, line in ENGINES.items() if line in block} == set(ENGINES)


@pytest.mark.parametrize("block", [pytest.param(b, marks=marks(b), id=f"block-{i}") for i, b in enumerate(BLOCKS)])
def test_doc_example_runs(block, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(block, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-4000:]
