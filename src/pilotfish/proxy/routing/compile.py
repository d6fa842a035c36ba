"""Compiling one Route message, with what it inherits from its virtual host
and route configuration (headers, per-filter configs, retry and mirror
policies) resolved here, once, rather than per request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from google.protobuf.message import Message

from pilotfish.proxy.proto_fields import seconds
from pilotfish.proxy.routing.actions import (
    DEFAULT_TIMEOUT_S,
    Action,
    DirectResponse,
    Forward,
    PathRewrite,
    Redirect,
    Target,
)
from pilotfish.proxy.routing.errors import RouteConfigError
from pilotfish.proxy.routing.headers import HeaderMutation, HeaderOp, compile_level, merge_levels
from pilotfish.proxy.routing.match import (
    CONNECT,
    REGEX,
    Condition,
    PathMatch,
    compile_header_matcher,
    compile_path_match,
    compile_query_matcher,
    grpc_condition,
)
from pilotfish.proxy.routing.per_filter import (
    FilterConfigs,
    decode_filter_configs,
    merge_filter_configs,
)
from pilotfish.proxy.routing.policies import (
    MirrorPolicy,
    RetryPolicy,
    compile_hash_policies,
    compile_mirror_policy,
    compile_retry_policy,
    fraction,
)
from pilotfish.proxy.routing.regex import compile_re2, compile_substitution
from pilotfish.proxy.routing.request import path_only

DEFAULT_MAX_DIRECT_BODY = 4096
REDIRECT_CODES = (301, 302, 303, 307, 308)  # RedirectAction.RedirectResponseCode
NOT_FOUND_CODES = (503, 404, 500)  # RouteAction.ClusterNotFoundResponseCode
Levels = tuple[tuple[HeaderOp, ...], ...]


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What a route inherits. Header levels are listed most specific first."""

    most_specific_wins: bool
    max_direct_body: int
    request_levels: Levels
    response_levels: Levels
    filter_levels: tuple[Mapping[str, Message], ...]  # least specific first
    mirrors: tuple[MirrorPolicy, ...]
    retry: RetryPolicy | None = None


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    match: PathMatch
    fraction: tuple[int, int] | None
    conditions: tuple[Condition, ...]
    action: Action
    response_headers: HeaderMutation
    filter_configs: FilterConfigs


def config_context(config: Any) -> RouteContext:
    max_body = DEFAULT_MAX_DIRECT_BODY
    if config.HasField("max_direct_response_body_size_bytes"):
        max_body = config.max_direct_response_body_size_bytes.value
    return RouteContext(
        most_specific_wins=config.most_specific_header_mutations_wins,
        max_direct_body=max_body,
        request_levels=(_level(config, "", "request"),),
        response_levels=(_level(config, "", "response"),),
        filter_levels=(decode_filter_configs(config.typed_per_filter_config, ""),),
        mirrors=_mirrors(config.request_mirror_policies, "request_mirror_policies"),
    )


def vhost_context(vh: Any, path: str, outer: RouteContext) -> RouteContext:
    retry = outer.retry
    if vh.HasField("retry_policy"):
        retry = compile_retry_policy(vh.retry_policy, f"{path}.retry_policy")
    mirrors = _mirrors(vh.request_mirror_policies, f"{path}.request_mirror_policies")
    return RouteContext(
        most_specific_wins=outer.most_specific_wins,
        max_direct_body=outer.max_direct_body,
        request_levels=(_level(vh, path, "request"), *outer.request_levels),
        response_levels=(_level(vh, path, "response"), *outer.response_levels),
        filter_levels=(
            *outer.filter_levels,
            decode_filter_configs(vh.typed_per_filter_config, path),
        ),
        mirrors=mirrors or outer.mirrors,
        retry=retry,
    )


def compile_route(r: Any, path: str, ctx: RouteContext) -> CompiledRoute:
    match = compile_path_match(r.match, f"{path}.match")
    own = _Own(
        request=_level(r, path, "request"),
        response=_level(r, path, "response"),
        filters=decode_filter_configs(r.typed_per_filter_config, path),
    )
    which = r.WhichOneof("action")
    _check_connect(r, path, match, which)
    action: Action
    if which == "route":
        action = _forward(r.route, f"{path}.route", match, ctx, own)
    elif which == "redirect":
        action = _redirect(r.redirect, f"{path}.redirect", match)
    elif which == "direct_response":
        action = _direct(r.direct_response, f"{path}.direct_response", ctx.max_direct_body)
    else:
        raise RouteConfigError(path, "a route needs route, redirect or direct_response")
    runtime = r.match.runtime_fraction
    return CompiledRoute(
        match=match,
        fraction=fraction(runtime) if r.match.HasField("runtime_fraction") else None,
        conditions=_conditions(r.match, f"{path}.match"),
        action=action,
        response_headers=_merged(own.response, ctx.response_levels, ctx.most_specific_wins),
        filter_configs=merge_filter_configs(*ctx.filter_levels, own.filters),
    )


def _check_connect(r: Any, path: str, match: PathMatch, which: str | None) -> None:
    """The proxy terminates CONNECT (Envoy's connect_config) and forwards no
    other upgrade by route: a connect_matcher route needs that, and a route's
    upgrade_configs are accepted for nothing else."""
    configs = list(r.route.upgrade_configs) if which == "route" else []
    terminates = [
        c
        for c in configs
        if c.upgrade_type.lower() == "connect"
        and c.HasField("connect_config")
        and (not c.HasField("enabled") or c.enabled.value)
    ]
    if match.kind == CONNECT and (which != "route" or not terminates):
        raise RouteConfigError(
            f"{path}.route.upgrade_configs",
            "a connect_matcher route must terminate CONNECT: "
            "an upgrade_configs entry with upgrade_type CONNECT and connect_config",
        )
    if len(terminates) != len(configs) or (configs and match.kind != CONNECT):
        raise RouteConfigError(
            f"{path}.route.upgrade_configs",
            "only CONNECT with connect_config on a connect_matcher route is supported",
        )


@dataclass(frozen=True, slots=True)
class _Own:
    """The route's own level of headers and per-filter configs."""

    request: tuple[HeaderOp, ...]
    response: tuple[HeaderOp, ...]
    filters: Mapping[str, Message]


def _level(msg: Any, path: str, kind: str) -> tuple[HeaderOp, ...]:
    to_add = getattr(msg, f"{kind}_headers_to_add")
    to_remove = getattr(msg, f"{kind}_headers_to_remove")
    return compile_level(to_add, to_remove, path, kind)


def _merged(
    own: tuple[HeaderOp, ...],
    outer: Levels,
    most_specific_wins: bool,
    cluster: tuple[HeaderOp, ...] = (),
) -> HeaderMutation:
    """Envoy's order: a weighted cluster's level first, then route, virtual host,
    configuration; or configuration to route with most_specific_header_mutations_wins."""
    ordered = (*reversed(outer), own) if most_specific_wins else (own, *outer)
    return merge_levels((cluster, *ordered))


def _conditions(m: Any, path: str) -> tuple[Condition, ...]:
    conditions: list[Condition] = [grpc_condition] if m.HasField("grpc") else []
    if m.HasField("tls_context"):
        conditions.append(_tls_condition(m.tls_context))
    conditions += [
        compile_header_matcher(h, f"{path}.headers[{i}]") for i, h in enumerate(m.headers)
    ]
    conditions += [
        compile_query_matcher(q, f"{path}.query_parameters[{i}]")
        for i, q in enumerate(m.query_parameters)
    ]
    return tuple(conditions)


def _tls_condition(options: Any) -> Condition:
    """Envoy's RouteMatch.tls_context: whether the connection's client
    certificate was presented and validated. The proxy keeps only validated
    ones (an invalid one fails the handshake), so the two are one here."""
    wanted = []
    for field in ("presented", "validated"):
        if options.HasField(field):
            wanted.append(getattr(options, field).value)
    if len(set(wanted)) > 1:  # presented but not validated cannot happen here
        return lambda req, _: False
    expected = wanted[0] if wanted else None
    if expected is None:
        return lambda req, _: True
    return lambda req, _: req.client_certificate_verified is expected


def _mirrors(policies: Sequence[Any], path: str) -> tuple[MirrorPolicy, ...]:
    return tuple(compile_mirror_policy(p, f"{path}[{i}]") for i, p in enumerate(policies))


def _forward(a: Any, path: str, match: PathMatch, ctx: RouteContext, own: _Own) -> Forward:
    targets, cumulative = _targets(a, path, ctx, own)
    stream = a.max_stream_duration
    return Forward(
        targets=targets,
        cumulative_weights=cumulative,
        random_value_header=_header_name(a.weighted_clusters.header_name),
        cluster_header=_header_name(a.cluster_header),
        cluster_not_found_status=NOT_FOUND_CODES[a.cluster_not_found_response_code],
        rewrite_path=_rewrite(a.prefix_rewrite, a, path, match),
        auto_host_rewrite=a.auto_host_rewrite.value,
        host_rewrite_header=_header_name(a.host_rewrite_header),
        append_x_forwarded_host=a.append_x_forwarded_host,
        timeout=(seconds(a.timeout) or None) if a.HasField("timeout") else DEFAULT_TIMEOUT_S,
        idle_timeout=seconds(a.idle_timeout) if a.HasField("idle_timeout") else None,
        max_stream_duration=seconds(stream.max_stream_duration) or None,
        grpc_timeout_header_max=_optional_seconds(stream, "grpc_timeout_header_max")
        if stream.HasField("grpc_timeout_header_max")
        else _optional_seconds(a, "max_grpc_timeout"),
        grpc_timeout_header_offset=_optional_seconds(stream, "grpc_timeout_header_offset")
        if stream.HasField("grpc_timeout_header_offset")
        else _optional_seconds(a, "grpc_timeout_offset"),
        stream_grpc_timeout=stream.HasField("grpc_timeout_header_max"),
        retry=compile_retry_policy(a.retry_policy, f"{path}.retry_policy")
        if a.HasField("retry_policy")
        else ctx.retry,
        mirrors=_mirrors(a.request_mirror_policies, f"{path}.request_mirror_policies")
        or ctx.mirrors,
        hash_key=compile_hash_policies(a.hash_policy, f"{path}.hash_policy"),
    )


def _optional_seconds(msg: Any, name: str) -> float | None:
    return seconds(getattr(msg, name)) if msg.HasField(name) else None


def _header_name(name: str) -> bytes | None:
    return name.lower().encode("utf-8") or None


def _targets(
    a: Any, path: str, ctx: RouteContext, own: _Own
) -> tuple[tuple[Target, ...], tuple[int, ...]]:
    host = a.host_rewrite_literal.encode("utf-8") or None
    which = a.WhichOneof("cluster_specifier")
    if which in ("cluster", "cluster_header"):
        return (_target(a.cluster, host, ctx, own),), ()
    if which != "weighted_clusters":
        raise RouteConfigError(
            path, "a route action needs cluster, cluster_header or weighted_clusters"
        )
    wc, wpath = a.weighted_clusters, f"{path}.weighted_clusters"
    targets = tuple(
        _weighted_target(c, f"{wpath}.clusters[{i}]", host, ctx, own)
        for i, c in enumerate(wc.clusters)
    )
    cumulative = tuple(accumulate(c.weight.value for c in wc.clusters))
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        raise RouteConfigError(f"{wpath}.clusters", "weights must add up to more than 0")
    if wc.HasField("total_weight") and wc.total_weight.value != total:
        raise RouteConfigError(
            f"{wpath}.total_weight", f"is {wc.total_weight.value}, weights add up to {total}"
        )
    return targets, cumulative


def _target(
    cluster: str,
    host: bytes | None,
    ctx: RouteContext,
    own: _Own,
    cluster_level: tuple[tuple[HeaderOp, ...], tuple[HeaderOp, ...]] = ((), ()),
    cluster_filters: Mapping[str, Message] | None = None,
) -> Target:
    return Target(
        cluster=cluster,
        request_headers=_merged(
            own.request, ctx.request_levels, ctx.most_specific_wins, cluster_level[0]
        ),
        response_headers=_merged(
            own.response, ctx.response_levels, ctx.most_specific_wins, cluster_level[1]
        ),
        host_rewrite=host,
        filter_configs=merge_filter_configs(*ctx.filter_levels, own.filters, cluster_filters or {}),
    )


def _weighted_target(c: Any, path: str, host: bytes | None, ctx: RouteContext, own: _Own) -> Target:
    if not c.name:
        raise RouteConfigError(f"{path}.name", "a weighted cluster needs a name")
    levels = (_level(c, path, "request"), _level(c, path, "response"))
    filters = decode_filter_configs(c.typed_per_filter_config, path)
    return _target(
        c.name, c.host_rewrite_literal.encode("utf-8") or host, ctx, own, levels, filters
    )


def _rewrite(prefix: str, spec: Any, path: str, match: PathMatch) -> PathRewrite | None:
    """prefix_rewrite replaces what the match matched (the whole path, query
    aside, for a regex match); regex_rewrite substitutes in the path, query aside."""
    if prefix and spec.HasField("regex_rewrite"):
        raise RouteConfigError(f"{path}.regex_rewrite", "cannot be combined with prefix_rewrite")
    if prefix:
        new = prefix.encode("utf-8")
        if match.kind == REGEX:
            return lambda p: new + p[len(path_only(p)) :]
        cut = len(match.literal)
        return lambda p: new + p[cut:]
    if not spec.HasField("regex_rewrite"):
        return None
    rr = spec.regex_rewrite
    regex = compile_re2(rr.pattern.regex, f"{path}.regex_rewrite.pattern.regex")
    substitute = compile_substitution(regex, rr.substitution, f"{path}.regex_rewrite.substitution")

    def rewrite(p: bytes) -> bytes:
        bare = path_only(p)
        new_bare = substitute(bare)
        return new_bare + p[len(bare) :] if new_bare else p  # empty result: no rewrite

    return rewrite


def _redirect(r: Any, path: str, match: PathMatch) -> Redirect:
    scheme = b"https" if r.https_redirect else r.scheme_redirect.lower().encode("utf-8") or None
    return Redirect(
        status=REDIRECT_CODES[r.response_code],
        scheme=scheme,
        host=r.host_redirect.encode("utf-8") or None,
        port=f":{r.port_redirect}".encode() if r.port_redirect else None,
        path=r.path_redirect.encode("utf-8") or None,
        rewrite_path=_rewrite(r.prefix_rewrite, r, path, match),
        strip_query=r.strip_query,
    )


def _direct(d: Any, path: str, max_body: int) -> DirectResponse:
    if not 200 <= d.status < 600:
        raise RouteConfigError(f"{path}.status", f"{d.status} is not in [200, 600)")
    body = d.body.inline_bytes or d.body.inline_string.encode("utf-8")
    if len(body) > max_body:
        raise RouteConfigError(f"{path}.body", f"{len(body)} bytes; the maximum is {max_body}")
    return DirectResponse(d.status, body)
