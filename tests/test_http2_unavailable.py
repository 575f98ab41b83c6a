"""A quill built without libnghttp2 (no HTTP/2 engine): everything else works, and asking for
HTTP/2 raises FeatureUnavailableError naming what is missing, on both clients and the CLI."""

from __future__ import annotations

import sys

import pytest

from quill.cli import main
from quill.client import AsyncQuillClient, QuillClient
from quill.errors import FeatureUnavailableError


@pytest.fixture
def no_engine(monkeypatch):
    """quill._core.h2engine as a build without libnghttp2 leaves it: not importable."""
    import quill._core

    monkeypatch.setitem(sys.modules, "quill._core.h2engine", None)
    # once imported, the module is also an attribute of its package, which `from .._core import
    # h2engine` finds before sys.modules
    monkeypatch.delattr(quill._core, "h2engine", raising=False)


@pytest.mark.parametrize("client_class", [QuillClient, AsyncQuillClient])
def test_http2_without_the_engine_names_libnghttp2(no_engine, client_class):
    with pytest.raises(FeatureUnavailableError, match="libnghttp2") as caught:
        client_class("http://127.0.0.1:9", http2=True)
    assert isinstance(caught.value, ImportError)
    client_class("http://127.0.0.1:9").__repr__()  # HTTP/1.1 needs no engine


def test_cli_http2_without_the_engine_is_a_usage_error(no_engine, capsys):
    code = main(["call", "--http2", "http://127.0.0.1:9", "a.B", "C", "--data", "x"])
    assert code != 0 and "libnghttp2" in capsys.readouterr().err
