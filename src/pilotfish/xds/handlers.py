"""Synchronous unary gRPC handlers (Istio's CA service, written for grpcio's
threaded server) served by the asyncio ADS server on the same port.

grpc.aio would run such a handler on a thread, but hand it the asyncio
context, whose `abort` is a coroutine: called without `await` it aborts
nothing. So each call runs on a worker thread (asyncio's default pool,
bounded) with a context of its own that reads what the handler may read
(metadata, peer) and turns `abort` into an exception, answered on the loop.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc

Unary = Callable[[Any, Any], Any]


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class SyncContext:
    """What a synchronous unary handler asks of its context, for one call."""

    def __init__(self, metadata: Sequence[tuple[str, Any]], peer: str) -> None:
        self._metadata = tuple(metadata)
        self._peer = peer

    def __repr__(self) -> str:
        return f"SyncContext(peer={self._peer!r})"

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(code, details)


class AsyncAdapter(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no types
    """`handler`, with its synchronous unary methods made coroutines; the
    others are served as they are."""

    def __init__(self, handler: grpc.GenericRpcHandler) -> None:
        self.handler = handler

    def __repr__(self) -> str:
        return f"AsyncAdapter({self.handler!r})"

    def service(self, call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = self.handler.service(call_details)
        function = getattr(method, "unary_unary", None)
        if method is None or function is None or inspect.iscoroutinefunction(function):
            return method
        return grpc.unary_unary_rpc_method_handler(
            _on_a_thread(function),
            request_deserializer=method.request_deserializer,
            response_serializer=method.response_serializer,
        )


def _on_a_thread(function: Unary) -> Callable[[Any, grpc.aio.ServicerContext], Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        sync = SyncContext(context.invocation_metadata() or (), context.peer())
        try:
            return await asyncio.to_thread(function, request, sync)
        except _Aborted as e:
            await context.abort(e.code, e.details)

    return call
