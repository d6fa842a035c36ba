"""What a hand-started sidecar registers: with a certificate
(`--ca-token-file`) its instance carries Istio's tlsMode label, so callers'
auto mTLS sends it mutual TLS; without one it does not, and they send
plaintext it can serve."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from envoy.config.core.v3.base_pb2 import Node
from google.protobuf import struct_pb2

from pilotfish.api.errors import Invalid
from pilotfish.client import Client
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


class Refusing(NoClient):
    def register_instance(self, registration: Any) -> Any:
        raise Invalid('Instance.registry "billing-0": ports.http: Invalid value: 0')


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_control_plane_not_answering_yet_is_a_warning_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client(f"http://127.0.0.1:{closed_port()}", None, timeout=2.0)
    registrar = Registrar.for_node(node(), {"http": 19080}, {}, 15000, client)
    with caplog.at_level(logging.WARNING, logger="pilotfish.proxy"):
        asyncio.run(registrar.join())
    assert "registration of billing-0: cannot reach the control plane" in caplog.text


def test_a_refused_registration_stops_the_sidecar_with_the_reason() -> None:
    registrar = Registrar.for_node(node(), {"http": 19080}, {}, 15000, Refusing())
    with pytest.raises(SystemExit) as stopped:
        asyncio.run(registrar.join())
    assert str(stopped.value) == (
        'error: --register: the control plane refused: Instance.registry "billing-0": '
        "ports.http: Invalid value: 0"
    )
