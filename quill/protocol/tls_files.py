"""The client's TLS files, checked as the transports will load them.

Both clients check ``ca_file``, ``client_cert`` and ``client_key`` when they are made, so a bad
file is one :class:`TLSFileError` naming the option, the file and the cause, instead of a bare
``FileNotFoundError`` from one client's constructor and "[SSL] PEM lib" at the other's first call.
The command line checks its ``--cacert``/``--cert``/``--key`` with the same code, under its flag
names.

>>> check_tls_files("/nonexistent/ca.pem", None, None)
Traceback (most recent call last):
...
quill.protocol.tls_files.TLSFileError: cannot read ca_file /nonexistent/ca.pem: No such file or directory
"""

from __future__ import annotations

import ssl
from typing import NamedTuple


class TLSFileError(ValueError):
    """A TLS file that cannot be used: missing, unreadable, not PEM, encrypted, or a mismatched pair."""


class OptionNames(NamedTuple):
    """What the messages call the three files: keyword arguments, or command-line flags."""

    ca_file: str = "ca_file"
    client_cert: str = "client_cert"
    client_key: str = "client_key"
    give_key: str = "client_key="


#: The command line's names for the same files.
CLI_NAMES = OptionNames("--cacert", "--cert", "--key", "--key FILE")

_BEGIN_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def check_tls_files(ca_file: str | None, client_cert: str | None, client_key: str | None,
                    names: OptionNames = OptionNames()) -> None:
    """Raise :class:`TLSFileError` unless each given file loads: a CA bundle, a certificate with an
    unencrypted private key (in ``client_key``, or in the certificate's own file) that matches it."""
    if client_key and not client_cert:
        raise TLSFileError(f"{names.client_key} needs {names.client_cert} (the client certificate the key belongs to)")
    if ca_file:
        _check_ca_file(ca_file, names)
    if client_cert:
        _check_client_certificate(client_cert, client_key, names)


def _read_pem(name: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TLSFileError(f"cannot read {name} {path}: {exc.strerror or exc}") from None


def _check_ca_file(path: str, names: OptionNames) -> None:
    if _BEGIN_CERTIFICATE not in _read_pem(names.ca_file, path):
        raise TLSFileError(f"{names.ca_file} {path} holds no PEM certificate (no '{_BEGIN_CERTIFICATE.decode()}' "
                           "line): give the CA's certificate in PEM form")
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSFileError(f"{names.ca_file} {path}: not a valid PEM certificate bundle ({exc.reason or exc})") from None


def _check_client_certificate(cert: str, key: str | None, names: OptionNames) -> None:
    if _BEGIN_CERTIFICATE not in _read_pem(names.client_cert, cert):
        raise TLSFileError(f"{names.client_cert} {cert} holds no PEM certificate (no '{_BEGIN_CERTIFICATE.decode()}' line)")
    name, path = (names.client_key, key) if key else (names.client_cert, cert)
    text = _read_pem(name, path)
    if b"PRIVATE KEY-----" not in text:
        raise TLSFileError(f"{names.client_key} {key} is not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----' "
                           f"line)" if key else f"{names.client_cert} {cert} holds no private key: give it with "
                           f"{names.give_key}")
    if b"ENCRYPTED" in text:
        raise TLSFileError(f"{name} {path}: the private key is encrypted, and quill does not ask for passphrases: "
                           f"decrypt it with `openssl pkey -in {path} -out plain.key`")

    def no_passphrase() -> bytes:
        raise TLSFileError(f"{name} {path}: the private key wants a passphrase, and quill does not ask for one")

    try:
        ssl.create_default_context().load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSFileError(f"{names.client_key} {key} does not match the certificate in {names.client_cert} {cert}"
                               if key else f"{names.client_cert} {cert}: its private key does not match its "
                               "certificate") from None
        both = f"{names.client_cert} {cert}" + (f" with {names.client_key} {key}" if key else "")
        raise TLSFileError(f"cannot load {both}: {exc.reason or exc}") from None
