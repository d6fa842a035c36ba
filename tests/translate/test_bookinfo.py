"""Istio's Bookinfo networking files, applied unmodified, route as Istio's
request-routing, traffic-shifting and fault-injection tasks say they do.

Each file is translated for the productpage sidecar (or the ingress gateway)
and the resulting RouteConfiguration is compiled by the proxy's own route
table, which is then asked where requests go.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from translate_sim import (
    BOOKINFO_DIR,
    INGRESS,
    PRODUCTPAGE,
    bookinfo,
    cluster,
    cluster_for,
    fault_of,
    request,
    sidecar_table,
    split,
    table,
)

from pilotfish.model import Snapshot
from pilotfish.translate import translate_clusters, translate_endpoints

JASON = {"end-user": "jason"}
MILLION = 1_000_000


def all_v1(snap: Snapshot) -> None:
    t = sidecar_table(snap)
    for name in ("productpage", "details", "reviews", "ratings"):
        assert cluster_for(t, request(f"{name}:9080", "/x")) == cluster(name, "v1")
        assert cluster_for(t, request(f"{name}:9080", "/x", JASON)) == cluster(name, "v1")


def only(service: str, subset: str) -> Callable[[Snapshot], None]:
    def check(snap: Snapshot) -> None:
        t = sidecar_table(snap)
        assert split(t, request(f"{service}:9080")) == {cluster(service, subset): 100}

    return check


def weights(**expected: int) -> Callable[[Snapshot], None]:
    def check(snap: Snapshot) -> None:
        got = split(sidecar_table(snap), request("reviews:9080", "/reviews/0"))
        assert got == {cluster("reviews", s): w for s, w in expected.items()}

    return check


def jason_then(jason: str, others: str) -> Callable[[Snapshot], None]:
    def check(snap: Snapshot) -> None:
        t = sidecar_table(snap)
        assert cluster_for(t, request("reviews:9080", "/r", JASON)) == cluster("reviews", jason)
        assert cluster_for(t, request("reviews:9080", "/r")) == cluster("reviews", others)
        assert cluster_for(t, request("reviews:9080", "/r", {"end-user": "bob"})) == cluster(
            "reviews", others
        )

    return check


def reviews_v3_ratings(subset: str) -> Callable[[Snapshot], None]:
    def check(snap: Snapshot) -> None:
        t = sidecar_table(snap)
        assert cluster_for(t, request("reviews:9080")) == cluster("reviews", "v3")
        assert cluster_for(t, request("ratings:9080")) == cluster("ratings", subset)

    return check


def ratings_abort(snap: Snapshot) -> None:
    t = sidecar_table(snap)
    fault = fault_of(t, request("ratings:9080", "/ratings/0", JASON))
    assert fault is not None and fault.abort.http_status == 500
    assert fault.abort.percentage.numerator == MILLION
    assert fault.abort.percentage.denominator == fault.abort.percentage.MILLION
    assert fault_of(t, request("ratings:9080", "/ratings/0")) is None
    assert cluster_for(t, request("ratings:9080", "/", JASON)) == cluster("ratings", "v1")


def ratings_delay(snap: Snapshot) -> None:
    t = sidecar_table(snap)
    fault = fault_of(t, request("ratings:9080", "/ratings/0", JASON))
    assert fault is not None and fault.delay.fixed_delay.seconds == 7
    assert fault.delay.percentage.numerator == MILLION
    assert not fault.HasField("abort")
    assert fault_of(t, request("ratings:9080", "/ratings/0")) is None


def details_abort(snap: Snapshot) -> None:
    t = sidecar_table(snap)
    fault = fault_of(t, request("details:9080", "/details/0"))
    assert fault is not None and fault.abort.http_status == 555
    assert fault.abort.percentage.numerator == MILLION
    assert cluster_for(t, request("details:9080", "/details/0")) == cluster("details", "v1")


def ingress(snap: Snapshot) -> None:
    t = table(snap, INGRESS, "http.8080")
    page = cluster("productpage", port=9080)
    for path in ("/productpage", "/static/app.css", "/login", "/logout", "/api/v1/products/1"):
        assert cluster_for(t, request("bookinfo.example.com:8080", path)) == page
    assert cluster_for(t, request("anything", "/productpage/extra")) is None
    assert cluster_for(t, request("anything", "/admin")) is None


def cert_manager(snap: Snapshot) -> None:
    t = table(snap, INGRESS, "http.80")
    resolver = cluster("cert-manager-resolver", port=8089, ns="istio-system")
    assert cluster_for(t, request("a.example.com", "/.well-known/acme-challenge/tok")) == resolver
    assert cluster_for(t, request("a.example.com", "/")) is None


def subsets_with_endpoints(snap: Snapshot) -> None:
    """Subset clusters exist and hold only their version's endpoints (mTLS
    itself is not translated yet)."""
    names = {c.name for c in translate_clusters(snap, PRODUCTPAGE)}
    assert {cluster("reviews", v) for v in ("v1", "v2", "v3")} <= names
    (v2,) = translate_endpoints(snap, PRODUCTPAGE, [cluster("reviews", "v2")])
    ports = [e.endpoint.address.socket_address.port_value for e in v2.endpoints[0].lb_endpoints]
    assert ports == [19084]


def reviews_random(snap: Snapshot) -> None:
    by_name = {c.name: c for c in translate_clusters(snap, PRODUCTPAGE)}
    for subset in ("", "v1", "v2", "v3"):
        assert by_name[cluster("reviews", subset)].lb_policy == Cluster.RANDOM
    assert by_name[cluster("ratings")].lb_policy == Cluster.ROUND_ROBIN


def googleapis(snap: Snapshot) -> None:
    """Port 80 requests are sent to the entry's port 443 cluster, resolved by DNS."""
    t = sidecar_table(snap)
    assert cluster_for(t, request("www.googleapis.com")) == "outbound|443||www.googleapis.com"
    assert cluster_for(t, request("www.googleapis.com:80")) == "outbound|443||www.googleapis.com"
    by_name = {c.name: c for c in translate_clusters(snap, PRODUCTPAGE)}
    https = by_name["outbound|443||www.googleapis.com"]
    assert https.type == https.STRICT_DNS
    address = https.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (
        "www.googleapis.com",
        443,
    )


EXPECTED: dict[str, tuple[tuple[str, ...], Callable[[Snapshot], None]]] = {
    "virtual-service-all-v1.yaml": (("destination-rule-all.yaml",), all_v1),
    "virtual-service-reviews-test-v2.yaml": (
        ("destination-rule-all.yaml",),
        jason_then("v2", "v1"),
    ),
    "virtual-service-reviews-jason-v2-v3.yaml": (
        ("destination-rule-all.yaml",),
        jason_then("v2", "v3"),
    ),
    "virtual-service-reviews-80-20.yaml": (("destination-rule-all.yaml",), weights(v1=80, v2=20)),
    "virtual-service-reviews-90-10.yaml": (("destination-rule-all.yaml",), weights(v1=90, v2=10)),
    "virtual-service-reviews-50-v3.yaml": (("destination-rule-all.yaml",), weights(v1=50, v3=50)),
    "virtual-service-reviews-v2-v3.yaml": (("destination-rule-all.yaml",), weights(v2=50, v3=50)),
    "virtual-service-reviews-v3.yaml": (("destination-rule-all.yaml",), only("reviews", "v3")),
    "virtual-service-details-v2.yaml": (("destination-rule-all.yaml",), only("details", "v2")),
    "virtual-service-ratings-db.yaml": (("destination-rule-all.yaml",), reviews_v3_ratings("v2")),
    "virtual-service-ratings-mysql.yaml": (
        ("destination-rule-all.yaml",),
        reviews_v3_ratings("v2-mysql"),
    ),
    "virtual-service-ratings-mysql-vm.yaml": (
        ("destination-rule-all.yaml",),
        reviews_v3_ratings("v2-mysql-vm"),
    ),
    "virtual-service-ratings-test-abort.yaml": (("destination-rule-all.yaml",), ratings_abort),
    "virtual-service-ratings-test-delay.yaml": (("destination-rule-all.yaml",), ratings_delay),
    "fault-injection-details-v1.yaml": ((), details_abort),
    "bookinfo-gateway.yaml": ((), ingress),
    "certmanager-gateway.yaml": ((), cert_manager),
    "destination-rule-all.yaml": ((), subsets_with_endpoints),
    "destination-rule-all-mtls.yaml": ((), subsets_with_endpoints),
    "destination-rule-reviews.yaml": ((), reviews_random),
    "egress-rule-google-apis.yaml": ((), googleapis),
}


def test_every_bookinfo_file_has_an_expectation() -> None:
    assert sorted(p.name for p in BOOKINFO_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bookinfo_file_routes_as_istio_documents(name: str) -> None:
    companions, check = EXPECTED[name]
    check(bookinfo(name, *companions))
