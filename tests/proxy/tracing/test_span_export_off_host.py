"""A sidecar on another host (a joined node's: no admin token, the API over
HTTPS) exports its spans to the control plane's /v1/traces with its
workload's service account token, read at each export as it rotates, and
verifies the API against the mesh root its xDS cluster trusts.

The control plane listens on this host's non-loopback address and is
dialled there, so it sees a caller from another host."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from tests.outside import outside_address

from pilotfish.client import Client
from pilotfish.controlplane.api_tls import ROOT_FILE
from pilotfish.controlplane.main import ControlPlane
from pilotfish.proxy.bootstrap import parse_bootstrap
from pilotfish.proxy.config import ProxyConfig
from pilotfish.proxy.process import new_runtime
from pilotfish.proxy.sds import WorkloadCertificates
from pilotfish.proxy.tracing.config import OtlpHttp


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    running = ControlPlane.open(
        tmp_path / "data",
        f"{outside_address()}:0",
        tmp_path / "config.yaml",
        xds_listen="127.0.0.1:0",
    )
    running.server.start()
    yield running
    running.close()


def admin(plane: ControlPlane) -> Client:
    token = (plane.data_dir / "token").read_text().strip()
    return Client(plane.server.url, token, ca_file=str(plane.data_dir / ROOT_FILE))


def bootstrap(api: str, root: Path) -> object:
    """What the node agent writes for a joined node's sidecar: no token in
    initial_metadata, xDS over TLS verified with the mesh root."""
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "UpstreamTlsContext",
            "common_tls_context": {"validation_context": {"trusted_ca": {"filename": str(root)}}},
        },
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": 1}}
    return parse_bootstrap(
        {
            "node": {
                "id": "sidecar~10.0.0.5~web-0.default~default.svc.cluster.local",
                "metadata": {
                    "PILOTFISH_API": api,
                    "NAMESPACE": "default",
                    "WORKLOAD_NAME": "web",
                    "LABELS": {"app": "web", "version": "v1"},
                },
            },
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "GRPC",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                }
            },
            "static_resources": {
                "clusters": [
                    {
                        "name": "xds-grpc",
                        "type": "STATIC",
                        "load_assignment": {
                            "cluster_name": "xds-grpc",
                            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                        },
                        "transport_socket": tls,
                    }
                ]
            },
        }
    )


def span(n: int) -> Span:
    return Span(
        trace_id=bytes([n + 1]) * 16,
        span_id=bytes([n + 1]) * 8,
        name=f"op-{n}",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_001_000_000,
    )


async def export(runtime: object, target: OtlpHttp, first: int) -> tuple[int, int]:
    """Five spans (one batch); (spans sent, reports failed) after it."""
    exporter = runtime.tracer.exporter(target)  # type: ignore[attr-defined]
    for n in range(first, first + 5):
        exporter.add(lambda n=n: span(n))
    while exporter.sending is not None:
        await asyncio.sleep(0.05)
    stats = runtime.tracer.stats  # type: ignore[attr-defined]
    return stats.spans_sent, stats.reports_failed


def test_a_joined_nodes_sidecar_exports_spans_with_its_rotating_token(
    plane: ControlPlane, tmp_path: Path
) -> None:
    host, port = plane.server.host, plane.server.port
    api = f"https://{host}:{port}"
    client = admin(plane)
    token_file = tmp_path / "istio-token"
    token_file.write_text(client.create_token("default", "web", 600)["status"]["token"])
    os.chmod(token_file, 0o600)
    boot = bootstrap(api, plane.data_dir / ROOT_FILE)
    certificates = WorkloadCertificates(["127.0.0.1:1"], "spiffe://x/ns/default/sa/web", token_file)
    target = OtlpHttp(host, port, "/v1/traces", 5.0, "", tls=True)

    async def scenario() -> list[tuple[int, int]]:
        runtime = new_runtime(boot, ProxyConfig(), None, certificates)  # type: ignore[arg-type]
        try:
            results = [await export(runtime, target, 0)]
            # Rotated (as the agent re-mints it): the next export carries the new one.
            token_file.write_text(client.create_token("default", "web", 600)["status"]["token"])
            results.append(await export(runtime, target, 5))
            token_file.write_text("not.a.token")  # refused: the exporter re-reads the file
            results.append(await export(runtime, target, 10))
            return results
        finally:
            runtime.close()  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == [(5, 0), (10, 0), (10, 1)]
    services = client._call("GET", "/api/services")[0]
    assert "web.default" in services["data"]
