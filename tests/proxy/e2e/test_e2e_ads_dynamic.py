"""The proxy configured over ADS by a real gRPC server: warming, updates, NACK
with the previous config kept, and serving on when the server is gone."""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
import yaml
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: F401 - for ParseDict
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto
from harness import HCM_TYPE, PILOTFISH, REPO, ROUTER_TYPE, curl, free_port, wait_for

from pilotfish.proxy import xds_types

TYPES = {
    xds_types.LISTENER: Listener,
    xds_types.ROUTE: RouteConfiguration,
    xds_types.CLUSTER: Cluster,
    xds_types.ENDPOINT: ClusterLoadAssignment,
}


class Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """State of the world: `set(type, [dicts])` pushes a new version to every stream."""

    def __init__(self) -> None:
        self.resources: dict[str, list[AnyProto]] = {}
        self.versions: dict[str, int] = {}
        self.requests: list[DiscoveryRequest] = []
        self.streams: list[queue.Queue[str | None]] = []
        self.lock = threading.Lock()

    def set(self, type_url: str, resources: list[dict[str, Any]]) -> None:
        packed = []
        for resource in resources:
            a = AnyProto()
            a.Pack(json_format.ParseDict(resource, TYPES[type_url]()))
            packed.append(a)
        with self.lock:
            self.resources[type_url] = packed
            self.versions[type_url] = self.versions.get(type_url, 0) + 1
            for stream in self.streams:
                stream.put(type_url)

    def response(self, type_url: str) -> DiscoveryResponse:
        with self.lock:
            version = str(self.versions.get(type_url, 0))
            return DiscoveryResponse(
                type_url=type_url,
                version_info=version,
                nonce=f"{type_url}-{version}",
                resources=self.resources.get(type_url, []),
            )

    def StreamAggregatedResources(self, request_iterator, context) -> Iterator[DiscoveryResponse]:
        pushes: queue.Queue[str | None] = queue.Queue()
        with self.lock:
            self.streams.append(pushes)
        subscribed: set[str] = set()

        def read() -> None:
            try:
                for request in request_iterator:
                    self.received(request, subscribed, pushes)
            except grpc.RpcError:
                pass  # the server is stopping
            pushes.put(None)

        threading.Thread(target=read, daemon=True).start()
        while (type_url := pushes.get()) is not None:
            if type_url in subscribed:
                yield self.response(type_url)

    def received(
        self, request: DiscoveryRequest, subscribed: set[str], pushes: queue.Queue[str | None]
    ) -> None:
        with self.lock:
            self.requests.append(request)
        if request.type_url not in subscribed:
            subscribed.add(request.type_url)
            if request.type_url in self.resources:
                pushes.put(request.type_url)

    def nacks(self, type_url: str) -> list[DiscoveryRequest]:
        with self.lock:
            return [r for r in self.requests if r.type_url == type_url and r.error_detail.message]

    def acked(self, type_url: str, version: int) -> bool:
        with self.lock:
            return any(
                r.type_url == type_url
                and r.version_info == str(version)
                and not r.error_detail.message
                for r in self.requests
            )


@pytest.fixture
def ads() -> Iterator[tuple[Ads, grpc.Server, int]]:
    servicer = Ads()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, server, port
    server.stop(0)


def rds_listener(port: int) -> dict[str, Any]:
    return {
        "name": "outbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM_TYPE,
                            "stat_prefix": "outbound",
                            "rds": {"route_config_name": "routes", "config_source": {"ads": {}}},
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER_TYPE},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def route_config(cluster: str, prefix: str = "/") -> dict[str, Any]:
    return {
        "name": "routes",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": prefix}, "route": {"cluster": cluster}}],
            }
        ],
    }


def eds_cluster(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}}},
        "connect_timeout": "1s",
    }


def assignment(name: str, port: int) -> dict[str, Any]:
    endpoint = {
        "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    }
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]}


@pytest.fixture
def dynamic_proxy(tmp_path: Path, ads: tuple[Ads, grpc.Server, int]) -> Iterator[tuple[int, int]]:
    _, _, ads_port = ads
    port, admin = free_port(), free_port()
    config = {
        "node": {
            "id": "sidecar~127.0.0.1~productpage-v1.default~default.svc.cluster.local",
            "cluster": "productpage",
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": assignment("xds-grpc", ads_port),
                }
            ]
        },
    }
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [str(PILOTFISH), "proxy", "--bootstrap", str(path)], stderr=subprocess.PIPE, cwd=REPO
    )
    try:
        yield port, admin
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0, stderr.decode()


def serve_v1(servicer: Ads, port: int, backend_port: int) -> None:
    """An HTTP listener on `port` routing all to the cluster v1 (EDS: the
    backend on `backend_port`), pushed and serving."""
    servicer.set(xds_types.CLUSTER, [eds_cluster("v1")])
    servicer.set(xds_types.ENDPOINT, [assignment("v1", backend_port)])
    servicer.set(xds_types.ROUTE, [route_config("v1")])
    servicer.set(xds_types.LISTENER, [rds_listener(port)])
    assert wait_for(lambda: backend_of(port) == "v1", timeout=10)


def backend_of(port: int) -> str | None:
    """The backend that answered a request through the proxy, None if none did."""
    try:
        response = curl(f"http://127.0.0.1:{port}/", timeout=2)
    except AssertionError:
        return None
    return response.headers.get("x-backend")


def test_warming_updates_nack_and_serving_without_the_server(
    ads: tuple[Ads, grpc.Server, int], dynamic_proxy: tuple[int, int], make_backend
) -> None:
    servicer, server, _ = ads
    port, _ = dynamic_proxy
    v1, v2 = make_backend("v1"), make_backend("v2")
    servicer.set(xds_types.CLUSTER, [eds_cluster("v1"), eds_cluster("v2")])
    servicer.set(xds_types.ENDPOINT, [assignment("v1", v1.port), assignment("v2", v2.port)])
    servicer.set(xds_types.LISTENER, [rds_listener(port)])
    assert wait_for(lambda: servicer.acked(xds_types.LISTENER, 1), timeout=10)
    time.sleep(0.3)
    # Warming: the listener waits for its routes, so nothing listens yet.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    servicer.set(xds_types.ROUTE, [route_config("v1")])
    assert wait_for(lambda: backend_of(port) == "v1", timeout=10)

    servicer.set(xds_types.ROUTE, [route_config("v2")])
    assert wait_for(lambda: backend_of(port) == "v2", timeout=10)

    # An invalid route configuration is NACKed with the reason; v2 keeps serving.
    bad = route_config("v1")
    bad["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "(unclosed"}}
    servicer.set(xds_types.ROUTE, [bad])
    assert wait_for(lambda: servicer.nacks(xds_types.ROUTE), timeout=10)
    nack = servicer.nacks(xds_types.ROUTE)[0]
    assert nack.version_info == "2"  # the version still in use
    assert "regex" in nack.error_detail.message
    assert backend_of(port) == "v2"

    # The control plane goes away: the last good config keeps serving.
    server.stop(0)
    time.sleep(0.5)
    response = curl(f"http://127.0.0.1:{port}/")
    assert response.status == 200 and response.headers.get("x-backend") == "v2"


def _keep_alive_get(sock: socket.socket) -> bytes:
    """One GET on an open connection; the response head."""
    sock.sendall(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(v)
            for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
            if k.lower() == b"content-length"
        ),
        0,
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head.lower()


def test_a_changed_listener_drains_open_connections(
    ads: tuple[Ads, grpc.Server, int], dynamic_proxy: tuple[int, int], make_backend
) -> None:
    """As Envoy drains the connections of an updated listener, so that a new
    AuthorizationPolicy meets the next request; an unchanged re-push does not."""
    servicer, _, _ = ads
    port, _ = dynamic_proxy
    v1 = make_backend("v1")
    serve_v1(servicer, port, v1.port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        assert b"connection: close" not in _keep_alive_get(sock)
        servicer.set(xds_types.LISTENER, [rds_listener(port)])  # the same listener again
        assert wait_for(lambda: servicer.acked(xds_types.LISTENER, 2), timeout=10)
        assert b"connection: close" not in _keep_alive_get(sock)
        deny_all = rds_listener(port)
        hcm = deny_all["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"].insert(
            0,
            {
                "name": "envoy.filters.http.rbac",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                    "rules": {},
                },
            },
        )
        servicer.set(xds_types.LISTENER, [deny_all])
        assert wait_for(lambda: servicer.acked(xds_types.LISTENER, 3), timeout=10)
        head = _keep_alive_get(sock)
        assert head.startswith(b"http/1.1 200") and b"connection: close" in head
    assert curl(f"http://127.0.0.1:{port}/").status == 403


def test_a_changed_listener_sends_goaway_to_http2_connections(
    ads: tuple[Ads, grpc.Server, int], dynamic_proxy: tuple[int, int], make_backend
) -> None:
    """Envoy drains an updated listener's HTTP/2 connections with GOAWAY, so
    the client's next stream opens a connection under the new config."""
    servicer, _, _ = ads
    port, _ = dynamic_proxy
    v1 = make_backend("v1")
    serve_v1(servicer, port, v1.port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        changed = rds_listener(port)
        changed["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = "renamed"
        servicer.set(xds_types.LISTENER, [changed])
        code, data = None, b"-"
        while code is None and data:
            data = sock.recv(65536)
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    code = event.error_code
        assert code == 0
        sock.settimeout(3)
        while data:
            data = sock.recv(65536)  # and it closes, no stream being open


def _raw_get(port: int, first: bytes = b"") -> bytes:
    """`first` (a CONNECT) and its answer's head, then a GET on the same
    connection: everything read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        got = b""
        if first:
            sock.sendall(first)
            while b"\r\n\r\n" not in got and (chunk := sock.recv(65536)):
                got += chunk
        sock.sendall(b"GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
        while chunk := sock.recv(65536):
            got += chunk
        return got


def test_tcp_and_connect_sent_after_an_http_only_start_are_served(
    ads: tuple[Ads, grpc.Server, int], dynamic_proxy: tuple[int, int], make_backend
) -> None:
    """A sidecar that starts with HTTP only does not load the TCP relay
    (test_e2e_sidecar_memory.py); a TCP listener, and CONNECT on an HTTP
    listener, that the control plane sends later load it then and work."""
    servicer, _, _ = ads
    port, _ = dynamic_proxy
    tcp_port = free_port()
    v1 = make_backend("v1")
    serve_v1(servicer, port, v1.port)

    connect = rds_listener(port)
    connect["filter_chains"][0]["filters"][0]["typed_config"]["upgrade_configs"] = [
        {"upgrade_type": "CONNECT"}
    ]
    tcp = {
        "name": "tcp",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": tcp_port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network"
                            ".tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "tcp",
                            "cluster": "v1",
                        },
                    }
                ]
            }
        ],
    }
    routes = route_config("v1")
    routes["virtual_hosts"][0]["routes"].insert(
        0,
        {
            "match": {"connect_matcher": {}},
            "route": {
                "cluster": "v1",
                "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
            },
        },
    )
    servicer.set(xds_types.ROUTE, [routes])
    servicer.set(xds_types.LISTENER, [connect, tcp])
    assert wait_for(lambda: servicer.acked(xds_types.LISTENER, 2), timeout=10)

    assert wait_for(lambda: b"x-backend: v1" in _raw_get(tcp_port).lower(), timeout=10)
    tunnelled = _raw_get(port, b"CONNECT v1:80 HTTP/1.1\r\nhost: v1:80\r\n\r\n")
    assert tunnelled.startswith(b"HTTP/1.1 200 OK\r\n\r\n"), tunnelled[:200]
    assert b"x-backend: v1" in tunnelled.lower()
