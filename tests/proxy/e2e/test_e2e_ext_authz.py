"""CUSTOM authorization through a real sidecar: the filters the control
plane translates for an `envoyExtAuthzHttp` provider, an authorizer service
written here (Istio's ext-authz sample's contract: `x-ext-authz: allow`),
and curl."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf.json_format import MessageToDict
from google.rpc import status_pb2
from harness import closed_port, curl, free_port, listener, route, static_cluster, vhost

from pilotfish.translate.authz import AuthzSettings, translate_ext_authz_http

AUTHZ_HOST = "ext-authz.foo.svc.cluster.local"


class Authorizer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, str]]] = []

    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.answer()

    def answer(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        type(self).seen.append((self.command, self.path, headers))
        allowed = headers.get("x-ext-authz") == "allow"
        body = b"" if allowed else b"denied by ext_authz for not found header `x-ext-authz: allow`"
        self.send_response(200 if allowed else 403)
        self.send_header("x-ext-authz-check-result", "allowed" if allowed else "denied")
        self.send_header("x-not-forwarded", "secret")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def authorizer() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Authorizer)
    server.daemon_threads = True
    Authorizer.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def custom_filters(port: int, **provider: Any) -> list[dict[str, Any]]:
    policy = {
        "metadata": {"name": "ext-authz", "namespace": "foo"},
        "spec": {
            "action": "CUSTOM",
            "provider": {"name": "sample"},
            "rules": [{"to": [{"operation": {"paths": ["/headers*"]}}]}],
        },
    }
    http = {
        "service": AUTHZ_HOST,
        "port": port,
        "includeRequestHeadersInCheck": ["x-ext-authz"],
        "headersToUpstreamOnAllow": ["x-ext-authz-check-result"],
        "headersToDownstreamOnDeny": ["x-ext-authz-check-result"],
        "pathPrefix": "/check",
        **provider,
    }
    settings = AuthzSettings(
        providers=({"name": "sample", "envoyExtAuthzHttp": http},),
        services={AUTHZ_HOST: ("foo",)},
    )
    filters = translate_ext_authz_http([policy], settings)
    return [json.loads(json.dumps(MessageToDict(f))) for f in filters]


def start(start_proxy, make_backend, authz_port: int, **provider: Any) -> tuple[int, Any]:
    svc = make_backend("svc")
    port = free_port()
    cluster = f"outbound|{authz_port}||{AUTHZ_HOST}"
    start_proxy(
        [
            listener(
                "inbound_8000",
                port,
                [vhost("all", ["*"], [route("svc")])],
                http_filters=custom_filters(authz_port, **provider),
            )
        ],
        [static_cluster("svc", [svc.port]), static_cluster(cluster, [authz_port])],
    )
    return port, svc


def test_a_route_turns_ext_authz_off_with_per_route_config(start_proxy, make_backend) -> None:
    """Envoy's ExtAuthzPerRoute `disabled: true`: that route is never
    checked (its requests pass though the authorizer is down); others are."""
    svc = make_backend("svc")
    port = free_port()
    down = closed_port()
    off = {
        "envoy.filters.http.ext_authz": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "disabled": True,
        }
    }
    routes = [route("svc", prefix="/headers/open", typed_per_filter_config=off), route("svc")]
    cluster = f"outbound|{down}||{AUTHZ_HOST}"
    start_proxy(
        [
            listener(
                "inbound_8000",
                port,
                [vhost("all", ["*"], routes)],
                http_filters=custom_filters(down),
            )
        ],
        [static_cluster("svc", [svc.port]), static_cluster(cluster, [down])],
    )
    assert curl(f"http://127.0.0.1:{port}/headers/open").status == 200
    refused = curl(f"http://127.0.0.1:{port}/headers")
    assert (refused.status, refused.flags) == (403, "UAEX")
    assert svc.count == 1


def test_custom_denial_carries_the_authorizers_status_body_and_headers(
    start_proxy, make_backend, authorizer: int
) -> None:
    port, svc = start(start_proxy, make_backend, authorizer)
    denied = curl(f"http://127.0.0.1:{port}/headers?x=1")
    assert denied.status == 403
    assert denied.text == "denied by ext_authz for not found header `x-ext-authz: allow`"
    assert denied.header("x-ext-authz-check-result") == "denied"
    assert denied.header("x-not-forwarded") is None
    assert denied.flags == "UAEX"
    method, path, headers = Authorizer.seen[-1]
    assert (method, path) == ("GET", "/check/headers?x=1")
    assert headers["host"] == f"127.0.0.1:{port}" and "x-ext-authz" not in headers

    allowed = curl(f"http://127.0.0.1:{port}/headers", headers={"x-ext-authz": "allow"})
    assert allowed.status == 200
    assert svc.requests[-1].headers["x-ext-authz-check-result"] == "allowed"
    assert "x-not-forwarded" not in svc.requests[-1].headers

    checks = len(Authorizer.seen)
    assert curl(f"http://127.0.0.1:{port}/other").status == 200  # no CUSTOM rule matches
    assert len(Authorizer.seen) == checks


@pytest.mark.parametrize(
    ("provider", "status"),
    [({}, 403), ({"statusOnError": "503"}, 503), ({"failOpen": True}, 200)],
)
def test_an_unreachable_authorizer(
    start_proxy, make_backend, provider: dict[str, Any], status: int
) -> None:
    port, _ = start(start_proxy, make_backend, closed_port(), **provider)
    answer = curl(f"http://127.0.0.1:{port}/headers")
    assert answer.status == status
    if status != 200:
        assert answer.text == "" and answer.flags == "UAEX"


def test_a_slow_authorizer_times_out(start_proxy, make_backend) -> None:
    """An authorizer that accepts and never answers: the provider's timeout."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port, _ = start(start_proxy, make_backend, silent.getsockname()[1], timeout="300ms")
        answer = curl(f"http://127.0.0.1:{port}/headers")
    assert answer.status == 403 and answer.flags == "UAEX"


class GrpcAuthorizer(external_auth_pb2_grpc.AuthorizationServicer):
    """envoy.service.auth.v3.Authorization in grpcio: Istio's sample's contract."""

    def __init__(self) -> None:
        self.seen: list[external_auth_pb2.CheckRequest] = []

    def Check(self, request, context):
        self.seen.append(request)
        http = request.attributes.request.http
        if http.headers.get("x-ext-authz") == "allow":
            ok = external_auth_pb2.OkHttpResponse(
                headers=[header_option("x-ext-authz-check-result", "allowed")]
            )
            return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0), ok_response=ok)
        denied = external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
            headers=[header_option("x-ext-authz-check-result", "denied")],
            body="denied by ext_authz for not found header `x-ext-authz: allow`",
        )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=7), denied_response=denied
        )


def header_option(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value))


@pytest.fixture
def grpc_authorizer() -> Iterator[tuple[GrpcAuthorizer, int]]:
    servicer = GrpcAuthorizer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def grpc_filters(port: int, **provider: Any) -> list[dict[str, Any]]:
    policy = {
        "metadata": {"name": "ext-authz", "namespace": "foo"},
        "spec": {"action": "CUSTOM", "provider": {"name": "grpc"}, "rules": [{}]},
    }
    settings = AuthzSettings(
        providers=(
            {
                "name": "grpc",
                "envoyExtAuthzGrpc": {"service": AUTHZ_HOST, "port": port, **provider},
            },
        ),
        services={AUTHZ_HOST: ("foo",)},
    )
    filters = translate_ext_authz_http([policy], settings)
    return [json.loads(json.dumps(MessageToDict(f))) for f in filters]


def start_grpc(start_proxy, make_backend, authz_port: int, **provider: Any) -> tuple[int, Any]:
    svc = make_backend("svc")
    port = free_port()
    start_proxy(
        [
            listener(
                "inbound_8000",
                port,
                [vhost("all", ["*"], [route("svc")])],
                http_filters=grpc_filters(authz_port, **provider),
            )
        ],
        [
            static_cluster("svc", [svc.port]),
            static_cluster(f"outbound|{authz_port}||{AUTHZ_HOST}", [authz_port]),
        ],
    )
    return port, svc


def test_grpc_authorizer_decides_with_envoys_check_api(
    start_proxy, make_backend, grpc_authorizer: tuple[GrpcAuthorizer, int]
) -> None:
    servicer, authz_port = grpc_authorizer
    port, svc = start_grpc(start_proxy, make_backend, authz_port)
    denied = curl(f"http://127.0.0.1:{port}/headers?a=b", headers={"x-user": "u1"})
    assert denied.status == 401 and denied.flags == "UAEX"
    assert denied.text == "denied by ext_authz for not found header `x-ext-authz: allow`"
    assert denied.header("x-ext-authz-check-result") == "denied"
    http = servicer.seen[-1].attributes.request.http
    assert (http.method, http.path, http.host) == ("GET", "/headers?a=b", f"127.0.0.1:{port}")
    assert http.headers["x-user"] == "u1" and http.headers[":path"] == "/headers?a=b"
    assert servicer.seen[-1].attributes.source.address.socket_address.address == "127.0.0.1"

    allowed = curl(f"http://127.0.0.1:{port}/headers", headers={"x-ext-authz": "allow"})
    assert allowed.status == 200
    assert svc.requests[-1].headers["x-ext-authz-check-result"] == "allowed"


def test_grpc_authorizer_unreachable(start_proxy, make_backend) -> None:
    port, _ = start_grpc(start_proxy, make_backend, closed_port(), statusOnError="503")
    answer = curl(f"http://127.0.0.1:{port}/")
    assert answer.status == 503 and answer.text == "" and answer.flags == "UAEX"
