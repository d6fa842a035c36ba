"""Route lookups per second on a table of ~50 routes, the way the shell calls it.

    .venv/bin/python bench/route_match.py

Ten Istio-like virtual hosts of five routes each (a header match, a regex, a
path, prefixes); requests spread over hosts and over early and late routes.
"""

from __future__ import annotations

import random
import time

from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from pilotfish.proxy.routing import Forward, Request, compile_route_config


def vhost(i: int) -> dict[str, object]:
    svc = f"svc{i}.default.svc.cluster.local"
    return {
        "name": f"{svc}:8080",
        "domains": [svc, f"svc{i}", f"svc{i}:8080", f"{svc}:8080"],
        "routes": [
            {
                "match": {
                    "prefix": "/",
                    "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}],
                },
                "route": {"cluster": f"outbound|8080|v2|{svc}", "timeout": "0s"},
            },
            {
                "match": {"safe_regex": {"regex": "/api/v[0-9]+/items/[0-9]+"}},
                "route": {"cluster": f"items{i}"},
            },
            {"match": {"path": "/login"}, "route": {"cluster": f"login{i}"}},
            {
                "match": {"prefix": "/static/"},
                "route": {"cluster": f"static{i}", "prefix_rewrite": "/"},
            },
            {
                "match": {"prefix": "/"},
                "route": {
                    "weighted_clusters": {
                        "clusters": [
                            {"name": f"outbound|8080|v1|{svc}", "weight": 90},
                            {"name": f"outbound|8080|v3|{svc}", "weight": 10},
                        ]
                    }
                },
            },
        ],
    }


def main() -> None:
    config = json_format.ParseDict(
        {"name": "8080", "virtual_hosts": [vhost(i) for i in range(10)]},
        route_pb2.RouteConfiguration(),
    )
    table = compile_route_config(config)
    headers = [(b"user-agent", b"curl/8"), (b"accept", b"*/*"), (b"x-request-id", b"abc")]
    requests = [
        Request(path=path, authority=f"svc{i}:8080".encode(), headers=headers)
        for i in range(10)
        for path in (b"/productpage", b"/static/app.js", b"/login", b"/api/v1/items/42")
    ]
    rand, n = random.Random(1).getrandbits, 200_000
    for label, reqs in (
        ("mixed (all route kinds)", requests),
        ("default route only", requests[::4]),
    ):
        start = time.perf_counter()
        count = 0
        while count < n:
            for req in reqs:
                r = rand(64)
                route = table.route(req, r)
                assert route is not None
                action = route.action
                if isinstance(action, Forward):
                    action.pick(req, r)
            count += len(reqs)
        elapsed = time.perf_counter() - start
        print(
            f"{label:28s} {count / elapsed:>12,.0f} matches/s  {elapsed / count * 1e6:.2f} us/match"
        )


if __name__ == "__main__":
    main()
