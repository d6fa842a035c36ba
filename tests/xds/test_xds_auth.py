"""Who may read xDS: anyone on loopback, as before; from any other address
only a client presenting the control plane's token as gRPC metadata
(`authorization: Bearer TOKEN`). Before, every proxy's configuration was
served to anyone who could reach the port. The peers here are real: a
grpcio client, the control plane and `pilotfish proxy` as processes."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from tests.outside import outside_address
from tests.ports import free_port
from xds_harness import CDS, SIDECAR, AdsStream, node

from pilotfish.agent.bootstrap import SidecarIdentity, XdsServer, sidecar_bootstrap
from pilotfish.agent.instance import write_bootstrap
from pilotfish.controlplane.main import ControlPlane, xds_listen
from pilotfish.proxy.bootstrap import BootstrapError, parse_bootstrap
from pilotfish.proxy.config import ProxyConfig
from pilotfish.proxy.process import _ads_client as ads_client

NEEDS_TOKEN = (
    "xDS from {address} (not loopback) needs the control plane's token: "
    "send gRPC metadata 'authorization: Bearer TOKEN'"
)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    running = ControlPlane.open(
        tmp_path / "data", "127.0.0.1:0", tmp_path / "config.yaml", xds_listen="0.0.0.0:0"
    )
    yield running
    running.close()


def token_of(plane: ControlPlane) -> str:
    return (plane.data_dir / "token").read_text().strip()


def refusal(target: str, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.RpcError:
    stream = AdsStream(target, node(SIDECAR, NAMESPACE="default"), metadata)
    try:
        stream.send(CDS)
        return stream.refusal()
    finally:
        stream.close()


def answered(target: str, metadata: tuple[tuple[str, str], ...] = ()) -> bool:
    stream = AdsStream(target, node(SIDECAR, NAMESPACE="default"), metadata)
    try:
        stream.send(CDS)
        return stream.receive().type_url == CDS
    finally:
        stream.close()


def test_off_loopback_a_stream_without_the_token_is_unauthenticated(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    assert plane.ads is not None
    address = outside_address()
    target = f"{address}:{plane.ads.port}"
    caplog.set_level(logging.DEBUG)
    refused = refusal(target)
    assert refused.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert refused.details() == NEEDS_TOKEN.format(address=address)  # type: ignore[attr-defined]
    wrong = refusal(target, (("authorization", "Bearer not-the-token"),))
    assert wrong.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert wrong.details() == "the bearer token in 'authorization' is not valid"  # type: ignore[attr-defined]
    token = token_of(plane)
    assert answered(target, (("authorization", f"Bearer {token}"),))
    assert token not in caplog.text and "not-the-token" not in caplog.text


def test_loopback_stays_anonymous(plane: ControlPlane) -> None:
    assert plane.ads is not None
    assert answered(f"127.0.0.1:{plane.ads.port}")


def test_xds_binds_where_the_api_binds_unless_told() -> None:
    assert xds_listen(15010, "127.0.0.1:15080") == "127.0.0.1:15010"
    assert xds_listen(15010, "0.0.0.0:15080") == "0.0.0.0:15010"
    assert xds_listen(15010, "[::1]:15080") == "[::1]:15010"
    assert xds_listen(15010, "127.0.0.1:15080", "10.0.0.5:15010") == "10.0.0.5:15010"
    assert xds_listen(-1, "127.0.0.1:15080") is None
    with pytest.raises(ValueError, match='invalid listen address "nowhere": expected HOST:PORT'):
        xds_listen(15010, "127.0.0.1:15080", "nowhere")


@pytest.fixture
def plane_process(tmp_path: Path) -> Iterator[tuple[str, int, str]]:
    """`pilotfish controlplane --xds-listen OUTSIDE:PORT`, plaintext there as
    allowed by --xds-plaintext-off-loopback: (address, xDS port, token)."""
    address, api, xds = outside_address(), free_port(), free_port()
    data = tmp_path / "data"
    log = (tmp_path / "controlplane.log").open("wb")
    argv = ["controlplane", "--data-dir", str(data), "--listen", f"127.0.0.1:{api}"]
    argv += ["--xds-listen", f"{address}:{xds}", "--xds-plaintext-off-loopback"]
    process = subprocess.Popen(
        [sys.executable, "-m", "pilotfish", *argv],
        env={"HOME": str(tmp_path), "PILOTFISH_CONFIG": str(tmp_path / "config.yaml")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: _ok(f"http://127.0.0.1:{api}/readyz"), process)
        yield address, xds, (data / "token").read_text().strip()
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def test_xds_listen_binds_there_and_asks_for_the_token(
    plane_process: tuple[str, int, str],
) -> None:
    address, port, token = plane_process
    assert refusal(f"{address}:{port}").code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert answered(f"{address}:{port}", (("authorization", f"Bearer {token}"),))
    with socket.socket() as s:  # bound there only, not on loopback too
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_a_sidecar_presents_its_bootstraps_token(
    plane_process: tuple[str, int, str], tmp_path: Path
) -> None:
    """The agent's bootstrap carries the token as Envoy's initial_metadata;
    `pilotfish proxy` sends it and gets its config. Without it: not ready."""
    address, port, token = plane_process
    with_token = start_proxy(tmp_path / "with", XdsServer(address, port, token))
    without = start_proxy(tmp_path / "without", XdsServer(address, port))
    try:
        wait_until(lambda: _ok(with_token[1]), with_token[0])
        time.sleep(1.0)
        assert not _ok(without[1])
        log = (tmp_path / "without" / "sidecar.log").read_text()
        assert "UNAUTHENTICATED" in log and token not in log
        saved = yaml.safe_load((tmp_path / "with" / "bootstrap.yaml").read_text())
        metadata = saved["dynamic_resources"]["ads_config"]["grpc_services"][0]
        assert metadata["initial_metadata"] == [
            {"key": "authorization", "value": f"Bearer {token}"}
        ]
        assert (tmp_path / "with" / "bootstrap.yaml").stat().st_mode & 0o777 == 0o600
    finally:
        for process, _ in (with_token, without):
            process.terminate()
            process.wait(timeout=15)


def start_proxy(directory: Path, xds: XdsServer) -> tuple[subprocess.Popen[bytes], str]:
    who = SidecarIdentity("reviews-v1-0", "default", "reviews-v1", {"app": "reviews"}, "", "")
    admin = free_port()
    config = sidecar_bootstrap(who, admin_port=admin, outbound_port=free_port(), xds=xds)
    directory.mkdir()
    write_bootstrap(directory / "bootstrap.yaml", config)
    with (directory / "sidecar.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pilotfish",
                "proxy",
                "--bootstrap",
                str(directory / "bootstrap.yaml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{admin}/ready"


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


def wait_until(condition: object, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert process.poll() is None, "the process exited"
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("author ization", "Bearer t", "illegal characters in gRPC initial metadata key"),
        ("token-bin", "dA==", "illegal characters in gRPC initial metadata key"),
        ("authorization", "Bearer \x01", "initial_metadata[0].value: must be printable ASCII"),
    ],
)
def test_bad_initial_metadata_is_refused_at_start(key: str, value: str, error: str) -> None:
    who = SidecarIdentity("reviews-v1-0", "default", "reviews-v1", {}, "", "")
    config = sidecar_bootstrap(who, admin_port=1, outbound_port=2, xds=XdsServer("127.0.0.1", 3))
    service = config["dynamic_resources"]["ads_config"]["grpc_services"][0]
    service["initial_metadata"] = [{"key": key, "value": value}]
    with pytest.raises(BootstrapError, match=re.escape(error)):
        parse_bootstrap(config)


def test_initial_metadata_keys_are_sent_lowercased_as_envoy_does() -> None:
    who = SidecarIdentity("reviews-v1-0", "default", "reviews-v1", {}, "", "")
    config = sidecar_bootstrap(who, admin_port=1, outbound_port=2, xds=XdsServer("127.0.0.1", 3))
    service = config["dynamic_resources"]["ads_config"]["grpc_services"][0]
    service["initial_metadata"] = [{"key": "Authorization", "value": "Bearer t"}]
    client = ads_client(parse_bootstrap(config), ProxyConfig())
    assert client is not None and client._metadata() == [("authorization", "Bearer t")]
    assert "Bearer" not in repr(client)
