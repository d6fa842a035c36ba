"""Several control-plane replicas, as the node agent hands them to its
sidecars: `--xds HOST:PORT,HOST:PORT` becomes one endpoint per replica in the
bootstrap's xds cluster, in order, which the proxy reads back as its ADS and
CA addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

import pilotfish.proxy.process  # noqa: F401  (what the proxy process loads: every payload type)
from pilotfish.agent.bootstrap import SidecarIdentity, XdsServer, sidecar_bootstrap
from pilotfish.proxy.bootstrap import parse_bootstrap
from pilotfish.proxy.process import _ads_targets, workload_certificates

WHO = SidecarIdentity("web-1", "shop", "web", {"app": "web"}, "web", "web")


def test_every_replica_is_an_endpoint_of_the_xds_cluster_in_order() -> None:
    xds = XdsServer.parse("10.0.0.1:15010, [fd00::2]:15010,cp3.example:15012", "secret")
    assert (xds.host, xds.port, xds.token) == ("10.0.0.1", 15010, "secret")
    assert xds.replicas == (("fd00::2", 15010), ("cp3.example", 15012))
    config = sidecar_bootstrap(WHO, admin_port=15000, outbound_port=15001, xds=xds)
    bootstrap = parse_bootstrap(config)
    targets = ["10.0.0.1:15010", "[fd00::2]:15010", "cp3.example:15012"]
    assert _ads_targets(bootstrap) == targets
    assert workload_certificates(bootstrap, Path("token")).ca_targets == tuple(targets)


def test_one_address_is_one_endpoint_as_before() -> None:
    config = sidecar_bootstrap(
        WHO, admin_port=15000, outbound_port=15001, xds=XdsServer.parse("127.0.0.1:15010")
    )
    assert _ads_targets(parse_bootstrap(config)) == ["127.0.0.1:15010"]


@pytest.mark.parametrize("bad", ["127.0.0.1", "127.0.0.1:x", ":15010", "a:1,,b:2"])
def test_an_address_that_is_not_host_port_is_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="not HOST:PORT: '"):
        XdsServer.parse(bad)
