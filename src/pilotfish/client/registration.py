"""Registration of instances with the control plane's registry: the one
place that knows the wire shape, so the node agent and a sidecar started by
hand (`pilotfish proxy --register`) only say "this instance, healthy or not"
and "gone"."""

from __future__ import annotations

import contextlib
from typing import Protocol

from pilotfish.api.errors import ApiError
from pilotfish.ca.identity import TLS_MODE_LABEL
from pilotfish.client import Unreachable
from pilotfish.objects import Obj

TTL_S = 3.0  # an agent that dies is noticed within this


class RegistryClient(Protocol):
    def register_instance(self, registration: Obj) -> Obj: ...
    def deregister_instance(self, namespace: str, name: str) -> None: ...


def registration(
    *,
    name: str,
    namespace: str,
    workload: str,
    labels: dict[str, str],
    service_account: str,
    ports: dict[str, int],
    app_ports: dict[str, int],
    metrics_port: int,
    healthy: bool,
    mtls: bool = False,
    address: str = "127.0.0.1",
    locality: str = "",
) -> Obj:
    """`mtls`: the sidecar holds a mesh certificate; the instance is labelled
    as Istio labels such pods, so callers send it mutual TLS."""
    if mtls:
        labels = {**labels, TLS_MODE_LABEL: "istio"}
    return {
        "name": name,
        "namespace": namespace,
        "workload": workload,
        "address": address,
        "locality": locality,
        "ports": ports,
        "appPorts": app_ports,
        "metricsPort": metrics_port,
        "labels": labels,
        "serviceAccount": service_account,
        "healthy": healthy,
        "ttlSeconds": TTL_S,
    }


class Refused(Exception):
    """The control plane answered the registration with an error; the
    message is its reason."""


def join(client: RegistryClient, body: Obj) -> str:
    """The first registration. The control plane refusing it (a bad port, a
    missing token) raises Refused: a mistake to fix before serving. One not
    answering yet is a warning returned, since renewals try again."""
    try:
        client.register_instance(body)
    except Unreachable as e:
        return e.message
    except ApiError as e:
        raise Refused(e.message) from e
    return ""


def register(client: RegistryClient, body: Obj) -> str:
    """Register or renew; an error message when the control plane refused or
    was unreachable (the lease then runs out, which is the safe side)."""
    try:
        client.register_instance(body)
    except ApiError as e:
        return e.message
    return ""


def deregister(client: RegistryClient, namespace: str, name: str) -> None:
    # Not registered, or unreachable: either way the lease expires on its own.
    with contextlib.suppress(ApiError):
        client.deregister_instance(namespace, name)
