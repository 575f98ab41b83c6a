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
quill.server.tls.TLSFileError: certificate file /nonexistent/cert.pem: No such file or directory
"""

from __future__ import annotations

import ssl
from typing import Callable, NoReturn, Sequence

from ..errors import QuillError

__all__ = ["TLSConfig", "TLSFileError"]

#: What each file of a TLSConfig is, in words.
ROLES = {"certfile": "certificate file", "keyfile": "key file", "ca_certs": "CA certificates file"}


class TLSFileError(QuillError, ValueError):
    """A TLS file that cannot be used: ``option`` (``"certfile"``, ``"keyfile"`` or ``"ca_certs"``)
    names it, ``path`` is where it is, ``reason`` says what is wrong, and ``needs`` names the
    option that would fix it, if one does (a certificate file without its key needs ``keyfile``).
    """

    def __init__(self, option: str, path: str, reason: str, needs: str | None = None):
        self.option, self.path, self.reason, self.needs = option, path, reason, needs
        super().__init__(self.describe())

    def describe(self, name: Callable[[str], str] = lambda option: f"{option}=") -> str:
        """The message, with options spelled by ``name`` (the command line passes ``--keyfile``)."""
        fix = f": pass its key file with {name(self.needs)}" if self.needs else ""
        return f"{ROLES[self.option]} {self.path}{self.reason}{fix}"

    def __reduce__(self):
        return (type(self), (self.option, self.path, self.reason, self.needs))


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
        self._load_chain(context)
        if self.ca_certs:
            pem = _read("ca_certs", self.ca_certs)
            try:
                context.load_verify_locations(self.ca_certs)
            except ssl.SSLError as exc:
                if b"-----BEGIN CERTIFICATE-----" not in pem:
                    raise TLSFileError("ca_certs", self.ca_certs, " holds no PEM certificate") from None
                raise TLSFileError("ca_certs", self.ca_certs, f": {_reason(exc)}") from None
        context.verify_mode = self.verify_mode
        context.set_alpn_protocols(list(alpn))
        return context

    def _load_chain(self, context: ssl.SSLContext) -> None:
        cert = _read("certfile", self.certfile)
        if b"-----BEGIN CERTIFICATE-----" not in cert:
            raise TLSFileError("certfile", self.certfile, " holds no PEM certificate "
                               "(a DER file converts with: openssl x509 -inform der -in FILE -out FILE.pem)")
        key_option, key_path = ("certfile", self.certfile) if self.keyfile is None else ("keyfile", self.keyfile)
        key = cert if self.keyfile is None else _read("keyfile", self.keyfile)
        if b"PRIVATE KEY-----" not in key:
            if self.keyfile is None:
                raise TLSFileError("certfile", self.certfile, " holds no private key", needs="keyfile")
            raise TLSFileError("keyfile", self.keyfile, " holds no PEM private key")

        def encrypted() -> NoReturn:
            raise TLSFileError(key_option, key_path, " holds an encrypted private key: give an unencrypted one "
                               "(openssl pkey -in FILE -out FILE.plain)")

        try:
            context.load_cert_chain(self.certfile, self.keyfile, password=encrypted)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                mismatch = (" holds a private key that does not match its certificate" if self.keyfile is None
                            else f" does not match the certificate in {self.certfile}")
                raise TLSFileError(key_option, key_path, mismatch) from None
            raise TLSFileError("certfile", self.certfile, f": {_reason(exc)}") from None

    def __repr__(self) -> str:
        return (f"TLSConfig({self.certfile!r}, {self.keyfile!r}, ca_certs={self.ca_certs!r}, "
                f"require_client_cert={self.require_client_cert})")


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TLSFileError(option, path, f": {exc.strerror or exc}") from None


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason, without the ``(_ssl.c:NNNN)`` location."""
    return exc.reason.replace("_", " ").lower() if exc.reason else str(exc)
