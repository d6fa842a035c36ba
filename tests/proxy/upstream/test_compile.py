"""Compiling Cluster and ClusterLoadAssignment: what is honoured, and clear errors for the rest."""

import pytest
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from google.protobuf import json_format
from upstream_kit import cluster_proto, endpoint, level, localities

from pilotfish.proxy.upstream import (
    ClusterConfigError,
    LbPolicy,
    compile_cluster,
    compile_load_assignment,
)


def error(**fields: object) -> str:
    with pytest.raises(ClusterConfigError) as e:
        compile_cluster(cluster_proto(**fields))
    return str(e.value)


def test_static_cluster_with_everything_supported() -> None:
    spec = compile_cluster(
        cluster_proto(
            lb_policy="LEAST_REQUEST",
            least_request_lb_config={"choice_count": 3},
            connect_timeout="0.25s",
            load_assignment=localities(level(0, 2)),
            circuit_breakers={"thresholds": [{"max_connections": 10, "max_retries": 7}]},
            outlier_detection={
                "consecutive_5xx": 3,
                "base_ejection_time": "5s",
                "max_ejection_percent": 50,
            },
            common_http_protocol_options={
                "idle_timeout": "30s",
                "max_requests_per_connection": 100,
            },
            upstream_connection_options={"tcp_keepalive": {"keepalive_time": 60}},
            common_lb_config={"healthy_panic_threshold": {"value": 30}},
        )
    )
    assert spec.lb.policy is LbPolicy.LEAST_REQUEST and spec.lb.choice_count == 3
    assert spec.connect_timeout == 0.25 and spec.lb.panic_threshold == 30
    assert spec.thresholds.max_connections == 10 and spec.thresholds.max_requests == 1024
    assert spec.outlier is not None and spec.outlier.consecutive_5xx == 3
    assert spec.outlier.base_ejection_time == 5 and spec.outlier.interval == 10
    assert spec.pool.idle_timeout == 30 and spec.pool.max_requests_per_connection == 100
    assert spec.pool.tcp_keepalive is not None and spec.pool.tcp_keepalive.time == 60
    assert spec.load_assignment is not None and len(spec.load_assignment.endpoints) == 2


def test_eds_cluster() -> None:
    spec = compile_cluster(
        cluster_proto(
            type="EDS", eds_cluster_config={"service_name": "reviews", "eds_config": {"ads": {}}}
        )
    )
    assert spec.is_eds and spec.eds_service_name == "reviews" and spec.load_assignment is None


def test_typed_http_protocol_options_as_istio_sends_them() -> None:
    spec = compile_cluster(
        cluster_proto(
            typed_extension_protocol_options={
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "common_http_protocol_options": {"idle_timeout": "5s"},
                    "explicit_http_config": {"http_protocol_options": {}},
                }
            }
        )
    )
    assert spec.pool.idle_timeout == 5


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"health_checks": [{"timeout": "1s", "interval": "1s"}]}, "health_checks"),
        ({"outlier_detection": {"monitors": [{}]}}, "outlier_detection.monitors"),
        ({"lb_policy": "CLUSTER_PROVIDED"}, "lb_policy"),
        ({"type": "STRICT_DNS"}, "type"),
        ({"maglev_lb_config": {"table_size": 65536}}, "maglev_lb_config.table_size"),
        (
            {"ring_hash_lb_config": {"hash_function": "MURMUR_HASH_2"}},
            "ring_hash_lb_config.hash_function",
        ),
        (
            {"least_request_lb_config": {"slow_start_config": {}}},
            "least_request_lb_config.slow_start_config",
        ),
        (
            {"common_lb_config": {"zone_aware_lb_config": {}}},
            "common_lb_config.zone_aware_lb_config",
        ),
        (
            {"circuit_breakers": {"per_host_thresholds": [{}]}},
            "circuit_breakers.per_host_thresholds",
        ),
        ({"upstream_http_protocol_options": {"auto_sni": True}}, "upstream_http_protocol_options"),
        (
            {"load_assignment": {"policy": {"drop_overloads": [{"category": "x"}]}}},
            "load_assignment.policy.drop_overloads",
        ),
    ],
)
def test_unsupported_fields_name_their_path(fields: dict[str, object], path: str) -> None:
    message = error(**fields)
    assert message.startswith(f"cluster svc: {path}:"), message


def test_bad_endpoint_is_rejected_with_its_path() -> None:
    data = localities({"lb_endpoints": [endpoint(80), endpoint(80, weight=0)]})
    with pytest.raises(ClusterConfigError) as e:
        compile_load_assignment(json_format.ParseDict(data, ClusterLoadAssignment()))
    assert "endpoints[0].lb_endpoints[1].load_balancing_weight" in str(e.value)


def test_health_statuses_map_as_envoy_treats_them() -> None:
    statuses = ["UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED"]
    data = localities({"lb_endpoints": [endpoint(i + 1, s) for i, s in enumerate(statuses)]})
    la = compile_load_assignment(json_format.ParseDict(data, ClusterLoadAssignment()))
    from pilotfish.proxy.upstream.host import EdsHealth

    assert [e.eds_health for e in la.endpoints] == [
        EdsHealth.HEALTHY,
        EdsHealth.HEALTHY,
        EdsHealth.UNHEALTHY,
        EdsHealth.DRAINING,
        EdsHealth.UNHEALTHY,
        EdsHealth.DEGRADED,
    ]
