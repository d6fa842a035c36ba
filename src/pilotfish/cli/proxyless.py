"""`pilotfish grpc-agent NAME`: what Istio's grpc-agent does beside a
proxyless gRPC workload started by hand. It writes gRPC's xDS bootstrap to
DIR/bootstrap.json (point GRPC_XDS_BOOTSTRAP at it), then holds the
workload's certificate in DIR (cert-chain.pem, key.pem, root-cert.pem),
renewing it at half-life, until stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pilotfish.cli.flags import UsageError, pairs

if TYPE_CHECKING:  # the rest is imported when the command runs: `pilotfish` starts faster
    from pilotfish.agent.bootstrap import XdsServer
    from pilotfish.agent.proxyless import ProxylessWorkload
    from pilotfish.proxy.sds import Issued, WorkloadCertificates

DEFAULT_REFRESH = "900s"  # how often gRPC rereads the files, as Istio's bootstrap says
Sub = argparse._SubParsersAction


def add_commands(sub: Sub[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "grpc-agent",
        help="bootstrap and certificates for a proxyless gRPC workload (Istio's grpc-agent)",
    )
    p.add_argument("name", help="the instance name, as the node id and NAME metadata carry it")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--service-account", default="default", help="the identity to hold")
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help="the node's LABELS")
    p.add_argument("--workload", default="", help="workload name (default: the instance name)")
    p.add_argument("--address", default="127.0.0.1", help="the workload's IP (INSTANCE_IPS)")
    p.add_argument(
        "--xds", default="127.0.0.1:15010", help="the control plane's ADS and CA address"
    )
    p.add_argument(
        "--xds-root-cert",
        metavar="FILE",
        help="the mesh root: reach xDS and the CA over TLS (15012), verifying it against FILE",
    )
    p.add_argument("--dir", type=Path, required=True, help="where the bootstrap and files go")
    p.add_argument(
        "--ca-token-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the service account token proving the identity (`pilotfish create token`)",
    )
    p.add_argument(
        "--refresh-interval",
        default=DEFAULT_REFRESH,
        help="how often gRPC rereads the files, a duration in seconds such as 900s",
    )
    p.set_defaults(handler=run_grpc_agent)


def run_grpc_agent(args: argparse.Namespace) -> int:
    from pilotfish.agent.proxyless import BOOTSTRAP, grpc_bootstrap, write_bootstrap
    from pilotfish.ca.identity import DEFAULT_TRUST_DOMAIN, IdentityError, SpiffeId
    from pilotfish.proxy.sds import WorkloadCertificates
    from pilotfish.proxy.xds_channel import ControlPlaneChannel

    who, xds = _workload(args), _xds(args.xds, args.xds_root_cert)
    refresh = _refresh(args.refresh_interval)
    try:
        spiffe_id = SpiffeId.of(DEFAULT_TRUST_DOMAIN, who.namespace, who.service_account)
    except IdentityError as e:
        raise UsageError(str(e)) from None
    if not args.ca_token_file.is_file():
        raise UsageError(f"--ca-token-file {args.ca_token_file}: no such file")
    cert_dir = args.dir.resolve()
    bootstrap_path = cert_dir / BOOTSTRAP
    token_file = args.ca_token_file.resolve()
    write_bootstrap(bootstrap_path, grpc_bootstrap(who, xds, cert_dir, refresh, token_file))
    print(f"bootstrap: {bootstrap_path}", flush=True)
    certificates = WorkloadCertificates(
        [f"{xds.host}:{xds.port}"],
        str(spiffe_id),
        args.ca_token_file,
        on_issued=lambda issued: _written(cert_dir, issued),
        channel=ControlPlaneChannel(Path(xds.root_cert).read_bytes() if xds.root_cert else None),
    )
    return asyncio.run(_hold(certificates))


def _written(cert_dir: Path, issued: Issued) -> None:
    from pilotfish.agent.proxyless import write_certificates

    write_certificates(cert_dir, issued)
    leaf = issued.leaf
    print(
        f"certificate: serial {leaf.serial_number:x}, valid until "
        f"{leaf.not_valid_after_utc.isoformat()}, in {cert_dir}",
        flush=True,
    )


async def _hold(certificates: WorkloadCertificates) -> int:
    """Renew until SIGTERM or SIGINT; a failed renewal is retried while the
    files keep the last good certificate."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(certificates.run())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if certificates.last_error:
        print(f"warning: {certificates.last_error}", file=sys.stderr)
    return 0


def _workload(args: argparse.Namespace) -> ProxylessWorkload:
    from pilotfish.agent.proxyless import ProxylessWorkload

    return ProxylessWorkload(
        name=args.name,
        namespace=args.namespace,
        service_account=args.service_account,
        labels=pairs(args.label, "--label", str),
        workload=args.workload,
        address=args.address,
    )


def _xds(address: str, root_cert: str | None) -> XdsServer:
    from pilotfish.agent.bootstrap import XdsServer, checked_root_cert

    try:
        root = checked_root_cert(root_cert)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        return XdsServer.parse(address, root_cert=root)
    except ValueError as e:
        raise UsageError(f"--xds: {e}") from None


def _refresh(text: str) -> str:
    """gRPC reads a JSON Duration: whole or fractional seconds with an `s`."""
    from pilotfish.api.gotypes import parse_duration_ns

    try:
        ns = parse_duration_ns(text)
    except ValueError as e:
        raise UsageError(f"--refresh-interval: {e}") from None
    if ns <= 0:
        raise UsageError(f"--refresh-interval {text!r}: must be positive")
    return f"{ns / 1e9:.9f}".rstrip("0").rstrip(".") + "s"
