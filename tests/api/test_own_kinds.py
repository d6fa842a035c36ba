"""The core kinds (Service, ConfigMap, Secret, Namespace) and pilotfish's Workload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pilotfish.api.kinds import registry
from pilotfish.api.manifest_yaml import load_all
from pilotfish.api.validation import validate

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/workload-httpbin.yaml"


def messages(obj: dict[str, Any]) -> list[str]:
    return [str(e) for e in validate(obj)]


def service(ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "reviews"},
        "spec": {"selector": {"app": "reviews"}, "ports": ports},
    }


def workload(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "labels": {"app": "web"},
        "command": ["python3", "-m", "http.server", "$(PORT)"],
    }
    return {
        "apiVersion": "pilotfish.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "web"},
        "spec": {**base, **spec},
    }


def test_short_names_resolve() -> None:
    assert registry().resolve("svc").kind == "Service"
    assert registry().resolve("cm").kind == "ConfigMap"
    assert registry().resolve("ns").kind == "Namespace"
    assert registry().resolve("wl").kind == "Workload"
    assert not registry().resolve("ns").namespaced


def test_service_ports() -> None:
    assert messages(service([{"port": 9080}])) == []
    assert messages(service([{"name": "http", "port": 70000, "protocol": "HTTP"}])) == [
        "spec.ports[0].port: Invalid value: 70000: spec.ports[0].port in body should be less than or equal to 65535",
        'spec.ports[0].protocol: Unsupported value: "HTTP": supported values: "TCP", "UDP", "SCTP"',
    ]
    assert messages(
        service(
            [
                {"name": "a", "port": 80},
                {"port": 81},
                {"name": "a", "port": 80, "targetPort": "web"},
            ]
        )
    ) == [
        "spec.ports[1].name: Required value",
        'spec.ports[2].name: Duplicate value: "a"',
        'spec.ports[2]: Duplicate value: {"port":80,"protocol":"TCP"}',
    ]


def test_config_map_and_secret() -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c"},
        "data": {"a.txt": "x"},
        "binaryData": {"b": "aGk="},
    }
    assert messages(cm) == []
    cm["data"] = {"bad/key": "x"}
    assert messages(cm)[0].startswith('data[bad/key]: Invalid value: "bad/key": a valid config key')
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s"},
        "data": {"token": "not base64!"},
    }
    assert messages(secret) == [
        'data[token]: Invalid value: "not base64!": data[token] in body must be of type byte: "not base64!"'
    ]


def test_namespace_is_cluster_scoped() -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}
    assert messages(ns) == []
    ns["metadata"]["namespace"] = "default"
    assert messages(ns) == ["metadata.namespace: Forbidden: not allowed on this type"]


def test_example_workload_is_valid() -> None:
    for doc in load_all(EXAMPLE.read_text(encoding="utf-8")):
        assert messages(doc) == [], doc["kind"]


def test_workload_requires_command_and_app_label() -> None:
    obj = workload(labels={"version": "v1"}, command=[])
    assert messages(obj) == [
        "spec.command: Invalid value: 0: spec.command in body should have at least 1 items",
        'spec.labels: Invalid value: "object": must contain the label "app"',
    ]


def test_workload_env_and_probe_handlers_are_exclusive() -> None:
    obj = workload(
        env=[
            {"name": "A", "value": "1", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}
        ],
        readinessProbe={"httpGet": {"port": 80}, "tcpSocket": {"port": 80}},
    )
    assert messages(obj) == [
        'spec.env[0]: Invalid value: "object": may not specify both value and valueFrom',
        'spec.readinessProbe: Invalid value: "object": must specify exactly one of httpGet, tcpSocket, exec',
    ]


def test_workload_cross_references() -> None:
    obj = workload(
        ports=[{"name": "http", "port": 8000}, {"name": "http", "port": 8001}],
        volumes=[{"name": "cfg", "configMap": {"name": "c"}}],
    )
    assert messages(obj) == ['spec.ports[1]: Duplicate value: {"name":"http"}']
    obj = workload(
        ports=[{"name": "http", "port": 8000}],
        volumes=[{"name": "cfg", "configMap": {"name": "c"}}],
        volumeMounts=[{"name": "data", "mountPath": "data"}],
        livenessProbe={"httpGet": {"path": "/", "port": "admin"}},
        strategy={"rollingUpdate": {"maxSurge": "150%"}},
    )
    assert messages(obj) == [
        'spec.volumeMounts[0].name: Not found: "data"',
        'spec.livenessProbe.httpGet.port: Not found: "admin": no port of spec.ports has that name',
        'spec.strategy.rollingUpdate.maxSurge: Invalid value: "150%": must not be greater than 100%',
    ]


def test_workload_upstreams() -> None:
    ok = [
        {"service": "redis", "port": 6379, "localPort": 16379},
        {
            "service": "reviews.bookinfo",
            "port": 9080,
            "localPort": 16379,
            "localAddress": "127.0.0.2",
        },
    ]
    assert messages(workload(upstreams=ok)) == []
    bad = [
        {"service": "redis", "port": 6379, "localPort": 16379},
        {"service": "Redis!", "port": 0, "localPort": 16379, "localAddress": "10.0.0.1"},
        {"service": "cache", "port": 11211, "localPort": 16379, "localAddress": "127.0.0.1"},
        {"port": 1},
    ]
    got = messages(workload(upstreams=bad))
    assert got == [
        'spec.upstreams[1].service: Invalid value: "Redis!": spec.upstreams[1].service in body '
        "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'",
        "spec.upstreams[1].port: Invalid value: 0: spec.upstreams[1].port in body should be "
        "greater than or equal to 1",
        'spec.upstreams[1].localAddress: Invalid value: "10.0.0.1": spec.upstreams[1].localAddress '
        "in body should match '^127\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}$'",
        "spec.upstreams[3].service: Required value",
        "spec.upstreams[3].localPort: Required value",
    ], got


def test_workload_upstreams_may_not_share_a_local_address() -> None:
    twice = [
        {"service": "redis", "port": 6379, "localPort": 16379},
        {"service": "cache", "port": 11211, "localPort": 16379, "localAddress": "127.0.0.1"},
        {"service": "cache", "port": 11211, "localPort": 16379, "localAddress": "127.0.0.2"},
    ]
    assert messages(workload(upstreams=twice)) == [
        "spec.upstreams[1].localPort: Duplicate value: 16379"
    ]
