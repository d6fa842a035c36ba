"""A listener update changes only the listeners it changes: the others stay the
same objects (their connections are not drained, their filters keep state),
and a connection of a replaced one closes after the request in hand."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from google.protobuf.any_pb2 import Any as AnyProto

from pilotfish.model import Proxy, build_snapshot
from pilotfish.proxy import xds_types
from pilotfish.proxy.config import ProxyConfig
from pilotfish.proxy.server import Downstream, Runtime
from pilotfish.proxy.stats import StatsRegistry
from pilotfish.proxy.telemetry import Telemetry
from pilotfish.proxy.upstream.pool import Pool
from pilotfish.translate import translate_listeners

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "translate"))
from translate_sim import BOOKINFO_SERVICES, instance

PROXY = Proxy(node_id="sidecar~127.0.0.1~reviews-v1-0.default~x", namespace="default")
RA = {
    "apiVersion": "security.istio.io/v1",
    "kind": "RequestAuthentication",
    "metadata": {"name": "jwt", "namespace": "default"},
    "spec": {"jwtRules": [{"issuer": "https://a", "jwksUri": "http://keys/"}]},
}


def listeners(*objects: dict[str, object]) -> list[AnyProto]:
    snap = build_snapshot([*BOOKINFO_SERVICES, *objects], [instance("reviews", "v1", 19083)])
    out = []
    for listener in translate_listeners(snap, PROXY):
        packed = AnyProto()
        packed.Pack(listener)
        out.append(packed)
    return out


def test_an_unchanged_listener_is_kept_and_a_changed_one_replaced() -> None:
    config = ProxyConfig()
    config.apply(xds_types.LISTENER, listeners())
    before = dict(config.snapshot.listeners)
    config.apply(xds_types.LISTENER, listeners())
    assert all(config.snapshot.listeners[n] is before[n] for n in before)
    config.apply(xds_types.LISTENER, listeners(RA))
    after = config.snapshot.listeners
    changed = {n for n in before if after[n] is not before[n]}
    assert changed == {"inbound_127.0.0.1_19083"}  # the outbound listener is untouched


def test_a_connection_sees_its_listener_replaced_whatever_came_between() -> None:
    """A connection remembers the listeners map it last found its listener in
    (Downstream.stale): a re-push of the same listeners (a new map) and a CDS
    update (the same map) leave it current; the update that replaces its
    listener must still show, on every later request."""

    async def scenario() -> list[bool]:
        config = ProxyConfig()
        config.apply(xds_types.LISTENER, listeners())
        runtime = Runtime(config, Pool(), Telemetry(), StatsRegistry())
        down = Downstream(runtime, config.snapshot.listeners["inbound_127.0.0.1_19083"])
        seen = [down.stale(), down.stale()]
        config.apply(xds_types.LISTENER, listeners())
        seen.append(down.stale())
        config.apply(xds_types.CLUSTER, [])
        seen.append(down.stale())
        config.apply(xds_types.LISTENER, listeners(RA))
        seen += [down.stale(), down.stale()]
        return seen

    assert asyncio.run(scenario()) == [False, False, False, False, True, True]
