"""Every install command the project prints or documents names quill's distribution, quill-rpc.

`quill` on PyPI is an unrelated project; `pip install quill` or `pip install 'quill[server]'`
would install it. This scans the docs, the workflows, pyproject.toml and every string in the
package (messages, docstrings, --help texts) for pip/pipx/uv install commands.
"""

import importlib.metadata
import pathlib
import re
import shlex

import pytest

import quill

PACKAGE = pathlib.Path(quill.__file__).parent
ROOT = PACKAGE.parent
DISTRIBUTION = "quill-rpc"
INSTALL = re.compile(r"\b(?:pip3?|pipx|uv pip|uv)\s+(?:install|add)\s+([^\n`]*)")
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?")


def sources():
    """The files a user reads install commands in (the repository's where it is a checkout)."""
    found = sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.rglob("*.pyx"))
    for pattern in ("README.md", "CHANGELOG.md", "docs/*.md", "pyproject.toml", ".github/workflows/*.yml",
                    "benchmarks/*.py", "tools/*.py", ".ci/run"):
        found += sorted(ROOT.glob(pattern))
    return [path for path in found if "__pycache__" not in path.parts]


def wrong_names(text: str) -> list[str]:
    """The install commands in ``text`` that name the unrelated `quill` distribution."""
    wrong = []
    for match in INSTALL.finditer(text):
        try:
            words = shlex.split(match.group(1).split(" && ")[0].split(";")[0], comments=True)
        except ValueError:  # an unbalanced quote: a command cut by a line break in prose
            words = match.group(1).split()
        for word in words:
            name = REQUIREMENT.match(word.strip("'\"()"))
            if not word.startswith("-") and name and name.group(1).lower() == "quill":
                wrong.append(match.group(0).strip())
    return wrong


@pytest.mark.parametrize("text, expected", [
    ("pip install quill", ["pip install quill"]),
    ("run `pip install 'quill[server]'` first", ["pip install 'quill[server]'"]),
    ("uv add quill>=0.1", ["uv add quill>=0.1"]),
    ("pip install quill-rpc && quill demo", []),
    ("pip install 'quill-rpc[server]'", []),
    ('pip install ".[test]" && pytest', []),
    ("pip install . && quill demo", []),
    ("pip install ml_dtypes", []),
    ("pip install -U quill", ["pip install -U quill"]),
])
def test_the_scanner_tells_the_names_apart(text, expected):
    assert wrong_names(text) == expected


def test_no_doc_or_message_installs_the_wrong_distribution():
    problems = [f"{path.relative_to(ROOT)}: {command}"
                for path in sources() for command in wrong_names(path.read_text(encoding="utf-8"))]
    assert not problems, "install commands naming `quill` (use quill-rpc):\n" + "\n".join(problems)


def test_the_installed_distribution_is_quill_rpc():
    """The metadata of the quill being tested (a wheel, or an editable install) says quill-rpc,
    and the `quill` console script is its."""
    dist = importlib.metadata.distribution(DISTRIBUTION)
    assert dist.version == quill.__version__
    assert "quill" in {script.name for script in dist.entry_points.select(group="console_scripts")}
    top_level = {str(path).split("/")[0] for path in dist.files or []}
    assert "quill" in top_level or dist.read_text("direct_url.json")  # editable installs list no files
