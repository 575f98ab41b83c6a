"""TLS files checked as they are loaded: one :class:`TLSFileError` naming the file and the cause.

The server's ``certfile``/``keyfile``/``ca_certs`` (quill.server.tls) and the clients'
``ca_file``/``client_cert``/``client_key`` are loaded by the same code, when the server's
TLSConfig or the client is made: a missing file, a file that is not PEM, a certificate without
its key, a key of another certificate or an encrypted key (never a passphrase prompt) is one
error before anything is bound or sent. The command line spells the options as its flags
(:meth:`TLSFileError.describe`).

>>> check_client_files("/nonexistent/ca.pem", None, None)
Traceback (most recent call last):
...
quill.protocol.tls_files.TLSFileError: CA file /nonexistent/ca.pem: No such file or directory
"""

from __future__ import annotations

import ssl
from typing import Callable, NoReturn

from ..errors import QuillError

__all__ = ["TLSFileError", "ROLES", "read_pem", "load_verify_file", "load_chain", "check_client_files"]

#: What each TLS file option is, in words.
ROLES = {"certfile": "certificate file", "keyfile": "key file", "ca_certs": "CA certificates file",
         "ca_file": "CA file", "client_cert": "client certificate file", "client_key": "client key file"}

_BEGIN_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


class TLSFileError(QuillError, ValueError):
    """A TLS file that cannot be used: ``option`` (a key of :data:`ROLES`) names it, ``path`` is
    where it is, ``reason`` says what is wrong, and ``needs`` names the option that would fix it,
    if one does (a certificate file without its key needs its key file's option)."""

    def __init__(self, option: str, path: str, reason: str, needs: str | None = None):
        self.option, self.path, self.reason, self.needs = option, path, reason, needs
        super().__init__(self.describe())

    def describe(self, name: Callable[[str], str] = lambda option: f"{option}=",
                 label: Callable[[str], str] = ROLES.__getitem__) -> str:
        """The message, with options spelled by ``name`` and files introduced by ``label`` (the
        command line passes its flags: ``--keyfile``, ``--cacert``)."""
        fix = f": pass its key file with {name(self.needs)}" if self.needs else ""
        return f"{label(self.option)} {self.path}{self.reason}{fix}"

    def __reduce__(self):
        return (type(self), (self.option, self.path, self.reason, self.needs))


def read_pem(option: str, path: str) -> bytes:
    """The bytes of the file of ``option`` (TLSFileError when it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TLSFileError(option, path, f": {exc.strerror or exc}") from None


def load_verify_file(context: ssl.SSLContext, option: str, path: str) -> None:
    """Load the CA bundle of ``option`` into ``context``."""
    pem = read_pem(option, path)
    if _BEGIN_CERTIFICATE not in pem:
        raise TLSFileError(option, path, " holds no PEM certificate")
    try:
        context.load_verify_locations(path)
    except ssl.SSLError as exc:
        raise TLSFileError(option, path, f": {_reason(exc)}") from None


def load_chain(context: ssl.SSLContext, cert_option: str, cert_path: str, key_option: str, key_path: str | None) -> None:
    """Load a certificate and its unencrypted private key (in ``key_path``, or with the
    certificate when that is None) into ``context``."""
    cert = read_pem(cert_option, cert_path)
    if _BEGIN_CERTIFICATE not in cert:
        raise TLSFileError(cert_option, cert_path, " holds no PEM certificate "
                           "(a DER file converts with: openssl x509 -inform der -in FILE -out FILE.pem)")
    in_option, in_path = (cert_option, cert_path) if key_path is None else (key_option, key_path)
    key = cert if key_path is None else read_pem(key_option, key_path)
    if b"PRIVATE KEY-----" not in key:
        if key_path is None:
            raise TLSFileError(cert_option, cert_path, " holds no private key", needs=key_option)
        raise TLSFileError(key_option, key_path, " holds no PEM private key")

    def encrypted() -> NoReturn:
        raise TLSFileError(in_option, in_path, " holds an encrypted private key: give an unencrypted one "
                           "(openssl pkey -in FILE -out FILE.plain)")

    try:
        context.load_cert_chain(cert_path, key_path, password=encrypted)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            mismatch = (" holds a private key that does not match its certificate" if key_path is None
                        else f" does not match the certificate in {cert_path}")
            raise TLSFileError(in_option, in_path, mismatch) from None
        raise TLSFileError(cert_option, cert_path, f": {_reason(exc)}") from None


def check_client_files(ca_file: str | None, client_cert: str | None, client_key: str | None) -> None:
    """Load a client's ``ca_file`` and ``client_cert``/``client_key`` as its transport will."""
    if client_key and not client_cert:
        raise ValueError("client_key needs client_cert, the client certificate the key belongs to")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file:
        load_verify_file(context, "ca_file", ca_file)
    if client_cert:
        load_chain(context, "client_cert", client_cert, "client_key", client_key)


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason, without the ``(_ssl.c:NNNN)`` location."""
    return exc.reason.replace("_", " ").lower() if exc.reason else str(exc)
