"""Schema defaults are filled in when an object is stored, as the Kubernetes
API server does: a Workload applied without `replicas` is stored with
`replicas: 1`, so every reader (and `get workloads`' DESIRED) sees it."""

from __future__ import annotations

from pathlib import Path

from pilotfish.api.validation import validate_or_raise, with_defaults
from pilotfish.store.resources import ResourceStore
from pilotfish.store.sqlite import SqliteBackend

WORKLOAD = {
    "apiVersion": "pilotfish.dev/v1alpha1",
    "kind": "Workload",
    "metadata": {"name": "details-v1", "namespace": "default"},
    "spec": {
        "labels": {"app": "details"},
        "command": ["python3", "details.py"],
        "ports": [{"name": "http", "port": 9080}],
    },
}


def test_missing_fields_get_their_defaults_at_every_depth() -> None:
    spec = with_defaults(WORKLOAD)["spec"]
    assert spec["replicas"] == 1 and spec["serviceAccountName"] == "default"
    assert spec["ports"] == [{"name": "http", "port": 9080, "protocol": "HTTP"}]
    assert "replicas" not in WORKLOAD["spec"]  # the caller's object is left alone


def test_given_values_win_and_unknown_kinds_pass_through() -> None:
    scaled = {**WORKLOAD, "spec": {**WORKLOAD["spec"], "replicas": 0}}
    assert with_defaults(scaled)["spec"]["replicas"] == 0
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "details"},
        "spec": {"ports": [{"name": "http", "port": 9080}]},
    }
    out = with_defaults(service)["spec"]
    assert out["type"] == "ClusterIP" and out["ports"][0]["protocol"] == "TCP"
    odd = {"apiVersion": "example.com/v1", "kind": "Nope"}
    assert with_defaults(odd) is odd


def test_the_store_keeps_defaults_and_a_second_apply_changes_nothing(tmp_path: Path) -> None:
    store = ResourceStore(
        SqliteBackend(tmp_path / "s.db"), validate=validate_or_raise, default=with_defaults
    )
    first = store.apply(WORKLOAD, manager="me")
    assert first["spec"]["replicas"] == 1
    again = store.apply(WORKLOAD, manager="me")
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
