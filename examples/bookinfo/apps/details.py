"""Bookinfo's details service: the book's facts as JSON, at /details/ID, and
over gRPC as `/bookinfo.Details/GetDetails` on the Workload's `grpc` port.

The gRPC messages are protobuf's own `google.protobuf.Struct` (request
`{"id": N}`, reply the same document the HTTP API gives), so neither side
needs generated code. Without a `grpc` port ($PILOTFISH_PORT_GRPC) details
serves HTTP only, as before; readiness and liveness stay on HTTP either way.
"""

from __future__ import annotations

import os
import sys
from concurrent import futures
from typing import Any

import common
import grpc
from google.protobuf import struct_pb2

VERSION = os.environ.get("SERVICE_VERSION", "v1")
BAD_ID = "please provide numeric product id"


def book_details(book_id: int) -> dict[str, object]:
    return {
        "id": book_id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }


class DetailsHandler(common.Handler):
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/health":
            self.send_json(200, {"status": "Details is healthy"})
        elif path.startswith("/details/"):
            book_id = path.removeprefix("/details/")
            if not book_id.isdigit():
                self.send_json(400, {"error": BAD_ID})
                return
            self.send_json(200, book_details(int(book_id)))
        else:
            self.send_json(404, {"error": "Not Found"})

    do_HEAD = do_GET


def get_details(request: struct_pb2.Struct, context: grpc.ServicerContext) -> struct_pb2.Struct:
    """The unary RPC. A Struct's numbers are doubles: an id must be a whole,
    non-negative one, as the HTTP API wants digits (INVALID_ARGUMENT else)."""
    book_id: Any = request.fields["id"].number_value if "id" in request.fields else None
    kind = request.fields["id"].WhichOneof("kind") if book_id is not None else None
    if kind != "number_value" or book_id < 0 or not float(book_id).is_integer():
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, BAD_ID)
    reply = struct_pb2.Struct()
    reply.update(book_details(int(book_id)))
    return reply


def grpc_server(port: int) -> grpc.Server:
    handler = grpc.method_handlers_generic_handler(
        common.DETAILS_GRPC_SERVICE,
        {
            "GetDetails": grpc.unary_unary_rpc_method_handler(
                get_details,
                request_deserializer=struct_pb2.Struct.FromString,
                response_serializer=struct_pb2.Struct.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=(handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"details-{VERSION} gRPC listening on 127.0.0.1:{bound}", file=sys.stderr, flush=True)
    return server


def main() -> None:
    grpc_port = os.environ.get("PILOTFISH_PORT_GRPC")
    server = grpc_server(int(grpc_port)) if grpc_port else None
    try:
        common.serve(DetailsHandler, f"details-{VERSION}")
    finally:
        if server is not None:
            server.stop(1).wait()


if __name__ == "__main__":
    main()
