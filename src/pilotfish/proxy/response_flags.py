"""Envoy's response flags: why the proxy, not the upstream, shaped a response.

The one definition every module uses, for the access log, the
`response_flags` metric label and the `x-pilotfish-flags` header. Short codes
and long names are Envoy's, so log tooling written for Envoy reads ours; the
table's order is Envoy's enum order, which is also the order in which Envoy
joins several flags ("UF,URX").
"""

from __future__ import annotations

from dataclasses import dataclass

NONE = "-"


@dataclass(frozen=True, slots=True)
class ResponseFlag:
    short: str
    long: str
    meaning: str


FLAGS: tuple[ResponseFlag, ...] = (
    ResponseFlag("LH", "FailedLocalHealthCheck", "local service failed its health check (503)"),
    ResponseFlag("UH", "NoHealthyUpstream", "no healthy upstream host in the cluster (503)"),
    ResponseFlag("UT", "UpstreamRequestTimeout", "upstream request timeout (504)"),
    ResponseFlag("LR", "LocalReset", "connection reset by the proxy (503)"),
    ResponseFlag("UR", "UpstreamRemoteReset", "upstream reset the stream (503)"),
    ResponseFlag("UF", "UpstreamConnectionFailure", "upstream connection failure (503)"),
    ResponseFlag("UC", "UpstreamConnectionTermination", "upstream connection closed (503)"),
    ResponseFlag("UO", "UpstreamOverflow", "circuit breaker overflow (503)"),
    ResponseFlag("NR", "NoRouteFound", "no route or filter chain for the request (404)"),
    ResponseFlag("DI", "DelayInjected", "delayed by fault injection"),
    ResponseFlag("FI", "FaultInjected", "aborted by fault injection"),
    ResponseFlag("RL", "RateLimited", "rate limited locally (429)"),
    ResponseFlag("UAEX", "UnauthorizedExternalService", "denied by the external authorizer"),
    ResponseFlag("RLSE", "RateLimitServiceError", "rate limit service error"),
    ResponseFlag("DC", "DownstreamConnectionTermination", "client closed the connection"),
    ResponseFlag("URX", "UpstreamRetryLimitExceeded", "retries or connect attempts exhausted"),
    ResponseFlag("SI", "StreamIdleTimeout", "stream idle timeout (408 or 504)"),
    ResponseFlag("IH", "InvalidEnvoyRequestHeaders", "invalid proxy request headers (400)"),
    ResponseFlag("DPE", "DownstreamProtocolError", "malformed downstream request"),
    ResponseFlag("UMSDR", "UpstreamMaxStreamDurationReached", "upstream max stream duration"),
    ResponseFlag("RFCF", "ResponseFromCacheFilter", "served from the cache filter"),
    ResponseFlag("NFCF", "NoFilterConfigFound", "a filter's dynamic config is missing (500)"),
    ResponseFlag("DT", "DurationTimeout", "max connection or stream duration reached"),
    ResponseFlag("UPE", "UpstreamProtocolError", "upstream protocol error (502 or 503)"),
    ResponseFlag("NC", "NoClusterFound", "the route's cluster does not exist"),
    ResponseFlag("OM", "OverloadManagerTerminated", "rejected by the overload manager"),
    ResponseFlag("DF", "DnsResolutionFailed", "DNS resolution failed"),
    ResponseFlag("DO", "DropOverload", "dropped by the drop-overload policy (503)"),
)
BY_SHORT: dict[str, ResponseFlag] = {f.short: f for f in FLAGS}
_RANK: dict[str, int] = {f.short: i for i, f in enumerate(FLAGS)}

# Names to write instead of string literals, so a typo fails at import.
(LH, UH, UT, LR, UR, UF, UC, UO, NR, DI, FI, RL, UAEX, RLSE, DC, URX, SI, IH, DPE, UMSDR, RFCF,
 NFCF, DT, UPE, NC, OM, DF, DO) = (f.short for f in FLAGS)  # fmt: skip


class UnknownFlagError(ValueError):
    """A flag that Envoy does not define."""


def add(flags: str, flag: str) -> str:
    """`flags` (a joined string, "" or "-" for none) with `flag` added, in
    Envoy's order and without duplicates."""
    if flag not in _RANK:
        raise UnknownFlagError(f"unknown response flag {flag!r}")
    present = split(flags)
    if flag in present:
        return flags
    return ",".join(sorted((*present, flag), key=_RANK.__getitem__))


def split(flags: str) -> tuple[str, ...]:
    if not flags or flags == NONE:
        return ()
    return tuple(flags.split(","))


def label(flags: str) -> str:
    """The value Envoy and Istio print: the joined short codes, or "-"."""
    return flags or NONE


def long_names(flags: str) -> str:
    """Envoy's `%RESPONSE_FLAGS_LONG%`: PascalCase names joined by ","."""
    names = []
    for short in split(flags):
        flag = BY_SHORT.get(short)
        if flag is None:
            raise UnknownFlagError(f"unknown response flag {short!r}")
        names.append(flag.long)
    return ",".join(names) or NONE
