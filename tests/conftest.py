"""Fixtures shared by several test modules."""

import pytest

from quill.demo import create_demo_app
from quill.server import serve_in_thread
from quill.server.engines import ENGINES, available_engines


@pytest.fixture(scope="session", autouse=True)
def run_outside_the_checkout(tmp_path_factory):
    """Run every test from an empty directory.

    A child process started with ``python -c`` or ``python -m`` puts its working directory first
    on ``sys.path``; from the repository root it would import the uncompiled ``quill/`` source
    tree instead of the installed package.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(scope="session")
def demo_server_url():
    """Base URL of the demo inference service, served on a free loopback port."""
    with serve_in_thread(create_demo_app()) as url:
        yield url


def pytest_configure(config):
    config.addinivalue_line("markers", "sync_only: runs for the sync client only (fork, sync transport internals)")


def pytest_generate_tests(metafunc):
    """Modules with a ``client_kind`` fixture run each test once per client (sync, async)."""
    if "client_kind" in metafunc.fixturenames:
        kinds = ["sync"] if metafunc.definition.get_closest_marker("sync_only") else ["sync", "async"]
        metafunc.parametrize("client_kind", kinds, indirect=True)


@pytest.fixture(scope="module", params=sorted(ENGINES))
def engine(request):
    """Each server engine in turn (the server tests run once per engine). An engine the test
    environment lacks fails rather than skips: the test extra installs all of them."""
    if request.param not in available_engines():
        pytest.fail(f"the {request.param} engine is not installed; pip install -e '.[test]'", pytrace=False)
    return request.param
