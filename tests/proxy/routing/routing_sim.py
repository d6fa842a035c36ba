"""Simulation helpers: Envoy-style config dicts in, a request through the table out."""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from pilotfish.proxy import xds_types  # noqa: F401  (registers Any payload types)
from pilotfish.proxy.routing import Forward, Request, RouteTable, compile_route_config


def parse(config: dict[str, Any]) -> route_pb2.RouteConfiguration:
    return json_format.ParseDict(config, route_pb2.RouteConfiguration())


def table(config: dict[str, Any]) -> RouteTable:
    return compile_route_config(parse(config))


def one_host(*routes: dict[str, Any], **vhost: Any) -> RouteTable:
    """A table with a single `*` virtual host holding `routes`."""
    return table(
        {
            "name": "r",
            "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": list(routes), **vhost}],
        }
    )


def to(cluster: str, prefix: str = "/", **match: Any) -> dict[str, Any]:
    return {"name": cluster, "match": {"prefix": prefix, **match}, "route": {"cluster": cluster}}


def request(
    path: str = "/", host: str = "example.com", headers: dict[str, str] | None = None, **kw: Any
) -> Request:
    pairs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(path=path.encode(), authority=host.encode(), headers=pairs, **kw)


def cluster_for(t: RouteTable, req: Request, rand: int = 0) -> str | None:
    """The cluster a request goes to; None when no route; "redirect"/"direct" otherwise."""
    route = t.route(req, rand)
    if route is None:
        return None
    if isinstance(route.action, Forward):
        return route.action.pick(req, rand).cluster
    return type(route.action).__name__.lower()
