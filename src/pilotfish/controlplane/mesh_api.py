"""REST paths beyond the resource API: the instance registry and the xDS
server's view of its proxies.

    GET    /api/v1/registry/instances               registered instances
    POST   /api/v1/registry/instances               register or renew (heartbeat)
    DELETE /api/v1/registry/instances/NS/NAME       deregister
    GET    /api/v1/registry/prometheus-targets      every sidecar's metrics, as Prometheus'
                                                    http_sd_configs reads them
    GET    /debug/syncz                             proxies and sync state per type
    GET    /debug/config_dump?proxyID=ID&type=T     what a proxy was last sent
                                                    (T: listeners|routes|clusters|endpoints)

Registration is a write, so it needs the bearer token like any other write.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pilotfish.api.errors import BadRequest, MethodNotAllowed, NotFound
from pilotfish.controlplane.api import Request, Response, encode
from pilotfish.controlplane.bodies import parse
from pilotfish.model.types import Instance
from pilotfish.registry.instances import (
    InstanceRegistry,
    InvalidRegistration,
    instance_from_json,
    instance_to_json,
)
from pilotfish.xds import types
from pilotfish.xds.server import AdsServer
from pilotfish.xds.status import config_dump, find_connection, proxy_status

INSTANCES = "/api/v1/registry/instances"
PROMETHEUS_TARGETS = "/api/v1/registry/prometheus-targets"
SYNCZ = "/debug/syncz"
CONFIG_DUMP = "/debug/config_dump"


class MeshApi:
    """An `Api` extension: answers its own paths, None for any other."""

    def __init__(self, instances: InstanceRegistry, ads: AdsServer | None) -> None:
        self.instances = instances
        self.ads = ads

    def __repr__(self) -> str:
        return f"MeshApi({self.instances!r}, {self.ads!r})"

    def __call__(self, request: Request, path: str) -> Response | None:
        if path == INSTANCES or path.startswith(INSTANCES + "/"):
            return self._instances(request, path[len(INSTANCES) :].strip("/"))
        if path == PROMETHEUS_TARGETS:
            _only_get(request)
            return Response(200, encode(prometheus_targets(self.instances.instances())))
        if path == SYNCZ:
            _only_get(request)
            return self._syncz()
        if path == CONFIG_DUMP:
            _only_get(request)
            return self._config_dump(request)
        return None

    def _instances(self, request: Request, rest: str) -> Response:
        if not rest and request.method == "GET":
            now = self.instances.now()
            items = [instance_to_json(lease, now) for lease in self.instances.leases()]
            return Response(200, encode({"kind": "InstanceList", "items": items}))
        if not rest and request.method == "POST":
            return self._register(request)
        if request.method == "DELETE" and rest.count("/") == 1:
            namespace, name = rest.split("/")
            if not self.instances.remove(namespace, name):
                raise NotFound(f'instance "{namespace}/{name}" is not registered')
            return Response(200, encode({"kind": "Status", "status": "Success", "code": 200}))
        raise MethodNotAllowed(f"{request.method} is not supported on {request.path}")

    def _register(self, request: Request) -> Response:
        body = parse(request.body or b"{}", as_yaml=False)
        if not isinstance(body, dict):
            raise BadRequest("the request body must be an object")
        try:
            instance, ttl = instance_from_json(body)
        except InvalidRegistration as e:
            raise BadRequest(f'instance "{body.get("name", "")}": {e}') from e
        lease = self.instances.register(instance, ttl)
        return Response(200, encode(instance_to_json(lease, self.instances.now())))

    def _syncz(self) -> Response:
        connections = self.ads.connections() if self.ads else []
        items = [proxy_status(c) for c in connections if c.proxy is not None]
        items.sort(key=lambda item: (item["proxy"], item["connectionId"]))
        return Response(200, encode({"kind": "ProxyStatusList", "items": items}))

    def _config_dump(self, request: Request) -> Response:
        proxy_id = request.query.get("proxyID", "")
        kind = request.query.get("type", "")
        type_url = types.BY_COMMAND_NAME.get(kind)
        if not proxy_id or type_url is None:
            raise BadRequest(
                "config_dump needs proxyID=ID and type=" + "|".join(types.BY_COMMAND_NAME)
            )
        conn = find_connection(self.ads.connections() if self.ads else [], proxy_id)
        if conn is None:
            raise NotFound(f'proxy "{proxy_id}" is not connected to this control plane')
        return Response(200, encode(config_dump(conn, type_url)))


def prometheus_targets(instances: Iterable[Instance]) -> list[dict[str, Any]]:
    """Prometheus HTTP service discovery: one target group per sidecar, with
    the labels a scrape config can keep (namespace, workload, instance)."""
    return [
        {
            "targets": [f"{i.address}:{i.metrics_port}"],
            "labels": {
                "__metrics_path__": "/stats/prometheus",
                "namespace": i.namespace,
                "workload": i.workload,
                "instance_name": i.name,
            },
        }
        for i in sorted(instances, key=lambda i: (i.namespace, i.name))
        if i.metrics_port
    ]


def _only_get(request: Request) -> None:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"{request.method} is not supported on {request.path}")
