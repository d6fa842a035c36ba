"""CONNECT on an HTTP listener, terminated as Envoy terminates it: the
HttpConnectionManager allows the CONNECT upgrade (`upgrade_configs`), the
request's authority (`host:port`) picks a virtual host, and there a
`connect_matcher` route whose `upgrade_configs` carry `connect_config` names
the cluster. The proxy then opens a TCP connection to that cluster, answers
`HTTP/1.1 200 OK` (Envoy's words for it) once it is up, and pipes the bytes as
tcp_proxy does: the tunnel is a TCP connection of the mesh, with its
weights, circuit breakers, outlier detection, mutual TLS to the destination's
sidecar, TCP metrics and access log line (proxy/tcp/relay.py).

Refused: CONNECT on a listener that does not allow it (inbound ones never
do) gets Envoy's 403 `upgrade_failed`; an authority without a CONNECT route,
404 (NR); a route to an unknown cluster, its cluster_not_found code (NC); an
upstream that cannot be reached, 503 with the flag (UF, UH, UO).

A cluster of type ORIGINAL_DST (Istio's PassthroughCluster) has no
endpoints: the tunnel goes to the request's own target, resolved by the proxy.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from pilotfish.proxy.exchange import Exchange
from pilotfish.proxy.protocol.http1 import RequestEvent, RequestHead, Tunnel
from pilotfish.proxy.routing import Forward
from pilotfish.proxy.routing.request import Request
from pilotfish.proxy.tcp.config import TcpProxy
from pilotfish.proxy.tcp.listener import TcpChain, TcpListener

if TYPE_CHECKING:
    from pilotfish.proxy.server import Downstream

CONNECT = b"CONNECT"
UPGRADE_FAILED = "upgrade_failed"  # Envoy's response code details for a refused upgrade


def connect_tunnel(down: Downstream, head: RequestHead, rest: list[RequestEvent]) -> None:
    """Take over `down`'s connection for a CONNECT request; `rest`: the events
    parsed after its head (bytes a client sent before the answer belong to the tunnel)."""
    listener = down.listener
    if listener.inbound or b"connect" not in listener.http.upgrades:
        _refuse(down, head, 403, "", UPGRADE_FAILED)
        return
    runtime = down.runtime
    table = runtime.config.snapshot.routes_of(listener)
    request = Request(
        method=CONNECT,
        path=b"",
        authority=head.target,
        headers=[(n.lower(), v) for n, v in head.headers],
        source_ip=down.peer,
    )
    route = table.connect_route(request) if table is not None else None
    if route is None or not isinstance(route.action, Forward):
        _refuse(down, head, 404, "NR", "route_not_found")
        return
    target = route.action.pick(request, random.getrandbits(64))
    if runtime.config.snapshot.clusters.get(target.cluster) is None:
        _refuse(down, head, route.action.cluster_not_found_status, "NC", "cluster_not_found")
        return
    # the TCP relay is imported with the first tunnel: an HTTP-only sidecar
    # never loads it (docs/benchmarks.md, "Idle memory")
    from pilotfish.proxy.connect_relay import ConnectRelay

    early = [event.data for event in rest if isinstance(event, Tunnel)]
    relay = ConnectRelay(runtime, _tunnel_listener(down, target.cluster), down, head, early)
    transport = down.transport
    assert transport is not None
    runtime.downstreams.discard(down)  # its timers are the HTTP request's, not the tunnel's
    transport.set_protocol(relay)
    relay.connection_made(transport)


def _refuse(down: Downstream, head: RequestHead, status: int, flag: str, details: str) -> None:
    """A local reply through an Exchange, so it is logged and counted as any other."""
    down.requests += 1
    exchange = down.exchange = Exchange(down, head)
    exchange.keep_alive = False  # what follows a refused CONNECT is not HTTP
    exchange.details = details
    exchange.local(status, b"", flag)


def _tunnel_listener(down: Downstream, cluster: str) -> TcpListener:
    """The tunnel as a tcp_proxy to the route's cluster: the HTTP listener's
    stream idle timeout and access logs apply to it."""
    listener, http = down.listener, down.listener.http
    proxy = TcpProxy(
        stat_prefix=http.stat_prefix or listener.name,
        clusters=((cluster, 1),),
        idle_timeout=http.stream_idle_timeout,
        max_connect_attempts=1,
        access_log_paths=http.access_log_paths,
    )
    return TcpListener(
        name=listener.name,
        host=listener.host,
        port=listener.port,
        chains=(TcpChain(proxy),),
        inbound=False,
    )
