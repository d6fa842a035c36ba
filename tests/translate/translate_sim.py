"""Simulation helpers: config in, translate, then ask the proxy's real route
table (pilotfish.proxy.routing) where a request goes, Istio
`pilot/pkg/simulation` style: no sockets, no processes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2

from pilotfish.api.manifest_yaml import load_all
from pilotfish.model import Instance, Proxy, ProxyType, Snapshot, build_snapshot
from pilotfish.proxy import xds_types  # noqa: F401  (registers Any payload types)
from pilotfish.proxy.routing import Forward, Request, RouteTable, compile_route_config
from pilotfish.translate import translate_routes

BOOKINFO_DIR = Path("/work/shared/conformance/istio/bookinfo-networking")
Obj = dict[str, Any]


def service(name: str, namespace: str = "default", port: int = 9080, **spec: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port}], **spec},
    }


def instance(app: str, version: str, port: int, namespace: str = "default", **kw: Any) -> Instance:
    return Instance(
        name=f"{app}-{version}-0",
        namespace=namespace,
        workload=f"{app}-{version}",
        address="127.0.0.1",
        ports={"http": port},
        labels={"app": app, "version": version},
        **kw,
    )


BOOKINFO_SERVICES = [service(n) for n in ("productpage", "details", "reviews", "ratings")]
BOOKINFO_INSTANCES = [
    instance("productpage", "v1", 19080),
    instance("details", "v1", 19081),
    instance("details", "v2", 19082),
    instance("reviews", "v1", 19083),
    instance("reviews", "v2", 19084),
    instance("reviews", "v3", 19085),
    instance("ratings", "v1", 19086),
    instance("ratings", "v2", 19087),
    instance("ratings", "v2-mysql", 19088),
    instance("ratings", "v2-mysql-vm", 19089),
]
PRODUCTPAGE = Proxy(
    node_id="sidecar~127.0.0.1~productpage-v1-0.default~default.svc.cluster.local",
    namespace="default",
    labels={"app": "productpage", "version": "v1"},
    workload="productpage-v1",
)
INGRESS = Proxy(
    node_id="router~127.0.0.1~ingress-0.istio-system~istio-system.svc.cluster.local",
    namespace="istio-system",
    type=ProxyType.ROUTER,
    labels={"istio": "ingressgateway"},
)


def load_file(name: str) -> list[Obj]:
    return [d for d in load_all((BOOKINFO_DIR / name).read_text()) if d]


def bookinfo(*files: str, extra: list[Obj] | None = None) -> Snapshot:
    objects = list(BOOKINFO_SERVICES) + (extra or [])
    for name in files:
        objects += load_file(name)
    return build_snapshot(objects, BOOKINFO_INSTANCES)


def table(snapshot: Snapshot, proxy: Proxy, route_name: str) -> RouteTable:
    configs = translate_routes(snapshot, proxy, [route_name])
    assert [c.name for c in configs] == [route_name]
    return compile_route_config(configs[0])


def sidecar_table(snapshot: Snapshot, proxy: Proxy = PRODUCTPAGE) -> RouteTable:
    return table(snapshot, proxy, "http_proxy")


def request(host: str, path: str = "/", headers: dict[str, str] | None = None) -> Request:
    pairs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(path=path.encode(), authority=host.encode(), headers=pairs)


def cluster_for(t: RouteTable, req: Request, rand: int = 0) -> str | None:
    """The cluster a request is sent to; None when no route matches."""
    route = t.route(req, rand)
    if route is None:
        return None
    assert isinstance(route.action, Forward), route.action
    return route.action.pick(req, rand).cluster


def split(t: RouteTable, req: Request, draws: int = 100) -> Counter[str]:
    """How `draws` evenly spread random values divide among clusters: with
    weights summing to 100, exactly the percentages."""
    return Counter(cluster_for(t, req, rand) or "none" for rand in range(draws))


def fault_of(t: RouteTable, req: Request) -> fault_pb2.HTTPFault | None:
    route = t.route(req, 0)
    assert route is not None
    assert isinstance(route.action, Forward)
    found = route.action.pick(req, 0).filter_configs.get("envoy.filters.http.fault")
    assert found is None or isinstance(found, fault_pb2.HTTPFault)
    return found


def route_config(snapshot: Snapshot, proxy: Proxy, name: str) -> route_pb2.RouteConfiguration:
    (config,) = translate_routes(snapshot, proxy, [name])
    return config


def cluster(name: str, subset: str = "", port: int = 9080, ns: str = "default") -> str:
    return f"outbound|{port}|{subset}|{name}.{ns}.svc.cluster.local"
