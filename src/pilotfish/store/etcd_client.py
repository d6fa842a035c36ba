"""A small, thread-safe client of etcd's v3 gRPC API: KV, Compact and Watch.

No third-party etcd client: the `etcd3` package is unmaintained and pins an old
protobuf, and the maintained ones either wrap everything in asyncio (the store
is called from threads) or ship code generated for one protobuf version. The
few messages used are declared here instead, field numbers as in etcd's
api/etcdserverpb/rpc.proto and api/mvccpb/kv.proto, in a private descriptor
pool built at import time, so only grpcio and protobuf (already dependencies
for xDS) are needed, whatever their versions. Enums are sent as the varints
they are on the wire.

Several endpoints are tried in turn: a call that finds its endpoint
unavailable moves to the next one, as etcd's own clients fail over.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pilotfish.api.errors import ApiError

_F = descriptor_pb2.FieldDescriptorProto
_BYTES, _I64, _U64, _BOOL, _I32, _STR = (
    _F.TYPE_BYTES,
    _F.TYPE_INT64,
    _F.TYPE_UINT64,
    _F.TYPE_BOOL,
    _F.TYPE_INT32,
    _F.TYPE_STRING,
)
_REPEATED = "repeated"

# message -> [(field, number, type or message name, "repeated" | oneof name | "")]
_MESSAGES: dict[str, list[tuple[str, int, int | str, str]]] = {
    "ResponseHeader": [
        ("cluster_id", 1, _U64, ""),
        ("member_id", 2, _U64, ""),
        ("revision", 3, _I64, ""),
        ("raft_term", 4, _U64, ""),
    ],
    "KeyValue": [
        ("key", 1, _BYTES, ""),
        ("create_revision", 2, _I64, ""),
        ("mod_revision", 3, _I64, ""),
        ("version", 4, _I64, ""),
        ("value", 5, _BYTES, ""),
        ("lease", 6, _I64, ""),
    ],
    "Event": [("type", 1, _I32, ""), ("kv", 2, "KeyValue", ""), ("prev_kv", 3, "KeyValue", "")],
    "RangeRequest": [
        ("key", 1, _BYTES, ""),
        ("range_end", 2, _BYTES, ""),
        ("limit", 3, _I64, ""),
        ("revision", 4, _I64, ""),
        ("keys_only", 8, _BOOL, ""),
    ],
    "RangeResponse": [
        ("header", 1, "ResponseHeader", ""),
        ("kvs", 2, "KeyValue", _REPEATED),
        ("more", 3, _BOOL, ""),
        ("count", 4, _I64, ""),
    ],
    "PutRequest": [("key", 1, _BYTES, ""), ("value", 2, _BYTES, ""), ("lease", 3, _I64, "")],
    "PutResponse": [("header", 1, "ResponseHeader", "")],
    "DeleteRangeRequest": [
        ("key", 1, _BYTES, ""),
        ("range_end", 2, _BYTES, ""),
        ("prev_kv", 3, _BOOL, ""),
    ],
    "DeleteRangeResponse": [
        ("header", 1, "ResponseHeader", ""),
        ("deleted", 2, _I64, ""),
        ("prev_kvs", 3, "KeyValue", _REPEATED),
    ],
    "RequestOp": [
        ("request_range", 1, "RangeRequest", "request"),
        ("request_put", 2, "PutRequest", "request"),
        ("request_delete_range", 3, "DeleteRangeRequest", "request"),
    ],
    "ResponseOp": [
        ("response_range", 1, "RangeResponse", "response"),
        ("response_put", 2, "PutResponse", "response"),
        ("response_delete_range", 3, "DeleteRangeResponse", "response"),
    ],
    # The target is a oneof so that a compared 0 (a key that does not exist) is sent.
    "Compare": [
        ("result", 1, _I32, ""),
        ("target", 2, _I32, ""),
        ("key", 3, _BYTES, ""),
        ("version", 4, _I64, "target_union"),
        ("create_revision", 5, _I64, "target_union"),
        ("mod_revision", 6, _I64, "target_union"),
    ],
    "TxnRequest": [
        ("compare", 1, "Compare", _REPEATED),
        ("success", 2, "RequestOp", _REPEATED),
        ("failure", 3, "RequestOp", _REPEATED),
    ],
    "TxnResponse": [
        ("header", 1, "ResponseHeader", ""),
        ("succeeded", 2, _BOOL, ""),
        ("responses", 3, "ResponseOp", _REPEATED),
    ],
    "CompactionRequest": [("revision", 1, _I64, ""), ("physical", 2, _BOOL, "")],
    "CompactionResponse": [("header", 1, "ResponseHeader", "")],
    "LeaseGrantRequest": [("TTL", 1, _I64, ""), ("ID", 2, _I64, "")],
    "LeaseGrantResponse": [
        ("header", 1, "ResponseHeader", ""),
        ("ID", 2, _I64, ""),
        ("TTL", 3, _I64, ""),
        ("error", 4, _STR, ""),
    ],
    "LeaseRevokeRequest": [("ID", 1, _I64, "")],
    "LeaseRevokeResponse": [("header", 1, "ResponseHeader", "")],
    "LeaseTimeToLiveRequest": [("ID", 1, _I64, "")],
    "LeaseTimeToLiveResponse": [
        ("header", 1, "ResponseHeader", ""),
        ("ID", 2, _I64, ""),
        ("TTL", 3, _I64, ""),
        ("grantedTTL", 4, _I64, ""),
    ],
    "LeaseKeepAliveRequest": [("ID", 1, _I64, "")],
    "LeaseKeepAliveResponse": [
        ("header", 1, "ResponseHeader", ""),
        ("ID", 2, _I64, ""),
        ("TTL", 3, _I64, ""),
    ],
    "WatchCreateRequest": [
        ("key", 1, _BYTES, ""),
        ("range_end", 2, _BYTES, ""),
        ("start_revision", 3, _I64, ""),
        ("prev_kv", 6, _BOOL, ""),
    ],
    "WatchCancelRequest": [("watch_id", 1, _I64, "")],
    "WatchRequest": [
        ("create_request", 1, "WatchCreateRequest", "request_union"),
        ("cancel_request", 2, "WatchCancelRequest", "request_union"),
    ],
    "WatchResponse": [
        ("header", 1, "ResponseHeader", ""),
        ("watch_id", 2, _I64, ""),
        ("created", 3, _BOOL, ""),
        ("canceled", 4, _BOOL, ""),
        ("compact_revision", 5, _I64, ""),
        ("cancel_reason", 6, _STR, ""),
        ("events", 11, "Event", _REPEATED),
    ],
}
_PACKAGE = "etcdserverpb"

# Compare.result / Compare.target / Event.type values, as in rpc.proto and kv.proto.
EQUAL = 0
TARGET_CREATE = 1
TARGET_MOD = 2
EVENT_DELETE = 1


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="pilotfish/etcd_subset.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        oneofs: list[str] = []
        for field_name, number, kind, how in fields:
            field = message.field.add(name=field_name, number=number, json_name=field_name)
            field.label = _F.LABEL_REPEATED if how == _REPEATED else _F.LABEL_OPTIONAL
            if isinstance(kind, str):
                field.type, field.type_name = _F.TYPE_MESSAGE, f".{_PACKAGE}.{kind}"
            else:
                field.type = kind
            if how not in ("", _REPEATED):
                if how not in oneofs:
                    oneofs.append(how)
                    message.oneof_decl.add(name=how)
                field.oneof_index = oneofs.index(how)
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


@functools.cache
def _class(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


def message(name: str, **fields: Any) -> Any:
    """A new etcd message: `message("RangeRequest", key=b"/a")`."""
    return _class(name)(**fields)


def _parser(name: str) -> Callable[[bytes], Any]:
    return _class(name).FromString  # type: ignore[no-any-return]


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range cover every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


class Unavailable(ApiError):
    """etcd cannot be reached (Kubernetes answers the same with a 503)."""

    code = 503
    reason = "ServiceUnavailable"


class Compacted(Exception):
    """The revision asked for (`revision`) was compacted away."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision {revision} has been compacted")
        self.revision = revision


class FutureRevision(Exception):
    """The revision asked for has not been written yet."""


@dataclass(frozen=True)
class Tls:
    """Client TLS: trusted CAs (None: the system's) and an optional client certificate."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None


_UNARY = {
    "Range": ("KV", "RangeResponse"),
    "Txn": ("KV", "TxnResponse"),
    "Compact": ("KV", "CompactionResponse"),
    "LeaseGrant": ("Lease", "LeaseGrantResponse"),
    "LeaseRevoke": ("Lease", "LeaseRevokeResponse"),
    "LeaseTimeToLive": ("Lease", "LeaseTimeToLiveResponse"),
}
CALL_TIMEOUT_S = 10.0
# A list is one Range answer: no 4 MiB cap on it (etcd's client sets the same).
_OPTIONS = [("grpc.max_receive_message_length", 2**31 - 1)]


class EtcdClient:
    """Calls to one of `endpoints` ("host:port"), moving on when one is down."""

    def __init__(self, endpoints: Sequence[str], tls: Tls | None = None) -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoints given")
        self.endpoints = list(endpoints)
        self._tls = tls
        self._lock = threading.Lock()
        self._current = 0
        self._channel: grpc.Channel | None = None

    def __repr__(self) -> str:
        scheme = "etcds" if self._tls else "etcd"
        return f"EtcdClient({scheme}://{','.join(self.endpoints)})"

    def _open(self, index: int) -> grpc.Channel:
        target = self.endpoints[index]
        if self._tls is None:
            return grpc.insecure_channel(target, _OPTIONS)
        creds = grpc.ssl_channel_credentials(self._tls.ca, self._tls.key, self._tls.cert)
        return grpc.secure_channel(target, creds, _OPTIONS)

    def channel(self) -> tuple[grpc.Channel, int]:
        with self._lock:
            if self._channel is None:
                self._channel = self._open(self._current)
            return self._channel, self._current

    def failed(self, index: int) -> None:
        """The endpoint at `index` did not answer: the next call goes to the next one."""
        with self._lock:
            if index != self._current or len(self.endpoints) == 1:
                return
            if self._channel is not None:
                self._channel.close()
            self._current = (index + 1) % len(self.endpoints)
            self._channel = None

    def call(self, method: str, request: Any) -> Any:
        service, reply = _UNARY[method]
        last: grpc.RpcError | None = None
        for _ in self.endpoints:
            channel, index = self.channel()
            stub = channel.unary_unary(
                f"/{_PACKAGE}.{service}/{method}",
                request_serializer=_serialize,
                response_deserializer=_parser(reply),
            )
            try:
                return stub(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as e:
                if _code(e) == grpc.StatusCode.OUT_OF_RANGE:
                    raise _out_of_range(e, request) from None
                if _code(e) not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise ApiError(f"etcd {self.endpoints[index]}: {_details(e)}") from e
                last = e
                self.failed(index)
        raise Unavailable(f"etcd is unavailable ({', '.join(self.endpoints)}): {_details(last)}")

    def watch(self, requests: Iterator[Any]) -> tuple[Any, int]:
        """The bidirectional Watch stream (an iterator of WatchResponse; cancel()
        ends it) and the index of its endpoint, to pass to failed()."""
        channel, index = self.channel()
        stream = channel.stream_stream(
            f"/{_PACKAGE}.Watch/Watch",
            request_serializer=_serialize,
            response_deserializer=_parser("WatchResponse"),
        )
        return stream(requests), index

    def keep_alive(self, lease: int, timeout: float = CALL_TIMEOUT_S) -> int:
        """Renew a lease once; the seconds etcd says are left (<= 0: it is gone)."""
        channel, index = self.channel()
        stream = channel.stream_stream(
            f"/{_PACKAGE}.Lease/LeaseKeepAlive",
            request_serializer=_serialize,
            response_deserializer=_parser("LeaseKeepAliveResponse"),
        )
        replies = stream(iter([message("LeaseKeepAliveRequest", ID=lease)]), timeout=timeout)
        try:
            return int(next(replies).TTL)
        except grpc.RpcError as e:
            self.failed(index)
            raise Unavailable(f"etcd {self.endpoints[index]}: {_details(e)}") from e
        except StopIteration:
            raise Unavailable(f"etcd {self.endpoints[index]}: no answer to a keep-alive") from None
        finally:
            replies.cancel()

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None


def _out_of_range(error: grpc.RpcError, request: Any) -> Exception:
    if "compacted" in _details(error):
        return Compacted(request.revision)
    if "future revision" in _details(error):
        return FutureRevision(request.revision)
    return ApiError(f"etcd: {_details(error)}")


def _serialize(request: Any) -> bytes:
    return request.SerializeToString()  # type: ignore[no-any-return]


def _code(error: grpc.RpcError | None) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def _details(error: grpc.RpcError | None) -> str:
    details = getattr(error, "details", None)
    return str(details()) if callable(details) else str(error)
