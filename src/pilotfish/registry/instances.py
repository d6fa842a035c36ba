"""Registered workload instances and their leases.

A workload instance (started by the local runner, or a sidecar started with
`pilotfish proxy --register`) registers itself with a time to live and
registers again to renew it, as a heartbeat. An instance whose lease runs out
leaves the endpoint set on the next sweep: a process that died cannot say so,
so silence is what removes it. An instance reporting `healthy: false`
(readiness failing) stays registered but serves no traffic.

`InstanceTable` is the pure core (time is passed in); `InstanceRegistry` adds
a lock, a clock, a sweeping thread and change notification.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pilotfish.api.names import (
    dns1123_label_errors,
    dns1123_subdomain_errors,
    is_dns1123_subdomain,
    label_value_errors,
    qualified_name_errors,
)
from pilotfish.model import Instance
from pilotfish.model.locality import check_locality
from pilotfish.periodic import Periodic

DEFAULT_TTL_S = 3.0
MAX_TTL_S = 300.0
SWEEP_INTERVAL_S = 0.25
InstanceKey = tuple[str, str]  # (namespace, name)


class InvalidRegistration(ValueError):
    """A registration body a client must fix; the message names the field."""


@dataclass(frozen=True)
class Lease:
    instance: Instance
    ttl: float
    expires: float  # on the table's clock


class InstanceTable:
    """Instances by (namespace, name), each with a lease; no clock, no locks."""

    def __init__(self) -> None:
        self._leases: dict[InstanceKey, Lease] = {}

    def __repr__(self) -> str:
        return f"<InstanceTable {len(self._leases)} instances>"

    def register(self, instance: Instance, ttl: float, now: float) -> bool:
        """Add or renew; True when what the mesh sees changed (not a bare renewal:
        renewing a lease that had run out brings the instance back)."""
        key = (instance.namespace, instance.name)
        previous = self._leases.get(key)
        self._leases[key] = Lease(instance, ttl, now + ttl)
        return previous is None or previous.instance != instance or previous.expires <= now

    def remove(self, namespace: str, name: str) -> bool:
        return self._leases.pop((namespace, name), None) is not None

    def expire(self, now: float) -> list[Instance]:
        """Drop and return the instances whose lease ran out."""
        gone = [k for k, lease in self._leases.items() if lease.expires <= now]
        return [self._leases.pop(k).instance for k in gone]

    def leases(self, now: float | None = None) -> list[Lease]:
        """Every lease; with `now`, those that have not run out by then."""
        found = (self._leases[k] for k in sorted(self._leases))
        return [lease for lease in found if now is None or lease.expires > now]

    def instances(self, now: float | None = None) -> tuple[Instance, ...]:
        return tuple(lease.instance for lease in self.leases(now))


class InstanceRegistry:
    """The table behind a lock, swept by a thread; `on_change` is called (from
    any thread, without the lock held) whenever the set of instances or their
    health changes."""

    def __init__(
        self,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table = InstanceTable()
        self._lock = threading.Lock()
        self._clock = clock
        self._listeners: list[Callable[[], None]] = [on_change] if on_change else []
        self._sweeper = Periodic("registry-sweep", SWEEP_INTERVAL_S, self.sweep)

    def __repr__(self) -> str:
        return f"InstanceRegistry({self._table!r})"

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def register(self, instance: Instance, ttl: float = DEFAULT_TTL_S) -> Lease:
        """Add or renew; returns the lease (for the answer to the client)."""
        now = self._clock()
        with self._lock:
            changed = self._table.register(instance, ttl, now)
        if changed:
            self._notify()
        return Lease(instance, ttl, now + ttl)

    def now(self) -> float:
        return self._clock()

    def remove(self, namespace: str, name: str) -> bool:
        with self._lock:
            removed = self._table.remove(namespace, name)
        if removed:
            self._notify()
        return removed

    def sweep(self) -> list[Instance]:
        with self._lock:
            expired = self._table.expire(self._clock())
        if expired:
            self._notify()
        return expired

    def leases(self) -> list[Lease]:
        """The live leases: one that ran out is not served even before a sweep
        removes it (on a replica that does not sweep, until the leader does)."""
        with self._lock:
            return self._table.leases(self._clock())

    def instances(self) -> tuple[Instance, ...]:
        with self._lock:
            return self._table.instances(self._clock())

    def start(self) -> None:
        self._sweeper.start()

    def stop(self) -> None:
        self._sweeper.stop()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()


# -- the wire shape -------------------------------------------------------------------


def instance_from_json(body: Mapping[str, Any]) -> tuple[Instance, float]:
    """A registration body (camelCase, as every other pilotfish object) to an
    Instance and its TTL; InvalidRegistration names the first bad field."""
    name = _text(body, "name", required=True)
    ttl = body.get("ttlSeconds", DEFAULT_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_S:
        raise InvalidRegistration(f"ttlSeconds: must be a number in (0, {MAX_TTL_S:g}]")
    healthy = body.get("healthy", True)
    if not isinstance(healthy, bool):
        raise InvalidRegistration("healthy: must be true or false")
    instance = Instance(
        name=_named(name, "name", dns1123_subdomain_errors),
        namespace=_named(_text(body, "namespace") or "default", "namespace", dns1123_label_errors),
        workload=_named(_text(body, "workload") or name, "workload", dns1123_subdomain_errors),
        address=_address(_text(body, "address", required=True), "address"),
        ports=_ports(body, "ports", required=True),
        labels=_labels(body),
        service_account=_named(
            _text(body, "serviceAccount") or "default", "serviceAccount", dns1123_subdomain_errors
        ),
        healthy=healthy,
        locality=_locality(_text(body, "locality")),
        app_ports=_ports(body, "appPorts"),
        app_address=_address(_text(body, "appAddress") or "127.0.0.1", "appAddress"),
        metrics_port=_port(body, "metricsPort"),
    )
    return instance, float(ttl)


def _locality(text: str) -> str:
    try:
        return check_locality(text)
    except ValueError as e:
        raise InvalidRegistration(f"locality: {e}") from e


def instance_to_json(lease: Lease, now: float) -> dict[str, Any]:
    return {
        **registration_json(lease.instance, lease.ttl),
        "expiresInSeconds": round(max(0.0, lease.expires - now), 3),
    }


def registration_json(i: Instance, ttl: float) -> dict[str, Any]:
    """What a client registers (instance_from_json reads it back)."""
    return {
        "name": i.name,
        "namespace": i.namespace,
        "workload": i.workload,
        "address": i.address,
        "ports": dict(i.ports),
        "labels": dict(i.labels),
        "serviceAccount": i.service_account,
        "healthy": i.healthy,
        "locality": i.locality,
        "appPorts": dict(i.app_ports),
        "appAddress": i.app_address,
        "metricsPort": i.metrics_port,
        "ttlSeconds": ttl,
    }


def _text(body: Mapping[str, Any], field: str, *, required: bool = False) -> str:
    value = body.get(field)
    if value is None or value == "":
        if required:
            raise InvalidRegistration(f"{field}: Required value")
        return ""
    if not isinstance(value, str):
        raise InvalidRegistration(f"{field}: must be a string")
    return value


def _named(value: str, field: str, errors_of: Callable[[str], list[str]]) -> str:
    """Names as Kubernetes has them: they end up in paths (DELETE .../NS/NAME),
    SPIFFE IDs (ns/NS/sa/SA) and metric labels, where '/' or a newline would
    mean something else."""
    for error in errors_of(value):
        raise InvalidRegistration(f"{field}: Invalid value: {json.dumps(value)}: {error}")
    return value


def _address(value: str, field: str) -> str:
    """An IP address or a host name: what a proxy can connect to."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not is_dns1123_subdomain(value.lower()):
            raise InvalidRegistration(
                f"{field}: Invalid value: {json.dumps(value)}: must be an IP address or a host name"
            ) from None
    return value


def _ports(body: Mapping[str, Any], field: str, *, required: bool = False) -> Mapping[str, int]:
    value = body.get(field) or {}
    if not isinstance(value, dict):
        raise InvalidRegistration(f"{field}: must be a map of port name to number")
    if required and not value:
        raise InvalidRegistration(f"{field}: Required value: at least one port")
    for name, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
            raise InvalidRegistration(f"{field}.{name}: must be a port number in 1-65535")
    return MappingProxyType({str(k): int(v) for k, v in value.items()})


def _port(body: Mapping[str, Any], field: str) -> int:
    value = body.get(field)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise InvalidRegistration(f"{field}: must be a port number in 1-65535 (0: none)")
    return value


def _labels(body: Mapping[str, Any]) -> Mapping[str, str]:
    value = body.get("labels") or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidRegistration("labels: must be a map of strings")
    for key, text in value.items():
        for error in qualified_name_errors(key):
            raise InvalidRegistration(f"labels: Invalid value: {json.dumps(key)}: {error}")
        for error in label_value_errors(text):
            raise InvalidRegistration(f"labels.{key}: Invalid value: {json.dumps(text)}: {error}")
    return MappingProxyType({str(k): v for k, v in value.items()})
