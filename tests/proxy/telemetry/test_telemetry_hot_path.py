"""What the cheaper recording path (issue 17, the response side) must keep:
the same bucket for every value, status counts that read 0 when absent, and
label sets that follow every change of what they are made of."""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import Counter

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto
from hypothesis import given
from hypothesis import strategies as st
from telemetry_fixtures import bootstrap_node, samples

from pilotfish.proxy import xds_types
from pilotfish.proxy.config import ProxyConfig
from pilotfish.proxy.server import Runtime
from pilotfish.proxy.stats import StatsRegistry, count_status
from pilotfish.proxy.telemetry import (
    DEFAULT_BUCKETS,
    ServiceInfo,
    Telemetry,
    WorkloadInfo,
    bucket,
    service_from_authority,
    service_from_cluster_name,
    workload_from_endpoint_text,
)
from pilotfish.proxy.upstream.pool import Pool

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"
V1 = workload_from_endpoint_text("reviews-v1;default;reviews;v1;Kubernetes")
V2 = workload_from_endpoint_text("reviews-v2;default;reviews;v2;Kubernetes")
SERVICE = service_from_cluster_name(REVIEWS)
RATINGS = service_from_cluster_name("outbound|9080||ratings.default.svc.cluster.local")


def on_and_beside_the_bounds() -> list[float]:
    found: list[float] = [-1.0, 0.0, 1e12]
    for bound in DEFAULT_BUCKETS:
        found += [bound, bound - 1e-9, bound + 1e-9, bound - 1, bound + 1]
    return found


@given(
    st.one_of(
        st.floats(allow_nan=False, min_value=-1.0, max_value=1e8),
        st.integers(min_value=0, max_value=2**40),
        st.sampled_from(on_and_beside_the_bounds()),
    )
)
def test_bucket_is_the_first_bound_at_or_above_the_value(value: float) -> None:
    assert bucket(value) == bisect_left(DEFAULT_BUCKETS, value)


def test_bucket_on_and_beside_every_bound() -> None:
    """Every bound, not a sample of them: bucket() writes them out one by one."""
    for value in on_and_beside_the_bounds():
        assert bucket(value) == bisect_left(DEFAULT_BUCKETS, value), value


def test_byte_counts_on_a_bound_count_in_that_bound() -> None:
    telemetry = Telemetry(WorkloadInfo.from_node(bootstrap_node()))
    for sent, received in [(1000, 1001), (0, 5), (5, 3600001)]:
        telemetry.outbound.record(V2, SERVICE, 200, "", 1.0, sent, received)
    found = samples(telemetry.prometheus())

    def buckets(family: str) -> dict[str, float]:
        return {
            dict(labels)["le"]: value
            for (name, labels), value in found.items()
            if name == f"{family}_bucket"
        }

    sent, received = buckets("istio_request_bytes"), buckets("istio_response_bytes")
    assert (sent["0.5"], sent["5"], sent["500"], sent["1000"], sent["+Inf"]) == (1, 2, 2, 3, 3)
    assert (received["1"], received["5"], received["1000"], received["2500"]) == (0, 1, 1, 2)
    assert (received["3.6e+06"], received["+Inf"]) == (2, 3)


def test_status_counts_show_only_what_came() -> None:
    stats = StatsRegistry()
    cluster = stats.cluster(REVIEWS)
    count_status(cluster, 200)
    count_status(cluster, 200)
    assert cluster.codes == {200: 2}
    lines = stats.text().decode().splitlines()
    assert f"cluster.{REVIEWS}.upstream_rq_200: 2" in lines
    assert f"cluster.{REVIEWS}.upstream_rq_2xx: 2" in lines
    assert f"cluster.{REVIEWS}.upstream_rq_4xx: 0" in lines
    assert not [line for line in lines if "upstream_rq_404" in line]
    assert f"cluster.{REVIEWS}.upstream_rq_completed: 2" in lines


@given(st.lists(st.sampled_from([200, 200, 201, 404, 503, 599, 100, 200]), max_size=40))
def test_status_counts_follow_any_run_of_statuses(statuses: list[int]) -> None:
    """count_status keeps the last status's count at hand: a status after a
    different one (or back to an earlier one) must count under its own code,
    in /stats and in the Prometheus page."""
    stats = StatsRegistry()
    cluster, http = stats.cluster(REVIEWS), stats.http("outbound_0.0.0.0_15001")
    for status in statuses:
        count_status(cluster, status)
        count_status(http, status)
    expected = Counter(statuses)
    assert cluster.codes == http.codes == dict(expected)
    lines = set(stats.text().decode().splitlines())
    for status, count in expected.items():
        assert f"cluster.{REVIEWS}.upstream_rq_{status}: {count}" in lines
    by_class = Counter(f"{status // 100}xx" for status in statuses)
    page = stats.prometheus().decode()
    for code_class in ("1xx", "2xx", "4xx", "5xx"):
        count = by_class[code_class]
        assert f"http.outbound_0.0.0.0_15001.downstream_rq_{code_class}: {count}" in lines
        assert (
            f'envoy_cluster_upstream_rq{{response_code_class="{code_class}",'
            f'cluster_name="{REVIEWS}"}} {count}'
        ) in page
    assert f"cluster.{REVIEWS}.upstream_rq_completed: {len(statuses)}" in lines


def test_each_part_of_a_label_set_changes_the_series_between_two_requests() -> None:
    """Requests one after the other that differ in one part only (the last
    label set recorded must not be taken for the next one)."""
    telemetry = Telemetry(WorkloadInfo.from_node(bootstrap_node()))
    base = (V1, SERVICE, 200, "", "http", "", False)
    variants = [
        (V2, *base[1:]),
        (V1, RATINGS, *base[2:]),
        (*base[:2], 503, *base[3:]),
        (*base[:3], "UF", *base[4:]),
        (*base[:4], "grpc", *base[5:]),
        (*base[:5], "14", False),
        (*base[:6], True),
    ]
    # base, a variant, base, the next...: each request differs from the one before in one part.
    requests = [base, *(r for variant in variants for r in (variant, base))]
    reporter = telemetry.inbound  # mTLS shows in its labels (the source side's are unknown)
    for peer, service, code, flags, protocol, grpc_status, mtls in requests:
        reporter.record(peer, service, code, flags, 1.0, 0, 0, protocol, grpc_status, mtls)
    counts = {
        (
            dict(labels)["source_version"],
            dict(labels)["destination_service_name"],
            dict(labels)["response_code"],
            dict(labels)["response_flags"],
            dict(labels)["request_protocol"],
            dict(labels)["grpc_response_status"],
            dict(labels)["connection_security_policy"],
        ): value
        for (name, labels), value in samples(telemetry.prometheus()).items()
        if name == "istio_requests_total"
    }
    assert counts == {
        ("v1", "reviews", "200", "-", "http", "", "none"): 8,
        ("v2", "reviews", "200", "-", "http", "", "none"): 1,
        ("v1", "ratings", "200", "-", "http", "", "none"): 1,
        ("v1", "reviews", "503", "-", "http", "", "none"): 1,
        ("v1", "reviews", "200", "UF", "http", "", "none"): 1,
        ("v1", "reviews", "200", "-", "grpc", "", "none"): 1,
        ("v1", "reviews", "200", "-", "http", "14", "none"): 1,
        ("v1", "reviews", "200", "-", "http", "", "mutual_tls"): 1,
    }


def cds_cluster(name: str, service_host: str | None) -> AnyProto:
    """A STATIC cluster; with `service_host`, Istio's metadata naming its service."""
    spec: dict[str, object] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": 9}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if service_host is not None:
        services = [{"host": service_host, "namespace": "default"}]
        spec["metadata"] = {"filter_metadata": {"istio": {"services": services}}}
    packed = AnyProto()
    packed.Pack(json_format.ParseDict(spec, Cluster()))
    return packed


def test_the_destination_service_follows_each_cds_update() -> None:
    """The data path keeps the services of the snapshot it last read; a CDS
    update (new metadata, a cluster gone) must show in the next request's labels."""

    async def scenario() -> list[ServiceInfo]:
        config = ProxyConfig()
        runtime = Runtime(config, Pool(), Telemetry(), StatsRegistry())
        seen = [runtime.service_of(REVIEWS)]  # no clusters yet
        config.apply(xds_types.CLUSTER, [cds_cluster(REVIEWS, "reviews.default.svc.cluster.local")])
        seen += [runtime.service_of(REVIEWS), runtime.service_of(REVIEWS)]
        config.apply(xds_types.CLUSTER, [cds_cluster(REVIEWS, "ratings.default.svc.cluster.local")])
        seen.append(runtime.service_of(REVIEWS))
        config.apply(xds_types.CLUSTER, [cds_cluster("other", None)])
        seen += [runtime.service_of(REVIEWS), runtime.service_of("other")]
        return seen

    seen = asyncio.run(scenario())
    assert [s.host for s in seen] == [
        "unknown",
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local",
        "ratings.default.svc.cluster.local",
        "unknown",
        "other",
    ]
    assert seen[3] == ServiceInfo("ratings.default.svc.cluster.local", "ratings", "default")


def test_the_destination_service_by_host_follows_each_request() -> None:
    """Runtime keeps the last Host header's service (the inbound fallback,
    Istio's): each request in a run of different hosts gets its own."""

    async def scenario() -> list[ServiceInfo]:
        runtime = Runtime(ProxyConfig(), Pool(), Telemetry(), StatsRegistry())
        return [runtime.service_by_authority(host) for host in HOSTS]

    assert asyncio.run(scenario()) == [service_from_authority(h.decode()) for h in HOSTS]
    assert [s.name for s in asyncio.run(scenario())] == [
        "unknown", "reviews", "reviews", "ratings", "unknown", "ratings",
    ]  # fmt: skip


HOSTS = (b"", b"reviews:9080", b"reviews", b"ratings.default.svc.cluster.local", b"", b"ratings")
