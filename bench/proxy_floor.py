"""How little Python a sidecar's request can cost: the floor, not a proxy.

    .venv/bin/python bench/proxy_floor.py

The least the issue's data path must do per keep-alive request, written as
two flat functions with no objects beyond one per request, and timed as
bench/proxy_path.py times the real path (same bytes, no sockets): check the
request head with the express regular expressions, find the headers a proxy
acts on, pick the route by host and prefix, take a circuit breaker slot and
a round-robin host, take an idle connection, write the head with
x-forwarded-for, x-forwarded-proto and a new x-request-id; then check the
response head, count the outlier detector's consecutive 5xx and the per-code
stat, write the response, give everything back and record Istio's request
counter and its three histograms.

It leaves out what a real proxy cannot: retries, timeouts, hop-by-hop rules
beyond cutting the found lines, access logs, filters, peer metadata, and the
asyncio protocol calls. So the real path costs more than this whatever its
design; bench/proxy/run.py's `relay+N` targets tell how many µs of Python
per request a proxy can spend and still reach a given share of nginx.
"""

from __future__ import annotations

import random
import sys
import time
from bisect import bisect_left
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http1_parse import (  # noqa: E402
    REALISTIC_REQUEST,
    REALISTIC_RESPONSE,
    TINY_REQUEST,
    TINY_RESPONSE,
)

from pilotfish.proxy.protocol import express  # noqa: E402

RNG = random.Random()
DURATION_BUCKETS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
BYTES_BUCKETS = [1, 10, 100, 1000, 10000, 100000, 1000000, 10000000]


class Series:
    __slots__ = ("duration", "duration_sum", "got", "got_sum", "requests", "sent", "sent_sum")

    def __init__(self) -> None:
        self.requests, self.duration_sum, self.sent_sum, self.got_sum = 0, 0.0, 0, 0
        self.duration = [0] * (len(DURATION_BUCKETS) + 1)
        self.sent = [0] * (len(BYTES_BUCKETS) + 1)
        self.got = [0] * (len(BYTES_BUCKETS) + 1)


class Host:
    __slots__ = ("active", "consecutive_5xx", "idle")

    def __init__(self, connection: list[bytes]) -> None:
        self.active, self.consecutive_5xx, self.idle = 0, 0, [connection]


class Cluster:
    __slots__ = ("codes", "hosts", "max_requests", "next", "open")

    def __init__(self, connection: list[bytes]) -> None:
        self.hosts, self.next, self.open, self.max_requests = [Host(connection)], 0, 0, 1024
        self.codes: dict[int, int] = {}


class Request:
    __slots__ = ("cluster", "connection", "host", "sent", "started")


def forward(data: bytes, routes: dict[bytes, list[tuple[bytes, Cluster]]]) -> Request | None:
    match = express._REQUEST.match(data)
    if match is None:
        return None
    lines, path = match.group(3), match.group(2)
    host, cuts, has_id, forwarded_for = b"", [], False, b""
    for special in express._REQUEST_SPECIAL.finditer(lines):
        name = special.group(1).lower()
        if name == b"host":
            host = special.group(2)
        elif name == b"x-request-id":
            has_id = True
        elif name != b"content-length":
            cuts.append(special.span())
            if name == b"x-forwarded-for":
                forwarded_for = special.group(2) + b", "
    body = data[match.end() :]
    cluster = next(c for prefix, c in routes.get(host) or routes[b"*"] if path.startswith(prefix))
    if cluster.open >= cluster.max_requests:
        return None
    cluster.open += 1
    upstream = cluster.hosts[cluster.next % len(cluster.hosts)]
    cluster.next += 1
    upstream.active += 1
    req = Request()
    req.started, req.cluster, req.host = time.monotonic(), cluster, upstream
    req.connection, req.sent = upstream.idle.pop(), len(body)
    parts = [match.group(1), b" ", path, b" HTTP/1.1"]
    start = 0
    for begin, end in cuts:
        parts.append(lines[start:begin])
        start = end
    parts += (lines[start:], b"\r\nx-forwarded-for: ", forwarded_for, b"127.0.0.1")
    parts.append(b"\r\nx-forwarded-proto: http")
    if not has_id:
        h = RNG.getrandbits(128).to_bytes(16, "big").hex()
        request_id = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()
        parts += (b"\r\nx-request-id: ", request_id)
    parts += (b"\r\n\r\n", body)
    req.connection.append(b"".join(parts))
    return req


def respond(data: bytes, req: Request, client: list[bytes], series: dict[int, Series]) -> None:
    match = express._RESPONSE.match(data)
    assert match is not None
    status, lines = int(match.group(1)), match.group(2)
    body = data[match.end() :]
    upstream, cluster = req.host, req.cluster
    upstream.consecutive_5xx = upstream.consecutive_5xx + 1 if status >= 500 else 0
    cluster.codes[status] = cluster.codes.get(status, 0) + 1
    client.append(b"".join([b"HTTP/1.1 200 OK", lines, b"\r\n\r\n", body]))
    upstream.active -= 1
    cluster.open -= 1
    upstream.idle.append(req.connection)
    took = (time.monotonic() - req.started) * 1000
    s = series.get(status) or series.setdefault(status, Series())
    s.requests += 1
    s.duration[bisect_left(DURATION_BUCKETS, took)] += 1
    s.duration_sum += took
    s.sent[bisect_left(BYTES_BUCKETS, req.sent)] += 1
    s.sent_sum += req.sent
    s.got[bisect_left(BYTES_BUCKETS, len(body))] += 1
    s.got_sum += len(body)


def micros_per_request(request: bytes, response: bytes, count: int = 200_000) -> float:
    upstream: list[bytes] = []
    client: list[bytes] = []
    routes = {b"*": [(b"/", Cluster(upstream))]}
    series: dict[int, Series] = {}
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(count):
            req = forward(request, routes)
            assert req is not None
            respond(response, req, client, series)
        best = min(best, time.perf_counter() - start)
        upstream.clear()
        client.clear()
    return best / count * 1e6


def main() -> int:
    print(f"{'shape':<12}{'µs per request':>16}")
    shapes = {
        "tiny": (TINY_REQUEST, TINY_RESPONSE),
        "realistic": (REALISTIC_REQUEST, REALISTIC_RESPONSE),
    }
    for name, (request, response) in shapes.items():
        print(f"{name:<12}{micros_per_request(request, response):>16.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
