"""What the filters hand the shell: steps on the request path, header edits on
the response path, and the per-request state that joins the two.

A request's trip through the chain, as the shell drives it:

    ex = chain.start(request_view, target.filter_configs, target.cluster)
    step = chain.decode(ex, rng)
    while isinstance(step, Delay):          # fault delay: sleep, then carry on
        await asyncio.sleep(step.seconds)
        step = chain.decode(ex, rng)
    if isinstance(step, LocalReply):        # abort, 429, CORS preflight: answer it
        headers = list(step.headers); chain.encode(ex, headers); write it
    else:                                   # PROCEED: the router's turn
        apply ex.upstream_headers to the upstream request; forward
        on the upstream's response head: chain.encode(ex, response_headers)
    chain.finish(ex)                        # always, once: releases active faults

`ex.flags` holds the Envoy response flags the filters raised (`DI`, `FI`, `RL`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, final

from pilotfish.proxy.routing.headers import HeaderMutation
from pilotfish.proxy.routing.match import grpc_condition
from pilotfish.proxy.routing.per_filter import EMPTY, FilterConfigs
from pilotfish.proxy.routing.request import RequestView, index_headers

ResponseHeaders = list[tuple[bytes, bytes]]
Encoder = Callable[[ResponseHeaders], None]

_GRPC_CONTENT_TYPE = b"application/grpc"
# Envoy's Grpc::Utility::httpToGrpcStatus: what a gRPC caller sees for an HTTP status.
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_GRPC_UNKNOWN = 2


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


Step = Proceed | Delay | LocalReply


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
    dynamic_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Envoy's per-request dynamic metadata: filter namespace -> its keys and values."""
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
        code = grpc_status if grpc_status is not None else _HTTP_TO_GRPC.get(status, _GRPC_UNKNOWN)
        headers: ResponseHeaders = [
            (b"content-type", _GRPC_CONTENT_TYPE),
            (b"grpc-status", b"%d" % code),
            (b"grpc-message", _grpc_message(message)),
        ]
        status, body = 200, b""
    else:
        headers = [(b"content-type", b"text/plain")]
        body = message.encode()
    if extra:
        extra.apply(headers)
    return LocalReply(status, tuple(headers), body, flag, details)


def _grpc_message(message: str) -> bytes:
    """grpc-message is percent-encoded outside printable ASCII (and % itself)."""
    return b"".join(
        bytes([c]) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in message.encode()
    )
