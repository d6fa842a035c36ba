"""The RBAC filter (envoy.filters.http.rbac): a request is allowed or denied
by policies of permissions (what is asked) and principals (who asks).

As Envoy does:
- `rules` enforce: ALLOW lets through only what some policy matches, DENY
  stops what some policy matches, LOG lets everything through; a denial is
  403 `RBAC: access denied`, response code details
  `rbac_access_denied_matched_policy[NAME]` (`[none]` when no policy matched);
- `shadow_rules` only count (`shadow_allowed`, `shadow_denied`) and leave
  the result in the dynamic metadata under `envoy.filters.http.rbac`:
  `<shadow prefix>shadow_effective_policy_id` and `..shadow_engine_result`;
- counters `rbac.<rules prefix>allowed|denied` and
  `rbac.<shadow prefix>shadow_allowed|shadow_denied`, in the HTTP connection
  manager's scope (`http.<stat_prefix>.rbac.allowed`);
- policies are tried in name order; the first that matches is the effective one;
- `authenticated` principals read the peer's verified certificate: none on a
  plaintext connection, so they match nothing there (and `not_id` of one
  matches everything).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any

from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from google.protobuf.message import Message

from pilotfish.proxy.filters.base import PROCEED, Exchange, Step, local_reply
from pilotfish.proxy.filters.errors import FilterConfigError
from pilotfish.proxy.filters.overrides import RouteOverrides, expect
from pilotfish.proxy.proto_fields import unsupported
from pilotfish.proxy.routing.errors import RouteConfigError
from pilotfish.proxy.routing.match import compile_header_matcher, compile_string_matcher
from pilotfish.proxy.routing.per_filter import FilterConfigs
from pilotfish.proxy.routing.request import PSEUDO_HEADERS

NAME = "envoy.filters.http.rbac"
DENIED_BODY = "RBAC: access denied"
ALLOW, DENY, LOG = 0, 1, 2
Test = Callable[[Exchange], bool]
SUPPORTED = frozenset(
    {"rules.action", "rules.policies", "shadow_rules", "rules_stat_prefix",
     "shadow_rules_stat_prefix"}
)  # fmt: skip
# RFC 3986 pchar, as Envoy's uri_template matcher reads `*` (one segment) and `**` (any).
_PCHAR = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]"


@dataclass(frozen=True, slots=True)
class Engine:
    """One RBAC config: an action and named policies, tried in name order."""

    action: int
    policies: tuple[tuple[str, Test], ...]

    def matched(self, ex: Exchange) -> str | None:
        for name, test in self.policies:
            if test(ex):
                return name
        return None

    def allows(self, matched: str | None) -> bool:
        if self.action == ALLOW:
            return matched is not None
        return self.action == LOG or matched is None


Engines = tuple[Engine | None, Engine | None]  # enforced, shadow


class RbacFilter:
    """One RBAC filter of a chain: enforced and shadow engines, either
    optional, replaced on a route by its `RBACPerRoute` (Envoy's
    `RoleBasedAccessControlRouteSpecificFilterConfig`): the route's `rbac`
    takes the place of the filter's rules and shadow rules there, and an
    `RBACPerRoute` without one turns the filter off for that route. The
    counters keep the filter's own stat prefixes, as Envoy's do."""

    def __init__(
        self,
        name: str,
        rules: Engine | None,
        shadow: Engine | None,
        prefix: str,
        shadow_prefix: str,
    ) -> None:
        self.name = name
        self.engines = RouteOverrides(name, (rules, shadow), _compile_per_route)
        self.allowed, self.denied = f"rbac.{prefix}allowed", f"rbac.{prefix}denied"
        self.shadow_allowed = f"rbac.{shadow_prefix}shadow_allowed"
        self.shadow_denied = f"rbac.{shadow_prefix}shadow_denied"
        self.policy_key = f"{shadow_prefix}shadow_effective_policy_id"
        self.result_key = f"{shadow_prefix}shadow_engine_result"

    def __repr__(self) -> str:
        base = zip(("rules", "shadow"), self.engines.base, strict=True)
        engines = [k for k, e in base if e]
        return f"RbacFilter({self.name}, {'+'.join(engines) or 'no rules'})"

    def decode(self, ex: Exchange, rng: Random) -> Step:
        rules, shadow = self.engines.resolve(ex.route_configs)
        if shadow is not None:
            self._shadow(ex, shadow)
        if rules is None:
            return PROCEED
        matched = rules.matched(ex)
        if rules.allows(matched):
            ex.counters[self.allowed] += 1
            return PROCEED
        ex.counters[self.denied] += 1
        details = f"rbac_access_denied_matched_policy[{_no_spaces(matched or 'none')}]"
        return local_reply(ex, 403, DENIED_BODY, flag="", details=details)

    def _shadow(self, ex: Exchange, shadow: Engine) -> None:
        matched = shadow.matched(ex)
        allowed = shadow.allows(matched)
        ex.counters[self.shadow_allowed if allowed else self.shadow_denied] += 1
        fields = ex.dynamic_metadata.setdefault(self.name, {})
        if matched is not None:
            fields[self.policy_key] = matched
        fields[self.result_key] = "allowed" if allowed else "denied"

    def resume(self, ex: Exchange, rng: Random) -> Step:
        return PROCEED

    def prepare(self, route_configs: FilterConfigs) -> None:
        self.engines.resolve(route_configs)

    def idle(self, route_configs: FilterConfigs) -> bool:
        return False


def _no_spaces(text: str) -> str:
    return re.sub(r"\s", "_", text)


def compile_rbac(name: str, config: http_rbac_pb2.RBAC, path: str) -> RbacFilter:
    rules, shadow = _engines(config, path)
    return RbacFilter(
        name, rules, shadow, config.rules_stat_prefix, config.shadow_rules_stat_prefix
    )


def _compile_per_route(msg: Message, path: str) -> Engines:
    per_route = expect(msg, http_rbac_pb2.RBACPerRoute, path)
    if not per_route.HasField("rbac"):
        return None, None
    return _engines(per_route.rbac, f"{path}.rbac")


def _engines(config: http_rbac_pb2.RBAC, path: str) -> Engines:
    bad = unsupported(config, SUPPORTED)
    if bad:
        raise FilterConfigError(f"{path}.{bad[0]}", "not supported by pilotfish")
    try:
        rules = _engine(config.rules, f"{path}.rules") if config.HasField("rules") else None
        shadow = (
            _engine(config.shadow_rules, f"{path}.shadow_rules")
            if config.HasField("shadow_rules")
            else None
        )
    except RouteConfigError as e:
        raise FilterConfigError(e.path, e.reason) from None
    return rules, shadow


def _engine(rbac: Any, path: str) -> Engine:
    if rbac.action not in (ALLOW, DENY, LOG):
        raise RouteConfigError(f"{path}.action", f"action {rbac.action} is not supported")
    policies = []
    for name in sorted(rbac.policies):
        policy = rbac.policies[name]
        where = f"{path}.policies[{name}]"
        if policy.HasField("condition") or policy.HasField("checked_condition"):
            raise RouteConfigError(f"{where}.condition", "CEL conditions are not supported")
        perms = [
            _permission(p, f"{where}.permissions[{i}]") for i, p in enumerate(policy.permissions)
        ]
        ids = [_principal(p, f"{where}.principals[{i}]") for i, p in enumerate(policy.principals)]
        policies.append((name, _both(_any_of(perms), _any_of(ids))))
    return Engine(rbac.action, tuple(policies))


# The combinators fold what Istio's config is full of (one-element sets,
# `any` members) at compile time, and loop without generators: a policy of
# ten rules is tried on every request.


def _always(ex: Exchange) -> bool:
    return True


def _never(ex: Exchange) -> bool:
    return False


def _any_of(tests: Sequence[Test]) -> Test:
    if _always in tests:
        return _always
    if len(tests) == 1:
        return tests[0]
    found = tuple(tests)

    def any_of(ex: Exchange) -> bool:
        for test in found:  # noqa: SIM110 - a generator costs more per request
            if test(ex):
                return True
        return False

    return any_of if found else _never


def _all_of(tests: Sequence[Test]) -> Test:
    found = tuple(t for t in tests if t is not _always)
    if len(found) == 1:
        return found[0]

    def all_of(ex: Exchange) -> bool:
        for test in found:  # noqa: SIM110 - a generator costs more per request
            if not test(ex):
                return False
        return True

    return all_of if found else _always


def _both(a: Test, b: Test) -> Test:
    return _all_of([a, b])


def _not(test: Test) -> Test:
    if test is _always:
        return _never
    if test is _never:
        return _always
    return lambda ex: not test(ex)


def _permission(p: Any, path: str) -> Test:
    which = p.WhichOneof("rule")
    if which == "any":
        return _always
    if which == "and_rules":
        return _all_of(
            [
                _permission(r, f"{path}.and_rules.rules[{i}]")
                for i, r in enumerate(p.and_rules.rules)
            ]
        )
    if which == "or_rules":
        return _any_of(
            [_permission(r, f"{path}.or_rules.rules[{i}]") for i, r in enumerate(p.or_rules.rules)]
        )
    if which == "not_rule":
        return _not(_permission(p.not_rule, f"{path}.not_rule"))
    if which == "header":
        return _header(p.header, f"{path}.header")
    if which == "url_path":
        return _url_path(p.url_path, f"{path}.url_path")
    if which == "uri_template":
        return _uri_template(p.uri_template, f"{path}.uri_template")
    if which == "destination_ip":
        network = _network(p.destination_ip, f"{path}.destination_ip")
        return lambda ex: _in(ex.connection.local_ip, network)
    if which == "destination_port":
        port = p.destination_port
        return lambda ex: ex.connection.local_port == port
    if which == "requested_server_name":
        test = compile_string_matcher(p.requested_server_name, f"{path}.requested_server_name")
        return lambda ex: test(ex.connection.requested_server_name.encode())
    if which == "metadata":
        return compile_metadata_matcher(p.metadata, f"{path}.metadata")
    raise RouteConfigError(f"{path}.{which or 'rule'}", "not supported by pilotfish")


def _principal(p: Any, path: str) -> Test:
    which = p.WhichOneof("identifier")
    if which == "any":
        return _always
    if which == "and_ids":
        return _all_of(
            [_principal(r, f"{path}.and_ids.ids[{i}]") for i, r in enumerate(p.and_ids.ids)]
        )
    if which == "or_ids":
        return _any_of(
            [_principal(r, f"{path}.or_ids.ids[{i}]") for i, r in enumerate(p.or_ids.ids)]
        )
    if which == "not_id":
        return _not(_principal(p.not_id, f"{path}.not_id"))
    if which == "authenticated":
        return _authenticated(p.authenticated, f"{path}.authenticated")
    if which in ("direct_remote_ip", "source_ip"):
        network = _network(getattr(p, which), f"{path}.{which}")
        return lambda ex: _in(ex.connection.direct_remote_ip, network)
    if which == "remote_ip":
        network = _network(p.remote_ip, f"{path}.remote_ip")
        return lambda ex: _in(remote_ip(ex), network)
    if which == "header":
        return _header(p.header, f"{path}.header")
    if which == "metadata":
        return compile_metadata_matcher(p.metadata, f"{path}.metadata")
    raise RouteConfigError(f"{path}.{which or 'identifier'}", "not supported by pilotfish")


def _authenticated(a: Any, path: str) -> Test:
    """Any verified peer certificate, or one whose URI SAN matches."""
    if not a.HasField("principal_name"):
        return lambda ex: ex.connection.peer_principal is not None
    test = compile_string_matcher(a.principal_name, f"{path}.principal_name")
    return lambda ex: (p := ex.connection.peer_principal) is not None and test(p.encode())


def remote_ip(ex: Exchange) -> str:
    """The client as Envoy's sidecar sees it (use_remote_address false, no
    trusted hops): the last X-Forwarded-For address, else the peer's."""
    xff = ex.index().get(b"x-forwarded-for")
    if xff:
        last = xff.rsplit(b",", 1)[-1].strip().decode("latin-1")
        if _is_ip(last):
            return last
    return ex.connection.direct_remote_ip


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(cidr: Any, path: str) -> Network:
    try:
        return ipaddress.ip_network(
            f"{cidr.address_prefix}/{cidr.prefix_len.value if cidr.HasField('prefix_len') else 0}",
            strict=False,
        )
    except ValueError as e:
        raise RouteConfigError(path, f"invalid CIDR: {e}") from None


def _in(address: str, network: Network) -> bool:
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


_NO_INDEX: dict[bytes, bytes] = {}


def _header(m: Any, path: str) -> Test:
    condition = compile_header_matcher(m, path)
    if m.name.lower().encode() in PSEUDO_HEADERS:  # read from the request view: no index
        return lambda ex: condition(ex.request, _NO_INDEX)
    return lambda ex: condition(ex.request, ex.index())


def _bare_path(ex: Exchange) -> bytes:
    path = ex.request.path
    cut = min((i for i in (path.find(b"?"), path.find(b"#")) if i >= 0), default=len(path))
    return path[:cut]


def _url_path(m: Any, path: str) -> Test:
    if m.WhichOneof("rule") != "path":
        raise RouteConfigError(f"{path}.rule", "a path matcher needs `path`")
    test = compile_string_matcher(m.path, f"{path}.path")
    return lambda ex: test(_bare_path(ex))


def _uri_template(config: Any, path: str) -> Test:
    template = uri_template_match_pb2.UriTemplateMatchConfig()
    if not config.typed_config.Unpack(template):
        raise RouteConfigError(f"{path}.typed_config", "expected a UriTemplateMatchConfig")
    parts = []
    for piece in re.split(r"(\*\*|\*)", template.path_template):
        if piece == "**":
            parts.append(f"(?:{_PCHAR}|/)*")
        elif piece == "*":
            parts.append(f"{_PCHAR}+")
        else:
            parts.append(re.escape(piece))
    regex = re.compile("".join(parts).encode())
    return lambda ex: regex.fullmatch(_bare_path(ex)) is not None


def compile_metadata_matcher(m: Any, path: str) -> Test:
    """A MetadataMatcher on the request's dynamic metadata: one filter's
    value found by keys, tested."""
    if m.invert:
        inner = _metadata_value(m, path)
        return lambda ex: not inner(ex)
    return _metadata_value(m, path)


def _metadata_value(m: Any, path: str) -> Test:
    keys = [segment.key for segment in m.path]
    test = _value(m.value, f"{path}.value")
    filter_name = m.filter

    def matches(ex: Exchange) -> bool:
        value: Any = ex.dynamic_metadata.get(filter_name)
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return False
            value = value[key]
        return test(value)

    return matches


ValueTest = Callable[[Any], bool]


def _value(v: Any, path: str) -> ValueTest:
    """envoy.type.matcher.v3.ValueMatcher on a JSON-like value."""
    which = v.WhichOneof("match_pattern")
    if which == "string_match":
        test = compile_string_matcher(v.string_match, f"{path}.string_match")
        return lambda x: isinstance(x, str) and test(x.encode())
    if which == "list_match":
        one = _value(v.list_match.one_of, f"{path}.list_match.one_of")
        return lambda x: isinstance(x, list) and any(one(i) for i in x)
    if which == "or_match":
        tests = [
            _value(m, f"{path}.or_match.value_matchers[{i}]")
            for i, m in enumerate(v.or_match.value_matchers)
        ]
        return lambda x: any(t(x) for t in tests)
    if which == "present_match":
        return lambda x: x is not None
    if which == "bool_match":
        want = v.bool_match
        return lambda x: x is want
    if which == "null_match":
        return lambda x: x is None
    raise RouteConfigError(f"{path}.{which or 'match_pattern'}", "not supported by pilotfish")
