"""One AuthorizationPolicy rule as an Envoy RBAC Policy (Istio's
pilot/pkg/security/authz/model): `from`, `to` and `when` become an AND of
ORs of principals and permissions, with `not*` values as a NOT of an OR.

A value a generator cannot use raises `Unusable` (an HTTP-only field on a TCP
filter chain, a malformed CIDR or port): in an ALLOW policy that drops the
whole rule (it can never match), in DENY and AUDIT only that value (a DENY
must not widen), exactly as istiod does.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from envoy.config.core.v3 import address_pb2, extension_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.rbac.v3.rbac_pb2 import Permission, Principal
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2
from google.protobuf.wrappers_pb2 import UInt32Value

from pilotfish.ca.identity import DEFAULT_TRUST_DOMAIN
from pilotfish.objects import Obj
from pilotfish.translate.protos import pack

# Where Envoy's jwt_authn filter leaves a verified token's claims, and where
# Istio's RBAC config reads them (requestPrincipals, request.auth.*).
JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD = "payload"
SPIFFE_PREFIX = "spiffe://"
MATCH_ONE, MATCH_ANY = "{*}", "{**}"


_META = re.compile(r"([\\.+*?()|\[\]{}^$])")


def quote_meta(text: str) -> str:
    """Go's regexp.QuoteMeta: the RE2 metacharacters only (Python's
    re.escape also escapes `-`, which would change the config's text)."""
    return _META.sub(r"\\\1", text)


class Unusable(ValueError):
    """A value this filter chain cannot express."""


def string_matcher(value: str, prefix: str = "") -> string_pb2.StringMatcher:
    """Istio's `*`, `prefix*`, `*suffix` and exact values; `prefix` is
    prepended (spiffe://), which turns a suffix into a regex."""
    if value == "*":
        return _regex(".+")
    if value.startswith("*"):
        if not prefix:
            return string_pb2.StringMatcher(suffix=value[1:])
        return _regex(prefix + ".*" + quote_meta(value[1:]))
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=prefix + value[:-1])
    return string_pb2.StringMatcher(exact=prefix + value)


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def header_matcher(name: str, value: str, ignore_case: bool = False) -> rc.HeaderMatcher:
    if value == "*":
        return rc.HeaderMatcher(name=name, present_match=True)
    if value.startswith("*"):
        match = string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    elif value.endswith("*"):
        match = string_pb2.StringMatcher(prefix=value[:-1], ignore_case=ignore_case)
    else:
        match = string_pb2.StringMatcher(exact=value, ignore_case=ignore_case)
    return rc.HeaderMatcher(name=name, string_match=match)


def cidr(value: str) -> address_pb2.CidrRange:
    """`1.2.3.4` (a /32) or `5.6.0.0/16`; the address is kept as written."""
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError as e:
        raise Unusable(f"invalid IP address or CIDR {value!r}") from e
    return address_pb2.CidrRange(
        address_prefix=str(iface.ip), prefix_len=UInt32Value(value=iface.network.prefixlen)
    )


def _port(value: str) -> int:
    if not value.isdigit() or int(value) > 65535:
        raise Unusable(f"invalid port {value}")
    return int(value)


def _http_only(key: str, for_tcp: bool) -> None:
    if for_tcp:
        raise Unusable(f'"{key}" is HTTP only')


def _value_or(values: Sequence[str]) -> value_pb2.ValueMatcher:
    matchers = [value_pb2.ValueMatcher(string_match=string_matcher(v)) for v in values]
    if len(matchers) == 1:
        return matchers[0]
    return value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=matchers))


def _metadata(
    filter_name: str, keys: Sequence[str], value: value_pb2.ValueMatcher
) -> metadata_pb2.MetadataMatcher:
    path = [metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in keys]
    return metadata_pb2.MetadataMatcher(filter=filter_name, path=path, value=value)


def _claim_matcher(claims: Sequence[str], value: value_pb2.ValueMatcher) -> Principal:
    """A claim that is a string or a list holding one matching string."""
    one_of = value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=value))
    either = value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=[one_of, value]))
    return Principal(metadata=_metadata(JWT_FILTER, [JWT_PAYLOAD, *claims], either))


def _authenticated(match: string_pb2.StringMatcher) -> Principal:
    return Principal(authenticated=Principal.Authenticated(principal_name=match))


# -- one value -> one Permission or Principal ------------------------------

Single = Callable[[str, str, bool], Any]  # (key, value, for_tcp) -> Permission | Principal
Multi = Callable[[str, Sequence[str], bool], Any]  # all values of a key at once


def _dest_ip(_key: str, value: str, _tcp: bool) -> Permission:
    return Permission(destination_ip=cidr(value))


def _dest_port(_key: str, value: str, _tcp: bool) -> Permission:
    return Permission(destination_port=_port(value))


def _sni(_key: str, value: str, _tcp: bool) -> Permission:
    return Permission(requested_server_name=string_matcher(value))


def _host(key: str, value: str, for_tcp: bool) -> Permission:
    _http_only(key, for_tcp)
    return Permission(header=header_matcher(":authority", value, ignore_case=True))


def _method(key: str, value: str, for_tcp: bool) -> Permission:
    _http_only(key, for_tcp)
    return Permission(header=header_matcher(":method", value))


def _path(key: str, value: str, for_tcp: bool) -> Permission:
    _http_only(key, for_tcp)
    if MATCH_ONE in value or MATCH_ANY in value:
        template = value.replace(MATCH_ANY, "**").replace(MATCH_ONE, "*")
        config = uri_template_match_pb2.UriTemplateMatchConfig(path_template=template)
        return Permission(
            uri_template=extension_pb2.TypedExtensionConfig(
                name="uri-template", typed_config=pack(config)
            )
        )
    return Permission(url_path=path_pb2.PathMatcher(path=string_matcher(value)))


def _envoy_filter(key: str, values: Sequence[str], _tcp: bool) -> Permission:
    """`experimental.envoy.filters.NAME[KEY]`: a value `[v]` matches inside a list."""
    name, sep, rest = key.removeprefix("experimental.").removesuffix("]").partition("[")
    if not sep:
        raise Unusable(f"invalid key: {key}")
    matchers = []
    for v in values:
        one = value_pb2.ValueMatcher(string_match=string_matcher(v.strip("[]")))
        if v.startswith("[") and v.endswith("]"):
            one = value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=one))
        matchers.append(one)
    value = (
        matchers[0]
        if len(matchers) == 1
        else value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=matchers))
    )
    return Permission(metadata=_metadata(name, [rest], value))


def _src_ip(_key: str, value: str, _tcp: bool) -> Principal:
    return Principal(direct_remote_ip=cidr(value))


def _remote_ip(_key: str, value: str, _tcp: bool) -> Principal:
    return Principal(remote_ip=cidr(value))


def _namespace(_key: str, value: str, _tcp: bool) -> Principal:
    pattern = ".*".join(quote_meta(part) for part in value.split("*"))
    return _authenticated(_regex(f".*/ns/{pattern}/.*"))


def _trust_domain(_key: str, value: str, _tcp: bool) -> Principal:
    if value == "*":
        return _authenticated(string_pb2.StringMatcher(prefix=SPIFFE_PREFIX))
    if "*" not in value:
        return _authenticated(string_pb2.StringMatcher(prefix=f"{SPIFFE_PREFIX}{value}/"))
    head, _, tail = value.partition("*")
    return _authenticated(_regex(f"spiffe://{quote_meta(head)}[^/]*{quote_meta(tail)}/.*"))


def _service_account(namespace: str) -> Single:
    def generate(_key: str, value: str, _tcp: bool) -> Principal:
        ns, sep, sa = value.partition("/")
        if not sep:
            ns, sa = namespace, value
        regex = f"spiffe://.+/ns/{quote_meta(ns)}/(.+/|)sa/{quote_meta(sa)}(/.+)?"
        return _authenticated(_regex(regex))

    return generate


def _principal(_key: str, value: str, _tcp: bool) -> Principal:
    return _authenticated(string_matcher(value, SPIFFE_PREFIX))


def _request_header(key: str, value: str, for_tcp: bool) -> Principal:
    _http_only(key, for_tcp)
    name = _bracketed(key.removeprefix("request.headers"))
    return Principal(header=header_matcher(name, value))


_ANY = _regex(".+")


def _iss_sub(value: str) -> tuple[string_pb2.StringMatcher, string_pb2.StringMatcher]:
    """A request principal `ISS/SUB` with Istio's wildcards on either end."""
    iss, found, sub = value.rpartition("/")
    if not found:
        iss, sub = value, ""
    exact = string_pb2.StringMatcher
    if value == "*":
        return _ANY, _ANY
    if value.startswith("*"):
        if not found:
            return _ANY, exact(suffix=value[1:])
        return (_ANY if iss == "*" else exact(suffix=iss[1:])), exact(exact=sub)
    if value.endswith("*"):
        if not found:
            return exact(prefix=value[:-1]), _ANY
        return exact(exact=iss), (_ANY if sub == "*" else exact(prefix=sub[:-1]))
    return exact(exact=iss), exact(exact=sub)


def _request_principal(key: str, values: Sequence[str], for_tcp: bool) -> Principal:
    _http_only(key, for_tcp)
    out = []
    for value in values:
        iss, sub = _iss_sub(value)
        ids = [
            Principal(
                metadata=_metadata(
                    JWT_FILTER, [JWT_PAYLOAD, claim], value_pb2.ValueMatcher(string_match=m)
                )
            )
            for claim, m in (("iss", iss), ("sub", sub))
        ]
        out.append(Principal(and_ids=Principal.Set(ids=ids)))
    return out[0] if len(out) == 1 else Principal(or_ids=Principal.Set(ids=out))


def _claim(claim: str) -> Multi:
    def generate(key: str, values: Sequence[str], for_tcp: bool) -> Principal:
        _http_only(key, for_tcp)
        return _claim_matcher([claim], _value_or(values))

    return generate


def _request_claims(key: str, values: Sequence[str], for_tcp: bool) -> Principal:
    _http_only(key, for_tcp)
    return _claim_matcher(nested_claims(key.removeprefix("request.auth.claims")), _value_or(values))


def _bracketed(text: str) -> str:
    if not (text.startswith("[") and text.endswith("]")):
        raise Unusable(f"expecting format [<NAME>], but found {text}")
    return text[1:-1]


def nested_claims(text: str) -> list[str]:
    """`[a][b]` -> [a, b]; anything else must be one `[name]`."""
    found = re.fullmatch(r"(\[[^\[\]]*\])+", text)
    if not found:
        return [_bracketed(text)]
    return re.findall(r"\[([^\[\]]*)\]", text)


# -- rules -------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    key: str
    values: tuple[str, ...]
    not_values: tuple[str, ...]
    single: Single | None = None
    multi: Multi | None = None


def _when_generator(key: str, namespace: str) -> tuple[str, Single | None, Multi | None]:
    """Which side (permission or principal) a `when` key lands on, and how."""
    table: dict[str, tuple[str, Single | None, Multi | None]] = {
        "destination.ip": ("permission", _dest_ip, None),
        "destination.port": ("permission", _dest_port, None),
        "connection.sni": ("permission", _sni, None),
        "source.ip": ("principal", _src_ip, None),
        "remote.ip": ("principal", _remote_ip, None),
        "source.namespace": ("principal", _namespace, None),
        "source.trustDomain": ("principal", _trust_domain, None),
        "source.serviceAccount": ("principal", _service_account(namespace), None),
        "source.principal": ("principal", _principal, None),
        "request.auth.principal": ("principal", None, _request_principal),
        "request.auth.audiences": ("principal", None, _claim("aud")),
        "request.auth.presenter": ("principal", None, _claim("azp")),
    }
    if key in table:
        return table[key]
    if key.startswith("experimental.envoy.filters."):
        return ("permission", None, _envoy_filter)
    if key.startswith("request.headers"):
        return ("principal", _request_header, None)
    if key.startswith("request.auth.claims"):
        return ("principal", None, _request_claims)
    raise Unusable(f"unknown attribute {key}")


def _attr(
    key: str, item: Obj, field: str, single: Single | None, multi: Multi | None = None
) -> list[Attribute]:
    not_field = "not" + field[0].upper() + field[1:]
    values = tuple(str(v) for v in item.get(field) or ())
    not_values = tuple(str(v) for v in item.get(not_field) or ())
    if not values and not not_values:
        return []
    return [Attribute(key, values, not_values, single, multi)]


def _source_attributes(source: Obj, namespace: str) -> list[Attribute]:
    """In Istio's order: principals first, ip blocks last."""
    return [
        *_attr("source.principal", source, "principals", _principal),
        *_attr("request.auth.principal", source, "requestPrincipals", None, _request_principal),
        *_attr("source.serviceAccount", source, "serviceAccounts", _service_account(namespace)),
        *_attr("source.trustDomain", source, "trustDomains", _trust_domain),
        *_attr("source.namespace", source, "namespaces", _namespace),
        *_attr("remote.ip", source, "remoteIpBlocks", _remote_ip),
        *_attr("source.ip", source, "ipBlocks", _src_ip),
    ]


def _operation_attributes(operation: Obj) -> list[Attribute]:
    return [
        *_attr(":authority", operation, "hosts", _host),
        *_attr(":method", operation, "methods", _method),
        *_attr("path-matcher", operation, "paths", _path),
        *_attr("destination.port", operation, "ports", _dest_port),
    ]


@dataclass(frozen=True)
class RuleModel:
    """A rule as lists of AND-ed attributes: one list per `from` (principals)
    and per `to` (permissions)."""

    permissions: tuple[tuple[Attribute, ...], ...]
    principals: tuple[tuple[Attribute, ...], ...]


def rule_model(rule: Obj, namespace: str) -> RuleModel:
    base_permission: list[Attribute] = []
    base_principal: list[Attribute] = []
    for when in rule.get("when") or ():
        key = str(when.get("key", ""))
        side, single, multi = _when_generator(key, namespace)
        attrs = _attr(key, when, "values", single, multi)
        (base_permission if side == "permission" else base_principal).extend(attrs)
    principals = [
        (*_source_attributes(item.get("source") or {}, namespace), *base_principal)
        for item in rule.get("from") or ()
    ] or [tuple(base_principal)]
    permissions = [
        (*_operation_attributes(item.get("operation") or {}), *base_permission)
        for item in rule.get("to") or ()
    ] or [tuple(base_permission)]
    return RuleModel(tuple(permissions), tuple(principals))


def _generated(attr: Attribute, values: tuple[str, ...], for_tcp: bool, strict: bool) -> list[Any]:
    """One OR over `values` ([] if none survive); `strict` (ALLOW) re-raises."""
    try:
        if attr.multi is not None:
            return [attr.multi(attr.key, values, for_tcp)] if values else []
        assert attr.single is not None
        out = []
        for value in values:
            try:
                out.append(attr.single(attr.key, value, for_tcp))
            except Unusable:
                if strict:
                    raise
        return out
    except Unusable:
        if strict:
            raise
        return []


def _terms(attr: Attribute, for_tcp: bool, strict: bool, permission: bool) -> list[Any]:
    """`values` as an OR, `notValues` as a NOT of an OR."""
    both = []
    for values, negate in ((attr.values, False), (attr.not_values, True)):
        got = _generated(attr, values, for_tcp, strict)
        if not got:
            continue
        if attr.multi is not None:
            term = got[0]
        elif permission:
            term = Permission(or_rules=Permission.Set(rules=got))
        else:
            term = Principal(or_ids=Principal.Set(ids=got))
        if negate:
            term = Permission(not_rule=term) if permission else Principal(not_id=term)
        both.append(term)
    return both


def rbac_policy(model: RuleModel, for_tcp: bool, strict: bool) -> rbac_pb2.Policy:
    """Raises Unusable when `strict` (ALLOW) and any value is unusable here."""
    policy = rbac_pb2.Policy()
    for attrs in model.permissions:
        rules = [t for a in attrs for t in _terms(a, for_tcp, strict, True)]
        policy.permissions.append(
            Permission(and_rules=Permission.Set(rules=rules or [Permission(any=True)]))
        )
    for attrs in model.principals:
        ids = [t for a in attrs for t in _terms(a, for_tcp, strict, False)]
        policy.principals.append(Principal(and_ids=Principal.Set(ids=ids or [Principal(any=True)])))
    return policy


# -- trust domain aliases ------------------------------------------------------


def _glob_either(a: str, b: str) -> bool:
    def prefix(x: str, pattern: str) -> bool:
        return pattern.endswith("*") and x.startswith(pattern[:-1])

    def suffix(x: str, pattern: str) -> bool:
        return pattern.startswith("*") and x.endswith(pattern[1:])

    return b == "*" or a == b or prefix(a, b) or prefix(b, a) or suffix(a, b) or suffix(b, a)


def with_trust_domains(model: RuleModel, trust_domains: Sequence[str]) -> RuleModel:
    """Principals `TD/ns/N/sa/S` repeated for the trust domain and each alias
    (when TD is one of them, or cluster.local); trustDomains values expanded."""

    def principals(values: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for value in values:
            parts = value.split("/")
            if len(parts) != 5 or parts[0] == "*":
                out.append(value)
                continue
            if not (
                any(_glob_either(parts[0], td) for td in trust_domains)
                or parts[0] == DEFAULT_TRUST_DOMAIN
            ):
                out.append(value)
                continue
            replaced: list[str] = []
            for td in trust_domains:
                keep = parts[0].startswith("*") and td.endswith(parts[0][1:])
                new = value if keep else "/".join([td, *parts[1:]])
                if new not in replaced:
                    replaced.append(new)
            out.extend(replaced)
        return tuple(out)

    def domains(values: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for value in values:
            for v in trust_domains if value in trust_domains else [value]:
                if v not in out:
                    out.append(v)
        return tuple(out)

    def migrate(attr: Attribute) -> Attribute:
        fix = {"source.principal": principals, "source.trustDomain": domains}.get(attr.key)
        if fix is None:
            return attr
        return replace(
            attr,
            values=fix(attr.values) if attr.values else attr.values,
            not_values=fix(attr.not_values) if attr.not_values else attr.not_values,
        )

    return replace(model, principals=tuple(tuple(migrate(a) for a in p) for p in model.principals))
