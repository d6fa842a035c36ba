"""PF0001: config pilotfish stores and serves but no proxy or controller acts
on yet, so a user never believes a policy is in force when it is not.

ONE table. Each row names what is stored, and `evidence`: text that enforcing
it would put in the source of a package (an Envoy proto a proxy would need, a
field a model would read). tests/analysis/test_unenforced.py fails when that
text appears, so the row is deleted in the change that enforces it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pilotfish.analysis.config import NETWORKING, TELEMETRY, Config, items, mapping, meta
from pilotfish.analysis.messages import Message, new
from pilotfish.objects import Obj

EXTENSIONS = "extensions.istio.io"


@dataclass(frozen=True)
class Unenforced:
    group: str
    kind: str
    field: str  # dotted path under the object, `[]` for every list item; "" for the whole kind
    reason: str
    evidence: tuple[tuple[str, str], ...]  # (package under src/pilotfish, text enforcing it needs)


_NO_KIND = "no proxy receives anything from it"
TABLE: tuple[Unenforced, ...] = (
    Unenforced(NETWORKING, "EnvoyFilter", "", _NO_KIND, (("translate", "EnvoyFilter"),)),
    Unenforced(
        NETWORKING,
        "ProxyConfig",
        "",
        _NO_KIND,
        (("translate", "ProxyConfig"), ("agent", "ProxyConfig")),
    ),
    Unenforced(
        NETWORKING,
        "WorkloadGroup",
        "",
        "no WorkloadEntry is made from it",
        (("model", "WorkloadGroup"), ("registry", "WorkloadGroup")),
    ),
    Unenforced(
        EXTENSIONS, "WasmPlugin", "", _NO_KIND, (("translate", "WasmPlugin"), ("proxy", "wasm"))
    ),
    Unenforced(EXTENSIONS, "TrafficExtension", "", _NO_KIND, (("translate", "TrafficExtension"),)),
    Unenforced(
        TELEMETRY,
        "Telemetry",
        "spec.metrics[].reportingInterval",
        "sidecars' metrics are scraped from /stats/prometheus, not pushed at an interval",
        (("translate", "reportingInterval"),),
    ),
    Unenforced(
        TELEMETRY,
        "Telemetry",
        "spec.accessLogging[].filter",
        "every request is logged: CEL filters are not evaluated",
        (("translate", '"filter"'),),
    ),
    *[
        Unenforced(
            TELEMETRY,
            "Telemetry",
            f"spec.{field}",
            "only spec.selector chooses workloads: this Telemetry applies namespace-wide",
            (("translate", "def telemetry_target_refs"),),
        )
        for field in ("targetRef", "targetRefs")
    ],
    Unenforced(
        NETWORKING,
        "VirtualService",
        "spec.tcp[].match[].destinationSubnets",
        "taken in sidecars when the destination service's address lies in a subnet; "
        "on a gateway a match that names it is never taken",
        (("translate", "prefix_ranges"),),
    ),
    Unenforced(
        NETWORKING,
        "VirtualService",
        "spec.tls",
        "served by PASSTHROUGH gateway servers and sidecars' declared upstreams; a CONNECT "
        "tunnel to a TLS port follows its `tcp` routes only",
        (("proxy", "internal_listener"),),
    ),
    Unenforced(
        NETWORKING,
        "VirtualService",
        "spec.tls[].match[].destinationSubnets",
        "taken in sidecars when the destination service's address lies in a subnet; "
        "on a gateway a match that names it is never taken",
        (("translate", "prefix_ranges"),),
    ),
    *[
        Unenforced(
            NETWORKING,
            "DestinationRule",
            f"{policy}.loadBalancer.{field}",
            reason,
            (("translate", f'"{field}"'),),
        )
        for policy in ("spec.trafficPolicy", "spec.subsets[].trafficPolicy")
        for field, reason in (("warmupDurationSecs", "new endpoints get their full share at once"),)
    ],
    *[
        Unenforced(
            NETWORKING,
            "Sidecar",
            f"spec.{field}",
            "a Sidecar's egress hosts and workloadSelector are all that is applied",
            (("model", f'"{field}"'), ("translate", f'"{field}"')),
        )
        for field in ("ingress", "inboundConnectionPool")
    ],
    Unenforced(
        "flagger.app",
        "Canary",
        "spec.autoscalerRef",
        "replicas are not scaled during a release",
        (("rollout", "autoscalerRef"),),
    ),
)


def values_at(obj: Any, path: str) -> Iterator[Any]:
    """Every value at a dotted path; `name[]` steps into each item of a list."""
    if not path:
        yield obj
        return
    step, _, rest = path.partition(".")
    if step.endswith("[]"):
        for item in items(mapping(obj).get(step[:-2])):
            yield from values_at(item, rest)
    elif step in mapping(obj):
        yield from values_at(mapping(obj)[step], rest)


def _present(obj: Obj, row: Unenforced) -> bool:
    return any(v not in (None, [], {}) for v in values_at(obj, row.field))


# The Istio annotations pilotfish acts on, by the kind they go on (a kind of
# None: any). tests/analysis/test_unenforced.py checks that the source reads
# no other Istio annotation, so an annotation starts being honoured here.
HONOURED_ANNOTATIONS: dict[str, tuple[str, ...]] = {
    "networking.istio.io/exportTo": ("Service",),
    "istio.io/dry-run": ("AuthorizationPolicy",),  # shadow rules
    "inject.istio.io/templates": ("Workload",),  # grpc-agent: a proxyless instance
    "galley.istio.io/analyze-suppress": (),  # analysis itself; any kind
}


def istio_annotation(key: str) -> bool:
    domain = key.partition("/")[0] if "/" in key else ""
    return domain == "istio.io" or domain.endswith(".istio.io")


def unenforced_annotations(config: Config) -> list[Message]:
    """PF0001 for an Istio annotation pilotfish does not act on where it is."""
    out = []
    for obj in config.all():
        for key in mapping(meta(obj).get("annotations")):
            kinds = HONOURED_ANNOTATIONS.get(str(key))
            honoured = kinds is not None and (not kinds or obj.get("kind") in kinds)
            if istio_annotation(str(key)) and not honoured:
                reason = "pilotfish acts on no such annotation here"
                out.append(new("NotEnforced", obj, f"annotation {key}", reason))
    return out


def unenforced(config: Config) -> list[Message]:
    """PF0001 for each kind or field in TABLE that an object has: stored, served, not enforced."""
    out = []
    for row in TABLE:
        for obj in config.of(row.group, row.kind):
            if _present(obj, row):
                what = f"{row.kind} {row.field}" if row.field else row.kind
                out.append(new("NotEnforced", obj, what, row.reason))
    return out + unenforced_annotations(config)


__all__ = ["TABLE", "Unenforced", "unenforced", "values_at"]
