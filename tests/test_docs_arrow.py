"""Every ```python block of docs/arrow.md, and of the Arrow section of docs/dask.md, runs as
written (each in a fresh namespace, as a script: ``__name__ == "__main__"``)."""

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
ARROW_MD = (DOCS / "arrow.md").read_text(encoding="utf-8")
DASK_ARROW = (DOCS / "dask.md").read_text(encoding="utf-8").split("## The Arrow path", 1)[1]
BLOCKS = [("arrow.md", block) for block in re.findall(r"```python\n(.*?)```", ARROW_MD, flags=re.S)]
BLOCKS += [("dask.md", block) for block in re.findall(r"```python\n(.*?)```", DASK_ARROW, flags=re.S)]


def test_docs_have_examples():
    assert sum(name == "arrow.md" for name, _ in BLOCKS) >= 5
    assert sum(name == "dask.md" for name, _ in BLOCKS) == 1


@pytest.mark.parametrize("name, block", BLOCKS, ids=[f"{name}-{i}" for i, (name, _) in enumerate(BLOCKS)])
def test_doc_example_runs(name, block, capsys):
    exec(compile(block, f"docs/{name} python block", "exec"), {"__name__": "__main__"})
