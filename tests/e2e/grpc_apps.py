"""A tiny gRPC service and a proxyless client, run as separate processes by
the proxyless e2e test. No codegen: raw bytes through generic handlers.

    python grpc_apps.py serve --port P --reply v1 [--fail-first-attempt]
    python grpc_apps.py client --target xds:///HOST:PORT   (commands on stdin)

The server answers `/pilotfish.test.Echo/Call` with its --reply. With
--fail-first-attempt it fails the first attempt of every request id
(metadata `x-request-id`) with UNAVAILABLE, so only a retry succeeds.

The client reads one JSON command per line from stdin,
`{"calls": N, "metadata": {...}, "timeout": S}`, makes N calls and prints one
JSON line: `{"replies": {"v1": 90, ...}, "errors": {"UNAVAILABLE": 3},
"latencies": [...]}`. One process keeps one xDS client for its whole life, so
a test can change config between commands without restarting it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent import futures
from typing import Any

import grpc

METHOD = "/pilotfish.test.Echo/Call"


def serve(port: int, reply: str, fail_first_attempt: bool) -> None:
    seen: set[str] = set()
    lock = threading.Lock()

    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        request_id = dict(context.invocation_metadata()).get("x-request-id", "")
        if fail_first_attempt:
            with lock:
                first = request_id not in seen
                seen.add(request_id)
            if first:
                context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails")
        return reply.encode()

    handler = grpc.method_handlers_generic_handler(
        "pilotfish.test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def run_client(target: str) -> None:
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary(METHOD)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        print(json.dumps(_calls(call, command)), flush=True)


def _calls(call: Any, command: dict[str, Any]) -> dict[str, Any]:
    replies: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies = []
    for _ in range(int(command.get("calls", 1))):
        metadata = [(k, v) for k, v in (command.get("metadata") or {}).items()]
        metadata.append(("x-request-id", uuid.uuid4().hex))
        started = time.monotonic()
        try:
            answer = call(b"hi", metadata=metadata, timeout=float(command.get("timeout", 5)))
            replies[answer.decode()] += 1
        except grpc.RpcError as e:
            errors[e.code().name] += 1  # type: ignore[attr-defined]
        latencies.append(round(time.monotonic() - started, 4))
    return {"replies": dict(replies), "errors": dict(errors), "latencies": latencies}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--reply", required=True)
    s.add_argument("--fail-first-attempt", action="store_true")
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port, args.reply, args.fail_first_attempt)
    else:
        run_client(args.target)


if __name__ == "__main__":
    main()
