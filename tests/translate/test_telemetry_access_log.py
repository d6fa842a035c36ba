"""Telemetry accessLogging and the mesh config's access log settings,
translated and compiled by the proxy, without sockets."""

from __future__ import annotations

from typing import Any

from test_telemetry_tracing import mesh, telemetry
from translate_sim import BOOKINFO_INSTANCES, BOOKINFO_SERVICES, PRODUCTPAGE

from pilotfish.model import build_snapshot
from pilotfish.proxy.listeners import compile_listener
from pilotfish.translate import translate_listeners

Obj = dict[str, Any]


def logs_of(*objects: Obj) -> dict[str, tuple[str, ...]]:
    snapshot = build_snapshot([*BOOKINFO_SERVICES, *objects], BOOKINFO_INSTANCES)
    out = {}
    for listener in translate_listeners(snapshot, PRODUCTPAGE):
        compiled = compile_listener(listener)
        out["inbound" if compiled.inbound else "outbound"] = compiled.http.access_log_paths
    return out


def access(name: str, namespace: str, entries: list[Obj], selector: Obj | None = None) -> Obj:
    obj = telemetry(name, namespace, [], selector)
    del obj["spec"]["tracing"]
    obj["spec"]["accessLogging"] = entries
    return obj


def test_none_by_default_and_the_mesh_config_file() -> None:
    assert logs_of() == {"inbound": (), "outbound": ()}
    found = logs_of(mesh({"accessLogFile": "/dev/stdout"}))
    assert found == {"inbound": ("/dev/stdout",), "outbound": ("/dev/stdout",)}


def test_envoy_provider_and_file_extension_provider() -> None:
    config = mesh({"extensionProviders": [
        {"name": "file", "envoyFileAccessLog": {"path": "/tmp/pilotfish-access.log"}}]})  # fmt: skip
    objects = [
        config,
        access("mesh-default", "istio-system", [{"providers": [{"name": "envoy"}]}]),
        access("ns", "default", [{"match": {"mode": "SERVER"}, "providers": [{"name": "file"}]}]),
    ]
    assert logs_of(*objects) == {
        "inbound": ("/tmp/pilotfish-access.log",),  # the namespace's, SERVER side only
        "outbound": ("/dev/stdout",),  # the mesh's
    }


def test_disabled_at_the_workload_wins() -> None:
    objects = [
        mesh({"accessLogFile": "/dev/stdout"}),
        access("mesh-default", "istio-system", [{"providers": [{"name": "envoy"}]}]),
        access("pp", "default", [{"disabled": True}], selector={"app": "productpage"}),
    ]
    assert logs_of(*objects) == {"inbound": (), "outbound": ()}
