"""Where a node agent's instances are: their address and locality, in the
sidecar's bootstrap (Envoy's node.locality) and in their registration."""

from __future__ import annotations

import subprocess
import sys

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from google.protobuf import json_format

from pilotfish.agent.bootstrap import Placement, SidecarIdentity, XdsServer, sidecar_bootstrap
from pilotfish.client.registration import registration
from pilotfish.model.locality import check_locality
from pilotfish.xds.node import proxy_from_node

WHO = SidecarIdentity("echo-0", "default", "echo", {"app": "echo"}, "default", "echo")


def test_the_bootstrap_carries_the_node_locality_the_control_plane_reads() -> None:
    who = SidecarIdentity(**{**WHO.__dict__, "address": "10.0.0.2", "locality": "r1/z1/s1"})
    config = sidecar_bootstrap(who, admin_port=1, outbound_port=2, xds=XdsServer("h", 15010))
    bootstrap = json_format.ParseDict(config, Bootstrap())
    proxy = proxy_from_node(bootstrap.node)
    assert (proxy.locality, proxy.ip) == ("r1/z1/s1", "10.0.0.2")
    plain = sidecar_bootstrap(WHO, admin_port=1, outbound_port=2, xds=XdsServer("h", 15010))
    assert "locality" not in plain["node"]


def test_an_instances_topology_labels_win_over_the_nodes_locality() -> None:
    node = Placement("10.0.0.2", "r1/z1")
    assert node.locality_for({"app": "x"}) == "r1/z1"
    labels = {"topology.kubernetes.io/region": "r2", "topology.kubernetes.io/zone": "z2"}
    assert node.locality_for(labels) == "r2/z2"
    assert node.locality_for({"istio-locality": "r3.z3.s3"}) == "r3/z3/s3"


def test_registration_names_the_hosts_address_and_locality() -> None:
    body = registration(
        name="e-0",
        namespace="default",
        workload="e",
        labels={},
        service_account="default",
        ports={"http": 1},
        app_ports={"http": 2},
        metrics_port=3,
        healthy=True,
        address="10.0.0.2",
        locality="r1/z1/s1",
    )
    assert (body["address"], body["locality"]) == ("10.0.0.2", "r1/z1/s1")


@pytest.mark.parametrize("text", ["r", "r/z", "r/z/s", ""])
def test_good_localities(text: str) -> None:
    assert check_locality(text) == text


@pytest.mark.parametrize("text", ["r//s", "/z", "r/z/s/x", "r/ z"])
def test_bad_localities(text: str) -> None:
    with pytest.raises(ValueError, match="REGION"):
        check_locality(text)


@pytest.mark.parametrize(
    ("flag", "value", "error"),
    [
        ("--locality", "a/b/c/d", "--locality: 'a/b/c/d': expected REGION[/ZONE[/SUBZONE]]"),
        ("--address", "host-a", "--address: 'host-a' does not appear to be an IPv4 or IPv6"),
    ],
)
def test_the_node_command_refuses_a_bad_placement(flag: str, value: str, error: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pilotfish", "node", flag, value, "--server", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert error in run.stderr
