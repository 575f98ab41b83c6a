"""Test certificates made with the openssl command (not collected by pytest): a CA, a server
certificate for localhost / 127.0.0.1 and a client certificate signed by it, and a client
certificate from another CA that a server trusting the first must refuse.

>>> files = make_certificates(tmp_path)  # doctest: +SKIP
>>> files.ca, files.server_cert, files.client_cert, files.stranger_cert  # doctest: +SKIP
"""

from __future__ import annotations

import subprocess
from pathlib import Path


class Certificates:
    """Paths of the PEM files :func:`make_certificates` wrote."""

    def __init__(self, directory: Path):
        self.ca = str(directory / "ca.pem")
        self.server_cert, self.server_key = str(directory / "server.pem"), str(directory / "server.key")
        self.client_cert, self.client_key = str(directory / "client.pem"), str(directory / "client.key")
        self.stranger_cert, self.stranger_key = str(directory / "stranger.pem"), str(directory / "stranger.key")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> tuple[str, str]:
    key, cert = str(directory / f"{name}.key"), str(directory / f"{name}.pem")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", key, "-out", cert)
    return cert, key


def _signed(directory: Path, name: str, ca: tuple[str, str], extensions: str) -> None:
    key, csr, cert = (str(directory / f"{name}.{ext}") for ext in ("key", "csr", "pem"))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key, "-out", csr)
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", "1",
             "-extfile", str(ext_file), "-out", cert)


def make_certificates(directory: Path) -> Certificates:
    """Write the CA, server, client and stranger certificates into ``directory``."""
    directory = Path(directory)
    ca = _ca(directory, "ca")
    _signed(directory, "server", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    _signed(directory, "stranger", _ca(directory, "other-ca"), "extendedKeyUsage=clientAuth\n")
    return Certificates(directory)
