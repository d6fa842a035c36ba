"""PF0007: a Workload's declared upstream names no service port in the mesh
(yet): a warning, never a refusal, since services come and go."""

from __future__ import annotations

from typing import Any

from pilotfish.analysis import analyze

Obj = dict[str, Any]


def ratings(*upstreams: Obj) -> Obj:
    return {
        "apiVersion": "pilotfish.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "ratings", "namespace": "default"},
        "spec": {"labels": {"app": "ratings"}, "command": ["r"], "upstreams": list(upstreams)},
    }


REDIS = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "redis", "namespace": "data"},
    "spec": {"selector": {"app": "redis"}, "ports": [{"name": "tcp", "port": 6379}]},
}


def pf0007(objects: list[Obj]) -> list[str]:
    return [str(m) for m in analyze(objects) if m.type.code == "PF0007"]


def test_an_upstream_without_its_service_port_warns() -> None:
    workload = ratings(
        {"service": "redis.data", "port": 6379, "localPort": 16379},
        {"service": "redis.data", "port": 6380, "localPort": 16380},
        {"service": "redis", "port": 6379, "localPort": 16381, "localAddress": "127.0.0.2"},
    )
    assert pf0007([workload, REDIS]) == [
        'Warning [PF0007] (Workload default/ratings) upstreams[1]: no service "redis.data" with '
        "port 6380: its sidecars do not listen on 127.0.0.1:16380 until one exists",
        'Warning [PF0007] (Workload default/ratings) upstreams[2]: no service "redis" with '
        "port 6379: its sidecars do not listen on 127.0.0.2:16381 until one exists",
    ]
