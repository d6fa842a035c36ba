"""Translation: a Snapshot and a Proxy in, Envoy v3 xDS resources out.

    from pilotfish.translate import (
        translate_listeners, translate_routes, translate_clusters, translate_endpoints)
    listeners = translate_listeners(snapshot, proxy)
    routes = translate_routes(snapshot, proxy, ["http_proxy"])
    clusters = translate_clusters(snapshot, proxy)
    assignments = translate_endpoints(snapshot, proxy, [c.name for c in clusters])

Every function is pure and returns its resources sorted by name, so the same
snapshot and proxy always give byte-identical output (versions can be hashes).
"""

from pilotfish.translate.clusters import translate_clusters
from pilotfish.translate.endpoints import translate_endpoints
from pilotfish.translate.listeners import translate_listeners
from pilotfish.translate.routes import route_names_for, translate_routes

__all__ = [
    "route_names_for",
    "translate_clusters",
    "translate_endpoints",
    "translate_listeners",
    "translate_routes",
]
