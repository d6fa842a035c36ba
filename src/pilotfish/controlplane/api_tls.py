"""The REST API over TLS with a certificate of the user's own, named as
kube-apiserver names its flags: `--tls-cert-file` (the certificate, then any
intermediates, PEM) and `--tls-private-key-file`. The context is built once
at start-up, so a bad file stops the control plane before it serves."""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ApiTls:
    cert_file: Path
    key_file: Path

    def context(self) -> ssl.SSLContext:
        """The server's context (TLS 1.2 or later); ValueError says which file is wrong."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
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


def tls_options(args: argparse.Namespace) -> ApiTls | None:
    """Both flags or neither; ValueError names the missing one."""
    cert, key = args.tls_cert_file, args.tls_private_key_file
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = (
            ("--tls-cert-file", "--tls-private-key-file")
            if key is None
            else ("--tls-private-key-file", "--tls-cert-file")
        )
        raise ValueError(f"{given} needs {missing} too")
    return ApiTls(cert, key)
