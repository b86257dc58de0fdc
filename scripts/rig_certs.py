"""Throw-away TLS material for the rig's secured services, made with the openssl command.

``make_certs(directory)`` writes, in ``directory``:

* ``ca.crt``/``ca.key``: the test CA;
* ``server.crt``/``server.key``: signed by it, for ``localhost`` and ``127.0.0.1``;
* ``<name>.crt``/``<name>.key`` for each client name: a client certificate with that CN (etcd
  takes the CN as the user name under ``--client-cert-auth``);
* ``wrong-ca.crt`` and ``stranger.crt``/``stranger.key``: another CA and a client
  certificate it signed (CN ``gantry``), which servers trusting ``ca.crt`` refuse.

Only the standard library and openssl: the rig runs before the virtualenv exists.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"  # long enough for a test session, short enough to be clearly throw-away
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certs:
    """Paths of the files make_certs wrote (as strings, as command lines want them)."""

    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)

    @property
    def ca(self) -> str:
        return self.path("ca.crt")

    @property
    def wrong_ca(self) -> str:
        return self.path("wrong-ca.crt")

    def cert(self, name: str) -> str:
        return self.path(f"{name}.crt")

    def key(self, name: str) -> str:
        return self.path(f"{name}.key")


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-days", DAYS, "-subj", f"/CN=gantry test {name}", cwd=d)


def _leaf(d: Path, name: str, ca: str, cn: str, extensions: str) -> None:
    _openssl("req", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", DAYS,
             "-extfile", f"{name}.ext", cwd=d)
    (d / f"{name}.key").chmod(0o600)


def make_certs(directory: Path, clients: tuple[str, ...] = ("root", "gantry")) -> Certs:
    """Write a CA, a server certificate and client certificates (see the module doc)."""
    directory.mkdir(parents=True, exist_ok=True)
    _ca(directory, "ca")
    _ca(directory, "wrong-ca")
    # clientAuth too: an etcd member presents its server certificate to its peers.
    _leaf(directory, "server", "ca", "localhost",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
          "extendedKeyUsage=serverAuth,clientAuth\n")
    for name in clients:
        _leaf(directory, name, "ca", name, "extendedKeyUsage=clientAuth\n")
    _leaf(directory, "stranger", "wrong-ca", "gantry", "extendedKeyUsage=clientAuth\n")
    return Certs(directory)
