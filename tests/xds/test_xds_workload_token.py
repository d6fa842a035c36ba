"""Issue 20: a joined node agent holds no admin token, so its sidecars
present their workload's service account token on the xDS stream (read from
`--ca-token-file` at each stream, as istio-agent sends its JWT to istiod),
and the control plane takes it off loopback. A token it did not sign, or an
expired one, is refused as before. Real peers: grpcio and `pilotfish proxy`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
from test_xds_auth import _ok, answered, outside_address, plane, refusal, wait_until
from tests.ports import free_port

from pilotfish.agent.bootstrap import SidecarIdentity, XdsServer, sidecar_bootstrap
from pilotfish.agent.instance import write_bootstrap
from pilotfish.ca import tokens
from pilotfish.controlplane.main import ControlPlane
from pilotfish.proxy.bootstrap import parse_bootstrap
from pilotfish.proxy.config import ProxyConfig
from pilotfish.proxy.process import _ads_client as ads_client

__all__ = ["plane"]  # the fixture, shared with test_xds_auth


def minted(plane: ControlPlane, ttl_s: int = 600, now: float | None = None) -> str:
    service_tokens = tokens.load_or_create(plane.data_dir)
    return service_tokens.mint("default", "reviews", ttl_s, time.time() if now is None else now)


def test_off_loopback_a_workload_token_opens_the_stream_and_a_foreign_one_does_not(
    plane: ControlPlane,
) -> None:
    assert plane.ads is not None
    target = f"{outside_address()}:{plane.ads.port}"
    assert answered(target, (("authorization", f"Bearer {minted(plane)}"),))
    expired = minted(plane, 600, time.time() - 3600)
    foreign = tokens.ServiceAccountTokens(b"k" * 32).mint("default", "reviews", 600, time.time())
    for bad in (expired, foreign):
        refused = refusal(target, (("authorization", f"Bearer {bad}"),))
        assert refused.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_the_sidecar_reads_its_token_file_for_each_stream(tmp_path: Path) -> None:
    who = SidecarIdentity("reviews-v1-0", "default", "reviews-v1", {}, "", "")
    config = sidecar_bootstrap(who, admin_port=1, outbound_port=2, xds=XdsServer("127.0.0.1", 3))
    token_file = tmp_path / "istio-token"
    token_file.write_text("first\n")
    client = ads_client(parse_bootstrap(config), ProxyConfig(), token_file)
    assert client is not None and client._metadata() == [("authorization", "Bearer first")]
    token_file.write_text("rotated\n")
    assert client._metadata() == [("authorization", "Bearer rotated")]


def test_a_sidecar_with_no_admin_token_gets_its_config_off_loopback(
    plane: ControlPlane, tmp_path: Path
) -> None:
    assert plane.ads is not None
    who = SidecarIdentity("reviews-v1-0", "default", "reviews-v1", {"app": "reviews"}, "", "")
    admin = free_port()
    xds = XdsServer(outside_address(), plane.ads.port)  # no token in the bootstrap
    config = sidecar_bootstrap(who, admin_port=admin, outbound_port=free_port(), xds=xds)
    write_bootstrap(tmp_path / "bootstrap.yaml", config)
    token_file = tmp_path / "istio-token"
    token_file.write_text(minted(plane) + "\n")
    argv = ["proxy", "--bootstrap", str(tmp_path / "bootstrap.yaml")]
    with (tmp_path / "sidecar.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pilotfish", *argv, "--ca-token-file", str(token_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: _ok(f"http://127.0.0.1:{admin}/ready"), process)
        assert "UNAUTHENTICATED" not in (tmp_path / "sidecar.log").read_text()
    finally:
        process.terminate()
        process.wait(timeout=15)
