"""Rules a VirtualService can never reach (IST0130) and matches a previous
rule already takes (IST0131): the warnings Istio's VirtualService validation
gives through its schema analyzer."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pilotfish.analysis.config import NETWORKING, Config, items, mapping, spec
from pilotfish.analysis.messages import Message, new
from pilotfish.objects import Obj

Report = Callable[..., None]


@dataclass(frozen=True)
class _Prefix:
    """One http match with a URI prefix, in the terms overlap is judged in."""

    route: str
    match: str
    prefix: str
    port: Any
    method: str
    authority: str
    headers: dict[str, str]
    query: dict[str, str]
    without: dict[str, str]


def unreachable_rules(config: Config) -> list[Message]:
    """IST0130 for a rule an earlier one always takes, IST0131 for a match an
    earlier rule duplicates or covers."""
    out: list[Message] = []
    for vs in config.of(NETWORKING, "VirtualService"):

        def unused(rule: str, reason: str, vs: Obj = vs) -> None:
            out.append(new("VirtualServiceUnreachableRule", vs, rule, reason))

        def ineffective(rule: str, match: str, dup: str, vs: Obj = vs) -> None:
            out.append(new("VirtualServiceIneffectiveMatch", vs, rule, match, dup))

        for section in ("http", "tcp", "tls"):
            routes = [mapping(r) for r in items(spec(vs).get(section))]
            prefixes = _walk(routes, section == "http", unused, ineffective)
            _overlaps(prefixes, ineffective)
    return out


def _walk(routes: list[Obj], http: bool, unused: Report, ineffective: Report) -> list[_Prefix]:
    seen: dict[str, int] = {}
    empty_at = -1
    prefixes: list[_Prefix] = []
    for n, route in enumerate(routes):
        matches = [mapping(m) for m in items(route.get("match"))]
        if not matches:
            if empty_at >= 0:
                unused(_rule(route, n, http), "only the last rule can have no matches")
            empty_at = n
            continue
        duplicates = 0
        for m, match in enumerate(matches):
            if empty_at >= 0:
                unused(_rule(route, n, http), "route without matches defined before")
                continue
            key = json.dumps(
                {k: v for k, v in match.items() if not (http and k == "name")}, sort_keys=True
            )
            if key in seen:
                dup = seen[key]
                ineffective(
                    _rule(route, n, http), _match(match, m, http), _rule(routes[dup], dup, http)
                )
                duplicates += 1
                continue
            seen[key] = n
            if http:
                prefixes += _prefix(route, n, match, m)
        if duplicates == len(matches):
            unused(_rule(route, n, http), "all matches used by prior rules")
    return prefixes


def _rule(route: Obj, n: int, http: bool) -> str:
    return json.dumps(route["name"]) if http and route.get("name") else f"#{n}"


def _match(match: Obj, n: int, http: bool) -> str:
    return json.dumps(match["name"]) if http and match.get("name") else f"#{n}"


def _exact_or_prefix(value: Any) -> str:
    value = mapping(value)
    if value.get("exact"):
        return f"exact:{value['exact']}"
    if value.get("prefix"):
        return f"prefix:{value['prefix']}"
    return ""


def _prefix(route: Obj, n: int, match: Obj, m: int) -> list[_Prefix]:
    prefix = mapping(match.get("uri")).get("prefix")
    if not prefix:
        return []

    def by_key(field: str) -> dict[str, str]:
        return {k: _exact_or_prefix(v) for k, v in mapping(match.get(field)).items()}

    return [
        _Prefix(
            _rule(route, n, True),
            _match(match, m, True),
            str(prefix),
            match.get("port") or 0,
            _exact_or_prefix(match.get("method")) or "exact:GET",
            _exact_or_prefix(match.get("authority")),
            by_key("headers"),
            by_key("queryParams"),
            by_key("withoutHeaders"),
        )
    ]


def _overlaps(prefixes: list[_Prefix], ineffective: Report) -> None:
    """A prefix match is shadowed by an earlier, shorter prefix with the same
    or wider other conditions (Istio compares only prefix matches)."""
    for i, first in enumerate(prefixes):
        for later in prefixes[i + 1 :]:
            if later.prefix != first.prefix and _covers(first, later):
                ineffective(
                    later.route,
                    f"{later.match} of prefix {later.prefix}",
                    f"{first.match} of prefix {first.prefix} on {first.route}",
                )


def _covers(a: _Prefix, b: _Prefix) -> bool:
    if not b.prefix.startswith(a.prefix) or a.port != b.port:
        return False
    for mine, theirs in ((a.method, b.method), (a.authority, b.authority)):
        if mine != theirs and not mine.startswith(theirs):
            return False
    return all(
        _map_covers(x, y)
        for x, y in ((a.headers, b.headers), (a.query, b.query), (a.without, b.without))
    )


def _map_covers(a: dict[str, str], b: dict[str, str]) -> bool:
    if len(a) != len(b):
        return False
    return all(k in b and (v == b[k] or v.startswith(b[k])) for k, v in a.items())
