"""xDS and the CA over TLS (istiod's 15012): openssl verifies the control
plane's certificate against the mesh root for the address it listens on;
grpcio's own secure channel streams ADS; a client trusting another root is
refused; bad flags stop the start."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from envoy.service.discovery.v3.ads_pb2_grpc import AggregatedDiscoveryServiceStub
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from google.protobuf import json_format
from test_xds_auth import _ok, outside_address, start_proxy, wait_until
from tests.etcd_server import make_certs
from tests.ports import free_port
from xds_harness import SIDECAR, node

from pilotfish.agent.bootstrap import XdsServer
from pilotfish.cli.main import main as cli
from pilotfish.controlplane.main import ControlPlane
from pilotfish.controlplane.xds_tls import plaintext_listen, serving_names
from pilotfish.proxy.xds_channel import channel_for
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


def test_a_sidecar_verifies_the_control_plane_against_its_root(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """`pilotfish proxy` with an xds cluster whose transport socket trusts
    the mesh root streams ADS over TLS and gets ready; one trusting another
    root fails the handshake and never does."""
    assert plane.ads is not None
    (tmp_path / "root.pem").write_bytes(root_of(plane))
    other = make_certs(tmp_path / "other").ca
    port = plane.ads.secure_port
    trusted = start_proxy(
        tmp_path / "mesh", XdsServer("127.0.0.1", port, root_cert=str(tmp_path / "root.pem"))
    )
    stranger = start_proxy(
        tmp_path / "other-root", XdsServer("127.0.0.1", port, root_cert=str(other))
    )
    try:
        wait_until(lambda: _ok(trusted[1]), trusted[0])
        refused = f"xDS stream to 127.0.0.1:{port} ended: UNAVAILABLE"
        log = tmp_path / "other-root" / "sidecar.log"
        wait_until(lambda: refused in log.read_text(), stranger[0])  # the handshake failed
        assert not _ok(stranger[1])
    finally:
        for process, _ in (trusted, stranger):
            process.terminate()
            process.wait(timeout=15)


def xds_cluster(transport_socket: dict[str, Any]) -> ClusterProto:
    return json_format.ParseDict(
        {"name": "xds-grpc", "transport_socket": transport_socket}, ClusterProto()
    )


TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@pytest.mark.parametrize(
    ("socket_", "error"),
    [
        ({"name": "envoy.transport_sockets.raw_buffer"},
         "transport_socket 'envoy.transport_sockets.raw_buffer': only envoy.transport_sockets.tls"),
        ({"name": "envoy.transport_sockets.tls", "typed_config": {"@type": TLS}},
         "common_tls_context.validation_context.trusted_ca is required"),
        ({"name": "envoy.transport_sockets.tls", "typed_config": {"@type": TLS, "common_tls_context": {
            "validation_context": {"trusted_ca": {"filename": "/nonexistent/root.pem"}}}}},
         "trusted_ca /nonexistent/root.pem: No such file or directory"),
        ({"name": "envoy.transport_sockets.tls", "typed_config": {"@type": TLS, "common_tls_context": {
            "validation_context": {"trusted_ca": {"inline_string": "junk"}}}}},
         "trusted_ca holds no PEM certificate"),
    ],
)  # fmt: skip
def test_a_transport_socket_the_sidecar_cannot_honour_is_an_error(
    socket_: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        channel_for(xds_cluster(socket_))


def test_without_a_transport_socket_the_channel_is_plaintext() -> None:
    assert channel_for(ClusterProto(name="xds-grpc")).root_pem is None


@pytest.mark.parametrize(
    ("listen", "tls_port", "allowed", "expected"),
    [
        ("127.0.0.1:15010", -1, False, "127.0.0.1:15010"),
        ("[::1]:15010", -1, False, "[::1]:15010"),
        ("10.0.0.5:15010", 15012, False, "127.0.0.1:15010"),
        ("0.0.0.0:15010", 15012, False, "127.0.0.1:15010"),
        ("[::]:15010", 15012, False, "[::1]:15010"),
        ("10.0.0.5:15010", -1, True, "10.0.0.5:15010"),
        (None, -1, False, None),
    ],
)
def test_plaintext_stays_on_loopback_unless_allowed(
    listen: str | None, tls_port: int, allowed: bool, expected: str | None
) -> None:
    assert plaintext_listen(listen, tls_port, allowed) == expected


def test_plaintext_off_loopback_without_tls_stops_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    argv = ["controlplane", "--data-dir", str(data), "--listen", "127.0.0.1:0"]
    assert cli([*argv, "--xds-listen", "0.0.0.0:0"]) == 1
    assert (
        "error: xDS on 0.0.0.0:0 would be plaintext off loopback: serve it over TLS "
        "(--xds-tls-port 15012) or allow it (--xds-plaintext-off-loopback)"
    ) in capsys.readouterr().err
    assert not data.exists()


def test_off_loopback_only_the_tls_port_is_open(tmp_path: Path) -> None:
    """`--xds-listen OUTSIDE:P --xds-tls-port T`: other hosts reach T over
    TLS; P is not open there, only on loopback (for this host's clients)."""
    address, api, plain, tls = outside_address(), free_port(), free_port(), free_port()
    argv = ["controlplane", "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{api}"]
    argv += ["--xds-listen", f"{address}:{plain}", "--xds-tls-port", str(tls)]
    env = {"HOME": str(tmp_path), "PILOTFISH_CONFIG": str(tmp_path / "config.yaml")}
    with (tmp_path / "controlplane.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pilotfish", *argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: _ok(f"http://127.0.0.1:{api}/readyz"), process)
        root = (tmp_path / "data" / "ca" / "root-cert.pem").read_bytes()
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
        with grpc.secure_channel(f"{address}:{tls}", credentials) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
        with socket.socket() as s:
            assert s.connect_ex((address, plain)) != 0  # not opened off loopback
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", plain)) == 0
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_grpc_agent_gets_its_certificate_and_streams_xds_over_tls(
    plane: ControlPlane,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`pilotfish grpc-agent --xds-root-cert`: its CSR goes to the TLS port,
    and the bootstrap it writes has gRPC's `tls` channel credentials, which
    grpcio's own xDS client takes to stream ADS from that port."""
    assert plane.ads is not None
    monkeypatch.setenv("PILOTFISH_CONFIG", str(tmp_path / "config.yaml"))
    assert cli(["create", "token", "default"]) == 0
    (tmp_path / "token").write_text(capsys.readouterr().out.strip())
    (tmp_path / "root.pem").write_bytes(root_of(plane))
    port, out = plane.ads.secure_port, tmp_path / "grpc"
    argv = [sys.executable, "-m", "pilotfish", "grpc-agent", "echo-0", "--dir", str(out)]
    argv += ["--xds", f"127.0.0.1:{port}", "--xds-root-cert", str(tmp_path / "root.pem")]
    argv += ["--ca-token-file", str(tmp_path / "token")]
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (out / "cert-chain.pem").exists(), agent)
        bootstrap = json.loads((out / "bootstrap.json").read_text())
        (server,) = bootstrap["xds_servers"]
        assert server["channel_creds"] == [
            {"type": "tls", "config": {"ca_certificate_file": str(tmp_path / "root.pem")}}
        ]
        monkeypatch.setenv("GRPC_XDS_BOOTSTRAP", str(out / "bootstrap.json"))
        with grpc.insecure_channel("xds:///echo.default.svc.cluster.local:7070") as channel:
            with contextlib.suppress(grpc.FutureTimeoutError):
                grpc.channel_ready_future(channel).result(timeout=3)
            wait_until(lambda: "proxyless~" in repr(plane.ads.connections()), agent)  # type: ignore[union-attr]
    finally:
        agent.terminate()
        agent.wait(timeout=15)


_XDS_CLIENT = """
import contextlib, sys, grpc
with grpc.insecure_channel("xds:///echo.default.svc.cluster.local:7070") as channel:
    with contextlib.suppress(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=float(sys.argv[1]))
"""


def test_grpcs_xds_client_off_loopback_presents_the_service_account_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """From another host (this host's outside address, as the control plane
    sees it), grpcio's own xDS client is let in over TLS: the bootstrap
    `pilotfish grpc-agent` writes gives gRPC the token file as
    `jwt_token_file` call credentials (gRFC A97), which the agent's env
    switch turns on. Before, its stream was refused UNAUTHENTICATED."""
    address = outside_address()
    plane = ControlPlane.open(
        tmp_path / "data",
        "127.0.0.1:0",
        tmp_path / "config.yaml",
        xds_listen="127.0.0.1:0",
        xds_tls_listen=f"{address}:0",
    )
    plane.server.start()
    try:
        assert plane.ads is not None
        monkeypatch.setenv("PILOTFISH_CONFIG", str(tmp_path / "config.yaml"))
        assert cli(["create", "token", "default"]) == 0
        (tmp_path / "token").write_text(capsys.readouterr().out.strip())
        (tmp_path / "root.pem").write_bytes(root_of(plane))
        out = tmp_path / "grpc"
        argv = [sys.executable, "-m", "pilotfish", "grpc-agent", "echo-0", "--dir", str(out)]
        argv += ["--xds", f"{address}:{plane.ads.secure_port}"]
        argv += ["--xds-root-cert", str(tmp_path / "root.pem")]
        argv += ["--ca-token-file", str(tmp_path / "token")]
        with (tmp_path / "agent.log").open("wb") as log:
            agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: (out / "cert-chain.pem").exists(), agent)
            (server,) = json.loads((out / "bootstrap.json").read_text())["xds_servers"]
            assert server["call_creds"] == [
                {"type": "jwt_token_file", "config": {"jwt_token_file": str(tmp_path / "token")}}
            ]
            env = {
                "PATH": "/usr/bin:/bin",
                "GRPC_XDS_BOOTSTRAP": str(out / "bootstrap.json"),
                "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS": "true",
            }
            client = subprocess.Popen([sys.executable, "-c", _XDS_CLIENT, "20"], env=env)
            try:
                wait_until(lambda: "proxyless~" in repr(plane.ads.connections()), client)  # type: ignore[union-attr]
            finally:
                client.kill()
                client.wait(timeout=10)
        finally:
            agent.terminate()
            agent.wait(timeout=15)
    finally:
        plane.close()
