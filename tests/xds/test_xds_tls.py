"""xDS and the CA over TLS (istiod's 15012): openssl verifies the control
plane's certificate against the mesh root for the address it listens on;
grpcio's own secure channel streams ADS; a client trusting another root is
refused; bad flags stop the start."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3.ads_pb2_grpc import AggregatedDiscoveryServiceStub
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from tests.etcd_server import make_certs
from xds_harness import SIDECAR, node

from pilotfish.cli.main import main as cli
from pilotfish.controlplane.main import ControlPlane
from pilotfish.controlplane.xds_tls import serving_names
from pilotfish.xds import types


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    running = ControlPlane.open(
        tmp_path / "data",
        "127.0.0.1:0",
        tmp_path / "config.yaml",
        xds_listen="127.0.0.1:0",
        xds_tls_listen="127.0.0.1:0",
    )
    running.server.start()
    yield running
    running.close()


def root_of(plane: ControlPlane) -> bytes:
    assert plane.ca is not None
    return plane.ca.authority.root_pem().encode()


def test_openssl_verifies_the_certificate_for_the_address(
    plane: ControlPlane, tmp_path: Path
) -> None:
    assert plane.ads is not None and plane.ads.secure_port not in (0, plane.ads.port)
    (tmp_path / "root.pem").write_bytes(root_of(plane))
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{plane.ads.secure_port}",
         "-CAfile", str(tmp_path / "root.pem"), "-verify_ip", "127.0.0.1",
         "-verify_return_error", "-alpn", "h2"],
        input=b"", capture_output=True, timeout=20,
    )  # fmt: skip
    out = (done.stdout + done.stderr).decode(errors="replace")  # the server's HTTP/2 bytes too
    assert done.returncode == 0, out
    assert "Verify return code: 0 (ok)" in out


def test_grpcio_streams_ads_over_tls(plane: ControlPlane) -> None:
    assert plane.ads is not None
    credentials = grpc.ssl_channel_credentials(root_certificates=root_of(plane))
    with grpc.secure_channel(f"127.0.0.1:{plane.ads.secure_port}", credentials) as channel:
        stub = AggregatedDiscoveryServiceStub(channel)
        request = DiscoveryRequest(node=node(SIDECAR, NAMESPACE="default"), type_url=types.CLUSTER)
        responses = stub.StreamAggregatedResources(iter([request]), timeout=10)
        first = next(responses)
        assert first.type_url == types.CLUSTER and first.version_info
        responses.cancel()


def test_a_client_trusting_another_root_is_refused(plane: ControlPlane, tmp_path: Path) -> None:
    assert plane.ads is not None
    other = make_certs(tmp_path / "other").ca.read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=other)
    with grpc.secure_channel(f"127.0.0.1:{plane.ads.secure_port}", credentials) as channel:
        stub = AggregatedDiscoveryServiceStub(channel)
        request = DiscoveryRequest(node=node(SIDECAR), type_url=types.CLUSTER)
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.StreamAggregatedResources(iter([request]), timeout=5))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--xds-tls-port", "70000"], "--xds-tls-port 70000: must be a port number in 0-65535"),
        (["--xds-port", "-1", "--xds-tls-port", "0"], "--xds-tls-port needs xDS on"),
    ],
)
def test_bad_flags_stop_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], error: str
) -> None:
    data = tmp_path / "data"
    assert cli(["controlplane", "--data-dir", str(data), "--listen", "127.0.0.1:0", *flags]) == 1
    assert error in capsys.readouterr().err
    assert not data.exists()


def test_the_certificate_names_every_address_when_binding_them_all() -> None:
    names = {str(n.value) for n in serving_names("0.0.0.0:15012")}
    assert {socket.gethostname(), "localhost", "127.0.0.1"} <= names
    assert {str(n.value) for n in serving_names("10.0.0.11:15012")} == {
        "10.0.0.11", "127.0.0.1", "localhost", socket.gethostname()
    }  # fmt: skip
