"""HTTPMatchRequest -> RouteMatch (Istio's TranslateRouteMatch).

Method, authority and scheme become matchers on the `:method`, `:authority`
and `:scheme` pseudo-headers; withoutHeaders become inverted header matchers;
header matchers are sorted by name so that output is deterministic. sourceLabels,
gateways and port are not request properties: they decide whether the route
exists for a proxy at all (see `applies`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TypeVar

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2
from google.protobuf.wrappers_pb2 import BoolValue

from pilotfish.model.config import labels_match
from pilotfish.model.types import Labels
from pilotfish.objects import Obj
from pilotfish.translate.protos import is_present_match, string_matcher

_PSEUDO = (("method", ":method"), ("authority", ":authority"), ("scheme", ":scheme"))


def applies(
    match: Obj | None, port: int, proxy_labels: Labels, proxy_ns: str, gateways: frozenset[str]
) -> bool:
    """Whether a match condition is built for this proxy and port: its port,
    then its gateways, else its sourceLabels and sourceNamespace."""
    if match is None:
        return True
    if match.get("port") and int(match["port"]) != port:
        return False
    if match.get("gateways"):
        return any(g in gateways for g in match["gateways"])
    if not labels_match(match.get("sourceLabels") or {}, proxy_labels):
        return False
    return not match.get("sourceNamespace") or match["sourceNamespace"] == proxy_ns


def in_subnets(addresses: Iterable[str], subnets: Iterable[str]) -> bool:
    """Whether any of a destination's addresses (an IP, or a CIDR as a
    ServiceEntry may have) lies within one of `subnets`, as Istio matches the
    original destination address against a `destinationSubnets` prefix."""
    nets = [ipaddress.ip_network(str(s), strict=False) for s in subnets]
    for address in addresses:
        try:
            ours = ipaddress.ip_network(address, strict=False)
        except ValueError:  # a hostname: not an address to match
            continue
        first, last = ours.network_address, ours.broadcast_address
        if any(first in net and last in net for net in nets):
            return True
    return False


def translate_route_match(match: Obj | None) -> rc.RouteMatch:
    out = rc.RouteMatch(prefix="/")
    if match is None:
        return out
    headers = [_header(n, m) for n, m in (match.get("headers") or {}).items()]
    headers += [_without(n, m) for n, m in (match.get("withoutHeaders") or {}).items()]
    headers.sort(key=lambda h: h.name)
    _set_path(out, match.get("uri"))
    out.case_sensitive.CopyFrom(BoolValue(value=not match.get("ignoreUriCase", False)))
    headers += [_header(h, match[f]) for f, h in _PSEUDO if match.get(f) is not None]
    out.headers.extend(headers)
    out.query_parameters.extend(
        _query(n, m) for n, m in sorted((match.get("queryParams") or {}).items())
    )
    return out


def _set_path(out: rc.RouteMatch, uri: Obj | None) -> None:
    if not uri:
        return
    if "exact" in uri:
        out.path = str(uri["exact"])
    elif "prefix" in uri:
        out.prefix = str(uri["prefix"])
    elif "regex" in uri:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=str(uri["regex"])))


def _header(name: str, match: Obj | None) -> rc.HeaderMatcher:
    return _value_match(rc.HeaderMatcher(name=name.lower()), match)


def _without(name: str, match: Obj | None) -> rc.HeaderMatcher:
    out = _header(name, match)
    out.invert_match = True
    # A missing header must count as "not matching" the value, which Envoy
    # only does with treat_missing_header_as_empty; present_match forbids it.
    if not is_present_match(match):
        out.treat_missing_header_as_empty = True
    return out


def _query(name: str, match: Obj | None) -> rc.QueryParameterMatcher:
    return _value_match(rc.QueryParameterMatcher(name=name), match)


M = TypeVar("M", rc.HeaderMatcher, rc.QueryParameterMatcher)


def _value_match(out: M, match: Obj | None) -> M:
    """Istio's StringMatch as Envoy's: a string matcher, or presence when the
    match is empty ({} or `regex: "*"`)."""
    matcher = string_matcher(match or {})
    if is_present_match(match) or matcher is None:
        out.present_match = True
    else:
        out.string_match.CopyFrom(matcher)
    return out
