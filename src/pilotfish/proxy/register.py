"""`pilotfish proxy --register`: a sidecar started by hand (on a VM, a
laptop) keeps its workload instance in the control plane's registry while it
serves, as the node agent does for the instances it runs.

Who the instance is comes from the bootstrap's node metadata, as Istio writes
it: NAME (the instance), NAMESPACE, WORKLOAD_NAME, LABELS, SERVICE_ACCOUNT
and INSTANCE_IPS (its address; 127.0.0.1 when absent). Its ports come from
the command line: those callers reach (the sidecar's inbound ports) and
where the application listens behind each. Its metrics port is the proxy's
admin port, so the control plane samples its golden metrics. It is
registered healthy while the proxy is ready (what /ready says), renewed every
ttl/3, registered unhealthy when draining starts (callers stop picking it)
and deregistered once drained. A proxy that dies stops renewing, and its
lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from envoy.config.core.v3.base_pb2 import Node

from pilotfish.client import registration
from pilotfish.objects import Obj
from pilotfish.proxy.telemetry import metadata_labels, metadata_text

log = logging.getLogger("pilotfish.proxy")


@dataclass
class Registrar:
    client: registration.RegistryClient
    body: Obj  # the registration, `healthy` aside

    @classmethod
    def for_node(
        cls,
        node: Node,
        ports: dict[str, int],
        app_ports: dict[str, int],
        admin_port: int,
        client: registration.RegistryClient,
        mtls: bool = False,
    ) -> Registrar:
        """ValueError names what the node metadata or the ports lack."""
        fields = node.metadata.fields
        name = metadata_text(fields, "NAME")
        namespace = metadata_text(fields, "NAMESPACE") or "default"
        if not name:
            raise ValueError("--register needs the instance's name in node.metadata.NAME")
        if not ports:
            raise ValueError("--register needs the instance's ports: --port NAME=PORT")
        unnamed = sorted(app_ports.keys() - ports.keys())
        if unnamed:
            raise ValueError(f"--app-port {unnamed[0]}: no --port is named {unnamed[0]}")
        body = registration.registration(
            name=name,
            namespace=namespace,
            workload=metadata_text(fields, "WORKLOAD_NAME") or name,
            labels=metadata_labels(fields),
            service_account=metadata_text(fields, "SERVICE_ACCOUNT") or "default",
            ports=ports,
            app_ports=app_ports,
            metrics_port=admin_port,
            healthy=False,
            mtls=mtls,
        )
        address = metadata_text(fields, "INSTANCE_IPS").split(",")[0].strip()
        return cls(client, {**body, "address": address or body["address"]})

    async def join(self) -> None:
        """The first registration, unhealthy until the proxy is ready. The
        control plane refusing it (a bad port, a missing token) is an error
        at start; one not answering yet is tried again by `keep`."""
        body = {**self.body, "healthy": False}
        try:
            warning = await asyncio.to_thread(registration.join, self.client, body)
        except registration.Refused as e:
            raise SystemExit(f"error: --register: the control plane refused: {e}") from e
        if warning:
            log.warning("registration of %s: %s", self.body["name"], warning)

    async def keep(self, ready: Callable[[], bool]) -> None:
        """Renew the lease until cancelled, healthy as `ready()` says."""
        while True:
            await self.renew(ready())
            await asyncio.sleep(registration.TTL_S / 3)

    async def renew(self, healthy: bool) -> None:
        body = {**self.body, "healthy": healthy}
        error = await asyncio.to_thread(registration.register, self.client, body)
        if error:
            log.warning("registration of %s: %s", self.body["name"], error)

    async def leave(self) -> None:
        await asyncio.to_thread(
            registration.deregister, self.client, self.body["namespace"], self.body["name"]
        )
