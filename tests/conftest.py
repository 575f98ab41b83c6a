"""Fixtures shared by several test modules."""

import pytest

from quill.demo import create_demo_app
from quill.server import serve_in_thread


@pytest.fixture(scope="session")
def demo_server_url():
    """Base URL of the demo inference service, served on a free loopback port."""
    with serve_in_thread(create_demo_app()) as url:
        yield url
