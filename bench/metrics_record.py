"""Golden-metric records per second, the way the shell records a request.

    .venv/bin/python bench/metrics_record.py

A bookinfo-like mix: 3 destination workloads x 4 services x 4 status/flag
combinations (48 label sets, all warm), request and response sizes and
durations spread over the buckets. Also: cluster stat increments, a scrape
of the whole exposition, and one access log line's formatting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from pilotfish.proxy.accesslog import AccessRecord, format_line
from pilotfish.proxy.stats import StatsRegistry
from pilotfish.proxy.telemetry import (
    Telemetry,
    WorkloadInfo,
    service_from_cluster_name,
    workload_from_endpoint_text,
)

N = 1_000_000


def requests() -> list[tuple[object, ...]]:
    rng = random.Random(7)
    peers = [workload_from_endpoint_text(f"reviews-v{v};default;reviews;v{v};K") for v in (1, 2, 3)]
    services = [
        service_from_cluster_name(f"outbound|9080||s{i}.default.svc.cluster.local")
        for i in range(4)
    ]
    outcomes = [(200, ""), (404, ""), (503, "UF,URX"), (504, "UT")]
    return [
        (
            rng.choice(peers),
            rng.choice(services),
            *rng.choice(outcomes),
            rng.expovariate(1 / 20),
            rng.randrange(0, 2048),
            rng.randrange(0, 65536),
        )
        for _ in range(4096)
    ]


def rate(label: str, count: int, body: Callable[[], None]) -> float:
    started = time.perf_counter()
    body()
    elapsed = time.perf_counter() - started
    print(f"{label:<44} {count / elapsed:>12,.0f} /s  {elapsed / count * 1e6:8.3f} us each")
    return elapsed


def main() -> None:
    telemetry = Telemetry(WorkloadInfo("productpage-v1", "default", "productpage", "v1"))
    record = telemetry.outbound.record
    batch = requests()
    rounds = N // len(batch)

    def record_all() -> None:
        for _ in range(rounds):
            for peer, service, code, flags, ms, sent, received in batch:
                record(peer, service, code, flags, ms, sent, received)  # type: ignore[arg-type]

    def loop_only() -> None:
        for _ in range(rounds):
            for _peer, _service, _code, _flags, _ms, _sent, _received in batch:
                pass

    count = rounds * len(batch)
    total = rate("Reporter.record (loop included)", count, record_all)
    empty = rate("the same loop, recording nothing", count, loop_only)
    print(
        f"{'=> record alone':<44} {count / (total - empty):>12,.0f} /s  "
        f"{(total - empty) / count * 1e6:8.3f} us each"
    )

    stats = StatsRegistry().cluster("outbound|9080||s0.default.svc.cluster.local")

    def bump() -> None:
        for _ in range(count):
            stats.upstream_rq_total += 1

    rate("ClusterStats.upstream_rq_total += 1", count, bump)
    scrapes = 200
    rate(
        "Telemetry.prometheus() (48 series)",
        scrapes,
        lambda: [telemetry.prometheus() for _ in range(scrapes)] and None,
    )
    line = AccessRecord(
        start_time=time.time(),
        method="GET",
        path="/reviews/0",
        response_code=200,
        request_id="c21d9b0",
        authority="reviews:9080",
        upstream_host="10.0.0.9:9080",
        duration=4,
    )
    lines = 100_000
    rate("accesslog.format_line", lines, lambda: [format_line(line) for _ in range(lines)] and None)
    print(f"exposition size: {len(telemetry.prometheus()):,} bytes")


if __name__ == "__main__":
    main()
