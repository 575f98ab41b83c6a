"""Both clients check their TLS files when they are made: a bad ``ca_file``, ``client_cert`` or
``client_key`` is one TLSFileError (a QuillError and a ValueError) naming the option, the file and the cause (the async client let a
bare FileNotFoundError or ssl.SSLError out of its constructor; the sync one said "cannot connect:
[Errno 2]" or "[SSL] PEM lib" at its first call)."""

from __future__ import annotations

import os
import sys

import pytest

from quill import AsyncQuillClient, QuillClient
from quill.errors import QuillError
from quill.protocol.tls_files import TLSFileError

sys.path.insert(0, os.path.dirname(__file__))
from certificates import make_certificates  # noqa: E402

CLIENTS = [QuillClient, AsyncQuillClient]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize("client_class", CLIENTS, ids=lambda c: c.__name__)
def test_bad_tls_files_are_refused_when_the_client_is_made(client_class, certs, tmp_path):
    missing = str(tmp_path / "missing.pem")
    cases = [
        (dict(ca_file=missing), f"CA file {missing}: No such file or directory"),
        (dict(ca_file=certs.server_key), f"CA file {certs.server_key} holds no PEM certificate"),
        (dict(client_cert=certs.client_cert), f"client certificate file {certs.client_cert} holds no private key: pass its key file with client_key="),
        (dict(client_cert=certs.client_cert, client_key=certs.server_key),
         f"client key file {certs.server_key} does not match the certificate in {certs.client_cert}"),
        (dict(client_cert=certs.client_cert, client_key=str(tmp_path)), f"client key file {tmp_path}: Is a directory"),
    ]
    for options, message in cases:
        with pytest.raises(TLSFileError) as caught:
            client_class("https://127.0.0.1:1", **options)
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, QuillError)
        assert str(caught.value).startswith(message), (options, str(caught.value))


@pytest.mark.parametrize("client_class", CLIENTS, ids=lambda c: c.__name__)
def test_a_client_key_without_its_certificate_is_refused(client_class, certs):
    with pytest.raises(ValueError, match="client_key needs client_cert"):
        client_class("https://127.0.0.1:1", client_key=certs.client_key)


@pytest.mark.parametrize("client_class", CLIENTS, ids=lambda c: c.__name__)
def test_good_tls_files_make_a_client(client_class, certs):
    client = client_class("https://127.0.0.1:1", ca_file=certs.ca, client_cert=certs.client_cert,
                          client_key=certs.client_key)
    assert client is not None
