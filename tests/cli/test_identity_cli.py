"""Finding the sidecar `proxy-config secret NAME` reads, as istioctl takes
POD[.NAMESPACE] (or -n), or a node id."""

from __future__ import annotations

import pytest

from pilotfish.cli.commands import CliError
from pilotfish.cli.identity import find_instance

INSTANCES = [
    {"name": "web-1", "namespace": "shop", "metricsPort": 1},
    {"name": "web-1", "namespace": "default", "metricsPort": 2},
    {"name": "db.v2", "namespace": "default", "metricsPort": 3},
]


@pytest.mark.parametrize(
    ("wanted", "namespace", "port"),
    [
        ("web-1.shop", None, 1),
        ("web-1", "shop", 1),
        ("web-1", None, 2),
        ("db.v2", None, 3),
        ("sidecar~127.0.0.1~web-1.shop~shop.svc.cluster.local", None, 1),
    ],
)
def test_a_proxy_is_found_as_istioctl_names_it(
    wanted: str, namespace: str | None, port: int
) -> None:
    assert find_instance(INSTANCES, wanted, namespace)["metricsPort"] == port


def test_an_unknown_proxy_is_named() -> None:
    with pytest.raises(CliError, match=r'proxy "web-2\.shop" is not a registered instance'):
        find_instance(INSTANCES, "web-2.shop", None)
