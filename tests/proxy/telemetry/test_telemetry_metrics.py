"""Istio's golden metrics as a scraper sees them: the exposition parsed by
prometheus_client, with exact values after known requests."""

from __future__ import annotations

import pytest
from telemetry_fixtures import bootstrap_node, families, samples

from pilotfish.proxy.telemetry import (
    DURATION_BUCKETS_MS,
    ServiceInfo,
    Telemetry,
    WorkloadInfo,
    peer_from_header,
    peer_metadata_headers,
    service_from_authority,
    service_from_cluster_name,
    workload_from_endpoint_text,
)

ISTIO_HTTP_LABELS = {
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
}

REVIEWS_V2 = workload_from_endpoint_text("reviews-v2;default;reviews;v2;Kubernetes")
REVIEWS = service_from_cluster_name("outbound|9080|v2|reviews.default.svc.cluster.local")


def productpage() -> Telemetry:
    return Telemetry(WorkloadInfo.from_node(bootstrap_node()))


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def outbound_labels(**overrides: str) -> dict[str, str]:
    labels = {
        "reporter": "source",
        "source_workload": "productpage-v1",
        "source_workload_namespace": "default",
        "source_principal": "unknown",
        "source_app": "productpage",
        "source_version": "v1",
        "source_canonical_service": "productpage",
        "source_canonical_revision": "v1",
        "source_cluster": "Kubernetes",
        "destination_workload": "reviews-v2",
        "destination_workload_namespace": "default",
        "destination_principal": "unknown",
        "destination_app": "reviews",
        "destination_version": "v2",
        "destination_service": "reviews.default.svc.cluster.local",
        "destination_service_name": "reviews",
        "destination_service_namespace": "default",
        "destination_canonical_service": "reviews",
        "destination_canonical_revision": "v2",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
        "connection_security_policy": "unknown",
    }
    return labels | overrides


def test_requests_total_and_histograms_after_known_requests() -> None:
    telemetry = productpage()
    for duration, sent, received in [(3.0, 10, 300), (7.5, 0, 2000), (120.0, 0, 5)]:
        telemetry.outbound.record(REVIEWS_V2, REVIEWS, 200, "", duration, sent, received)
    telemetry.outbound.record(REVIEWS_V2, REVIEWS, 503, "UF,URX", 1.0, 0, 91)
    found = samples(telemetry.prometheus())
    ok, failed = outbound_labels(), outbound_labels(response_code="503", response_flags="UF,URX")
    assert found[key("istio_requests_total", **ok)] == 3
    assert found[key("istio_requests_total", **failed)] == 1
    assert found[key("istio_request_duration_milliseconds_count", **ok)] == 3
    assert found[key("istio_request_duration_milliseconds_sum", **ok)] == pytest.approx(130.5)
    assert found[key("istio_request_duration_milliseconds_bucket", **ok, le="5")] == 1
    assert found[key("istio_request_duration_milliseconds_bucket", **ok, le="10")] == 2
    assert found[key("istio_request_duration_milliseconds_bucket", **ok, le="100")] == 2
    assert found[key("istio_request_duration_milliseconds_bucket", **ok, le="250")] == 3
    assert found[key("istio_request_duration_milliseconds_bucket", **ok, le="+Inf")] == 3
    assert found[key("istio_request_bytes_sum", **ok)] == 10
    assert found[key("istio_response_bytes_sum", **ok)] == 2305
    assert found[key("istio_response_bytes_bucket", **ok, le="1000")] == 2
    assert found[key("istio_response_bytes_count", **failed)] == 1


def test_families_types_and_label_names_are_istios() -> None:
    telemetry = productpage()
    telemetry.outbound.record(REVIEWS_V2, REVIEWS, 200, "", 1.0, 0, 0)
    assert families(telemetry.prometheus()) == {
        "istio_requests": "counter",
        "istio_request_duration_milliseconds": "histogram",
        "istio_request_bytes": "histogram",
        "istio_response_bytes": "histogram",
    }
    names = {n for (sample, labels) in samples(telemetry.prometheus()) for n, _ in labels}
    assert names - {"le"} == ISTIO_HTTP_LABELS
    text = telemetry.prometheus().decode()
    assert "# HELP istio_requests_total " in text
    assert text.count("# TYPE istio_requests_total counter") == 1


@pytest.mark.parametrize(
    ("duration", "first_bound"),
    [
        (0.0, 0.5),
        (0.5, 0.5),
        (0.5001, 1),
        (1.0, 1),
        (250.0, 250),
        (250.01, 500),
        (3600000.0, 3600000),
        (3600000.5, float("inf")),
    ],
)
def test_a_value_on_a_bucket_bound_counts_in_that_bucket(
    duration: float, first_bound: float
) -> None:
    telemetry = productpage()
    telemetry.outbound.record(REVIEWS_V2, REVIEWS, 200, "", duration, 0, 0)
    found = samples(telemetry.prometheus())
    for bound in (*DURATION_BUCKETS_MS, float("inf")):
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        value = found[key("istio_request_duration_milliseconds_bucket", **outbound_labels(), le=le)]
        assert value == (1 if bound >= first_bound else 0), (bound, value)


def test_bucket_bounds_are_envoys_default_and_cumulative_on_the_wire() -> None:
    telemetry = productpage()
    telemetry.outbound.record(REVIEWS_V2, REVIEWS, 200, "", 42.0, 0, 0)
    lines = [
        line
        for line in telemetry.prometheus().decode().splitlines()
        if line.startswith("istio_request_duration_milliseconds_bucket")
    ]
    les = [line.split('le="')[1].split('"')[0] for line in lines]
    assert les == [
        "0.5",
        "1",
        "5",
        "10",
        "25",
        "50",
        "100",
        "250",
        "500",
        "1000",
        "2500",
        "5000",
        "10000",
        "30000",
        "60000",
        "300000",
        "600000",
        "1.8e+06",
        "3.6e+06",
        "+Inf",
    ]
    counts = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert counts == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]


def test_label_values_with_quotes_backslashes_and_newlines_survive_the_round_trip() -> None:
    nasty = 'a"b\\c\nd'
    peer = WorkloadInfo(workload=nasty, namespace="ns\\", app='"', version="\n")
    telemetry = productpage()
    telemetry.inbound.record(peer, ServiceInfo(host='x"y'), 200, "", 1.0, 0, 0)
    text = telemetry.prometheus().decode()
    assert 'source_workload="a\\"b\\\\c\\nd"' in text
    [(labels, value)] = [
        (dict(labels), v)
        for (name, labels), v in samples(telemetry.prometheus()).items()
        if name == "istio_requests_total"
    ]
    assert value == 1
    assert labels["source_workload"] == nasty
    assert labels["source_workload_namespace"] == "ns\\"
    assert (labels["source_app"], labels["source_version"]) == ('"', "\n")
    assert labels["destination_service"] == 'x"y'


def test_inbound_reports_the_destination_side_with_the_peer_from_metadata_exchange() -> None:
    reviews_node = bootstrap_node(
        {
            "id": "sidecar~10.1.0.9~reviews-v2-abc.default~default.svc.cluster.local",
            "metadata": {
                "NAME": "reviews-v2-abc",
                "NAMESPACE": "default",
                "WORKLOAD_NAME": "reviews-v2",
                "SERVICE_ACCOUNT": "bookinfo-reviews",
                "CLUSTER_ID": "Kubernetes",
                "LABELS": {"app": "reviews", "version": "v2"},
            },
        }
    )
    telemetry = Telemetry(WorkloadInfo.from_node(reviews_node))
    header = dict(peer_metadata_headers(bootstrap_node()))[b"x-envoy-peer-metadata"]
    caller = peer_from_header(header)
    telemetry.inbound.record(caller, REVIEWS, 200, "", 2.0, 0, 10, mtls=True)
    telemetry.inbound.record(caller, REVIEWS, 200, "", 2.0, 0, 10, mtls=False)
    found = samples(telemetry.prometheus())
    common = outbound_labels(reporter="destination")
    mtls = common | {
        "source_principal": "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        "destination_principal": "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        "connection_security_policy": "mutual_tls",
    }
    assert found[key("istio_requests_total", **mtls)] == 1
    plaintext = common | {"connection_security_policy": "none"}
    assert found[key("istio_requests_total", **plaintext)] == 1


def test_unknown_peer_and_service_are_labelled_unknown() -> None:
    telemetry = productpage()
    telemetry.outbound.record(WorkloadInfo(), ServiceInfo(), 0, "DC", 5.0, 0, 0)
    [labels] = [
        dict(labels)
        for (name, labels) in samples(telemetry.prometheus())
        if name == "istio_requests_total"
    ]
    for name in (
        "destination_workload",
        "destination_app",
        "destination_version",
        "destination_service",
        "destination_service_name",
        "destination_cluster",
    ):
        assert labels[name] == "unknown", name
    assert (labels["response_code"], labels["response_flags"]) == ("0", "DC")


def test_many_label_sets_each_keep_their_own_counts() -> None:
    telemetry = productpage()
    expected: dict[tuple[str, str, str], int] = {}
    for i in range(1500):
        version, code = f"v{i % 4}", (200, 404, 503)[i % 3]
        peer = workload_from_endpoint_text(f"reviews-{version};default;reviews;{version};K")
        service = service_from_cluster_name(f"outbound|9080||svc{i % 5}.default.svc.cluster.local")
        telemetry.outbound.record(peer, service, code, "", 1.0, 0, 0)
        k = (version, f"svc{i % 5}", str(code))
        expected[k] = expected.get(k, 0) + 1
    found = {
        (
            dict(labels)["destination_version"],
            dict(labels)["destination_service_name"],
            dict(labels)["response_code"],
        ): value
        for (name, labels), value in samples(telemetry.prometheus()).items()
        if name == "istio_requests_total"
    }
    assert found == expected


def test_equal_peers_from_different_objects_share_one_series() -> None:
    telemetry = productpage()
    twins = [WorkloadInfo(workload="w", namespace="n") for _ in range(3)]
    for twin in twins:
        telemetry.outbound.record(twin, REVIEWS, 200, "", 1.0, 0, 0)
    counts = [
        v for (n, _), v in samples(telemetry.prometheus()).items() if n == "istio_requests_total"
    ]
    assert counts == [3]


def test_tcp_families_have_no_response_code() -> None:
    telemetry = productpage()
    connection = telemetry.outbound.tcp_series(REVIEWS_V2, REVIEWS)
    connection.opened += 1
    connection.sent_bytes += 1200
    connection.received_bytes += 34
    connection.closed += 1
    found = samples(telemetry.prometheus())
    labels = outbound_labels(request_protocol="tcp")
    del labels["response_code"], labels["grpc_response_status"]
    assert found[key("istio_tcp_connections_opened_total", **labels)] == 1
    assert found[key("istio_tcp_connections_closed_total", **labels)] == 1
    assert found[key("istio_tcp_sent_bytes_total", **labels)] == 1200
    assert found[key("istio_tcp_received_bytes_total", **labels)] == 34


def test_grpc_requests_carry_their_status() -> None:
    telemetry = productpage()
    telemetry.outbound.record(REVIEWS_V2, REVIEWS, 200, "", 1.0, 5, 7, "grpc", "14")
    found = samples(telemetry.prometheus())
    labels = outbound_labels(request_protocol="grpc", grpc_response_status="14")
    assert found[key("istio_requests_total", **labels)] == 1


def test_nothing_recorded_is_an_empty_exposition() -> None:
    assert productpage().prometheus() == b""


def test_invented_host_headers_cannot_grow_the_series_without_bound() -> None:
    telemetry = Telemetry(WorkloadInfo(workload="w"), max_series=50)
    for i in range(500):
        service = service_from_authority(f"attacker-{i}.example:80")
        telemetry.inbound.record(WorkloadInfo(), service, 200, "", 1.0, 0, 0)
    services = {
        dict(labels)["destination_service"]: value
        for (name, labels), value in samples(telemetry.prometheus()).items()
        if name == "istio_requests_total"
    }
    assert len(services) == 51
    assert services["unknown"] == 450
    assert sum(services.values()) == 500
