"""One Bookinfo page load through the gateway is one trace: the gateway,
productpage, details, reviews and ratings each report their hop's spans to
an OpenTelemetry collector named by the mesh config, and every span's
parent is the span of the hop before it."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import yaml
from tests.agent.mesh_harness import DIRECT, free_port, mesh_up, wait_for
from tests.proxy.e2e.otlp_receiver import OtlpReceiver, Received

SERVICES = {"productpage.default", "details.default", "reviews.default", "ratings.default"}


def _config(collector_port: int) -> str:
    mesh = {
        "extensionProviders": [
            {"name": "otel", "opentelemetry": {"service": "127.0.0.1", "port": collector_port}}
        ]
    }
    docs = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": yaml.safe_dump(mesh)},
        },
        {
            "apiVersion": "telemetry.istio.io/v1",
            "kind": "Telemetry",
            "metadata": {"name": "mesh-default", "namespace": "istio-system"},
            "spec": {"tracing": [{"providers": [{"name": "otel"}],
                                  "randomSamplingPercentage": 100}]},
        },
        {  # reviews v2 calls ratings
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"hosts": ["reviews"],
                     "http": [{"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}]},
        },
    ]  # fmt: skip
    return yaml.safe_dump_all(docs)


def _whole_trace(spans: list[Received]) -> list[Received] | None:
    traces: dict[bytes, list[Received]] = defaultdict(list)
    for span in spans:
        traces[span.span.trace_id].append(span)
    for found in traces.values():
        services = {s.service for s in found}
        ids = {s.span.span_id for s in found}
        # Whole: every hop's spans are in, each span's parent among them.
        # Sidecars export in batches (every 5 s or 5 spans), so one hop's
        # spans may still be on their way when the others have arrived.
        linked = all(s.span.parent_span_id in ids or not s.span.parent_span_id for s in found)
        if services >= SERVICES and len(services) >= 5 and linked:
            return found
    return None


def test_a_page_load_is_one_trace_across_five_hops(tmp_path: Path) -> None:
    receiver = OtlpReceiver().start()
    try:
        gateway_port = free_port()
        with mesh_up(tmp_path, gateway_port=gateway_port) as mesh:
            config = tmp_path / "tracing.yaml"
            config.write_text(_config(receiver.port))
            mesh.cli("apply", "-f", str(config), "--force-conflicts")

            def load() -> list[Received] | None:
                url = f"http://127.0.0.1:{gateway_port}/productpage"
                with DIRECT.open(url, timeout=20) as response:
                    assert response.status == 200
                return _whole_trace(receiver.received())

            trace = wait_for(load, 60, f"no whole trace: {receiver.received()[:3]}")
    finally:
        receiver.stop()
    by_id = {s.span.span_id: s for s in trace}
    roots = [s for s in trace if s.span.parent_span_id == b""]
    assert len(roots) == 1 and roots[0].service not in SERVICES  # the gateway starts it
    assert roots[0].span.kind == 3  # CLIENT, as Envoy's gateway spans are
    for span in trace:
        if span is not roots[0]:
            assert span.span.parent_span_id in by_id  # no hop lost
    servers = {s.service for s in trace if s.span.kind == 2}
    assert servers == SERVICES  # every app's inbound sidecar
