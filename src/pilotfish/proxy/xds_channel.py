"""How the sidecar dials its control plane (ADS, the CA, tap): in clear, or
over TLS when the bootstrap's xds cluster has a TLS transport socket, as
istio-agent's bootstrap gives `xds-grpc` one for istiod's 15012:

    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          validation_context: {trusted_ca: {filename: /path/to/root-cert.pem}}

The control plane's certificate must chain to `trusted_ca` (the mesh root)
and name the address dialled (gRPC always checks the name; `sni`, when set,
is the name checked instead). Read once at start, as Envoy reads a static
cluster's files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from envoy.config.core.v3.base_pb2 import DataSource
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext

TLS_SOCKET = "envoy.transport_sockets.tls"


@dataclass(frozen=True)
class ControlPlaneChannel:
    """`root_pem` None: plaintext (15010); else TLS verified against it."""

    root_pem: bytes | None = field(default=None, repr=False)
    server_name: str = ""

    def __repr__(self) -> str:
        return f"ControlPlaneChannel(tls={self.root_pem is not None}, sni={self.server_name!r})"

    def open(self, target: str) -> grpc.aio.Channel:
        if self.root_pem is None:
            return grpc.aio.insecure_channel(target)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.root_pem)
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.aio.secure_channel(target, credentials, options)


PLAINTEXT = ControlPlaneChannel()


def channel_for(cluster: ClusterProto) -> ControlPlaneChannel:
    """The channel the xds cluster's transport socket asks for; ValueError
    for one the sidecar cannot honour (it would rather not start than dial
    in clear what was meant to be TLS)."""
    if not cluster.HasField("transport_socket"):
        return PLAINTEXT
    socket = cluster.transport_socket
    context = UpstreamTlsContext()
    if socket.name != TLS_SOCKET or not socket.typed_config.Unpack(context):
        raise ValueError(
            f"transport_socket {socket.name!r}: only {TLS_SOCKET} with an UpstreamTlsContext"
        )
    validation = context.common_tls_context.validation_context
    if not validation.HasField("trusted_ca"):
        raise ValueError(
            "transport_socket: common_tls_context.validation_context.trusted_ca is required "
            "(the mesh root the control plane's certificate is verified against)"
        )
    root = _read(validation.trusted_ca)
    if b"-----BEGIN CERTIFICATE-----" not in root:
        raise ValueError("transport_socket: trusted_ca holds no PEM certificate")
    return ControlPlaneChannel(root, context.sni)


def _read(source: DataSource) -> bytes:
    kind = source.WhichOneof("specifier")
    if kind == "filename":
        try:
            return Path(source.filename).read_bytes()
        except OSError as e:
            raise ValueError(f"trusted_ca {source.filename}: {e.strerror}") from e
    if kind == "inline_bytes":
        return bytes(source.inline_bytes)
    if kind == "inline_string":
        return str(source.inline_string).encode()
    raise ValueError(f"trusted_ca: a filename, inline_bytes or inline_string, not {kind}")
