"""details over gRPC: details.py's `/bookinfo.Details/GetDetails` (Struct in,
Struct out) called with a real grpcio client, and productpage fetching the
details over gRPC (DETAILS_GRPC_ADDR) from a grpcio details in this process,
with the trace and user headers as metadata, a 3 s deadline and Bookinfo's
words when the call fails."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from tests.examples.bookinfo_harness import App, FakeMesh, fake_mesh, free_port, start_app, stop
from tests.examples.test_bookinfo_apps import NoRedirect, get

METHOD = "/bookinfo.Details/GetDetails"
UNAVAILABLE = "Sorry, product details are currently unavailable for this book."


def _struct(document: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(document)
    return message


def _get_details(port: int, request: struct_pb2.Struct) -> dict[str, Any]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=struct_pb2.Struct.SerializeToString,
            response_deserializer=struct_pb2.Struct.FromString,
        )
        return json_format.MessageToDict(call(request, timeout=5))


def test_details_answers_get_details_over_grpc_as_over_http(tmp_path: Path) -> None:
    grpc_port = free_port()
    with fake_mesh() as (_, proxy):
        app = start_app("details", proxy, tmp_path, {"PILOTFISH_PORT_GRPC": str(grpc_port)})
        try:
            over_http = json.loads(get(f"{app.url}/details/7")[1])
            assert _get_details(grpc_port, _struct({"id": 7})) == over_http
            assert over_http["pages"] == 200 and over_http["ISBN-10"] == "1234567890"
            for bad in ({"id": -1}, {"id": 1.5}, {"id": "7"}, {}):
                with pytest.raises(grpc.RpcError) as refused:
                    _get_details(grpc_port, _struct(bad))
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
                assert refused.value.details() == "please provide numeric product id"
        finally:
            stop(app.process)


def test_details_without_a_grpc_port_serves_http_only(tmp_path: Path) -> None:
    with fake_mesh() as (_, proxy):
        app = start_app("details", proxy, tmp_path)
        try:
            assert get(f"{app.url}/details/0")[0] == 200
            assert "gRPC" not in (tmp_path / "details.log").read_text()
        finally:
            stop(app.process)


@dataclass
class GrpcDetails:
    """details as a grpcio server in the test: it records each call's
    metadata and answers as told (a document, an abort, or too late)."""

    port: int = 0
    calls: list[dict[str, str]] = field(default_factory=list)
    abort: grpc.StatusCode | None = None
    delay: float = 0.0

    def handle(self, request: struct_pb2.Struct, context: grpc.ServicerContext) -> Any:
        self.calls.append({k: str(v) for k, v in context.invocation_metadata()})
        time.sleep(self.delay)
        if self.abort is not None:
            context.abort(self.abort, "details is down")
        book = int(request.fields["id"].number_value)
        return _struct({"id": book, "type": "hardcover", "pages": 321, "year": 1594})


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GrpcDetails, FakeMesh, App]]:
    details = GrpcDetails()
    handler = grpc.method_handlers_generic_handler(
        "bookinfo.Details",
        {
            "GetDetails": grpc.unary_unary_rpc_method_handler(
                details.handle,
                request_deserializer=struct_pb2.Struct.FromString,
                response_serializer=struct_pb2.Struct.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(handler,))
    details.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    log_dir = tmp_path_factory.mktemp("grpc-productpage")
    apps: list[App] = []
    try:
        with fake_mesh() as (mesh, proxy):
            apps.append(start_app("reviews-v1", proxy, log_dir))
            mesh.routes["reviews"] = apps[0].port
            grpc_addr = {"DETAILS_GRPC_ADDR": f"127.0.0.1:{details.port}"}
            apps.append(start_app("productpage", proxy, log_dir, grpc_addr))
            yield details, mesh, apps[1]
    finally:
        for app in apps:
            stop(app.process)
        server.stop(0)


@pytest.fixture
def grpc_world(
    world: tuple[GrpcDetails, FakeMesh, App],
) -> tuple[GrpcDetails, FakeMesh, App]:
    details, mesh, _ = world
    details.calls.clear()
    details.abort, details.delay = None, 0.0
    mesh.seen.clear()
    return world


def test_productpage_fetches_details_over_grpc(
    grpc_world: tuple[GrpcDetails, FakeMesh, App],
) -> None:
    details, mesh, productpage = grpc_world
    trace = {
        "x-request-id": "8b1c5bb0-1a77-4f6c-9d12-2f9a6e0bd8a1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "grpc-trace-bin": "AAARf5s=",
        "User-Agent": "curl/8.5.0",
        "x-unrelated": "dropped",
    }
    status, body = get(f"{productpage.url}/productpage", trace)
    assert status == 200 and "Error fetching" not in body
    assert "<dt>Type:</dt>hardcover" in body and "<dt>Pages:</dt>321<" in body  # not 321.0
    assert mesh.calls_to("details") == []  # not over HTTP (and not through HTTP_PROXY)
    assert mesh.calls_to("reviews")  # which still is
    [metadata] = details.calls
    assert metadata["x-request-id"] == trace["x-request-id"]
    assert metadata["traceparent"] == trace["traceparent"]
    assert "x-unrelated" not in metadata and "grpc-trace-bin" not in metadata
    assert "curl" not in metadata.get("user-agent", "")  # gRPC's own
    api = get(f"{productpage.url}/api/v1/products/0")
    assert api[0] == 200 and json.loads(api[1]) == {
        "id": 0,
        "type": "hardcover",
        "pages": 321,
        "year": 1594,
    }


def test_the_signed_in_user_rides_along_as_metadata(
    grpc_world: tuple[GrpcDetails, FakeMesh, App],
) -> None:
    details, _, productpage = grpc_world
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
    login = urllib.request.Request(
        f"{productpage.url}/login", data=b"username=jason&passwd=x", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(login, timeout=10)
    cookie = redirect.value.headers["Set-Cookie"].split(";")[0]
    assert get(f"{productpage.url}/productpage", {"Cookie": cookie})[0] == 200
    assert details.calls[0]["end-user"] == "jason"
    assert details.calls[0]["cookie"] == cookie


@pytest.mark.parametrize(
    ("abort", "delay", "status"),
    [(grpc.StatusCode.UNAVAILABLE, 0.0, 503), (None, 3.5, 504)],
)
def test_a_failed_grpc_call_shows_bookinfos_words(
    grpc_world: tuple[GrpcDetails, FakeMesh, App],
    abort: grpc.StatusCode | None,
    delay: float,
    status: int,
) -> None:
    """An error status, or no answer within productpage's 3 s deadline."""
    details, _, productpage = grpc_world
    details.abort, details.delay = abort, delay
    started = time.monotonic()
    code, body = get(f"{productpage.url}/productpage")
    assert time.monotonic() - started < 3.0 + 0.4 + 1.0  # the deadline, not details' 3.5 s
    assert code == 200 and "Error fetching product details!" in body and UNAVAILABLE in body
    assert "Book Reviews" in body  # the rest of the page is there
    api = get(f"{productpage.url}/api/v1/products/0")
    assert api == (status, json.dumps({"error": UNAVAILABLE}))
