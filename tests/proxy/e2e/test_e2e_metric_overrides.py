"""Telemetry metrics overrides on a real sidecar: the `istio.stats` filter
the control plane translates, served from a bootstrap, changes what
/stats/prometheus shows."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from harness import curl, free_port, listener, route, static_cluster, vhost
from prometheus_client.parser import text_string_to_metric_families

from pilotfish.model import Proxy, build_snapshot
from pilotfish.translate.telemetry import translate_stats_filter

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"
PRODUCTPAGE = Proxy(
    node_id="sidecar~127.0.0.1~productpage-v1-0.default~default.svc.cluster.local",
    namespace="default",
    labels={"app": "productpage", "version": "v1"},
    workload="productpage-v1",
)
TELEMETRY = {
    "apiVersion": "telemetry.istio.io/v1",
    "kind": "Telemetry",
    "metadata": {"name": "mesh-default", "namespace": "istio-system"},
    "spec": {
        "metrics": [
            {
                "providers": [{"name": "prometheus"}],
                "overrides": [
                    {"match": {"metric": "REQUEST_SIZE"}, "disabled": True},
                    {
                        "match": {"metric": "REQUEST_COUNT", "mode": "CLIENT"},
                        "tagOverrides": {
                            "response_flags": {"operation": "REMOVE"},
                            "request_host": {"value": "request.host"},
                            "team": {"value": "request.headers['x-team']"},
                        },
                    },
                ],
            }
        ]
    },
}


def stats_filter() -> dict[str, Any]:
    snapshot = build_snapshot([TELEMETRY], [])
    found = translate_stats_filter(snapshot, PRODUCTPAGE, inbound=False)
    assert found is not None
    # Through JSON, as a bootstrap file carries it.
    return dict(json.loads(json_format.MessageToJson(found, preserving_proto_field_name=True)))


def families(text: str) -> dict[str, list[dict[str, str]]]:
    return {
        f.name: [dict(s.labels) for s in f.samples if s.name.endswith(("_total", "_count"))]
        for f in text_string_to_metric_families(text)
    }


def test_disabled_metric_is_absent_and_tags_are_removed_and_upserted(
    start_proxy, make_backend
) -> None:
    reviews = make_backend("reviews")
    port = free_port()
    proxy = start_proxy(
        [
            listener(
                "outbound",
                port,
                [vhost("all", ["*"], [route(REVIEWS, prefix="/api")])],
                http_filters=[stats_filter()],
                outbound=True,
            )
        ],
        [static_cluster(REVIEWS, [reviews.port])],
    )
    for _ in range(2):
        assert curl(f"http://127.0.0.1:{port}/api", headers={"x-team": "checkout"}).status == 200
    status, text = proxy.admin_get("/stats/prometheus")
    assert status == 200
    shown = families(text)
    assert "istio_request_bytes" not in shown, sorted(shown)
    assert "istio_response_bytes" in shown and "istio_request_duration_milliseconds" in shown
    (requests,) = shown["istio_requests"]
    assert "response_flags" not in requests
    assert requests["request_host"] == f"127.0.0.1:{port}"
    assert requests["team"] == "checkout"
    assert requests["destination_service_name"] == "reviews"
    # Metrics without an override keep every standard label.
    (durations,) = shown["istio_request_duration_milliseconds"]
    assert durations["response_flags"] == "-" and "team" not in durations
    assert "istio_requests_total{" in text and 'team="checkout"} 2' in text
