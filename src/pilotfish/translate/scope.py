"""What of a proxy each translation reads, as a hashable key.

Two proxies with equal keys for a kind get byte-identical resources of that
kind from the same snapshot, so the ADS server translates once per key and
per snapshot rather than once per proxy: a change pushed to a hundred
sidecars of one namespace costs one translation of their routes, not a
hundred.

The keys must list every field of the Proxy that the kind's translate
functions read, directly or through Snapshot lookups:

- routes, endpoints, outbound clusters: the proxy type, namespace (exportTo,
  Sidecar, domains, sourceNamespace), and of its labels only which of the
  config's selectors pick them (Sidecar selection, sourceLabels, gateways):
  sidecars of different workloads still share their routes;
- endpoints: those, and the caller's locality and the values of the labels
  that `failoverPriority` settings name (locality.py);
- clusters: those, and the instances the sidecar fronts (inbound clusters);
- listeners: those, and the metadata that places listeners (OUTBOUND_ADDRESS,
  OUTBOUND_PORT, BIND_ADDRESS, UPSTREAMS).

A translate function that starts reading another field must add it here;
tests/translate/test_scope.py checks keys against translation on proxies
that differ in every field.
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import StrEnum

from pilotfish.model import Proxy, Snapshot
from pilotfish.model.types import UPSTREAMS_METADATA
from pilotfish.translate.locality import caller

LISTENER_METADATA = ("OUTBOUND_ADDRESS", "OUTBOUND_PORT", "BIND_ADDRESS", UPSTREAMS_METADATA)


class Kind(StrEnum):
    LISTENERS = "listeners"
    ROUTES = "routes"
    CLUSTERS = "clusters"
    OUTBOUND_CLUSTERS = "outbound clusters"
    ENDPOINTS = "endpoints"


def scope_key(snapshot: Snapshot, proxy: Proxy, kind: Kind) -> Hashable:
    """The key under which `kind` translated for `proxy` may be shared."""
    common = (proxy.type, proxy.namespace, snapshot.label_scope(proxy.labels))
    if kind in (Kind.ROUTES, Kind.OUTBOUND_CLUSTERS):
        return common
    if kind is Kind.ENDPOINTS:
        who = caller(snapshot, proxy)
        return (*common, who.locality, tuple(who.labels.get(n) for n in snapshot.failover_labels))
    own = tuple((i.namespace, i.name) for i in snapshot.own_instances(proxy))
    if kind is Kind.CLUSTERS:
        return (*common, own)
    placed = tuple(proxy.metadata.get(k) for k in LISTENER_METADATA)
    return (*common, own, placed)
