"""`pilotfish apply` and `pilotfish analyze` against a real control plane
process: a second VirtualService for a host is IST0109, in both."""

from __future__ import annotations

import json
import urllib.request

import yaml
from processes import ControlPlane

LINE = (
    "Error [IST0109] (VirtualService default/{name}) The VirtualServices "
    "default/reviews,default/reviews-2 associated with mesh gateway define the same host "
    "*/reviews.default.svc.cluster.local which can lead to undefined behavior. This can be "
    "fixed by merging the conflicting VirtualServices into a single resource."
)


def _vs(name: str, path: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name},
            "spec": {
                "hosts": ["reviews"],
                "http": [
                    {
                        "match": [{"uri": {"prefix": path}}],
                        "route": [{"destination": {"host": "reviews"}}],
                    }
                ],
            },
        }
    )


SERVICE = yaml.safe_dump(
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "reviews"},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]},
    }
)


def test_two_virtual_services_for_one_host(controlplane: ControlPlane) -> None:
    setup = controlplane.cli("apply", "-f", "-", stdin=SERVICE)
    assert setup.returncode == 0, setup.stderr
    first = controlplane.cli("apply", "-f", "-", stdin=_vs("reviews", "/a"))
    assert first.returncode == 0 and first.stderr == "", first.stderr

    second = controlplane.cli("apply", "-f", "-", stdin=_vs("reviews-2", "/b"))
    assert second.returncode == 0, second.stderr
    assert "virtualservice.networking.istio.io/reviews-2 created" in second.stdout
    assert second.stderr.splitlines() == ["Warning: " + LINE.format(name="reviews-2")]

    analyzed = controlplane.cli("analyze")
    assert analyzed.returncode == 79
    assert analyzed.stdout.splitlines() == [LINE.format(name=n) for n in ("reviews", "reviews-2")]
    assert analyzed.stderr.splitlines()[0] == (
        "Error: Analyzers found issues when analyzing namespace: default."
    )

    # a file laid over the live state, as if applied: reviews-2 moved to another host
    moved = yaml.safe_load(_vs("reviews-2", "/b"))
    moved["spec"]["hosts"] = ["reviews-next"]
    overlaid = controlplane.cli("analyze", "-f", "-", stdin=yaml.safe_dump(moved))
    assert overlaid.returncode == 0, overlaid.stdout
    assert "No validation issues found when analyzing -." in overlaid.stderr

    suppressed = controlplane.cli(
        "analyze",
        "--suppress",
        "IST0109=VirtualService reviews.default",
        "--suppress",
        "IST0109=VirtualService default/reviews-2",
    )
    assert suppressed.returncode == 0, suppressed.stdout
    assert "No validation issues found when analyzing namespace: default." in suppressed.stderr

    telemetry = yaml.safe_dump(
        {
            "apiVersion": "telemetry.istio.io/v1",
            "kind": "Telemetry",
            "metadata": {"name": "mesh-default", "namespace": "istio-system"},  # mesh-wide
            "spec": {
                "tracing": [{"providers": [{"name": "otel"}]}],
                "metrics": [
                    {
                        "providers": [{"name": "prometheus"}],
                        "overrides": [
                            {"match": {"metric": "REQUEST_SIZE"}, "disabled": True},  # enforced
                            {"tagOverrides": {"big": {"value": "request.size > 1024"}}},
                        ],
                    }
                ],
            },
        }
    )
    applied = controlplane.cli("apply", "-f", "-", stdin=telemetry)
    assert applied.returncode == 0, applied.stderr
    (warning,) = applied.stderr.splitlines()
    assert warning.startswith(
        "Warning: Warning [PF0001] (Telemetry istio-system/mesh-default) Telemetry "
        "spec.metrics[0].overrides[1].tagOverrides.big.value is stored but not enforced by "
        "pilotfish: expression 'request.size > 1024' is not supported"
    ), warning

    url = f"{controlplane.server}/apis/pilotfish.dev/v1alpha1/analyze?namespace=default"
    with urllib.request.urlopen(url, timeout=10) as response:
        messages = json.loads(response.read())["messages"]
    assert [(m["code"], m["origin"]) for m in messages] == [
        ("IST0109", "VirtualService default/reviews"),
        ("IST0109", "VirtualService default/reviews-2"),
    ]
