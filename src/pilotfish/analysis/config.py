"""The set of objects analyzers read, and the host rules they share (Istio's
`pkg/config/host` and `analyzers/util`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pilotfish.model.config import labels_match as labels_match  # one matcher, re-exported
from pilotfish.objects import Obj

NETWORKING = "networking.istio.io"
SECURITY = "security.istio.io"
TELEMETRY = "telemetry.istio.io"
DOMAIN = "svc.cluster.local"
MESH_GATEWAY = "mesh"
EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"


class Config:
    """Objects by (group, kind), each kind sorted by namespace and name so that
    messages naming several objects read the same whatever order they came in."""

    def __init__(self, objects: list[Obj]) -> None:
        self._by_kind: dict[tuple[str, str], list[Obj]] = {}
        for obj in sorted(objects, key=lambda o: (namespace_of(o), name_of(o))):
            self._by_kind.setdefault(group_kind(obj), []).append(obj)
        self._services: dict[str, list[Obj]] | None = None

    def __repr__(self) -> str:
        return f"Config({sum(len(v) for v in self._by_kind.values())} objects)"

    def all(self) -> list[Obj]:
        return [obj for found in self._by_kind.values() for obj in found]

    def of(self, group: str, kind: str) -> list[Obj]:
        return self._by_kind.get((group, kind), [])

    def services_at(self, host: str) -> list[Obj]:
        """The v1 Services named by `host` (NAME.NAMESPACE.svc.cluster.local),
        indexed once: analyzers look a host up per route destination."""
        if self._services is None:
            self._services = {}
            for service in self.of("", "Service"):
                self._services.setdefault(service_host(service), []).append(service)
        return self._services.get(host, [])

    def find(self, group: str, kind: str, namespace: str, name: str) -> Obj | None:
        for obj in self.of(group, kind):
            if namespace_of(obj) == namespace and name_of(obj) == name:
                return obj
        return None


def workloads(config: Config) -> list[Obj]:
    """What runs in the mesh and carries labels: Workloads and WorkloadEntries
    (pilotfish's stand-ins for Istio's Pods; every one has a sidecar)."""
    return config.of("pilotfish.dev", "Workload") + config.of(NETWORKING, "WorkloadEntry")


def group_kind(obj: Obj) -> tuple[str, str]:
    return str(obj.get("apiVersion", "")).rpartition("/")[0], str(obj.get("kind", ""))


def meta(obj: Obj) -> Obj:
    found = obj.get("metadata")
    return found if isinstance(found, dict) else {}


def spec(obj: Obj) -> Obj:
    found = obj.get("spec")
    return found if isinstance(found, dict) else {}


def namespace_of(obj: Obj) -> str:
    return str(meta(obj).get("namespace") or "")


def name_of(obj: Obj) -> str:
    return str(meta(obj).get("name") or "")


def full_name(obj: Obj) -> str:
    ns = namespace_of(obj)
    return f"{ns}/{name_of(obj)}" if ns else name_of(obj)


def items(value: Any) -> list[Any]:
    """A list field, or [] when it is absent or of the wrong shape."""
    return value if isinstance(value, list) else []


def mapping(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def to_fqdn(namespace: str, host: str) -> str:
    """A short name means a Service of the namespace; anything with a dot, or a
    wildcard, is taken as written (Istio's util.ConvertHostToFQDN)."""
    if host.startswith("*") or "." in host:
        return host
    return f"{host}.{namespace}.{DOMAIN}"


def service_host(service: Obj) -> str:
    """A v1 Service's host name: NAME.NAMESPACE.svc.cluster.local."""
    return f"{name_of(service)}.{namespace_of(service)}.{DOMAIN}"


def hosts_match(a: str, b: str) -> bool:
    """Istio's host.Name.Matches: equal, or one wildcard covers the other."""
    a_wild, b_wild = a.startswith("*"), b.startswith("*")
    if a_wild and not b:
        return True
    if not a_wild and not b_wild:
        return a == b
    if a_wild and b_wild:
        short, long = sorted((a[1:], b[1:]), key=len)
        return long.endswith(short)
    if a_wild:
        return b.endswith(a[1:])
    return a.endswith(b[1:])


def export_scope(export_to: list[Any], namespace: str) -> set[str]:
    """The namespaces an object is visible in; {"*"} for all of them."""
    values = [str(v).strip() for v in export_to if str(v).strip()]
    if not values or "*" in values:
        return {"*"}
    return {namespace if v == "." else v for v in values}


def visible_from(scope: set[str], namespace: str) -> bool:
    return "*" in scope or namespace in scope


def service_export(svc: Obj) -> set[str]:
    raw = str(mapping(meta(svc).get("annotations")).get(EXPORT_TO_ANNOTATION) or "")
    return export_scope(raw.split(",") if raw else [], namespace_of(svc))


def labels_text(selector: Obj) -> str:
    """A selector as Kubernetes prints one: `app=a,version=v1`, keys sorted."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def iter_routes(vs_spec: Obj) -> Iterator[tuple[str, Obj]]:
    """(section, rule) for every rule of a VirtualService, http then tcp then tls."""
    for section in ("http", "tcp", "tls"):
        for rule in items(vs_spec.get(section)):
            if isinstance(rule, dict):
                yield section, rule
