"""What a Canary's objects should look like, given its status: pure
functions, as Flagger's Kubernetes and Istio routers build them.

For a Canary whose target is the Workload `reviews` (labels app=reviews):
  - Workload `reviews-primary`: the target's spec, labels app=reviews-primary,
    reading `-primary` copies of its ConfigMaps and Secrets (so editing one
    starts an analysis instead of changing the primary under the users);
  - Services `reviews` and `reviews-primary` select the primary,
    `reviews-canary` selects the target;
  - DestinationRules `reviews-primary`, `reviews-canary`;
  - VirtualService `reviews`: weights between the two, a header match for
    A/B, a mirror for blue/green and a mirrored canary's first step.
Routes and replica counts are derived from the status alone, so a restarted
control plane puts back exactly what the stored status says.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pilotfish.api.workloads import referenced
from pilotfish.objects import Obj
from pilotfish.rollout.canary import Canary, Strategy
from pilotfish.rollout.phases import ANALYSING, CANARY_UP
from pilotfish.rollout.status import CanaryStatus
from pilotfish.store.types import Key

PRIMARY = "-primary"
CONFIG_FIELDS = ("data", "binaryData", "stringData", "type")
MANAGED_BY = {"app.kubernetes.io/managed-by": "pilotfish-rollout"}


@dataclass(frozen=True)
class Routes:
    primary: int
    canary: int
    match_to_canary: bool = False  # A/B: matching requests go to the canary
    mirror: bool = False  # the canary gets copies (blue/green, a canary's first step)


def routes(canary: Canary, status: CanaryStatus) -> Routes:
    weight, phase = status.canary_weight, status.phase
    testing = phase in ANALYSING and status.iterations > 0
    if canary.strategy is Strategy.AB:
        return Routes(100, 0, match_to_canary=testing or phase == "Promoting")
    # Blue/green mirrors while it iterates, a weighted canary for its mirrored step.
    mirroring = testing if canary.strategy is Strategy.BLUE_GREEN else status.mirrored
    mirror = canary.mirror and weight == 0 and phase in ANALYSING and bool(mirroring)
    return Routes(100 - weight, weight, mirror=mirror)


def canary_replicas(status: CanaryStatus, primary: Obj | None) -> int:
    """The target runs only while it is analysed or promoted."""
    if status.phase not in CANARY_UP or primary is None:
        return 0
    return int((primary.get("spec") or {}).get("replicas", 1))


# -- the primary ------------------------------------------------------------------


def primary_workload(canary: Canary, target: Obj, primary: Obj | None) -> Obj:
    """The target's spec under primary labels and config copies; the
    primary's own replica count once it exists."""
    spec = copy.deepcopy(target["spec"])
    spec["labels"] = primary_labels(spec.get("labels") or {})
    _rename_refs(spec)
    if primary is not None:
        spec["replicas"] = (primary.get("spec") or {}).get("replicas", 1)
    elif not spec.get("replicas"):
        spec["replicas"] = 1
    meta = target.get("metadata") or {}
    return _obj(
        "pilotfish.dev/v1alpha1",
        "Workload",
        canary.primary,
        canary.namespace,
        spec=spec,
        labels={**(meta.get("labels") or {}), **primary_labels(meta.get("labels") or {})},
    )


def primary_labels(labels: dict[str, str]) -> dict[str, str]:
    return {k: (f"{v}{PRIMARY}" if k == "app" else v) for k, v in labels.items()}


def config_copies(target: Obj, configs: dict[tuple[str, str], Obj]) -> list[Obj]:
    """`-primary` copies of each ConfigMap and Secret the target reads."""
    copies = []
    for kind, name in sorted(referenced(target["spec"])):
        source = configs.get((kind, name))
        if source is None:
            continue
        body = {
            k: v for k, v in source.items() if k in ("data", "binaryData", "stringData", "type")
        }
        namespace = source["metadata"].get("namespace") or "default"
        copies.append(_obj("v1", kind, name + PRIMARY, namespace, **body))
    return copies


def _rename_refs(spec: Obj) -> None:
    for var in spec.get("env") or []:
        source = var.get("valueFrom") or {}
        for key in ("configMapKeyRef", "secretKeyRef"):
            if key in source:
                source[key]["name"] += PRIMARY
    for source in spec.get("envFrom") or []:
        for key in ("configMapRef", "secretRef"):
            if key in source:
                source[key]["name"] += PRIMARY
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            volume["configMap"]["name"] += PRIMARY
        if "secret" in volume:
            volume["secret"]["secretName"] += PRIMARY


# -- services and routing ------------------------------------------------------------


def services(canary: Canary, target: Obj) -> list[Obj]:
    app = _app(target)
    chosen = {
        canary.service: app + PRIMARY,
        canary.service + PRIMARY: app + PRIMARY,
        canary.service + "-canary": app,
    }
    return [_service(canary, target, name, selected) for name, selected in chosen.items()]


def _app(target: Obj) -> str:
    return str((target["spec"].get("labels") or {})["app"])


def _service(canary: Canary, target: Obj, name: str, app: str) -> Obj:
    port = _service_port(canary, target)
    spec = {"ports": [port], "selector": {"app": app}}
    return _obj("v1", "Service", name, canary.namespace, spec=spec, labels={"app": name})


def _service_port(canary: Canary, target: Obj) -> Obj:
    """Named after the Workload port it reaches: instances register their
    ports by name, and the sidecar, not the application, owns the number."""
    service = canary.spec.get("service") or {}
    wanted = canary.target_port
    ports = target["spec"].get("ports") or []
    name = next((p["name"] for p in ports if wanted in (p.get("name"), p.get("port"))), None)
    name = name or service.get("portName") or "http"
    return {"name": name, "port": canary.port, "protocol": "TCP"}


def destination_rules(canary: Canary) -> list[Obj]:
    policy = (canary.spec.get("service") or {}).get("trafficPolicy")
    return [
        _obj(
            "networking.istio.io/v1beta1",
            "DestinationRule",
            name,
            canary.namespace,
            spec={"host": name, **({"trafficPolicy": policy} if policy else {})},
        )
        for name in (canary.service + PRIMARY, canary.service + "-canary")
    ]


def virtual_service(canary: Canary, status: CanaryStatus) -> Obj:
    service = canary.spec.get("service") or {}
    want = routes(canary, status)
    primary, other = canary.service + PRIMARY, canary.service + "-canary"
    main: Obj = {
        **{
            k: service[k]
            for k in ("retries", "timeout", "headers", "corsPolicy", "rewrite")
            if k in service
        },
        "route": [
            _destination(primary, canary, want.primary),
            _destination(other, canary, want.canary),
        ],
    }
    if service.get("match"):
        main["match"] = service["match"]
    if want.mirror:
        main["mirror"] = {"host": other, "port": {"number": canary.port}}
        main["mirrorPercentage"] = {"value": float(canary.mirror_weight)}
    http = [*_sticky_routes(canary, status, main), main]
    if want.match_to_canary:
        to_canary = {
            "match": _ab_match(canary, service.get("match") or []),
            "route": [_destination(primary, canary, 0), _destination(other, canary, 100)],
        }
        http = [to_canary, main]
    spec: Obj = {"hosts": [canary.service, *(service.get("hosts") or [])], "http": http}
    if service.get("gateways"):
        spec["gateways"] = service["gateways"]
    return _obj(
        "networking.istio.io/v1beta1", "VirtualService", canary.service, canary.namespace, spec=spec
    )


def _sticky_routes(canary: Canary, status: CanaryStatus, main: Obj) -> list[Obj]:
    """Flagger's session affinity (phases._session_cookies keeps the cookies):
    during a release, the weighted route's canary answers set the canary
    cookie (and its primary answers the primary cookie, if named), and
    routes before it send each cookie's holders back where they landed;
    after it, a route expires the previous release's cookie."""
    affinity = canary.session_affinity
    if affinity is None:
        return []
    cookie = status.session_affinity_cookie
    if not cookie:
        previous = status.previous_session_affinity_cookie
        if not previous:
            return []
        expire = _set_cookie(main.get("headers"), f"{previous}; Max-Age=-1")
        return [{**main, "match": _cookie_match(canary, previous), "headers": expire}]
    to_primary, to_canary = main["route"]
    sticky = [_sticky(canary, main, cookie, canary_weight=100)]
    primary_cookie = status.primary_session_affinity_cookie
    if affinity.get("primaryCookieName") and primary_cookie:
        sticky.append(_sticky(canary, main, primary_cookie, canary_weight=0))
        set_primary = _build_cookie(affinity, primary_cookie, canary.interval_s)
        to_primary["headers"] = _set_cookie(None, set_primary)
    set_canary = _build_cookie(affinity, cookie, affinity.get("maxAge") or 86400)
    to_canary["headers"] = _set_cookie(None, set_canary)
    return sticky


def _sticky(canary: Canary, main: Obj, cookie: str, canary_weight: int) -> Obj:
    """The weighted route, for a cookie's holders, all to one side."""
    to_primary, to_canary = main["route"]
    route = [{**to_primary, "weight": 100 - canary_weight}, {**to_canary, "weight": canary_weight}]
    return {**main, "match": _cookie_match(canary, cookie), "route": route}


def _cookie_match(canary: Canary, cookie: str) -> list[Obj]:
    """The cookie's holders, within the service's own match if it has one."""
    name, _, value = cookie.partition("=")
    by_cookie = {"cookie": {"regex": f".*{name}.*{value}.*"}}
    service_match = (canary.spec.get("service") or {}).get("match") or [{}]
    return [{**m, "headers": {**(m.get("headers") or {}), **by_cookie}} for m in service_match]


def _build_cookie(affinity: Obj, cookie: str, max_age: float) -> str:
    """A Set-Cookie value with the attributes sessionAffinity asks for, in Flagger's order."""
    text = f"{cookie}; Max-Age={int(max_age)}"
    if affinity.get("domain"):
        text += f"; Domain={affinity['domain']}"
    for flag, attribute in (("httpOnly", "HttpOnly"), ("partitioned", "Partitioned")):
        if affinity.get(flag):
            text += f"; {attribute}"
    if affinity.get("path"):
        text += f"; Path={affinity['path']}"
    if affinity.get("sameSite"):
        text += f"; SameSite={affinity['sameSite']}"
    if affinity.get("secure"):
        text += "; Secure"
    return text


def _set_cookie(headers: Obj | None, value: str) -> Obj:
    """`headers` (a route's or a destination's) with Set-Cookie added to the response."""
    headers = copy.deepcopy(headers or {})
    response = headers.setdefault("response", {})
    response["add"] = {**(response.get("add") or {}), "Set-Cookie": value}
    return headers


def _ab_match(canary: Canary, service_match: list[Obj]) -> list[Obj]:
    """Flagger merges each analysis match with each service match."""
    if not service_match:
        return [dict(m) for m in canary.match]
    return [{**s, **m} for m in canary.match for s in service_match]


# -- reverting (revertOnDeletion) ---------------------------------------------------


def reverted_service(canary: Canary, target: Obj) -> Obj:
    """The Service named after the Canary's, selecting the target again."""
    return _service(canary, target, canary.service, _app(target))


def generated(canary: Canary, target: Obj) -> list[Key]:
    """What the Canary made besides that Service: what Kubernetes' garbage
    collector removes once a Canary is gone (its primary, the primary's
    config copies, the -primary and -canary Services and DestinationRules,
    the VirtualService)."""
    ns = canary.namespace
    configs = sorted(referenced(target["spec"]))
    copies = [Key("", kind, ns, name + PRIMARY) for kind, name in configs]
    return [
        Key("pilotfish.dev", "Workload", ns, canary.primary),
        *copies,
        *(Key("", "Service", ns, canary.service + end) for end in (PRIMARY, "-canary")),
        *(
            Key("networking.istio.io", "DestinationRule", ns, canary.service + end)
            for end in (PRIMARY, "-canary")
        ),
        Key("networking.istio.io", "VirtualService", ns, canary.service),
    ]


def _destination(host: str, canary: Canary, weight: int) -> Obj:
    return {"destination": {"host": host, "port": {"number": canary.port}}, "weight": weight}


def _obj(
    api_version: str,
    kind: str,
    name: str,
    namespace: str,
    *,
    labels: dict[str, str] | None = None,
    **body: Any,
) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "labels": {**(labels or {}), **MANAGED_BY}}
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, **body}
