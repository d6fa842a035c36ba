"""The REST API over TLS: with a certificate of the user's own, named as
kube-apiserver names its flags (`--tls-cert-file`, the certificate then any
intermediates, PEM, and `--tls-private-key-file`), or, off loopback without
them, with one the mesh CA issues the control plane at start-up for the
address it listens on (as kube-apiserver makes itself a serving
certificate). Plaintext off loopback only when asked for by name
(`--api-plaintext-off-loopback`), with a warning. When the mesh CA runs,
clients may present a certificate it signed (a joined node agent's).
The context is built once at start-up, so a bad file stops the control
plane before it serves."""

from __future__ import annotations

import argparse
import datetime
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from pilotfish.addresses import is_loopback
from pilotfish.ca.authority import CertificateAuthority
from pilotfish.ca.workload import key_pem, new_key
from pilotfish.config import write_private
from pilotfish.controlplane.http import parse_listen
from pilotfish.controlplane.xds_tls import serving_names

log = logging.getLogger(__name__)

SERVING_DIR = "api-tls"  # in DATA_DIR: the issued certificate and key, remade each start
ROOT_FILE = "api-ca.crt"  # in DATA_DIR: what local clients verify the API with


@dataclass(frozen=True)
class ApiTls:
    cert_file: Path | None = None
    key_file: Path | None = None
    plaintext_off_loopback: bool = False

    def context(self, client_ca: str | None = None) -> ssl.SSLContext:
        """The server's context (TLS 1.2 or later); ValueError says which file is wrong."""
        assert self.cert_file is not None and self.key_file is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        if client_ca is not None:
            # Asked for, not required: token callers keep working beside nodes.
            context.verify_mode = ssl.CERT_OPTIONAL
            context.load_verify_locations(cadata=client_ca)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except FileNotFoundError as e:
            raise ValueError(
                f"--tls-cert-file/--tls-private-key-file: {e.filename}: no such file"
            ) from e
        except (OSError, ssl.SSLError) as e:
            raise ValueError(
                f"--tls-cert-file {self.cert_file} with --tls-private-key-file "
                f"{self.key_file}: not a PEM certificate and its matching key ({e})"
            ) from e
        return context


def serving_context(
    tls: ApiTls, listen: str, authority: CertificateAuthority | None, data_dir: Path
) -> ssl.SSLContext | None:
    """The REST API's TLS context, or None for plaintext (loopback, or asked
    for); ValueError when it would be plaintext off loopback unasked."""
    client_ca = authority.root_pem() if authority is not None else None
    if tls.cert_file is not None:
        return tls.context(client_ca)
    host = parse_listen(listen)[0]
    if host == "localhost" or is_loopback(host):
        return None
    if tls.plaintext_off_loopback:
        log.warning(
            "WARNING: the REST API on %s serves plaintext off loopback "
            "(--api-plaintext-off-loopback): tokens and Secrets cross the network in clear",
            listen,
        )
        return None
    if authority is None:
        raise ValueError(
            f"the REST API on {listen} would be plaintext off loopback and the mesh CA is off "
            "(--xds-port -1): give --tls-cert-file/--tls-private-key-file, or allow it "
            "(--api-plaintext-off-loopback)"
        )
    return issued(authority, listen, data_dir).context(client_ca)


def issued(authority: CertificateAuthority, listen: str, data_dir: Path) -> ApiTls:
    """A fresh key and a certificate from the mesh CA for the names and
    addresses `listen` is reached at, written 0600 under DATA_DIR (the ssl
    module loads keys from files only); the root beside them for local clients."""
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    chain = authority.serving(key.public_key(), serving_names(listen), now)
    directory = data_dir / SERVING_DIR
    write_private(directory / "tls.crt", "".join(chain))
    write_private(directory / "tls.key", key_pem(key).decode())
    write_private(data_dir / ROOT_FILE, authority.root_pem())
    return ApiTls(directory / "tls.crt", directory / "tls.key")


def add_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-cert-file",
        type=Path,
        metavar="FILE",
        help="serve the REST API over HTTPS with this certificate (PEM, intermediates after it)",
    )
    p.add_argument(
        "--tls-private-key-file", type=Path, metavar="FILE", help="the certificate's key (PEM)"
    )
    p.add_argument(
        "--api-plaintext-off-loopback",
        action="store_true",
        help="serve the REST API in plaintext on a non-loopback --listen (insecure: tokens "
        "and Secrets cross the network in clear; default: HTTPS with a certificate from the "
        "mesh CA)",
    )


def tls_options(args: argparse.Namespace) -> ApiTls:
    """Both flags or neither; ValueError names the missing one."""
    cert, key = args.tls_cert_file, args.tls_private_key_file
    plaintext = bool(getattr(args, "api_plaintext_off_loopback", False))
    if cert is None and key is None:
        return ApiTls(plaintext_off_loopback=plaintext)
    if cert is None or key is None:
        given, missing = (
            ("--tls-cert-file", "--tls-private-key-file")
            if key is None
            else ("--tls-private-key-file", "--tls-cert-file")
        )
        raise ValueError(f"{given} needs {missing} too")
    return ApiTls(cert, key, plaintext)
