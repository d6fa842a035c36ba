"""Virtual host selection by authority, as Envoy's findVirtualHost does it."""

import pytest
from routing_sim import cluster_for, request, table, to

from pilotfish.proxy.routing import RouteConfigError


def hosts(*domain_lists: list[str], **config: object) -> object:
    vhosts = [
        {"name": f"vh{i}", "domains": d, "routes": [to(f"c{i}")]}
        for i, d in enumerate(domain_lists)
    ]
    return table({"name": "r", "virtual_hosts": vhosts, **config})


@pytest.mark.parametrize(
    ("host", "cluster"),
    [
        ("api.example.com", "c0"),  # exact beats every wildcard
        ("API.Example.COM", "c0"),  # hosts are case-insensitive
        ("foo-bar.example.com", "c1"),  # longest suffix wins over *.example.com
        ("www.example.com", "c2"),
        ("api.example.org", "c3"),  # prefix wildcard after suffixes
        ("elsewhere", "c4"),  # then the default
        ("www.example.com:80", "c4"),  # the port takes part in matching by default
        ("api.example.com:80", "c3"),  # ...and api.* still holds
    ],
)
def test_domain_precedence(host: str, cluster: str) -> None:
    t = hosts(["api.example.com"], ["*-bar.example.com"], ["*.example.com"], ["api.*"], ["*"])
    assert cluster_for(t, request(host=host)) == cluster


def test_wildcard_needs_at_least_one_character() -> None:
    t = hosts(["*.example.com"], ["*"])
    assert cluster_for(t, request(host=".example.com")) == "c1"
    assert cluster_for(t, request(host="a.example.com")) == "c0"


def test_no_default_and_no_match_is_no_route() -> None:
    t = hosts(["reviews"])
    assert t.route(request(host="ratings")) is None


def test_ignore_port_in_host_matching() -> None:
    t = hosts(["reviews"], ["*"], ignore_port_in_host_matching=True)
    assert cluster_for(t, request(host="reviews:9080")) == "c0"
    assert cluster_for(t, request(host="[::1]:9080")) == "c1"


def test_domains_with_ports_match_as_istio_sends_them() -> None:
    t = hosts(
        [
            "reviews.default.svc.cluster.local",
            "reviews",
            "reviews:9080",
            "reviews.default.svc.cluster.local:9080",
        ]
    )
    assert cluster_for(t, request(host="reviews:9080")) == "c0"
    assert t.route(request(host="reviews:9081")) is None


def test_vhost_header_replaces_authority() -> None:
    t = hosts(["inner"], ["*"], vhost_header="x-original-host")
    assert cluster_for(t, request(host="outer", headers={"x-original-host": "inner"})) == "c0"
    assert t.route(request(host="inner")) is None  # the alternate header must be there


def test_duplicate_domain_is_rejected_with_its_path() -> None:
    with pytest.raises(
        RouteConfigError, match=r"virtual_hosts\[1\]\.domains: duplicate or empty domain 'a\.com'"
    ):
        hosts(["a.com"], ["A.com"])


def test_second_default_is_rejected() -> None:
    with pytest.raises(RouteConfigError, match=r"only one '\*' domain"):
        hosts(["*"], ["*"])
