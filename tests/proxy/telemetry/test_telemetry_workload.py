"""Who is who: the proxy's workload from an Istio-style bootstrap node, the
destination from cluster and endpoint metadata, the peer from Istio's
metadata-exchange header."""

from __future__ import annotations

import base64

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_components_pb2 import LbEndpoint
from google.protobuf import json_format
from telemetry_fixtures import PRODUCTPAGE_NODE, bootstrap_node

from pilotfish.proxy.telemetry import (
    ServiceInfo,
    WorkloadInfo,
    peer_from_header,
    peer_metadata_headers,
    service_from_authority,
)


def test_own_workload_from_an_istio_bootstrap_node() -> None:
    own = WorkloadInfo.from_node(bootstrap_node())
    assert own == WorkloadInfo(
        workload="productpage-v1",
        namespace="default",
        app="productpage",
        version="v1",
        canonical_service="productpage",
        canonical_revision="v1",
        cluster="Kubernetes",
        service_account="bookinfo-productpage",
    )
    assert own.principal == "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"


def test_a_bare_node_is_unknown_everywhere() -> None:
    own = WorkloadInfo.from_node(bootstrap_node({"id": "sidecar~1.2.3.4~x.y~y.svc"}))
    assert own == WorkloadInfo()
    assert (own.workload, own.app, own.principal) == ("unknown", "unknown", "unknown")
    assert own.canonical_revision == "unknown"


def test_pod_name_stands_in_for_a_missing_workload_name_and_canonical_names_fall_back() -> None:
    node = {
        "id": "n",
        "metadata": {
            "NAME": "ratings-7d9f",
            "NAMESPACE": "shop",
            "LABELS": {"app.kubernetes.io/name": "ratings"},
        },
    }
    own = WorkloadInfo.from_node(bootstrap_node(node))
    assert (own.workload, own.app, own.version) == ("ratings-7d9f", "ratings", "unknown")
    assert (own.canonical_service, own.canonical_revision) == ("ratings", "latest")
    no_labels = WorkloadInfo.from_node(bootstrap_node({"id": "n", "metadata": {"NAME": "p"}}))
    assert (no_labels.canonical_service, no_labels.canonical_revision) == ("p", "latest")


def test_trust_domain_is_part_of_the_principal() -> None:
    own = WorkloadInfo.from_node(bootstrap_node(), trust_domain="example.org")
    assert own.principal == "spiffe://example.org/ns/default/sa/bookinfo-productpage"


def test_destination_workload_from_istio_endpoint_metadata() -> None:
    endpoint = json_format.ParseDict(
        {
            "endpoint": {
                "address": {"socket_address": {"address": "10.1.0.9", "port_value": 9080}}
            },
            "metadata": {
                "filter_metadata": {
                    "istio": {"workload": "reviews-v2;default;reviews;v2;Kubernetes"}
                }
            },
        },
        LbEndpoint(),
    )
    found = WorkloadInfo.from_endpoint(endpoint.metadata)
    assert found == WorkloadInfo(
        "reviews-v2", "default", "reviews", "v2", "reviews", "v2", "Kubernetes"
    )
    assert WorkloadInfo.from_endpoint(LbEndpoint().metadata) == WorkloadInfo()


def test_short_endpoint_workload_text_fills_the_rest_with_unknown() -> None:
    endpoint = json_format.ParseDict(
        {"metadata": {"filter_metadata": {"istio": {"workload": "ratings-v1;;"}}}}, LbEndpoint()
    )
    found = WorkloadInfo.from_endpoint(endpoint.metadata)
    assert (found.workload, found.namespace, found.cluster) == ("ratings-v1", "unknown", "unknown")


def test_destination_service_from_cluster_metadata_then_cluster_name() -> None:
    cluster = json_format.ParseDict(
        {
            "name": "outbound|9080|v2|reviews.default.svc.cluster.local",
            "metadata": {
                "filter_metadata": {
                    "istio": {
                        "services": [
                            {
                                "host": "reviews.default.svc.cluster.local",
                                "name": "reviews",
                                "namespace": "default",
                            }
                        ]
                    }
                }
            },
        },
        Cluster(),
    )
    expected = ServiceInfo("reviews.default.svc.cluster.local", "reviews", "default")
    assert ServiceInfo.from_cluster(cluster.name, cluster.metadata) == expected
    assert ServiceInfo.from_cluster(cluster.name) == expected
    assert ServiceInfo.from_cluster("backend") == ServiceInfo("backend", "backend", "unknown")
    external = ServiceInfo.from_cluster("outbound|443||httpbin.org")
    assert external == ServiceInfo("httpbin.org", "httpbin.org", "unknown")
    assert ServiceInfo.from_cluster("inbound|9080||") == ServiceInfo()


def test_inbound_service_falls_back_to_the_host_header() -> None:
    assert service_from_authority("reviews.default.svc.cluster.local:9080") == ServiceInfo(
        "reviews.default.svc.cluster.local", "reviews", "default"
    )
    assert service_from_authority("Reviews") == ServiceInfo("reviews", "reviews", "unknown")
    assert service_from_authority("[::1]:9080").host == "[::1]:9080"


def test_metadata_exchange_header_round_trips_the_workload() -> None:
    node = bootstrap_node()
    headers = dict(peer_metadata_headers(node))
    assert headers[b"x-envoy-peer-metadata-id"] == PRODUCTPAGE_NODE["id"].encode()
    peer = peer_from_header(headers[b"x-envoy-peer-metadata"])
    assert peer == WorkloadInfo.from_node(node)
    assert peer is peer_from_header(headers[b"x-envoy-peer-metadata"])  # decoded once


def test_metadata_exchange_carries_only_istios_keys() -> None:
    from google.protobuf import struct_pb2

    header = dict(peer_metadata_headers(bootstrap_node()))[b"x-envoy-peer-metadata"]
    sent = struct_pb2.Struct.FromString(base64.b64decode(header))
    assert "INTERCEPTION_MODE" not in sent.fields
    assert sent.fields["WORKLOAD_NAME"].string_value == "productpage-v1"


def test_a_garbled_peer_header_is_an_unknown_peer() -> None:
    for garbage in (b"%%%not base64", base64.b64encode(b"\xff\xfe\x00junk"), b""):
        assert peer_from_header(garbage) == WorkloadInfo()
