"""Host names as Istio reads them in config.

A short name (no dot) in a VirtualService or DestinationRule means a Service
in the config's own namespace; anything with a dot is taken as written, so
`reviews.default` stays `reviews.default` (Istio does not expand it, and
neither do we: it would match nothing, exactly as in Istio). Wildcards are
allowed in the first label only: `*.example.com`, or `*` alone.
"""

from __future__ import annotations

DOMAIN_SUFFIX = "cluster.local"
ROOT_NAMESPACE = "istio-system"
MESH_GATEWAY = "mesh"


def service_fqdn(name: str, namespace: str) -> str:
    """The host of a v1 Service: `reviews.default.svc.cluster.local`."""
    return f"{name}.{namespace}.svc.{DOMAIN_SUFFIX}"


def resolve_host(host: str, namespace: str) -> str:
    """Istio's ResolveShortnameToFQDN: only dotless names are qualified."""
    if not host or host == "*" or "." in host:
        return host.lower()
    return service_fqdn(host.lower(), namespace)


def is_wildcard(host: str) -> bool:
    return host.startswith("*")


def covers(pattern: str, host: str) -> bool:
    """Whether `pattern` (possibly a wildcard) includes `host`."""
    if pattern == "*" or pattern == host:
        return True
    if not is_wildcard(pattern):
        return False
    suffix = pattern[1:]
    if is_wildcard(host):
        return host[1:].endswith(suffix)
    return host.endswith(suffix)


def matches(a: str, b: str) -> bool:
    """Istio's host.Name.Matches: either side may be the wider one."""
    return covers(a, b) or covers(b, a)


def more_specific(a: str, b: str) -> str:
    """Of two matching hosts, the narrower: what a VirtualService host and a
    Gateway server host have in common."""
    if covers(a, b):
        return b
    return a


def resolve_gateway_name(name: str, namespace: str) -> str:
    """`gw`, `ns/gw` or the legacy `gw.ns.svc.cluster.local` as `ns/gw`;
    `mesh` stays `mesh`."""
    if name == MESH_GATEWAY:
        return name
    if "/" in name:
        gw_ns, _, gw_name = name.partition("/")
        return f"{gw_ns or namespace}/{gw_name}"
    if "." in name:
        gw_name, _, rest = name.partition(".")
        return f"{rest.split('.')[0]}/{gw_name}"
    return f"{namespace}/{name}"


def split_namespaced_host(entry: str, own_namespace: str) -> tuple[str, str]:
    """A Sidecar egress or Gateway server host, `ns/host`, as (namespace, host);
    `.` is the owner's namespace, a bare host means any namespace (`*`)."""
    if "/" not in entry:
        return "*", entry.lower()
    ns, _, host = entry.partition("/")
    return (own_namespace if ns == "." else ns), host.lower()
