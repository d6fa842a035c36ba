"""The JWKS resolver: the control plane fetches every RequestAuthentication
`jwksUri`, keeps the last good keys, refreshes them, and says how it went in
each policy's status (istiod's JwksResolver, in its default fetch mode).

    state = JwksState()
    for uri in due(state, wanted(policies), now, timing):      # pure
        state = record(state, uri, now, fetch(uri))           # the shell fetches
    keys = state.keys()           # -> build_snapshot(jwks=...): the proxies get them inline
    status = policy_status(policy, state, now)                # -> store.update_status

A URI is fetched when first seen, then every `refresh_s` (Istio's
PILOT_JWT_PUB_KEY_REFRESH_INTERVAL, 20 minutes); after a failure it is tried
again after `retry_s`, doubling up to `refresh_s`. A failure never drops keys
already fetched: the proxies keep them. A URI never fetched successfully has no
keys, and translation then inlines a key nobody can sign with, so tokens of
that issuer fail (as istiod's FakeJwks does).
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol

from pilotfish.analysis.authn import TARGET_REFS_IGNORED
from pilotfish.api.gotypes import parse_duration_ns, rfc3339
from pilotfish.objects import Obj
from pilotfish.periodic import Periodic
from pilotfish.proxy.filters.jwt_verify import JwksError, parse_jwks
from pilotfish.registry.mesh import MeshRegistry
from pilotfish.store.resources import ResourceStore
from pilotfish.translate.jwt import has_target_refs

log = logging.getLogger("pilotfish.jwks")

MANAGER = "pilotfish-jwks"
DEFAULT_REFRESH_S = 20 * 60.0
DEFAULT_RETRY_S = 1.0
DEFAULT_TIMEOUT_S = 5.0  # a JWTRule's timeout when it sets none, as istiod's
MAX_JWKS_BYTES = 1 << 20
NO_KEYS_SOURCE = (
    "neither jwks nor jwksUri is set, and pilotfish does not discover keys from the "
    "issuer's OpenID configuration: tokens of this issuer fail"
)


@dataclass(frozen=True)
class Timing:
    refresh_s: float = DEFAULT_REFRESH_S
    retry_s: float = DEFAULT_RETRY_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Timing:
        """Istio's variables, as Go durations: PILOT_JWT_PUB_KEY_REFRESH_INTERVAL
        and PILOT_JWT_PUB_KEY_REFRESH_INTERVAL_ON_FAILURE."""
        refresh = env.get("PILOT_JWT_PUB_KEY_REFRESH_INTERVAL")
        retry = env.get("PILOT_JWT_PUB_KEY_REFRESH_INTERVAL_ON_FAILURE")
        return cls(
            parse_duration_ns(refresh) / 1e9 if refresh else DEFAULT_REFRESH_S,
            parse_duration_ns(retry) / 1e9 if retry else DEFAULT_RETRY_S,
        )


@dataclass(frozen=True)
class JwksEntry:
    """One URI: its last good keys (kept through failures) and its last attempt."""

    keys: str | None = None
    key_count: int = 0
    fetched_at: float | None = None  # the last success
    attempted_at: float = 0.0
    error: str = ""  # the last attempt's failure; "" if it succeeded
    failures: int = 0  # in a row


@dataclass(frozen=True)
class JwksState:
    entries: Mapping[str, JwksEntry] = field(default_factory=lambda: MappingProxyType({}))

    def keys(self) -> dict[str, str]:
        """The keys to send inline, by URI: the last good ones."""
        return {uri: e.keys for uri, e in self.entries.items() if e.keys is not None}


def rules_of(policy: Obj) -> list[Obj]:
    rules: list[Obj] = (policy.get("spec") or {}).get("jwtRules") or []
    return rules


def wanted(policies: Iterable[Obj]) -> dict[str, float]:
    """URIs to fetch (rules with inline jwks need none), with the fetch timeout:
    the shortest any rule naming the URI asks for."""
    out: dict[str, float] = {}
    for policy in policies:
        for rule in rules_of(policy):
            uri = rule.get("jwksUri")
            if uri and not rule.get("jwks"):
                timeout = _timeout(rule)
                out[uri] = min(out.get(uri, timeout), timeout)
    return out


def _timeout(rule: Obj) -> float:
    try:
        timeout = rule.get("timeout")
        return parse_duration_ns(str(timeout)) / 1e9 if timeout else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S


def due(state: JwksState, uris: Iterable[str], now: float, timing: Timing) -> list[str]:
    out = []
    for uri in sorted(uris):
        entry = state.entries.get(uri)
        if entry is None:
            out.append(uri)
        elif entry.error:
            backoff = min(timing.refresh_s, timing.retry_s * 2 ** (entry.failures - 1))
            if now - entry.attempted_at >= backoff:
                out.append(uri)
        elif now - entry.attempted_at >= timing.refresh_s:
            out.append(uri)
    return out


def record(state: JwksState, uri: str, now: float, body: str | None, error: str) -> JwksState:
    """The outcome of one fetch: a body (checked as a JWKS here, so a bad one is
    an error and the last good keys stay) or the error that stopped it."""
    entry = state.entries.get(uri, JwksEntry())
    if body is not None and not error:
        try:
            count = len(parse_jwks(body))
        except JwksError as e:
            error = f"{uri} returned an unusable JWKS: {e}"
        else:
            entry = JwksEntry(body, count, now, now)
            return JwksState(MappingProxyType({**state.entries, uri: entry}))
    entry = replace(entry, attempted_at=now, error=error, failures=entry.failures + 1)
    return JwksState(MappingProxyType({**state.entries, uri: entry}))


def prune(state: JwksState, uris: Iterable[str]) -> JwksState:
    """Forget URIs no policy names any more."""
    keep = set(uris)
    if keep.issuperset(state.entries):
        return state
    return JwksState(MappingProxyType({u: e for u, e in state.entries.items() if u in keep}))


def rule_status(rule: Obj, state: JwksState) -> tuple[Obj, str]:
    """A rule's line in the status, and its error ("" if its keys are usable)."""
    line: Obj = {"issuer": str(rule.get("issuer", ""))}
    if rule.get("jwks"):
        line["source"] = "inline"
        try:
            line["keys"] = len(parse_jwks(str(rule["jwks"])))
        except JwksError as e:
            return line, f"issuer {line['issuer']}: inline jwks is unusable: {e}"
        return line, ""
    uri = rule.get("jwksUri")
    if not uri:
        return line, f"issuer {line['issuer']}: {NO_KEYS_SOURCE}"
    line["jwksUri"] = uri
    entry = state.entries.get(uri)
    if entry is None:
        return line, f"issuer {line['issuer']}: keys from {uri} not fetched yet"
    line["keys"] = entry.key_count
    if entry.fetched_at is not None:
        line["lastFetched"] = rfc3339(entry.fetched_at)
    if not entry.error:
        return line, ""
    line["error"] = entry.error
    kept = "last good keys kept" if entry.keys else "tokens of this issuer fail"
    return line, f"issuer {line['issuer']}: {entry.error} ({kept})"


def policy_status(policy: Obj, state: JwksState, now: float) -> Obj:
    """A Kubernetes-style Ready condition and one line per JWT rule. The
    condition's time moves only when its status does."""
    lines, errors = [], []
    for rule in rules_of(policy):
        line, error = rule_status(rule, state)
        lines.append(line)
        if error:
            errors.append(error)
    if has_target_refs(policy):
        reason, message = "TargetRefsUnsupported", TARGET_REFS_IGNORED
    elif errors:
        reason, message = "JwksUnavailable", "; ".join(errors)
    else:
        reason, message = "JwksResolved", "keys are available for every JWT rule"
    ready = "True" if reason == "JwksResolved" else "False"
    old = _condition(policy)
    since = old.get("lastTransitionTime") if old.get("status") == ready else None
    condition = {
        "type": "Ready",
        "status": ready,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or rfc3339(now),
    }
    return {"conditions": [condition], "jwtRules": lines}


def _condition(policy: Obj) -> Obj:
    for c in (policy.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c
    return {}


def fetch(uri: str, timeout: float) -> tuple[str | None, str]:
    """GET the URI: (body, "") or (None, why not)."""
    if not uri.startswith(("http://", "https://")):
        return None, f"{uri}: only http and https jwksUri can be fetched"
    try:
        with urllib.request.urlopen(uri, timeout=timeout) as response:
            body = response.read(MAX_JWKS_BYTES + 1)
    except urllib.error.HTTPError as e:
        return None, f"fetching {uri}: HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return (
            None,
            f"fetching {uri}: {'timed out' if isinstance(reason, TimeoutError) else reason}",
        )
    if len(body) > MAX_JWKS_BYTES:
        return None, f"fetching {uri}: the JWKS is larger than {MAX_JWKS_BYTES} bytes"
    return body.decode("utf-8", "replace"), ""


Fetch = Callable[[str, float], tuple[str | None, str]]


class Shared(Protocol):
    """The keys' home when replicas share a store, and whether this one leads."""

    def leading(self) -> bool: ...

    def load(self) -> JwksState: ...

    def save(self, state: JwksState) -> None: ...


class JwksResolver:
    """The shell: a periodic pass over the registry's RequestAuthentications.
    `policies` lists them; `publish` hands the keys to the snapshot;
    `write_status` stores a policy's status."""

    def __init__(
        self,
        policies: Callable[[], Iterable[Obj]],
        publish: Callable[[dict[str, str]], None],
        write_status: Callable[[Obj, Obj], None],
        *,
        clock: Callable[[], float],
        timing: Timing | None = None,
        fetcher: Fetch = fetch,
        period_s: float = 0.5,
        shared: Shared | None = None,
    ) -> None:
        """`shared`: replicas share a store (jwks_shared.py); only the leader
        fetches and writes, the others serve the keys it stored."""
        self.policies, self.publish, self.write_status = policies, publish, write_status
        self.clock, self.timing, self.fetcher = clock, timing or Timing.from_env(), fetcher
        self.shared = shared
        self.state = JwksState()
        self._periodic = Periodic("jwks-resolver", period_s, self.step)

    def __repr__(self) -> str:
        return f"JwksResolver({len(self.state.entries)} URIs, {self.timing})"

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

    def step(self) -> None:
        if self.shared is not None and not self.shared.leading():
            self._follow()
            return
        policies = list(self.policies())
        uris = wanted(policies)
        before = self.state.keys()
        state = prune(self.state, uris)
        for uri in due(state, uris, self.clock(), self.timing):
            body, error = self.fetcher(uri, uris[uri])
            state = record(state, uri, self.clock(), body, error)
            if error or body is None:
                log.warning("JWKS %s: %s", uri, state.entries[uri].error)
        self.state = state
        if state.keys() != before:
            self.publish(state.keys())
            if self.shared is not None:
                self.shared.save(state)
        for policy in policies:
            self._update_status(policy)

    def _follow(self) -> None:
        """A follower: the leader's keys from the store, no fetch, no status."""
        assert self.shared is not None
        state = self.shared.load()
        if state.keys() != self.state.keys():
            self.publish(state.keys())
        self.state = state

    def _update_status(self, policy: Obj) -> None:
        """Only this resolver's keys of the status; others' (analysis's
        validationMessages) are kept as they are."""
        mine = policy_status(policy, self.state, self.clock())
        current: Obj = policy.get("status") or {}
        if all(current.get(k) == v for k, v in mine.items()):
            return
        try:
            self.write_status(policy, {**current, **mine})
        except Exception as e:  # deleted meanwhile, or a conflict: the next pass retries
            log.info("status of RequestAuthentication not written: %s", e)


def start_jwks_resolver(
    store: ResourceStore, mesh: MeshRegistry, shared: Shared | None = None
) -> JwksResolver:
    """Keys for the mesh's snapshots, status on the store's policies."""

    def write_status(policy: Obj, status: Obj) -> None:
        store.update_status(store.key_of(policy), status, manager=MANAGER)

    resolver = JwksResolver(
        lambda: mesh.snapshot().request_authentications,
        mesh.set_jwks,
        write_status,
        clock=time.time,
        shared=shared,
    )
    resolver.start()
    return resolver
