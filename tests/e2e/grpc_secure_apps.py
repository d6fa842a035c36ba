"""grpcio's own xDS security as the referee: an xDS-enabled server and a
proxyless client, both taking their TLS from xDS (`xds_server_credentials`,
`xds_channel_credentials`) with plaintext as the fallback, as a user writes
them. No codegen: raw bytes through generic handlers.

    python grpc_secure_apps.py serve --port P
    python grpc_secure_apps.py call --target T [--method M] [--calls N] [--plaintext]

The server answers `/pilotfish.test.Echo/Call` and `/pilotfish.test.Echo/Secret`
with JSON: the method and what grpc's auth context says of the peer (its
SPIFFE ID, its transport security). `call` prints one JSON line:
`{"replies": [...], "errors": {"PERMISSION_DENIED": 2}}`; with --plaintext
it dials without any TLS at all (an insecure channel).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from concurrent import futures
from typing import Any

import grpc
import grpc.experimental

SERVICE = "pilotfish.test.Echo"


def serve(port: int) -> None:
    def answer(method: str) -> Any:
        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            auth = {k: [v.decode() for v in vs] for k, vs in context.auth_context().items()}
            return json.dumps({"method": method, "auth": auth}).encode()

        return grpc.unary_unary_rpc_method_handler(call)

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Call": answer("Call"), "Secret": answer("Secret")}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), xds=True)
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.xds_server_credentials(grpc.insecure_server_credentials())
    server.add_secure_port(f"0.0.0.0:{port}", credentials)
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def call(target: str, method: str, calls: int, plaintext: bool, timeout: float) -> None:
    if plaintext:
        channel = grpc.insecure_channel(target)
    else:
        credentials = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
        channel = grpc.secure_channel(target, credentials)
    stub = channel.unary_unary(f"/{SERVICE}/{method}")
    replies: list[Any] = []
    errors: Counter[str] = Counter()
    details: list[str] = []
    for _ in range(calls):
        try:
            replies.append(json.loads(stub(b"hi", timeout=timeout, wait_for_ready=not plaintext)))
        except grpc.RpcError as e:
            errors[e.code().name] += 1  # type: ignore[attr-defined]
            details.append(str(e.details()))  # type: ignore[attr-defined]
    print(json.dumps({"replies": replies, "errors": dict(errors), "details": details}), flush=True)
    channel.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("call")
    c.add_argument("--target", required=True)
    c.add_argument("--method", default="Call")
    c.add_argument("--calls", type=int, default=1)
    c.add_argument("--plaintext", action="store_true")
    c.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port)
    else:
        call(args.target, args.method, args.calls, args.plaintext, args.timeout)


if __name__ == "__main__":
    main()
