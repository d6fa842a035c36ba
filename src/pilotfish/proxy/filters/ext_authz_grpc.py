"""envoy.service.auth.v3.Authorization/Check messages for the ext_authz
filter's gRPC service: the CheckRequest Envoy sends (the request's
attributes), and what its CheckResponse decides. Pure: bytes in, bytes out;
the shell makes the call.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.protobuf.message import DecodeError

from pilotfish.proxy.filters.base import Exchange

CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"
GRPC_OK = 0
Header = tuple[bytes, bytes]


def check_request(ex: Exchange) -> bytes:
    """The request as Envoy describes it to the authorizer: peer and local
    addresses, the peer's principal (with mTLS), method, path, host, scheme,
    protocol and every header (lower-case names, repeated ones joined)."""
    req, conn = ex.request, ex.connection
    attrs = attribute_context_pb2.AttributeContext()
    attrs.source.address.socket_address.address = conn.direct_remote_ip
    if conn.peer_principal:
        attrs.source.principal = conn.peer_principal
    attrs.destination.address.socket_address.address = conn.local_ip
    attrs.destination.address.socket_address.port_value = conn.local_port
    http = attrs.request.http
    http.method = req.method.decode("latin-1")
    http.path = req.path.decode("latin-1")
    http.host = req.authority.decode("latin-1")
    http.scheme = req.scheme.decode("latin-1")
    http.protocol = "HTTP/1.1"
    for raw, value in ex.index().items():
        http.headers[raw.decode("latin-1")] = value.decode("latin-1")
    for name, text in ((":method", http.method), (":path", http.path), (":authority", http.host)):
        http.headers[name] = text
    data: bytes = external_auth_pb2.CheckRequest(attributes=attrs).SerializeToString()
    return data


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    status: int  # the denial's HTTP status
    upstream: tuple[tuple[int, bytes, bytes], ...]  # (append?, name, value) for the request
    remove: tuple[bytes, ...]  # request headers to remove
    client: tuple[Header, ...]  # headers for the client (denied, or on success)
    body: bytes


def read_response(data: bytes) -> Verdict | None:
    """A CheckResponse's decision; None if it is not one (an error)."""
    response = external_auth_pb2.CheckResponse()
    try:
        response.ParseFromString(data)
    except DecodeError:
        return None
    if response.status.code == GRPC_OK:
        ok = response.ok_response
        return Verdict(
            True,
            200,
            tuple((int(h.append.value), *_pair(h)) for h in ok.headers),
            tuple(n.lower().encode("latin-1") for n in ok.headers_to_remove),
            tuple(_pair(h) for h in ok.response_headers_to_add),
            b"",
        )
    denied = response.denied_response
    status = denied.status.code if denied.HasField("status") and denied.status.code else 403
    return Verdict(
        False, status, (), (), tuple(_pair(h) for h in denied.headers), denied.body.encode()
    )


def _pair(option: base_pb2.HeaderValueOption) -> Header:
    return option.header.key.lower().encode("latin-1"), option.header.value.encode("latin-1")
