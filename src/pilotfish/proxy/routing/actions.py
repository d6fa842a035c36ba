"""What a matched route does: forward (to one of its targets), redirect, or
answer directly. All of it frozen, shared by every request that matches.

Randomness comes in as an int (`rand`, ideally 64 random bits, e.g.
`random.getrandbits(64)`), so tests are deterministic and the shell picks its
own generator. As in Envoy, the same value decides a route's runtime_fraction
and its weighted cluster; mirrors should be given fresh values.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pilotfish.proxy.routing.headers import NO_HEADERS, HeaderMutation
from pilotfish.proxy.routing.per_filter import EMPTY, FilterConfigs
from pilotfish.proxy.routing.policies import HashKey, MirrorPolicy, RetryPolicy
from pilotfish.proxy.routing.request import RequestView, index_headers, path_only

DEFAULT_TIMEOUT_S = 15.0  # Envoy's route timeout when none is configured
PathRewrite = Callable[[bytes], bytes]


@dataclass(frozen=True, slots=True)
class Target:
    """A cluster a request may go to, with what depends on that choice: headers
    merged from the weighted cluster (if any) down to the route configuration,
    the host rewrite, and the per-filter configs."""

    cluster: str
    request_headers: HeaderMutation = NO_HEADERS
    response_headers: HeaderMutation = NO_HEADERS
    host_rewrite: bytes | None = None
    filter_configs: FilterConfigs = field(default_factory=lambda: EMPTY)

    def __repr__(self) -> str:
        return f"Target({self.cluster!r})"


@dataclass(frozen=True, slots=True)
class Forward:
    """RouteAction. `pick` chooses the target; the rest is read by the shell.

    timeout: seconds, None for no timeout (Envoy's `0s`). idle_timeout: None
    when unset (the listener's stream idle timeout applies), 0.0 to disable.
    rewrite_path: prefix_rewrite or regex_rewrite as a function of the request
    path (query kept), or None. hash_key: the consistent-hash key, or None when
    the route has no hash policy or no policy produced one (pick at random then).
    """

    targets: tuple[Target, ...]
    cumulative_weights: tuple[int, ...] = ()
    random_value_header: bytes | None = None
    cluster_header: bytes | None = None
    cluster_not_found_status: int = 503
    rewrite_path: PathRewrite | None = None
    auto_host_rewrite: bool = False
    host_rewrite_header: bytes | None = None
    append_x_forwarded_host: bool = False
    timeout: float | None = DEFAULT_TIMEOUT_S
    idle_timeout: float | None = None
    max_stream_duration: float | None = None  # the stream's limit; None: none (0 or unset)
    grpc_timeout_header_max: float | None = None  # 0.0: honour grpc-timeout uncapped
    grpc_timeout_header_offset: float | None = None
    # grpc_timeout_header_max came in max_stream_duration (the connection
    # manager's stream duration), not as max_grpc_timeout (the router's timeout).
    stream_grpc_timeout: bool = False
    retry: RetryPolicy | None = None
    mirrors: tuple[MirrorPolicy, ...] = ()
    hash_key: HashKey | None = None

    def __repr__(self) -> str:
        if len(self.targets) == 1:
            return f"Forward({self.targets[0].cluster!r})"
        weights = _weights(self.cumulative_weights)
        return (
            "Forward("
            + ", ".join(f"{t.cluster}:{w}" for t, w in zip(self.targets, weights, strict=True))
            + ")"
        )

    def pick(self, req: RequestView, rand: int) -> Target:
        targets = self.targets
        if self.cluster_header is not None:
            return self._from_header(req)
        if len(targets) == 1:
            return targets[0]
        if self.random_value_header is not None:
            rand = _header_int(req, self.random_value_header, rand)
        cumulative = self.cumulative_weights
        return targets[bisect_right(cumulative, rand % cumulative[-1])]

    def _from_header(self, req: RequestView) -> Target:
        """cluster_header: the cluster named by a request header; an empty name
        when absent, which the shell answers as a cluster not found."""
        assert self.cluster_header is not None
        name = index_headers(req.headers).get(self.cluster_header, b"")
        return replace(self.targets[0], cluster=name.decode("latin-1"))


def _weights(cumulative: tuple[int, ...]) -> list[int]:
    return [b - a for a, b in zip((0, *cumulative), cumulative, strict=False)]


def _header_int(req: RequestView, name: bytes, default: int) -> int:
    value = index_headers(req.headers).get(name)
    return int(value) if value is not None and value.isdigit() else default


@dataclass(frozen=True, slots=True)
class Redirect:
    """RedirectAction: `location(req)` builds the Location header as Envoy does."""

    status: int = 301
    scheme: bytes | None = None
    host: bytes | None = None
    port: bytes | None = None  # ":8443"
    path: bytes | None = None
    rewrite_path: PathRewrite | None = None
    strip_query: bool = False

    def __repr__(self) -> str:
        parts = [
            f"{k}={v!r}"
            for k in ("scheme", "host", "port", "path")
            if (v := getattr(self, k)) is not None
        ]
        return f"Redirect({self.status}, {', '.join(parts)})"

    def location(self, req: RequestView) -> bytes:
        scheme = self.scheme if self.scheme is not None else req.scheme
        host = self.host if self.host is not None else _request_host(req, scheme, self.port)
        return b"".join((scheme, b"://", host, self.port or b"", self._path(req.path)))

    def _path(self, path: bytes) -> bytes:
        if self.path is not None:
            if b"?" in self.path:
                return self.path  # its own query wins, and strip_query leaves it alone
            query_at = path.find(b"?")
            path = self.path + (path[query_at:] if query_at >= 0 else b"")
        elif self.rewrite_path is not None:
            path = self.rewrite_path(path)
        if self.strip_query:
            path = path_only(path) if b"?" in path else path
        return path


def _request_host(req: RequestView, new_scheme: bytes, new_port: bytes | None) -> bytes:
    """The request's host, without its port when the redirect sets a port, or
    when the port was the default one of a scheme the redirect changes."""
    host = req.authority
    port_at = host.rfind(b"]:") + 1 if host.startswith(b"[") else host.rfind(b":")
    if port_at <= 0:
        return host
    port, old_scheme = host[port_at:], req.scheme
    remove = new_port is not None
    if new_scheme != old_scheme:
        remove |= (old_scheme, port) in ((b"https", b":443"), (b"http", b":80"))
    return host[:port_at] if remove else host


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: bytes = b""

    def __repr__(self) -> str:
        return f"DirectResponse({self.status}, {len(self.body)} bytes)"


Action = Forward | Redirect | DirectResponse
