"""The route table: a RouteConfiguration compiled once per push, asked once per request.

    table = compile_route_config(route_configuration)      # raises RouteConfigError
    route = table.route(request_view, rand)                 # Route | None (404, flag NR)
    target = route.action.pick(request_view, rand)          # when isinstance(action, Forward)

Virtual hosts are found as Envoy finds them: the authority lower-cased (port
kept unless ignore_port_in_host_matching), then an exact domain, the longest
`*suffix`, the longest `prefix*`, then `*`. Within a virtual host the first
route whose match holds wins. No protobuf is read after compilation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from envoy.config.route.v3 import route_components_pb2, route_pb2

from pilotfish.proxy.proto_fields import unsupported
from pilotfish.proxy.routing.actions import Action, Forward, Redirect, Target
from pilotfish.proxy.routing.compile import (
    RouteContext,
    compile_route,
    config_context,
    vhost_context,
)
from pilotfish.proxy.routing.errors import RouteConfigError
from pilotfish.proxy.routing.headers import NO_HEADERS, HeaderMutation
from pilotfish.proxy.routing.match import (
    CONNECT,
    EXACT,
    PREFIX,
    Condition,
    PathMatch,
    path_matches,
)
from pilotfish.proxy.routing.per_filter import EMPTY, FilterConfigs
from pilotfish.proxy.routing.request import RequestView, index_headers, path_only
from pilotfish.proxy.routing.supported import SUPPORTED


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    include_request_attempt_count: bool = False
    include_attempt_count_in_response: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """One compiled route, shared by every request it matches.

    response_headers applies to redirects and direct responses; a forwarded
    request uses its Target's headers, which include these.
    """

    name: str
    virtual_host: VirtualHost
    match: PathMatch
    action: Action
    response_headers: HeaderMutation = NO_HEADERS
    filter_configs: FilterConfigs = field(default_factory=lambda: EMPTY)
    operation: str = ""  # decorator.operation, for tracing and logs
    stat_prefix: str = ""

    def __repr__(self) -> str:
        return f"Route({self.name or '<unnamed>'!r}, {self.match!r}, {self.action!r})"


# One route as the lookup loop sees it: path kind and value unpacked, then the
# runtime fraction (numerator, denominator) or None, the other conditions, the route.
_Entry = tuple[int, bytes, "tuple[int, int] | None", tuple[Condition, ...], Route]


@dataclass(frozen=True, slots=True)
class _Host:
    virtual_host: VirtualHost
    entries: tuple[_Entry, ...]
    tls_redirect: Route | None = None  # require_tls ALL: every plaintext request gets it


@dataclass(frozen=True, slots=True, eq=False)
class RouteTable:
    name: str
    _exact: dict[bytes, _Host]
    _suffixes: tuple[tuple[int, dict[bytes, _Host]], ...]  # longest first
    _prefixes: tuple[tuple[int, dict[bytes, _Host]], ...]
    _default: _Host | None
    _ignore_port: bool = False
    _host_header: bytes | None = None
    _strip_path_parameters: bool = False
    # Some route has a runtime fraction: the request's random value (which
    # also weighs its clusters, as Envoy's one per request) is drawn before
    # routing; otherwise only for an action with weighted clusters.
    random: bool = False

    def __repr__(self) -> str:
        return f"RouteTable({self.name!r}, {len(self.virtual_hosts())} virtual hosts)"

    def route(self, req: RequestView, rand: int = 0) -> Route | None:
        """The first route of the request's virtual host whose match holds, or None."""
        host = self._find(req)
        if host is None:
            return None
        if host.tls_redirect is not None and req.scheme != b"https":
            return host.tls_redirect
        path = req.path
        if self._strip_path_parameters and b";" in path:
            path = _strip_parameters(path)
        bare: bytes | None = None  # the path without query, computed when first needed
        index: dict[bytes, bytes] | None = None
        for kind, value, fraction, conditions, route in host.entries:
            if kind == PREFIX:
                if not path.startswith(value):
                    continue
            else:
                if bare is None:
                    bare = path_only(path)
                if bare != value if kind == EXACT else not path_matches(route.match, path, bare):
                    continue
            if fraction is not None and rand % fraction[1] >= fraction[0]:
                continue
            if conditions:
                if index is None:
                    index = index_headers(req.headers)
                for condition in conditions:
                    if not condition(req, index):
                        break
                else:
                    return route
                continue
            return route
        return None

    def connect_route(self, req: RequestView) -> Route | None:
        """A CONNECT request's route: the first connect_matcher route of its
        virtual host whose headers match (`route` never takes one: it has no path)."""
        host = self._find(req)
        if host is None:
            return None
        index = index_headers(req.headers)
        for kind, _, _, conditions, route in host.entries:
            if kind == CONNECT and all(condition(req, index) for condition in conditions):
                return route
        return None

    def select(self, req: RequestView, rand: int = 0) -> tuple[Route, Target | None] | None:
        """The route and, for a forwarding route, the target chosen with the same `rand`."""
        route = self.route(req, rand)
        if route is None:
            return None
        action = route.action
        return route, action.pick(req, rand) if isinstance(action, Forward) else None

    def virtual_host(self, req: RequestView) -> VirtualHost | None:
        host = self._find(req)
        return None if host is None else host.virtual_host

    def virtual_hosts(self) -> list[VirtualHost]:
        hosts = [
            *self._exact.values(),
            *(h for _, m in self._suffixes for h in m.values()),
            *(h for _, m in self._prefixes for h in m.values()),
        ]
        if self._default is not None:
            hosts.append(self._default)
        return list({id(h.virtual_host): h.virtual_host for h in hosts}.values())

    def routes(self) -> list[Route]:
        """Every route of the table once, for checks made at config time."""
        hosts = [
            *self._exact.values(),
            *(h for _, m in self._suffixes for h in m.values()),
            *(h for _, m in self._prefixes for h in m.values()),
        ]
        if self._default is not None:
            hosts.append(self._default)
        found = {id(entry[4]): entry[4] for h in hosts for entry in h.entries}
        return list(found.values())

    def _find(self, req: RequestView) -> _Host | None:
        if not (self._exact or self._suffixes or self._prefixes):
            return self._default
        if self._host_header is None:
            authority = req.authority
        else:
            authority = index_headers(req.headers).get(self._host_header, b"")
            if not authority:
                return None
        if self._ignore_port:
            authority = _strip_port(authority)
        found = self._exact.get(authority)  # hosts usually arrive lower-case already
        if found is not None:
            return found
        return self._find_lower(authority.lower())

    def _find_lower(self, host: bytes) -> _Host | None:
        found = self._exact.get(host)
        if found is not None:
            return found
        size = len(host)
        for length, suffixes in self._suffixes:
            if length < size and (found := suffixes.get(host[size - length :])) is not None:
                return found
        for length, prefixes in self._prefixes:
            if length < size and (found := prefixes.get(host[:length])) is not None:
                return found
        return self._default


def _strip_port(authority: bytes) -> bytes:
    colon = authority.rfind(b":")
    if colon < 0 or authority.rfind(b"]") > colon:
        return authority
    return authority[:colon]


def _strip_parameters(path: bytes) -> bytes:
    """ignore_path_parameters_in_path_matching: `/a;v=1?q` is matched as `/a?q`."""
    bare = path_only(path)
    return bare[: bare.find(b";")] + path[len(bare) :] if b";" in bare else path


def compile_route_config(config: route_pb2.RouteConfiguration) -> RouteTable:
    """The table for one RouteConfiguration; RouteConfigError (field path first) if
    any field is unsupported or invalid, and then nothing of it is used."""
    bad = unsupported(config, SUPPORTED)
    if bad:
        raise RouteConfigError(
            bad[0],
            "field not supported by pilotfish"
            + (f" (also: {', '.join(bad[1:])})" if bad[1:] else ""),
        )
    ctx = config_context(config)
    exact: dict[bytes, _Host] = {}
    suffixes: dict[int, dict[bytes, _Host]] = {}
    prefixes: dict[int, dict[bytes, _Host]] = {}
    default: _Host | None = None
    random = False
    for i, vh in enumerate(config.virtual_hosts):
        host = _compile_vhost(vh, f"virtual_hosts[{i}]", ctx)
        random = random or any(entry[2] is not None for entry in host.entries)
        for domain in vh.domains:
            default = _add_domain(
                domain.lower(),
                host,
                exact,
                suffixes,
                prefixes,
                default,
                f"virtual_hosts[{i}].domains",
                config.name,
            )
    return RouteTable(
        name=config.name,
        _exact=exact,
        _suffixes=_longest_first(suffixes),
        _prefixes=_longest_first(prefixes),
        _default=default,
        _ignore_port=config.ignore_port_in_host_matching,
        _host_header=config.vhost_header.lower().encode() or None,
        _strip_path_parameters=config.ignore_path_parameters_in_path_matching,
        random=random,
    )


def _add_domain(
    domain: str,
    host: _Host,
    exact: dict[bytes, _Host],
    suffixes: dict[int, dict[bytes, _Host]],
    prefixes: dict[int, dict[bytes, _Host]],
    default: _Host | None,
    path: str,
    config_name: str,
) -> _Host | None:
    """Envoy's placement: `*` alone, a leading `*` (suffix), a trailing `*` (prefix), exact."""
    raw = domain.encode("utf-8")
    if domain == "*":
        if default is not None:
            raise RouteConfigError(path, f"only one '*' domain is allowed in route {config_name!r}")
        return host
    if domain.startswith("*"):
        bucket = suffixes.setdefault(len(raw) - 1, {})
        key = raw[1:]
    elif domain.endswith("*"):
        bucket = prefixes.setdefault(len(raw) - 1, {})
        key = raw[:-1]
    else:
        bucket, key = exact, raw
    if key in bucket or not domain:
        raise RouteConfigError(
            path, f"duplicate or empty domain {domain!r} in route {config_name!r}"
        )
    bucket[key] = host
    return default


def _longest_first(
    buckets: dict[int, dict[bytes, _Host]],
) -> tuple[tuple[int, dict[bytes, _Host]], ...]:
    return tuple(sorted(buckets.items(), key=lambda kv: -kv[0]))


def _compile_vhost(vh: Any, path: str, config_ctx: RouteContext) -> _Host:
    if not vh.domains:
        raise RouteConfigError(f"{path}.domains", "a virtual host needs at least one domain")
    virtual_host = VirtualHost(
        name=vh.name,
        domains=tuple(vh.domains),
        include_request_attempt_count=vh.include_request_attempt_count,
        include_attempt_count_in_response=vh.include_attempt_count_in_response,
    )
    ctx = vhost_context(vh, path, config_ctx)
    return _Host(
        virtual_host, tuple(_entries(vh, path, virtual_host, ctx)), _tls_redirect(vh, virtual_host)
    )


def _tls_redirect(vh: Any, virtual_host: VirtualHost) -> Route | None:
    """Envoy's require_tls: a request not made over TLS gets a 301 to the
    same host and path over https. EXTERNAL_ONLY is ALL here, since the
    proxy trusts no x-forwarded-proto of a peer to say a request was TLS."""
    if vh.require_tls == route_components_pb2.VirtualHost.NONE:
        return None
    return Route(
        name="require_tls",
        virtual_host=virtual_host,
        match=PathMatch(PREFIX, b"/", "/"),
        action=Redirect(status=301, scheme=b"https"),
    )


def _entries(vh: Any, path: str, virtual_host: VirtualHost, ctx: RouteContext) -> Iterator[_Entry]:
    for j, r in enumerate(vh.routes):
        compiled = compile_route(r, f"{path}.routes[{j}]", ctx)
        route = Route(
            name=r.name,
            virtual_host=virtual_host,
            match=compiled.match,
            action=compiled.action,
            response_headers=compiled.response_headers,
            filter_configs=compiled.filter_configs,
            operation=r.decorator.operation,
            stat_prefix=r.stat_prefix,
        )
        yield (
            compiled.match.kind,
            compiled.match.literal,
            compiled.fraction,
            compiled.conditions,
            route,
        )
