"""VirtualService HTTP routes -> Envoy Routes (Istio's TranslateRoute).

Routes are built for one port at a time, because a destination without a
port means "the port the request came in on" (or the service's only port),
and a match may name a port. Order is kept: Envoy takes the first route that
matches, as Istio documents. A match that catches everything ends the list.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2 as rc
from google.protobuf.wrappers_pb2 import UInt32Value

from pilotfish.model import Proxy, ProxyType, Snapshot, VirtualService
from pilotfish.objects import Obj
from pilotfish.translate import route_policies as policies
from pilotfish.translate.delegate import merge_http_routes
from pilotfish.translate.names import outbound_cluster
from pilotfish.translate.protos import duration, pack
from pilotfish.translate.route_match import applies, translate_route_match
from pilotfish.translate.traffic_policy import consistent_hash

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"


@dataclass(frozen=True)
class RouteContext:
    snapshot: Snapshot
    proxy: Proxy
    port: int  # the port requests arrive for
    gateways: frozenset[str]  # {"mesh"} for sidecars, {"ns/name"} on a gateway


def translate_virtual_service(ctx: RouteContext, vs: VirtualService) -> list[rc.Route]:
    out: list[rc.Route] = []
    for http in _expand_delegates(ctx, vs):
        for match in http.get("match") or [None]:
            if not applies(match, ctx.port, ctx.proxy.labels, ctx.proxy.namespace, ctx.gateways):
                continue
            route = translate_http_route(ctx, http, match)
            if route is None:
                continue
            out.append(route)
            if is_catch_all(route):
                return out
    return out


def _expand_delegates(ctx: RouteContext, vs: VirtualService) -> list[Obj]:
    routes: list[Obj] = []
    for http in vs.http:
        ref = http.get("delegate")
        if not ref:
            routes.append(http)
            continue
        found = ctx.snapshot.delegate(str(ref.get("name")), str(ref["namespace"]), vs.namespace)
        if found is not None:
            routes += merge_http_routes(http, found.http)
    return routes


def is_catch_all(route: rc.Route) -> bool:
    """Matches every request: nothing after it in the list can be reached."""
    m = route.match
    which = m.WhichOneof("path_specifier")
    path_all = (which == "prefix" and m.prefix == "/") or (
        which == "safe_regex" and m.safe_regex.regex == ".*"
    )
    return path_all and not m.headers and not m.query_parameters


def translate_http_route(ctx: RouteContext, http: Obj, match: Obj | None) -> rc.Route | None:
    name = str(http.get("name") or "")
    if match is not None and match.get("name"):
        name = f"{name}.{match['name']}"
    out = rc.Route(name=name, match=translate_route_match(match))
    if match is not None and match.get("statPrefix"):
        out.stat_prefix = str(match["statPrefix"])
    headers = policies.HeaderOps(http.get("headers"))
    headers.apply(out)
    if http.get("redirect"):
        redirect = policies.translate_redirect(http["redirect"], ctx.port)
        if redirect is None:
            return None
        out.redirect.CopyFrom(redirect)
    elif http.get("directResponse"):
        out.direct_response.CopyFrom(policies.translate_direct_response(http["directResponse"]))
    else:
        out.route.CopyFrom(translate_route_action(ctx, http, out, headers.authority))
    _per_filter_configs(out, http)
    return out


def _per_filter_configs(out: rc.Route, http: Obj) -> None:
    fault = policies.translate_fault(http["fault"]) if http.get("fault") else None
    if fault is not None:
        out.typed_per_filter_config[FAULT_FILTER].CopyFrom(pack(fault))
    if http.get("corsPolicy"):
        cors = policies.translate_cors(http["corsPolicy"])
        out.typed_per_filter_config[CORS_FILTER].CopyFrom(pack(cors))


def translate_route_action(
    ctx: RouteContext, http: Obj, out: rc.Route, authority: str
) -> rc.RouteAction:
    action = rc.RouteAction()
    _set_timeout(action, http.get("timeout"), ctx.proxy)
    _set_rewrite(action, http.get("rewrite") or {})
    authority = (http.get("rewrite") or {}).get("authority") or authority
    if authority:
        action.host_rewrite_literal = str(authority)
    _set_mirrors(ctx, action, http)
    hashed = _set_destinations(ctx, action, out, http.get("route") or [])
    retry = policies.translate_retry_policy(http.get("retries"), hashed)
    if retry is not None:
        action.retry_policy.CopyFrom(retry)
    return action


def _set_timeout(action: rc.RouteAction, timeout: str | None, proxy: Proxy) -> None:
    """Istio disables Envoy's 15s default: no timeout unless one is given."""
    action.timeout.CopyFrom(duration(timeout or 0))
    if proxy.type is ProxyType.GRPC:
        action.max_stream_duration.max_stream_duration.CopyFrom(action.timeout)
    else:
        action.max_grpc_timeout.CopyFrom(action.timeout)


def _set_rewrite(action: rc.RouteAction, rewrite: Obj) -> None:
    regex = rewrite.get("uriRegexRewrite")
    if regex:
        action.regex_rewrite.pattern.regex = str(regex.get("match", ""))
        action.regex_rewrite.substitution = str(regex.get("rewrite", ""))
    elif rewrite.get("uri"):
        action.prefix_rewrite = str(rewrite["uri"])


def _set_mirrors(ctx: RouteContext, action: rc.RouteAction, http: Obj) -> None:
    mirrors = []
    if http.get("mirror"):
        percentage = http.get("mirrorPercentage")
        if percentage is None and http.get("mirrorPercent") is not None:
            percentage = {"value": http["mirrorPercent"]}
        mirrors.append((http["mirror"], percentage))
    mirrors += [(m["destination"], m.get("percentage")) for m in http.get("mirrors") or []]
    for dest, percentage in mirrors:
        if percentage is not None and not float(percentage.get("value") or 0) > 0:
            continue  # an explicit 0% turns mirroring off
        cluster = destination_cluster(ctx, dest)
        action.request_mirror_policies.append(policies.translate_mirror(cluster, percentage))


def destination_cluster(ctx: RouteContext, dest: Obj) -> str:
    """Istio's GetDestinationCluster: the named port, else the service's only
    port, else the port the request came in on."""
    host = str(dest.get("host", ""))
    port = (dest.get("port") or {}).get("number")
    if port is None:
        service = ctx.snapshot.service_for(ctx.proxy, host)
        port = service.ports[0].port if service and len(service.ports) == 1 else ctx.port
    return outbound_cluster(int(port), str(dest.get("subset") or ""), host)


def _set_destinations(
    ctx: RouteContext, action: rc.RouteAction, out: rc.Route, destinations: list[Obj]
) -> bool:
    """Clusters (weighted when several) and their hash policies; True when the
    route hashes, which changes the default retry policy."""
    if len(destinations) == 1:
        dest = destinations[0]
        action.cluster = destination_cluster(ctx, dest["destination"])
        ops = policies.HeaderOps(dest.get("headers"))
        ops.apply(out)
        if ops.authority and not action.host_rewrite_literal:
            action.host_rewrite_literal = ops.authority
    else:
        for dest in destinations:
            if int(dest.get("weight") or 0) == 0:
                continue  # Istio drops zero weights when there are others
            action.weighted_clusters.clusters.append(_weighted(ctx, dest))
    for dest in destinations:
        hash_policy = policies.translate_hash_policy(_destination_hash(ctx, dest["destination"]))
        if hash_policy is not None and hash_policy not in action.hash_policy:
            action.hash_policy.append(hash_policy)
    return bool(action.hash_policy)


def _weighted(ctx: RouteContext, dest: Obj) -> rc.WeightedCluster.ClusterWeight:
    out = rc.WeightedCluster.ClusterWeight(
        name=destination_cluster(ctx, dest["destination"]),
        weight=UInt32Value(value=int(dest["weight"])),
    )
    ops = policies.HeaderOps(dest.get("headers"))
    ops.apply(out)
    if ops.authority:
        out.host_rewrite_literal = ops.authority
    return out


def _destination_hash(ctx: RouteContext, dest: Obj) -> Obj | None:
    rule = ctx.snapshot.destination_rule(ctx.proxy, str(dest.get("host", "")))
    port = (dest.get("port") or {}).get("number")
    return consistent_hash(rule, str(dest.get("subset") or ""), port)
