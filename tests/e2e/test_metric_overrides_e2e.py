"""Telemetry metrics overrides through the whole mesh: applied to the
control plane, pushed over xDS to real sidecars, and seen in each sidecar's
/stats/prometheus (the caller's CLIENT side and the server's SERVER side)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_processes import XdsControlPlane
from prometheus_client.parser import text_string_to_metric_families
from sidecar_mesh import REVIEWS_SERVICE, Backend, Sidecar, SidecarMesh, curl
from tests.ports import free_port

TELEMETRY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_SIZE}
      disabled: true
    - match: {metric: REQUEST_DURATION, mode: SERVER}
      disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: productpage, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      tagOverrides:
        response_flags: {operation: REMOVE}
        request_path: {value: request.url_path}
        team: {value: "request.headers['x-team']"}
"""


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[Sidecar, Sidecar]]:
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PILOTFISH_CONFIG": str(tmp_path / "c")}
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN", "HTTP_PROXY", "http_proxy"):
        env.pop(var, None)
    plane = XdsControlPlane(tmp_path / "data", free_port(), env, xds_port=free_port())
    sidecars = SidecarMesh(plane, tmp_path)
    try:
        plane.start()
        sidecars.apply(REVIEWS_SERVICE)
        sidecars.apply(TELEMETRY)
        reviews, _ = sidecars.workload(
            "reviews-v1-0", {"app": "reviews", "version": "v1"}, Backend("reviews-v1")
        )
        caller = sidecars.client("productpage-v1-0", {"app": "productpage", "version": "v1"})
        for sidecar in sidecars.sidecars:
            sidecars.wait_serving(sidecar)
        yield caller, reviews
    finally:
        sidecars.close()


def families(sidecar: Sidecar) -> dict[str, list[dict[str, str]]]:
    return {
        f.name: [dict(s.labels) for s in f.samples if s.name.endswith(("_total", "_count"))]
        for f in text_string_to_metric_families(sidecar.stats())
    }


def test_overrides_reach_the_sidecars_and_their_metrics(mesh: tuple[Sidecar, Sidecar]) -> None:
    caller, reviews = mesh
    for _ in range(2):
        response = curl(
            "http://reviews:9080/api?id=1",
            proxy=caller.outbound_port,
            headers={"x-team": "checkout"},
        )
        assert response.status == 200
    client, server = families(caller), families(reviews)
    # REQUEST_SIZE is off mesh-wide, on both sides.
    assert "istio_request_bytes" not in client and "istio_request_bytes" not in server
    # REQUEST_DURATION is off on the SERVER side only.
    assert "istio_request_duration_milliseconds" in client
    assert "istio_request_duration_milliseconds" not in server
    # productpage's CLIENT-side request count is relabelled; reviews' is Istio's.
    (outbound,) = client["istio_requests"]
    assert "response_flags" not in outbound
    assert (outbound["request_path"], outbound["team"]) == ("/api", "checkout")
    assert outbound["destination_service_name"] == "reviews"
    (inbound,) = server["istio_requests"]
    assert inbound["response_flags"] == "-" and "team" not in inbound
    assert inbound["source_workload"] == "productpage-v1"
