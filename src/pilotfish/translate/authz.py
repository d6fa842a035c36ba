"""AuthorizationPolicy -> Envoy's RBAC and ext_authz filters, as istiod's
pilot/pkg/security/authz/builder builds them.

    settings = AuthzSettings(trust_domains=("cluster.local",), providers=..., services=...)
    policies = policies_for(all_policies, "foo", {"app": "httpbin"})
    translate_authz_http(policies, settings)   # [CUSTOM rbac+ext_authz], AUDIT, DENY, ALLOW
    translate_authz_tcp(policies, settings)    # the same as network filters

Each action gets one filter: `rules` hold the enforced policies, `shadow_rules`
the `istio.io/dry-run: "true"` ones (counted, never enforced). A policy with
no rules matches nothing; `rules: [{}]` matches everything. CUSTOM policies
become a shadow-only RBAC filter whose matched policy id (prefixed
`istio-ext-authz-PROVIDER`) turns the ext_authz filter after it on; a
provider that is missing or invalid turns them into DENY rules instead, so a
broken authorizer never lets traffic through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2, http_uri_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as tcp_ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as tcp_rbac_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf.message import Message

from pilotfish.ca.identity import DEFAULT_TRUST_DOMAIN
from pilotfish.model import Proxy, Snapshot
from pilotfish.model.config import labels_match
from pilotfish.model.hosts import ROOT_NAMESPACE
from pilotfish.objects import Obj
from pilotfish.translate import names
from pilotfish.translate.authz_rules import (
    Unusable,
    rbac_policy,
    rule_model,
    with_trust_domains,
)
from pilotfish.translate.protos import duration, pack

HTTP_RBAC = "envoy.filters.http.rbac"
TCP_RBAC = "envoy.filters.network.rbac"
HTTP_EXT_AUTHZ = "envoy.filters.http.ext_authz"
TCP_EXT_AUTHZ = "envoy.filters.network.ext_authz"
TCP_STAT_PREFIX = "tcp."
DRY_RUN_ANNOTATION = "istio.io/dry-run"
DRY_RUN_ALLOW_PREFIX = "istio_dry_run_allow_"
DRY_RUN_DENY_PREFIX = "istio_dry_run_deny_"
EXT_AUTHZ_SHADOW_PREFIX = "istio_ext_authz_"
EXT_AUTHZ_MATCH_PREFIX = "istio-ext-authz"
SHADOW_EFFECTIVE_POLICY_ID = "shadow_effective_policy_id"
BAD_CUSTOM_SUFFIX = "-deny-due-to-bad-CUSTOM-action"
DEFAULT_EXT_AUTHZ_TIMEOUT = "600s"
ACTIONS = {"ALLOW": rbac_pb2.RBAC.ALLOW, "DENY": rbac_pb2.RBAC.DENY, "AUDIT": rbac_pb2.RBAC.LOG}
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}


@dataclass(frozen=True)
class AuthzSettings:
    """What besides the policies decides the translation: the trust domain
    and its aliases, the mesh config's extensionProviders, and which
    namespaces hold each service host name (to resolve a provider's service)."""

    trust_domains: tuple[str, ...] = (DEFAULT_TRUST_DOMAIN,)
    providers: tuple[Obj, ...] = ()
    services: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))


def _meta(policy: Obj) -> Obj:
    meta = policy.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _spec(policy: Obj) -> Obj:
    spec = policy.get("spec")
    return spec if isinstance(spec, dict) else {}


def action_of(policy: Obj) -> str:
    return str(_spec(policy).get("action") or "ALLOW")


def selects(policy: Obj, namespace: str, labels: Mapping[str, str]) -> bool:
    """Mesh-wide from the root namespace, else the workload's own namespace;
    no selector selects every workload there."""
    if _meta(policy).get("namespace", "default") not in (ROOT_NAMESPACE, namespace):
        return False
    match = (_spec(policy).get("selector") or {}).get("matchLabels") or {}
    return labels_match(match, labels)


def policies_for(policies: Iterable[Obj], namespace: str, labels: Mapping[str, str]) -> list[Obj]:
    """The policies applying to a workload, root namespace first, then by name."""
    chosen = [p for p in policies if selects(p, namespace, labels)]
    return sorted(
        chosen,
        key=lambda p: (
            _meta(p).get("namespace") != ROOT_NAMESPACE,
            str(_meta(p).get("namespace")),
            str(_meta(p).get("name")),
        ),
    )


def is_dry_run(policy: Obj) -> bool:
    annotations = _meta(policy).get("annotations") or {}
    return str(annotations.get(DRY_RUN_ANNOTATION, "")) in _GO_TRUE


def policy_name(policy: Obj, index: int, provider: str | None = None) -> str:
    meta = _meta(policy)
    prefix = "" if provider is None else f"{EXT_AUTHZ_MATCH_PREFIX}-{provider}-"
    return (
        f"{prefix}ns[{meta.get('namespace', 'default')}]-policy[{meta.get('name')}]-rule[{index}]"
    )


_MATCH_NEVER = rbac_pb2.Policy(
    permissions=[rbac_pb2.Permission(not_rule=rbac_pb2.Permission(any=True))],
    principals=[rbac_pb2.Principal(not_id=rbac_pb2.Principal(any=True))],
)


def translate_policy_rules(
    policy: Obj, action: int, settings: AuthzSettings, for_tcp: bool, provider: str | None = None
) -> dict[str, rbac_pb2.Policy]:
    """One RBAC Policy per rule, named as Istio names it; rules that cannot
    apply on this chain are left out (ALLOW) or narrowed (DENY, AUDIT)."""
    rules = _spec(policy).get("rules") or []
    if not rules:
        return {policy_name(policy, 0, provider): _MATCH_NEVER}
    namespace = str(_meta(policy).get("namespace", "default"))
    out = {}
    for i, rule in enumerate(rules):
        if rule is None:
            continue
        try:
            model = with_trust_domains(rule_model(rule, namespace), settings.trust_domains)
            out[policy_name(policy, i, provider)] = rbac_policy(
                model, for_tcp, strict=action == rbac_pb2.RBAC.ALLOW
            )
        except Unusable:
            continue
    return out


@dataclass(frozen=True)
class RuleSets:
    rules: rbac_pb2.RBAC | None
    shadow: rbac_pb2.RBAC | None


def translate_rule_sets(
    policies: Sequence[Obj], action: str, settings: AuthzSettings, for_tcp: bool
) -> RuleSets | None:
    chosen = [p for p in policies if action_of(p) == action]
    if not chosen:
        return None
    code = ACTIONS[action]
    enforced, shadow = rbac_pb2.RBAC(action=code), rbac_pb2.RBAC(action=code)
    for policy in chosen:
        target = shadow if is_dry_run(policy) else enforced
        for name, generated in translate_policy_rules(policy, code, settings, for_tcp).items():
            target.policies[name].CopyFrom(generated)
    has_enforced = any(not is_dry_run(p) for p in chosen)
    has_shadow = any(is_dry_run(p) for p in chosen)
    return RuleSets(enforced if has_enforced else None, shadow if has_shadow else None)


def _shadow_prefix(sets: RuleSets) -> str:
    """Istio reads the action of a missing shadow set as ALLOW."""
    if sets.shadow is not None and sets.shadow.action == rbac_pb2.RBAC.DENY:
        return DRY_RUN_DENY_PREFIX
    if sets.shadow is not None and sets.shadow.action == rbac_pb2.RBAC.LOG:
        return ""
    return DRY_RUN_ALLOW_PREFIX


@dataclass(frozen=True)
class _Chain:
    """What differs between an HTTP and a TCP filter chain's authz filters."""

    for_tcp: bool
    rbac: type[Message]  # the http or network RBAC message
    rbac_name: str
    ext_name: str
    wrap: Callable[[str, Message], Any]  # (name, config) -> HttpFilter | Filter
    extra: Mapping[str, str]  # more RBAC fields: the network filter's stat_prefix


_HTTP = _Chain(
    False,
    http_rbac_pb2.RBAC,
    HTTP_RBAC,
    HTTP_EXT_AUTHZ,
    lambda name, config: hcm_pb2.HttpFilter(name=name, typed_config=pack(config)),
    MappingProxyType({}),
)
_TCP = _Chain(
    True,
    tcp_rbac_pb2.RBAC,
    TCP_RBAC,
    TCP_EXT_AUTHZ,
    lambda name, config: listener_components_pb2.Filter(name=name, typed_config=pack(config)),
    MappingProxyType({"stat_prefix": TCP_STAT_PREFIX}),
)


def _rbac_filters(policies: Sequence[Obj], settings: AuthzSettings, chain: _Chain) -> list[Any]:
    out = []
    for action in ("AUDIT", "DENY", "ALLOW"):
        sets = translate_rule_sets(policies, action, settings, chain.for_tcp)
        if sets is None:
            continue
        config: Any = chain.rbac(shadow_rules_stat_prefix=_shadow_prefix(sets), **chain.extra)
        if sets.rules is not None:
            config.rules.CopyFrom(sets.rules)
        if sets.shadow is not None:
            config.shadow_rules.CopyFrom(sets.shadow)
        out.append(chain.wrap(chain.rbac_name, config))
    return out


def translate_rbac_http(
    policies: Sequence[Obj], settings: AuthzSettings
) -> list[hcm_pb2.HttpFilter]:
    """AUDIT, DENY and ALLOW RBAC filters, in Istio's order."""
    return _rbac_filters(policies, settings, _HTTP)


def translate_rbac_tcp(
    policies: Sequence[Obj], settings: AuthzSettings
) -> list[listener_components_pb2.Filter]:
    return _rbac_filters(policies, settings, _TCP)


# -- CUSTOM ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExtAuthz:
    http: http_ext_authz_pb2.ExtAuthz
    tcp: tcp_ext_authz_pb2.ExtAuthz | None  # HTTP providers cannot check TCP


def _custom_rules(
    policies: Sequence[Obj], settings: AuthzSettings, for_tcp: bool
) -> dict[str, rbac_pb2.RBAC]:
    """provider -> its enforced CUSTOM policies as (shadow) DENY rules.
    Dry-run CUSTOM policies are left out: istiod (1.29) moves them into the
    enforced `rules` of the DENY filter, which would deny what the dry run
    was meant only to count."""
    out: dict[str, rbac_pb2.RBAC] = {}
    for policy in policies:
        if action_of(policy) != "CUSTOM":
            continue
        provider = str((_spec(policy).get("provider") or {}).get("name", ""))
        rules = out.setdefault(provider, rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY))
        if is_dry_run(policy):
            continue
        generated = translate_policy_rules(policy, rbac_pb2.RBAC.DENY, settings, for_tcp, provider)
        for name, rule in generated.items():
            rules.policies[name].CopyFrom(rule)
    return out


def _bad_custom(rules: rbac_pb2.RBAC) -> rbac_pb2.RBAC:
    out = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY)
    for name, policy in rules.policies.items():
        out.policies[name + BAD_CUSTOM_SUFFIX].CopyFrom(policy)
    return out


def _ext_authz_filters(
    policies: Sequence[Obj], settings: AuthzSettings, chain: _Chain
) -> list[Any]:
    """Per CUSTOM provider (sorted): a shadow RBAC filter naming the matched
    policy, then ext_authz enabled by that name. More than one provider per
    workload is refused as istiod refuses it without its feature flag; an
    HTTP provider has nothing for a TCP chain."""
    per_provider = _custom_rules(policies, settings, chain.for_tcp)
    resolved = resolve_providers(settings)
    out = []
    for provider in sorted(per_provider):
        rules = per_provider[provider]
        built = resolved.get(provider)
        if len(per_provider) > 1 or not isinstance(built, ExtAuthz):
            out.append(
                chain.wrap(chain.rbac_name, chain.rbac(rules=_bad_custom(rules), **chain.extra))
            )
            continue
        built_ext = built.tcp if chain.for_tcp else built.http
        if built_ext is None:
            continue
        shadow = chain.rbac(
            shadow_rules=rules, shadow_rules_stat_prefix=EXT_AUTHZ_SHADOW_PREFIX, **chain.extra
        )
        ext: Any = type(built_ext)()
        ext.CopyFrom(built_ext)
        ext.filter_enabled_metadata.CopyFrom(_enabled_by(chain.rbac_name, provider))
        out += [chain.wrap(chain.rbac_name, shadow), chain.wrap(chain.ext_name, ext)]
    return out


def translate_ext_authz_http(
    policies: Sequence[Obj], settings: AuthzSettings
) -> list[hcm_pb2.HttpFilter]:
    return _ext_authz_filters(policies, settings, _HTTP)


def translate_ext_authz_tcp(
    policies: Sequence[Obj], settings: AuthzSettings
) -> list[listener_components_pb2.Filter]:
    return _ext_authz_filters(policies, settings, _TCP)


def _enabled_by(rbac_filter: str, provider: str | None = None) -> metadata_pb2.MetadataMatcher:
    prefix = EXT_AUTHZ_MATCH_PREFIX if provider is None else f"{EXT_AUTHZ_MATCH_PREFIX}-{provider}"
    return metadata_pb2.MetadataMatcher(
        filter=rbac_filter,
        path=[
            metadata_pb2.MetadataMatcher.PathSegment(
                key=EXT_AUTHZ_SHADOW_PREFIX + SHADOW_EFFECTIVE_POLICY_ID
            )
        ],
        value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(prefix=prefix)),
    )


# -- extension providers (mesh config) ---------------------------------------------


def resolve_providers(settings: AuthzSettings) -> dict[str, ExtAuthz | str]:
    """name -> its built ext_authz configs, or the error that makes its
    CUSTOM policies deny."""
    out: dict[str, ExtAuthz | str] = {}
    for i, provider in enumerate(settings.providers):
        name = str(provider.get("name") or "")
        errors = []
        if not name:
            errors.append(f"extension provider name must not be empty, found empty at index: {i}")
        elif name in out:
            errors.append(f"extension provider name must be unique, found duplicate: {name}")
        if "envoyExtAuthzHttp" in provider:
            built, more = _build_http_provider(provider["envoyExtAuthzHttp"] or {}, settings)
        elif "envoyExtAuthzGrpc" in provider:
            built, more = _build_grpc_provider(provider["envoyExtAuthzGrpc"] or {}, settings)
        else:
            continue
        errors += more
        out[name] = "; ".join(errors) if errors or built is None else built
    return out


def lookup_cluster(service: str, port: int, settings: AuthzSettings) -> tuple[str, str]:
    """`NAMESPACE/HOST` or a `HOST` only one namespace holds -> (host, cluster)."""
    if not service:
        raise ValueError("service must not be empty")
    namespace, sep, host = service.partition("/")
    if sep:
        if namespace in settings.services.get(host, ()):
            return host, names.outbound_cluster(port, "", host)
    else:
        found = settings.services.get(service, ())
        if len(found) == 1:
            return service, names.outbound_cluster(port, "", service)
        if len(found) > 1:
            raise ValueError(
                f"found {service} in multiple namespaces {list(found)}, specify the namespace "
                "explicitly in the format of <Namespace>/<Hostname>"
            )
    raise ValueError(f"could not find service {service} in Istio service registry")


def _common(config: Obj, settings: AuthzSettings) -> tuple[Obj, list[str]]:
    errors: list[str] = []
    port = config.get("port", 0)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        errors.append(f"port must be in the range [1, 65535], found: {port}")
    host = cluster = ""
    try:
        host, cluster = lookup_cluster(str(config.get("service") or ""), int(port or 0), settings)
    except ValueError as e:
        errors.append(str(e))
    status = None
    if config.get("statusOnError"):
        text = str(config["statusOnError"])
        if not text.isdigit() or int(text) not in http_status_pb2.StatusCode.values():
            errors.append(f"unsupported statusOnError {text}")
        else:
            status = http_status_pb2.HttpStatus(code=int(text))
    timeout = duration(str(config.get("timeout") or DEFAULT_EXT_AUTHZ_TIMEOUT))
    return {"host": host, "cluster": cluster, "status": status, "timeout": timeout}, errors


def _body(config: Obj) -> http_ext_authz_pb2.BufferSettings | None:
    body = config.get("includeRequestBodyInCheck")
    if body is None:
        return None
    return http_ext_authz_pb2.BufferSettings(
        max_request_bytes=int(body.get("maxRequestBytes", 0)),
        allow_partial_message=bool(body.get("allowPartialMessage", False)),
        pack_as_bytes=bool(body.get("packAsBytes", False)),
    )


def _headers(values: Sequence[str] | None) -> string_pb2.ListStringMatcher | None:
    if not values:
        return None
    patterns = []
    for value in values:
        if value.startswith("*"):
            patterns.append(string_pb2.StringMatcher(suffix=value[1:], ignore_case=True))
        elif value.endswith("*"):
            patterns.append(string_pb2.StringMatcher(prefix=value[:-1], ignore_case=True))
        else:
            patterns.append(string_pb2.StringMatcher(exact=value, ignore_case=True))
    return string_pb2.ListStringMatcher(patterns=patterns)


_HEADER_FIELDS = (
    "includeRequestHeadersInCheck",
    "includeHeadersInCheck",
    "headersToDownstreamOnDeny",
    "headersToDownstreamOnAllow",
    "headersToUpstreamOnAllow",
)


def _http_errors(config: Obj) -> list[str]:
    errors = []
    prefix = config.get("pathPrefix")
    if prefix and not str(prefix).startswith("/"):
        errors.append(f"pathPrefix must begin with `/`, found: {prefix!r}")
    for name in _HEADER_FIELDS:
        if "*" in (config.get(name) or ()):
            errors.append(
                'a single wildcard ("*") is not supported, change it to either prefix or '
                f"suffix match: {name[0].upper()}{name[1:]}"
            )
    return errors


def _build_http_provider(config: Obj, settings: AuthzSettings) -> tuple[ExtAuthz | None, list[str]]:
    common, errors = _common(config, settings)
    errors += _http_errors(config)
    if errors:
        return None, errors
    service = http_ext_authz_pb2.HttpService(
        path_prefix=str(config.get("pathPrefix") or ""),
        server_uri=http_uri_pb2.HttpUri(
            uri=f"http://{common['host']}", cluster=common["cluster"], timeout=common["timeout"]
        ),
    )
    extra = config.get("includeAdditionalHeadersInCheck") or {}
    for key in sorted(extra):
        service.authorization_request.headers_to_add.append(
            base_pb2.HeaderValue(key=key, value=str(extra[key]))
        )
    upstream = _headers(config.get("headersToUpstreamOnAllow"))
    on_deny = _headers(config.get("headersToDownstreamOnDeny"))
    on_allow = _headers(config.get("headersToDownstreamOnAllow"))
    response = service.authorization_response
    for target, value in (
        (response.allowed_upstream_headers, upstream),
        (response.allowed_client_headers, on_deny),
        (response.allowed_client_headers_on_success, on_allow),
    ):
        if value is not None:
            target.CopyFrom(value)
    if upstream or on_deny or on_allow:
        response.SetInParent()
    ext = http_ext_authz_pb2.ExtAuthz(
        failure_mode_allow=bool(config.get("failOpen", False)),
        transport_api_version=config_source_pb2.V3,
        http_service=service,
        filter_enabled_metadata=_enabled_by(HTTP_RBAC),
    )
    allowed = _headers(config.get("includeRequestHeadersInCheck")) or _headers(
        config.get("includeHeadersInCheck")
    )
    if allowed is not None:
        ext.allowed_headers.CopyFrom(allowed)
    _finish(ext, common, config)
    return ExtAuthz(http=ext, tcp=None), []


def _finish(ext: http_ext_authz_pb2.ExtAuthz, common: Obj, config: Obj) -> None:
    if common["status"] is not None:
        ext.status_on_error.CopyFrom(common["status"])
    body = _body(config)
    if body is not None:
        ext.with_request_body.CopyFrom(body)


def _build_grpc_provider(config: Obj, settings: AuthzSettings) -> tuple[ExtAuthz | None, list[str]]:
    common, errors = _common(config, settings)
    if errors:
        return None, errors
    grpc = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
            cluster_name=common["cluster"], authority=common["host"]
        ),
        timeout=common["timeout"],
    )
    fail_open = bool(config.get("failOpen", False))
    http = http_ext_authz_pb2.ExtAuthz(
        failure_mode_allow=fail_open,
        grpc_service=grpc,
        filter_enabled_metadata=_enabled_by(HTTP_RBAC),
        transport_api_version=config_source_pb2.V3,
    )
    _finish(http, common, config)
    tcp = tcp_ext_authz_pb2.ExtAuthz(
        stat_prefix=TCP_STAT_PREFIX,
        failure_mode_allow=fail_open,
        transport_api_version=config_source_pb2.V3,
        grpc_service=grpc,
        filter_enabled_metadata=_enabled_by(TCP_RBAC),
    )
    return ExtAuthz(http=http, tcp=tcp), []


def translate_authz_http(
    policies: Sequence[Obj], settings: AuthzSettings
) -> list[hcm_pb2.HttpFilter]:
    """Every authorization filter of an inbound HTTP chain, in Istio's order:
    CUSTOM, then AUDIT, DENY, ALLOW."""
    return [*translate_ext_authz_http(policies, settings), *translate_rbac_http(policies, settings)]


def translate_authz_tcp(
    policies: Sequence[Obj], settings: AuthzSettings
) -> list[listener_components_pb2.Filter]:
    return [*translate_ext_authz_tcp(policies, settings), *translate_rbac_tcp(policies, settings)]


def authz_settings(snapshot: Snapshot) -> AuthzSettings:
    """The mesh's trust domain, its trustDomainAliases and extensionProviders
    (mesh config), and the mesh's services. The trust domain is the one the
    CA signs identities in (`snapshot.trust_domain`: --trust-domain, else the
    mesh config's trustDomain read at start, else cluster.local), so that a
    policy's principals name the identities the workloads really hold."""
    mesh = snapshot.mesh_config
    domain = snapshot.trust_domain
    aliases = [str(a) for a in mesh.get("trustDomainAliases") or () if a]
    providers = tuple(p for p in mesh.get("extensionProviders") or () if isinstance(p, dict))
    services: dict[str, list[str]] = {}
    for service in snapshot.services:
        found = services.setdefault(service.hostname, [])
        if service.namespace not in found:
            found.append(service.namespace)
    return AuthzSettings(
        trust_domains=(domain, *(a for a in aliases if a != domain)),
        providers=providers,
        services=MappingProxyType({h: tuple(ns) for h, ns in services.items()}),
    )


def translate_proxy_authz_tcp(
    snapshot: Snapshot, proxy: Proxy
) -> list[listener_components_pb2.Filter]:
    """The authorization filters of a proxy's TCP chains."""
    if not snapshot.authorization_policies:
        return []
    policies = policies_for(snapshot.authorization_policies, proxy.namespace, proxy.labels)
    return translate_authz_tcp(policies, authz_settings(snapshot))


def translate_proxy_authz_http(snapshot: Snapshot, proxy: Proxy) -> list[hcm_pb2.HttpFilter]:
    """The authorization filters of a proxy's inbound HTTP chains."""
    if not snapshot.authorization_policies:
        return []
    policies = policies_for(snapshot.authorization_policies, proxy.namespace, proxy.labels)
    return translate_authz_http(policies, authz_settings(snapshot))
