"""The .pyi stubs of the compiled core describe its modules: mypy's stubtest compares every stub
against the imported module (names, kinds, signatures, @final), with the Cython internals in
tests/stubtest_allowlist.txt left out."""

import pathlib
import site
import subprocess
import sys

import pytest

import quill._core

pytest.importorskip("mypy.stubtest")

TESTS = pathlib.Path(__file__).parent
CORE = pathlib.Path(quill._core.__file__).parent
#: Built only where their C library is found at build time (setup.py): stubbed, maybe not compiled.
OPTIONAL = {"h2engine"}
COMPILED = {path.name.split(".")[0] for path in CORE.iterdir() if path.suffix in (".so", ".pyd")}
MODULES = sorted(f"quill._core.{path.stem}" for path in CORE.glob("*.pyi")
                 if path.stem in COMPILED or path.stem not in OPTIONAL)
# mypy finds an installed quill in site-packages (py.typed), but not through the import hook of an
# editable install: there it runs from the checkout, whose root it searches first.
ROOT = CORE.parents[1]
RUN_IN = None if str(ROOT) in site.getsitepackages() else ROOT


def test_every_compiled_module_has_a_stub():
    assert COMPILED == {name.rsplit(".", 1)[1] for name in MODULES}


def test_stubs_match_the_compiled_modules(tmp_path):
    config = tmp_path / "mypy.ini"
    # Only the stubs are under test: the Python modules they import are followed silently.
    config.write_text("[mypy]\nfollow_imports = silent\nignore_missing_imports = True\n")
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(config),
         "--allowlist", str(TESTS / "stubtest_allowlist.txt"), *MODULES],
        capture_output=True, text=True, cwd=RUN_IN or tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
