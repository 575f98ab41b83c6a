"""The package's layers import only downwards (docs/architecture.md draws them).

Every import in every module of quill, Python (parsed with ast, lazy imports inside functions
included) and Cython (its import and cimport lines), is resolved to the quill module it names
and checked against ALLOWED: a module may import its own layer and the layers listed for it.
"""

import ast
import pathlib
import re

import pytest

import quill

PACKAGE = pathlib.Path(quill.__file__).parent

# (module prefix, layer): the first matching prefix wins, so the longer ones come first.
LAYER_OF = [
    ("quill._core", "core"),
    ("quill.errors", "base"),
    ("quill.dtypes", "base"),
    ("quill._version", "base"),
    ("quill.tensor_meta", "model"),
    ("quill.tensor", "model"),
    ("quill.frames", "model"),
    ("quill.metrics", "model"),
    ("quill.protocol", "protocol"),
    ("quill.transports", "transports"),
    ("quill.client", "client"),
    ("quill.pipelines", "pipelines"),
    ("quill.server", "server"),
    ("quill.cli", "cli"),
    ("quill.demo", "apps"),
    ("quill.__main__", "cli"),
    ("quill", "facade"),          # quill/__init__.py: the public names, re-exported
]

BELOW_PROTOCOL = {"base", "core", "model"}
ALLOWED = {
    "base": set(),
    "core": {"base"},
    "model": {"base", "core"},
    "protocol": BELOW_PROTOCOL,
    "transports": BELOW_PROTOCOL | {"protocol"},
    "client": BELOW_PROTOCOL | {"protocol", "transports"},
    "pipelines": BELOW_PROTOCOL | {"protocol", "transports", "client"},
    "server": BELOW_PROTOCOL | {"protocol"},               # never the client, nor its transports
    "apps": BELOW_PROTOCOL | {"protocol", "server"},
    "facade": BELOW_PROTOCOL | {"protocol", "client"},
    "cli": BELOW_PROTOCOL | {"protocol", "transports", "client", "pipelines", "server", "apps", "facade"},
}
# The one upward edge, on purpose: the compiled frame parsers return Tensor objects, which live
# in the pure-Python model (quill.tensor) so that their behaviour stays readable Python.
EXCEPTIONS = {("quill._core.frames", "quill.tensor")}

CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\b|c?import\s+([\w.]+))", re.M)


def layer(module: str) -> str:
    for prefix, name in LAYER_OF:
        if module == prefix or module.startswith(prefix + "."):
            return name
    raise AssertionError(f"{module} is in no layer: add it to LAYER_OF")


def module_name(path: pathlib.Path) -> str:
    """The module a source file is part of (a Cython include belongs to its .pyx)."""
    if path.suffix in (".pyx", ".pxi", ".pxd"):
        return "quill._core." + path.stem.split("_")[0]
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_imports(text: str, package: str):
    """Every module name an import in ``text`` may refer to, relative ones resolved in ``package``."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield base
            # `from . import frames` names a module, not an attribute
            yield from (f"{base}.{alias.name}" for alias in node.names)


def imports_of(path: pathlib.Path) -> tuple[str, set[str]]:
    module, text = module_name(path), path.read_text()
    if path.suffix == ".py":
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        found = python_imports(text, package)
    else:
        found = (match.group(1) or match.group(2) for match in CYTHON_IMPORT.finditer(text))
    return module, {name for name in found if name == "quill" or name.startswith("quill.")}


def existing(name: str) -> str:
    """The longest prefix of ``name`` that is a quill module (``from x import y`` names y too)."""
    while name.count("."):
        dotted = PACKAGE.parent / name.replace(".", "/")
        if dotted.is_dir() or any(dotted.with_suffix(s).exists() for s in (".py", ".pyx")):
            return name
        name = name.rsplit(".", 1)[0]
    return name


def upward(module: str, names: set[str]) -> list[str]:
    here = layer(module)
    return sorted(
        f"{module} ({here}) imports {target} ({layer(target)})"
        for target in {existing(name) for name in names}
        if layer(target) != here and layer(target) not in ALLOWED[here] and (module, target) not in EXCEPTIONS
    )


SOURCES = sorted(p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".pyx", ".pxi", ".pxd")
                 and "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_downwards(path):
    module, names = imports_of(path)
    wrong = upward(module, names)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module, text", [
    ("quill.protocol.calls", "from ..client import QuillClient\n"),
    ("quill.server.app", "def lazy():\n    from quill.transports.http11 import HTTP11Transport\n"),
    ("quill.tensor", "from . import server\n"),
    ("quill._core.tokens", "import quill.frames\n"),
])
def test_the_check_refuses_an_upward_import(module, text):
    package = module.rsplit(".", 1)[0]
    names = {name for name in python_imports(text, package) if name.startswith("quill")}
    assert upward(module, names)
