"""What a hand-started sidecar registers: with a certificate
(`--ca-token-file`) its instance carries Istio's tlsMode label, so callers'
auto mTLS sends it mutual TLS; without one it does not, and they send
plaintext it can serve."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3.base_pb2 import Node
from google.protobuf import struct_pb2

from pilotfish.proxy.register import Registrar


class NoClient:
    def register_instance(self, registration: Any) -> Any:
        raise AssertionError("not called")

    def deregister_instance(self, namespace: str, name: str) -> None:
        raise AssertionError("not called")


def node() -> Node:
    metadata = struct_pb2.Struct()
    metadata.update({"NAME": "billing-0", "NAMESPACE": "vm", "LABELS": {"app": "billing"}})
    return Node(id="sidecar~127.0.0.1~billing-0.vm~vm.svc.cluster.local", metadata=metadata)


def test_a_sidecar_with_a_certificate_is_labelled_for_auto_mtls() -> None:
    with_cert = Registrar.for_node(node(), {"http": 19080}, {}, 15000, NoClient(), mtls=True)
    assert with_cert.body["labels"] == {"app": "billing", "security.istio.io/tlsMode": "istio"}
    plain = Registrar.for_node(node(), {"http": 19080}, {}, 15000, NoClient())
    assert plain.body["labels"] == {"app": "billing"}
