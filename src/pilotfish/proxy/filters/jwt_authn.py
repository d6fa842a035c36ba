"""Envoy's JWT authentication filter (`envoy.filters.http.jwt_authn`).

The first rule whose match takes the request names a requirement; the filter
extracts tokens from the providers' locations (headers with a prefix, query
parameters, cookies; `Authorization: Bearer` and `access_token` when a provider
names none), verifies them (`jwt_verify`), and either lets the request through
or answers as Envoy does: 401 (403 for audiences) with jwt_verify_lib's status
as the body and `www-authenticate: Bearer realm="<request URL>"`.

A verified token's payload goes into the request's dynamic metadata under
`envoy.filters.http.jwt_authn` at the provider's `payload_in_metadata` key,
and Istio's request attributes under `istio_authn` (what Istio's authn filter
gives the RBAC filter): `request.auth.principal` ("ISS/SUB"),
`request.auth.audiences`, `request.auth.presenter` (azp), `request.auth.claims`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random
from typing import Any
from urllib.parse import parse_qsl

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2

from pilotfish.proxy.filters.base import PROCEED, Exchange, Step, local_reply
from pilotfish.proxy.filters.errors import FilterConfigError
from pilotfish.proxy.filters.jwt_verify import (
    AUDIENCE_NOT_ALLOWED,
    MISSING,
    UNKNOWN_ISSUER,
    JwksError,
    Jwt,
    JwtError,
    Key,
    parse_jwks,
    parse_jwt,
    verify_signature,
    verify_time,
)
from pilotfish.proxy.filters.overrides import RouteOverrides, only_disabled
from pilotfish.proxy.proto_fields import unsupported
from pilotfish.proxy.routing.headers import OVERWRITE_IF_EXISTS_OR_ADD, REMOVE, HeaderMutation
from pilotfish.proxy.routing.per_filter import FilterConfigs

FILTER_NAME = "envoy.filters.http.jwt_authn"
ISTIO_AUTHN = "istio_authn"
JWKS_FETCH_FAIL = "Jwks remote fetch is failed"  # no usable keys: Envoy's status when it has none
DEFAULT_CLOCK_SKEW_S = 60
JWT_CACHE_SIZE = 100  # Envoy's JwtCacheConfig default
_TOKEN = re.compile(rb"[A-Za-z0-9._\-+/=]+")  # what Envoy takes after a header's prefix
_PROVIDER_FIELDS = frozenset(
    {"issuer", "audiences", "local_jwks.inline_string", "forward", "from_headers"}
    | {"from_params", "from_cookies", "forward_payload_header", "payload_in_metadata"}
    | {"normalize_payload_in_metadata", "clock_skew_seconds", "claim_to_headers"}
    | {"pad_forward_payload_header"}
)
_CONFIG_FIELDS = frozenset(
    {"providers", "rules.match.prefix", "rules.match.path", "rules.requires"}
    | {"bypass_cors_preflight", "rules.match.case_sensitive", "stat_prefix"}
)
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True, eq=False)
class Provider:
    """One JwtProvider, its keys parsed once when the config arrives."""

    name: str
    issuer: str
    audiences: frozenset[str]
    keys: tuple[Key, ...]
    forward: bool
    headers: tuple[tuple[bytes, bytes], ...]  # (lower-case name, value prefix)
    params: tuple[str, ...]
    cookies: tuple[str, ...]
    payload_header: bytes
    pad_payload: bool
    payload_key: str
    space_delimited: frozenset[str]
    claim_headers: tuple[tuple[str, bytes], ...]  # (claim, header)
    skew: int
    # Envoy's jwt_cache (on by default, 100 tokens): a token verified once under
    # this config skips the signature check while its time is still good.
    cache: dict[str, Jwt] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Provider({self.name}, issuer={self.issuer!r}, {len(self.keys)} keys)"

    def verified(self, token: str, now: float) -> Jwt:
        """The token checked under this provider (JwtError if it fails)."""
        jwt = self.cache.get(token)
        if jwt is not None:
            verify_time(jwt, now, self.skew)
            return jwt
        jwt = parse_jwt(token)
        self.check(jwt, now)
        if len(self.cache) >= JWT_CACHE_SIZE:
            del self.cache[next(iter(self.cache))]  # the oldest entry
        self.cache[token] = jwt
        return jwt

    def check(self, jwt: Jwt, now: float) -> None:
        """jwt_verify_lib's order: issuer, time, audiences, then the signature."""
        if self.issuer and jwt.issuer != self.issuer:
            raise JwtError(UNKNOWN_ISSUER)
        verify_time(jwt, now, self.skew)
        if self.audiences and not self.audiences.intersection(jwt.audiences):
            raise JwtError(AUDIENCE_NOT_ALLOWED)
        if not self.keys:
            raise JwtError(JWKS_FETCH_FAIL)
        verify_signature(jwt, self.keys)


# A requirement: ("provider", name) | ("any", [...]) | ("all", [...]) | ("missing",) |
# ("missing_or_failed",).
Requirement = tuple[Any, ...]


@dataclass(frozen=True, slots=True, eq=False)
class JwtAuthnConfig:
    providers: dict[str, Provider]
    rules: tuple[tuple[str, bool, bool, Requirement], ...]  # (path, prefix?, case?, requires)
    bypass_cors_preflight: bool
    # Envoy's sanitizeHeaders: the headers the filter writes are removed from
    # every request it checks, so a client cannot pass forged ones without a token.
    sanitize: HeaderMutation
    stat_prefix: str = ""  # Envoy's `jwt_authn.<stat_prefix>` counter scope

    @classmethod
    def of(
        cls,
        providers: dict[str, Provider],
        rules: tuple[tuple[str, bool, bool, Requirement], ...],
        bypass_cors_preflight: bool,
        stat_prefix: str = "",
    ) -> JwtAuthnConfig:
        written = {p.payload_header for p in providers.values() if p.payload_header}
        written |= {name for p in providers.values() for _, name in p.claim_headers}
        sanitize = HeaderMutation(tuple((REMOVE, name, b"") for name in sorted(written)))
        return cls(providers, rules, bypass_cors_preflight, sanitize, stat_prefix)


def compile_jwt_authn(msg: config_pb2.JwtAuthentication, path: str) -> JwtAuthnConfig:
    bad = unsupported(msg, _CONFIG_FIELDS)
    if bad:
        raise FilterConfigError(f"{path}.{bad[0]}", "not supported by pilotfish")
    providers = {
        name: _provider(name, p, f"{path}.providers[{name}]") for name, p in msg.providers.items()
    }
    rules = []
    for i, rule in enumerate(msg.rules):
        where = f"{path}.rules[{i}]"
        match = rule.match
        prefix = match.WhichOneof("path_specifier") == "prefix"
        value = match.prefix if prefix else match.path
        case = not match.HasField("case_sensitive") or match.case_sensitive.value
        requires = (
            _requirement(rule.requires, providers, f"{where}.requires")
            if rule.HasField("requires")
            else ("all", [])  # Envoy's AllowAllVerifier: nothing is checked
        )
        rules.append((value, prefix, case, requires))
    return JwtAuthnConfig.of(providers, tuple(rules), msg.bypass_cors_preflight, msg.stat_prefix)


def _provider(name: str, p: config_pb2.JwtProvider, path: str) -> Provider:
    bad = unsupported(p, _PROVIDER_FIELDS)
    if bad:
        raise FilterConfigError(f"{path}.{bad[0]}", "not supported by pilotfish")
    try:
        keys = parse_jwks(p.local_jwks.inline_string) if p.local_jwks.inline_string else ()
    except JwksError:
        keys = ()  # as Envoy: the config loads, and every token of this provider fails
    headers = tuple((h.name.lower().encode(), h.value_prefix.encode()) for h in p.from_headers)
    params = tuple(p.from_params)
    if not headers and not params and not p.from_cookies:
        headers, params = ((b"authorization", b"Bearer "),), ("access_token",)
    return Provider(
        name=name,
        issuer=p.issuer,
        audiences=frozenset(p.audiences),
        keys=keys,
        forward=p.forward,
        headers=headers,
        params=params,
        cookies=tuple(p.from_cookies),
        payload_header=p.forward_payload_header.lower().encode(),
        pad_payload=p.pad_forward_payload_header,
        payload_key=p.payload_in_metadata,
        space_delimited=frozenset(p.normalize_payload_in_metadata.space_delimited_claims),
        claim_headers=tuple(
            (c.claim_name, c.header_name.lower().encode()) for c in p.claim_to_headers
        ),
        skew=p.clock_skew_seconds or DEFAULT_CLOCK_SKEW_S,
    )


def _requirement(
    req: config_pb2.JwtRequirement, providers: dict[str, Provider], path: str
) -> Requirement:
    kind = req.WhichOneof("requires_type")
    if kind == "provider_name":
        if req.provider_name not in providers:
            raise FilterConfigError(path, f"provider {req.provider_name!r} is not defined")
        return ("provider", req.provider_name)
    if kind in ("requires_any", "requires_all"):
        children = getattr(req, kind).requirements
        parts = [_requirement(c, providers, f"{path}.{kind}[{i}]") for i, c in enumerate(children)]
        return ("any" if kind == "requires_any" else "all", parts)
    if kind == "allow_missing":
        return ("missing",)
    if kind == "allow_missing_or_failed":
        return ("missing_or_failed",)
    raise FilterConfigError(path, f"requirement {kind or 'unset'} is not supported by pilotfish")


@dataclass(slots=True, eq=False)
class _Request:
    """One request's verification: tokens verified once however many requirements ask."""

    ex: Exchange
    now: float
    results: dict[tuple[str, str], str | None] = field(default_factory=dict)
    verified: dict[str, tuple[Jwt, Provider, bytes | None]] = field(default_factory=dict)
    _tokens: dict[str, list[tuple[str, bytes | None]]] = field(default_factory=dict)
    _query: list[tuple[str, str]] | None = None
    _cookies: dict[str, str] | None = None

    def tokens(self, provider: Provider) -> list[tuple[str, bytes | None]]:
        """(token, the header it came in, if it came in one) at the provider's locations."""
        found = self._tokens.get(provider.name)
        if found is None:
            found = self._tokens[provider.name] = self._extract(provider)
        return found

    def _extract(self, provider: Provider) -> list[tuple[str, bytes | None]]:
        found: list[tuple[str, bytes | None]] = []
        index = self.ex.index()
        for name, prefix in provider.headers:
            value = index.get(name)
            if value is None:
                continue
            at = value.find(prefix) if prefix else 0
            token = _TOKEN.match(value, at + len(prefix)) if at >= 0 else None
            if token is not None:
                found.append((token.group().decode(), name))
        if provider.params:
            found += [(v, None) for k, v in self.query() if k in provider.params]
        if provider.cookies:
            cookies = self.cookies()
            found += [(cookies[c], None) for c in provider.cookies if c in cookies]
        return found

    def query(self) -> list[tuple[str, str]]:
        if self._query is None:
            _, _, query = self.ex.request.path.partition(b"?")
            self._query = parse_qsl(query.decode("latin-1"), keep_blank_values=False)
        return self._query

    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            raw = self.ex.index().get(b"cookie", b"").decode("latin-1")
            pairs = (c.strip().partition("=") for c in re.split(r"[;,]", raw))
            self._cookies = {k: v.strip('"') for k, _, v in pairs if k}
        return self._cookies

    def verify(self, token: str, header: bytes | None, provider: Provider) -> str | None:
        """None if the token is good for the provider, else Envoy's status."""
        key = (token, provider.name)
        if key in self.results:
            return self.results[key]
        try:
            jwt = provider.verified(token, self.now)
        except JwtError as e:
            self.results[key] = str(e)
            return str(e)
        self.results[key] = None
        self.verified.setdefault(token, (jwt, provider, header))
        return None

    def check(self, req: Requirement, providers: dict[str, Provider]) -> str | None:
        """Envoy's verifiers: None if `req` is met, else the status that failed it."""
        kind = req[0]
        if kind == "provider":
            provider = providers[req[1]]
            tokens = self.tokens(provider)
            if not tokens:
                return MISSING
            # Every token must be good: else a bad one could ride along with a good one.
            for token, header in tokens:
                status = self.verify(token, header, provider)
                if status is not None:
                    return status
            return None
        if kind == "any":
            return self.check_any(req[1], providers)
        if kind == "all":
            for r in req[1]:
                status = self.check(r, providers)
                if status is not None:
                    return status
            return None
        status = self.check_any_issuer(providers)
        return None if kind == "missing_or_failed" or status in (None, MISSING) else status

    def check_any(self, reqs: list[Requirement], providers: dict[str, Provider]) -> str | None:
        """Envoy's AnyVerifier: allow_missing(_or_failed) among others is a flag,
        not a child; with all children failed, the last error other than
        missing / unknown issuer wins, then unknown issuer, then missing."""
        bypass = {r[0] for r in reqs if r[0] in ("missing", "missing_or_failed")}
        children = [r for r in reqs if r[0] not in bypass]
        if not children:
            return self.check(
                ("missing_or_failed" if "missing_or_failed" in bypass else "missing",), providers
            )
        final = MISSING
        for child in children:  # in order, stopping at the first that passes, as Envoy does
            status = self.check(child, providers)
            if status is None:
                return None
            if status not in (MISSING, UNKNOWN_ISSUER) or final == MISSING:
                final = status
        if "missing_or_failed" in bypass or ("missing" in bypass and final == MISSING):
            return None
        return final

    def check_any_issuer(self, providers: dict[str, Provider]) -> str | None:
        """allow_missing: any token found at any provider's locations must be good
        for the provider its issuer names."""
        seen: set[str] = set()
        found = False
        for provider in providers.values():
            for token, header in self.tokens(provider):
                if token in seen:
                    continue
                seen.add(token)
                found = True
                status = self._verify_by_issuer(token, header, providers)
                if status is not None:
                    return status
        return None if found else MISSING

    def _verify_by_issuer(
        self, token: str, header: bytes | None, providers: dict[str, Provider]
    ) -> str | None:
        for provider in providers.values():  # seen before: no need to parse it again
            if token in provider.cache:
                return self.verify(token, header, provider)
        try:
            issuer = parse_jwt(token).issuer
        except JwtError as e:
            return str(e)
        for provider in providers.values():
            if provider.issuer in ("", issuer):
                return self.verify(token, header, provider)
        return UNKNOWN_ISSUER


class JwtAuthnFilter:
    """The filter in a chain; `now` is wall-clock time (tokens carry epoch seconds).

    Envoy's counters, in the HTTP connection manager's scope
    (`http.<stat_prefix>.jwt_authn.allowed`): `allowed` for every request let
    through (a valid token, a missing one its requirement allows, no rule
    matching the path, a CORS preflight), `denied` for every 401/403, and
    `cors_preflight_bypassed`. Envoy's `jwks_fetch_success|failed` count
    remote_jwks fetches, which a sidecar never makes: the control plane
    fetches a jwksUri and sends the keys inline, as istiod does."""

    def __init__(self, name: str, config: JwtAuthnConfig, now: Clock = time.time) -> None:
        self.name = name
        self.config = config
        self.now = now
        scope = f"jwt_authn.{config.stat_prefix}"
        self.allowed, self.denied = f"{scope}allowed", f"{scope}denied"
        self.cors_bypassed = f"{scope}cors_preflight_bypassed"
        self.off = RouteOverrides(name, False, only_disabled(config_pb2.PerRouteConfig))

    def __repr__(self) -> str:
        return f"JwtAuthnFilter({self.name}, providers={sorted(self.config.providers)})"

    def prepare(self, route_configs: FilterConfigs) -> None:
        """A route's `PerRouteConfig` may turn the filter off there (Istio
        sets none; `requirement_name` is refused: no `requirement_map`)."""
        self.off.resolve(route_configs)

    def idle(self, route_configs: FilterConfigs) -> bool:
        return not self.config.rules or self.off.resolve(route_configs)

    def resume(self, ex: Exchange, rng: Random) -> Step:
        return PROCEED

    def decode(self, ex: Exchange, rng: Random) -> Step:
        if self.off.resolve(ex.route_configs):
            return PROCEED
        if self._cors_preflight(ex):
            ex.counters[self.cors_bypassed] += 1
            ex.counters[self.allowed] += 1
            return PROCEED
        requirement = self._requirement(ex)
        if requirement is None:
            ex.counters[self.allowed] += 1
            return PROCEED
        if self.config.sanitize:
            ex.upstream_headers.append(self.config.sanitize)
        state = _Request(ex, self.now())
        status = state.check(requirement, self.config.providers)
        if status is not None:
            ex.counters[self.denied] += 1
            return _deny(ex, status)
        ex.counters[self.allowed] += 1
        for jwt, provider, header in state.verified.values():
            _accept(ex, jwt, provider, header)
        return PROCEED

    def _cors_preflight(self, ex: Exchange) -> bool:
        """A preflight carries no credentials, so Envoy lets it through unchecked."""
        if not (self.config.bypass_cors_preflight and ex.request.method == b"OPTIONS"):
            return False
        index = ex.index()
        return bool(index.get(b"origin") and index.get(b"access-control-request-method"))

    def _requirement(self, ex: Exchange) -> Requirement | None:
        request = ex.request
        path = request.path.partition(b"?")[0].decode("latin-1")
        for value, prefix, case, requires in self.config.rules:
            got, want = (path, value) if case else (path.lower(), value.lower())
            if got.startswith(want) if prefix else got == want:
                return requires
        return None


def _deny(ex: Exchange, status: str) -> Step:
    """Envoy's reply: 403 for audiences, else 401; the realm is the request's URL."""
    request = ex.request
    path = request.path.partition(b"?")[0]
    realm = b'Bearer realm="' + request.scheme + b"://" + request.authority + path + b'"'
    if status != MISSING:
        realm += b', error="invalid_token"'
    code = 403 if status == AUDIENCE_NOT_ALLOWED else 401
    details = "jwt_authn_access_denied{" + status.replace(" ", "_") + "}"
    extra = HeaderMutation(((OVERWRITE_IF_EXISTS_OR_ADD, b"www-authenticate", realm),))
    return local_reply(ex, code, status, flag="", details=details, extra=extra)


def _accept(ex: Exchange, jwt: Jwt, provider: Provider, header: bytes | None) -> None:
    ops: list[tuple[int, bytes, bytes]] = []
    if not provider.forward and header is not None:
        ops.append((REMOVE, header, b""))
    if provider.payload_header:
        encoded = jwt.payload_b64.encode()
        if provider.pad_payload:
            encoded += b"=" * (-len(encoded) % 4)
        ops.append((OVERWRITE_IF_EXISTS_OR_ADD, provider.payload_header, encoded))
    for claim, name in provider.claim_headers:
        value = _claim_value(jwt.payload, claim)
        if value is not None:
            ops.append((OVERWRITE_IF_EXISTS_OR_ADD, name, value))
    if ops:
        ex.upstream_headers.append(HeaderMutation(tuple(ops)))
    payload = _normalized(jwt.payload, provider.space_delimited)
    if provider.payload_key:
        ex.dynamic_metadata.setdefault(FILTER_NAME, {})[provider.payload_key] = payload
    ex.dynamic_metadata.setdefault(ISTIO_AUTHN, istio_authn_attributes(payload))


def _claim_value(payload: dict[str, Any], claim: str) -> bytes | None:
    """claim_to_headers: a nested claim by dots; strings, numbers, booleans and
    lists of them (comma-joined)."""
    value: Any = payload
    for part in claim.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, list):
        items = [_scalar(v) for v in value]
        return b",".join(i for i in items if i is not None) if items else None
    return _scalar(value)


def _scalar(value: Any) -> bytes | None:
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float):
        return str(value).encode()
    return None


def _normalized(payload: dict[str, Any], space_delimited: frozenset[str]) -> dict[str, Any]:
    """normalize_payload_in_metadata: listed claims holding a string become its words."""
    if not space_delimited.intersection(payload):
        return payload
    return {
        k: v.split() if k in space_delimited and isinstance(v, str) else v
        for k, v in payload.items()
    }


def istio_authn_attributes(payload: dict[str, Any]) -> dict[str, Any]:
    """Istio's request attributes from a verified token's payload: the request
    principal is ISS/SUB; audiences a list; presenter the azp claim."""
    aud = payload.get("aud")
    return {
        "request.auth.principal": f"{payload.get('iss', '')}/{payload.get('sub', '')}",
        "request.auth.audiences": [aud] if isinstance(aud, str) else list(aud or []),
        "request.auth.presenter": str(payload.get("azp", "")),
        "request.auth.claims": payload,
    }
