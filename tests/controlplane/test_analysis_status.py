"""status.validationMessages as istiod writes them, written once per change
and never in a loop."""

from __future__ import annotations

from typing import Any

from pilotfish.controlplane.analysis_status import StatusWriter
from pilotfish.store.resources import Key, ResourceStore

VS = Key("networking.istio.io", "VirtualService", "default", "reviews")


def _vs(subset: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "hosts": ["reviews"],
            "http": [{"route": [{"destination": {"host": "reviews", "subset": subset}}]}],
        },
    }


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "reviews", "namespace": "default"},
    "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]},
}
WORKLOAD = {
    "apiVersion": "pilotfish.dev/v1alpha1",
    "kind": "Workload",
    "metadata": {"name": "reviews-v1", "namespace": "default"},
    "spec": {"labels": {"app": "reviews", "version": "v1"}, "command": ["python3", "app.py"]},
}
RULE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "reviews", "namespace": "default"},
    "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
}


def test_messages_land_in_status_once_and_leave_when_fixed(store: ResourceStore) -> None:
    for obj in (SERVICE, WORKLOAD, RULE, _vs("v9")):
        store.apply(obj, manager="user")
    writer = StatusWriter(store)
    assert writer.sync() == 1
    written = store.get(VS)
    assert written["status"]["validationMessages"] == [
        {
            "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0101/",
            "level": "ERROR",
            "type": {"code": "IST0101", "name": "ReferencedResourceNotFound"},
        }
    ]
    assert writer.sync() == 0  # a status write changes nothing analysis reads
    assert store.get(VS)["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]

    store.apply(_vs("v1"), manager="user")
    assert writer.sync() == 1
    assert "validationMessages" not in (store.get(VS).get("status") or {})
    assert writer.sync() == 0
    assert "status" not in store.get(Key("", "Service", "default", "reviews")) or (
        "validationMessages" not in store.get(Key("", "Service", "default", "reviews"))["status"]
    )
