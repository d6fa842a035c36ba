"""What the filters hand the shell: steps on the request path, header edits on
the response path, and the per-request state that joins the two.

A request's trip through the chain, as the shell drives it:

    ex = chain.start(request_view, target.filter_configs, target.cluster)
    step = chain.decode(ex, rng)
    while isinstance(step, Delay | Check):  # fault delay: sleep; ext_authz: call the
        await asyncio.sleep(step.seconds)   # authorizer and set ex.check_result;
        step = chain.decode(ex, rng)        # then carry on
    if isinstance(step, LocalReply):        # abort, 429, CORS preflight: answer it
        headers = list(step.headers); chain.encode(ex, headers); write it
    else:                                   # PROCEED: the router's turn
        apply ex.upstream_headers to the upstream request; forward
        on the upstream's response head: chain.encode(ex, response_headers)
    chain.finish(ex)                        # always, once: releases active faults

`ex.flags` holds the Envoy response flags the filters raised (`DI`, `FI`, `RL`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, final

from pilotfish.proxy import grpc
from pilotfish.proxy.routing.headers import HeaderMutation
from pilotfish.proxy.routing.match import grpc_condition
from pilotfish.proxy.routing.per_filter import EMPTY, FilterConfigs
from pilotfish.proxy.routing.request import RequestView, index_headers

ResponseHeaders = list[tuple[bytes, bytes]]
Encoder = Callable[[ResponseHeaders], None]



@final
class Proceed:
    """Every filter let the request through: route it upstream."""

    def __repr__(self) -> str:
        return "PROCEED"


PROCEED: Final = Proceed()


@dataclass(frozen=True, slots=True)
class Delay:
    """Hold the request this long, then call `decode` again (response flag DI)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class LocalReply:
    """A response the proxy sends itself. `headers` has no content-length: the
    shell frames `body`. `details` is Envoy's response code detail, for logs."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    flag: str
    details: str


@dataclass(frozen=True, slots=True)
class Check:
    """Send this request to `cluster` and call `decode` again with its answer
    in `Exchange.check_result` (None: no answer in `timeout` seconds, or a
    failed connection). The external authorization call."""

    cluster: str
    timeout: float
    method: bytes
    path: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""
    grpc: bool = False  # a unary gRPC call: `path` is the method, `body` the message


@dataclass(frozen=True, slots=True)
class CheckResult:
    """An HTTP answer; for a gRPC call, status 200 and the response message as body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]  # lower-case names
    body: bytes


Step = Proceed | Delay | LocalReply | Check


@dataclass(frozen=True, slots=True)
class Connection:
    """What filters read of the downstream connection (Envoy's connection and
    stream info): the peer's address, the local address the request came to,
    the TLS SNI, and the peer's identity.

    peer_principal: the URI SAN (a SPIFFE ID) of a client certificate the
    listener's TLS verified; None on a plaintext connection, and then
    `authenticated` principals match nothing, as in Envoy."""

    direct_remote_ip: str = ""
    local_ip: str = ""
    local_port: int = 0
    requested_server_name: str = ""
    peer_principal: str | None = None

    @classmethod
    def of(
        cls,
        peer: str,
        local_address: str | None,
        requested_server_name: str = "",
        peer_principal: str | None = None,
    ) -> Connection:
        """From the shell's `ip` and `ip:port` strings (`[v6]:port` too); a
        TLS listener passes the SNI and the verified peer certificate's URI SAN."""
        host, _, port = (local_address or "").rpartition(":")
        return cls(
            peer,
            host.strip("[]"),
            int(port) if port.isdigit() else 0,
            requested_server_name,
            peer_principal,
        )


NO_CONNECTION: Final = Connection()


@dataclass(slots=True, eq=False)
class Exchange:
    """One request's filter state, from `chain.start` to `chain.finish`.

    upstream_headers: edits to make to the request before it goes upstream
    (the rate limiter's request_headers_to_add_when_not_enforced).
    """

    request: RequestView
    route_configs: FilterConfigs = field(default_factory=lambda: EMPTY)
    cluster: str = ""
    flags: list[str] = field(default_factory=list)
    upstream_headers: list[HeaderMutation] = field(default_factory=list)
    encoders: list[Encoder] = field(default_factory=list)
    finishers: list[Callable[[], None]] = field(default_factory=list)
    position: int = 0  # the filter that decodes next (or is paused)
    paused: bool = False  # position's filter returned Delay and wants `resume`
    release_after_pause: Callable[[], None] | None = None  # what the pausing filter holds
    connection: Connection = NO_CONNECTION
    # Envoy's per-request dynamic metadata: filter name -> its fields. jwt_authn
    # writes a verified token's claims under "envoy.filters.http.jwt_authn" ->
    # {"payload": claims}; RBAC reads them there and writes its shadow result.
    dynamic_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Filter counters, added to the HTTP connection manager's stats under these
    # names (`rbac.allowed`); the shell hands in its scope's counter.
    counters: Counter[str] = field(default_factory=Counter)
    check_result: CheckResult | None = None  # the answer to the last Check
    _index: dict[bytes, bytes] | None = None

    def __repr__(self) -> str:
        return f"<Exchange {self.request.method!r} {self.request.path!r} at filter {self.position}>"

    def index(self) -> dict[bytes, bytes]:
        """Request headers by name, built once per request and only if a filter asks."""
        if self._index is None:
            self._index = index_headers(self.request.headers)
        return self._index

    def is_grpc(self) -> bool:
        return grpc_condition(self.request, self.index())


def set_header(headers: ResponseHeaders, name: bytes, value: bytes) -> None:
    """Envoy's setInline: the first `name` takes the value where it stands, any
    others go; appended if absent."""
    found = [i for i, (n, _) in enumerate(headers) if n == name]
    if not found:
        headers.append((name, value))
        return
    headers[found[0]] = (name, value)
    for i in reversed(found[1:]):
        del headers[i]


def local_reply(
    ex: Exchange,
    status: int,
    message: str,
    *,
    flag: str,
    details: str,
    grpc_status: int | None = None,
    extra: HeaderMutation | None = None,
) -> LocalReply:
    """Envoy's sendLocalReply: a text/plain body, or for a gRPC caller a
    trailers-only answer (HTTP 200, grpc-status, grpc-message, no body)."""
    if ex.is_grpc():
        status, headers, body = grpc.local_reply(status, message.encode(), [], grpc_status)
    else:
        headers = [(b"content-type", b"text/plain")]
        body = message.encode()
    if extra:
        extra.apply(headers)
    return LocalReply(status, tuple(headers), body, flag, details)

