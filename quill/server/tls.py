"""TLS for the server: the certificate it presents, and optionally the client certificates it
asks for (``ca_certs``) or requires (``require_client_cert``).

The files are read when the :class:`TLSConfig` is made, before any socket is bound, so that a
missing file, a certificate without its key, a key of another certificate or a file that is not
PEM is one :class:`TLSFileError` naming the file and the cause, whatever engine serves it later.

>>> TLSConfig("cert.pem", "key.pem", require_client_cert=True)
Traceback (most recent call last):
...
ValueError: require_client_cert needs ca_certs, the CA bundle that client certificates are checked against
>>> TLSConfig("/nonexistent/cert.pem")
Traceback (most recent call last):
...
quill.protocol.tls_files.TLSFileError: certificate file /nonexistent/cert.pem: No such file or directory
"""

from __future__ import annotations

import ssl
from typing import Sequence

from ..protocol.tls_files import TLSFileError, load_chain, load_verify_file

__all__ = ["TLSConfig", "TLSFileError"]


class TLSConfig:
    """Server TLS settings: ``certfile``/``keyfile`` (PEM; the key may be in ``certfile``), and
    for client certificates a ``ca_certs`` bundle. With ``ca_certs`` alone a client may present
    a certificate (it is verified if it does); ``require_client_cert`` refuses clients without a
    valid one. TLS 1.2 is the minimum version. The files are checked at once (:class:`TLSFileError`).
    """

    __slots__ = ("certfile", "keyfile", "ca_certs", "require_client_cert")

    def __init__(self, certfile: str, keyfile: str | None = None, *, ca_certs: str | None = None,
                 require_client_cert: bool = False):
        if require_client_cert and not ca_certs:
            raise ValueError("require_client_cert needs ca_certs, the CA bundle that client certificates are checked against")
        self.certfile = str(certfile)
        self.keyfile = None if keyfile is None else str(keyfile)
        self.ca_certs = None if ca_certs is None else str(ca_certs)
        self.require_client_cert = require_client_cert
        self.server_context()

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        if self.require_client_cert:
            return ssl.CERT_REQUIRED
        return ssl.CERT_OPTIONAL if self.ca_certs else ssl.CERT_NONE

    def server_context(self, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
        """An ``SSLContext`` for a server socket, offering the ``alpn`` protocols
        (:class:`TLSFileError` when a file cannot be used)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        load_chain(context, "certfile", self.certfile, "keyfile", self.keyfile)
        if self.ca_certs:
            load_verify_file(context, "ca_certs", self.ca_certs)
        context.verify_mode = self.verify_mode
        context.set_alpn_protocols(list(alpn))
        return context

    def __repr__(self) -> str:
        return (f"TLSConfig({self.certfile!r}, {self.keyfile!r}, ca_certs={self.ca_certs!r}, "
                f"require_client_cert={self.require_client_cert})")

