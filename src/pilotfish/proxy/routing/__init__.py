"""The proxy's route table: an Envoy RouteConfiguration compiled once per push,
then asked per request which route applies and what to do.

    from pilotfish.proxy.routing import compile_route_config, Forward
    table = compile_route_config(route_configuration)   # RouteConfigError -> NACK
    route = table.route(request_view, rand)              # None -> 404, flag NR
    if isinstance(route.action, Forward):
        target = route.action.pick(request_view, rand)   # cluster, headers, host rewrite

See `request` for the request view the shell passes in.
"""

from pilotfish.proxy.routing.actions import Action, DirectResponse, Forward, Redirect, Target
from pilotfish.proxy.routing.errors import RouteConfigError
from pilotfish.proxy.routing.headers import HeaderMutation
from pilotfish.proxy.routing.per_filter import FAULT
from pilotfish.proxy.routing.policies import (
    HashCookie,
    MirrorPolicy,
    RetryOn,
    RetryPolicy,
    shadow_authority,
)
from pilotfish.proxy.routing.request import Request, RequestView
from pilotfish.proxy.routing.table import Route, RouteTable, VirtualHost, compile_route_config

__all__ = [
    "FAULT",
    "Action",
    "DirectResponse",
    "Forward",
    "HashCookie",
    "HeaderMutation",
    "MirrorPolicy",
    "Redirect",
    "Request",
    "RequestView",
    "RetryOn",
    "RetryPolicy",
    "Route",
    "RouteConfigError",
    "RouteTable",
    "Target",
    "VirtualHost",
    "compile_route_config",
    "shadow_authority",
]
