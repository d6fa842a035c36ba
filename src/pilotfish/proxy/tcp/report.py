"""What a TCP connection leaves behind: Istio's TCP metrics and one access
log line, as Envoy's tcp_proxy and Istio's stats filter give them.

Metrics: `istio_tcp_connections_opened_total` when the connection is
established (or fails, with its flag), `istio_tcp_connections_closed_total`
when it ends, and the bytes as they move: `received` from the downstream,
`sent` to it. The reporter is the listener's direction; the destination
service is the cluster's; under mutual TLS the inbound peer's principal
(and namespace) come from its verified certificate, the rest is unknown, as
without Istio's TCP metadata exchange.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pilotfish.proxy.accesslog import AccessRecord
from pilotfish.proxy.telemetry import (
    UNKNOWN_SERVICE,
    UNKNOWN_WORKLOAD,
    Reporter,
    ServiceInfo,
    TcpSeries,
    WorkloadInfo,
)


def peer_from_principal(principal: str | None) -> WorkloadInfo:
    """`spiffe://TD/ns/NS/sa/SA` as a workload known only by those."""
    if not principal or not principal.startswith("spiffe://"):
        return UNKNOWN_WORKLOAD
    domain, _, path = principal.removeprefix("spiffe://").partition("/")
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
        return UNKNOWN_WORKLOAD
    return WorkloadInfo(namespace=parts[1], service_account=parts[3], trust_domain=domain)


@dataclass
class ConnectionReport:
    """One downstream connection's counters and log fields."""

    reporter: Reporter
    start_time: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    series: TcpSeries | None = None
    received: int = 0  # bytes from the downstream
    sent: int = 0  # bytes to the downstream
    flags: str = ""  # Envoy's response flags: UF, UH, UO
    cluster: str | None = None
    upstream_host: str | None = None
    downstream_local: str | None = None
    downstream_remote: str | None = None
    peer_principal: str | None = None  # the other workload's, from its verified certificate
    downstream_san: str | None = None  # the client's URI SAN, under mutual TLS
    service: ServiceInfo = UNKNOWN_SERVICE
    termination: str | None = None  # why the proxy closed it (an RBAC denial)
    requested_server_name: str | None = None  # the ClientHello's, on a passthrough listener
    mtls: bool = False

    def opened(self) -> None:
        peer = peer_from_principal(self.peer_principal)
        self.series = self.reporter.tcp_series(peer, self.service, self.flags, self.mtls)
        self.series.opened += 1
        self.series.received_bytes += self.received
        self.series.sent_bytes += self.sent

    def moved(self, received: int, sent: int) -> None:
        self.received += received
        self.sent += sent
        if self.series is not None:
            self.series.received_bytes += received
            self.series.sent_bytes += sent

    def closed(self) -> AccessRecord:
        """Count the close (a connection that never reached an upstream opens
        and closes with its flag) and give the access log record."""
        if self.series is None:
            self.opened()
        assert self.series is not None
        self.series.closed += 1
        return AccessRecord(
            start_time=self.start_time,
            protocol=None,
            response_flags=self.flags,
            connection_termination_details=self.termination,
            requested_server_name=self.requested_server_name,
            bytes_received=self.received,
            bytes_sent=self.sent,
            duration=int((time.monotonic() - self.started) * 1000),
            upstream_host=self.upstream_host,
            upstream_cluster=self.cluster,
            downstream_local_address=self.downstream_local,
            downstream_remote_address=self.downstream_remote,
            downstream_peer_uri_san=self.downstream_san,
        )
