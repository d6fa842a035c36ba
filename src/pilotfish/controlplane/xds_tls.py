"""xDS and the CA over TLS, as istiod serves them on 15012: the same gRPC
services as the plaintext port, with a server certificate the mesh CA issues
to the control plane at start-up for the names and addresses it is reached
at. Clients verify it with the mesh's root (what sidecars already trust);
who may do what is decided as on the plaintext port (the bearer token off
loopback), now without the token crossing the network in clear."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import socket

import grpc
from cryptography import x509

from pilotfish.addresses import is_loopback
from pilotfish.ca.authority import CertificateAuthority
from pilotfish.ca.workload import key_pem, new_key
from pilotfish.controlplane.http import parse_listen

WILDCARDS = ("", "0.0.0.0", "::")


def add_xds_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--xds-tls-port",
        type=int,
        default=-1,
        metavar="PORT",
        help="also serve xDS and the CA over TLS on this port of --xds-listen's host "
        "(istiod uses 15012; default: off); off loopback the plaintext port then "
        "listens on loopback only",
    )
    p.add_argument(
        "--xds-plaintext-off-loopback",
        action="store_true",
        help="serve xDS and the CA in plaintext on a non-loopback address (insecure: "
        "the token and the config cross the network in clear)",
    )


def secure_listen(port: int, xds_listen: str | None) -> str | None:
    """Where the TLS port binds: `port` on the plaintext xDS port's host; None
    when off; ValueError for a port out of range or with xDS off."""
    if port < 0:
        return None
    if port > 65535:
        raise ValueError(f"--xds-tls-port {port}: must be a port number in 0-65535")
    if xds_listen is None:
        raise ValueError("--xds-tls-port needs xDS on (it is off with --xds-port -1)")
    host = parse_listen(xds_listen)[0]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def plaintext_listen(xds_listen: str | None, tls_port: int, allowed: bool) -> str | None:
    """Where the plaintext port binds: as asked on loopback or when
    `allowed`; off loopback with TLS on, the same port on loopback (local
    clients keep it, other hosts get TLS only); off loopback without TLS, a
    ValueError: the secure default holds unless the user opts out."""
    if xds_listen is None or allowed:
        return xds_listen
    host, port = parse_listen(xds_listen)
    if host == "localhost" or is_loopback(host):
        return xds_listen
    if tls_port < 0:
        raise ValueError(
            f"xDS on {xds_listen} would be plaintext off loopback: serve it over TLS "
            "(--xds-tls-port 15012) or allow it (--xds-plaintext-off-loopback)"
        )
    return f"[::1]:{port}" if ":" in host else f"127.0.0.1:{port}"


def serving_names(listen: str) -> list[x509.GeneralName]:
    """The SANs for a server bound to `listen`: its address, or every address
    of this host when it binds them all, with the host's name and localhost."""
    host = parse_listen(listen)[0]
    hosts = {host} if host not in WILDCARDS else _own_addresses()
    hosts |= {socket.gethostname(), "localhost", "127.0.0.1"}
    names: list[x509.GeneralName] = []
    for name in sorted(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return names


def credentials(authority: CertificateAuthority, listen: str) -> grpc.ServerCredentials:
    """A fresh key and a certificate for it from the mesh CA; never written to disk."""
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    chain = authority.serving(key.public_key(), serving_names(listen), now)
    return grpc.ssl_server_credentials([(key_pem(key), "".join(chain).encode())])


def _own_addresses() -> set[str]:
    try:
        found = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return set()
    return {str(info[4][0]) for info in found}
