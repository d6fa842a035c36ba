"""The RBAC network filter (`envoy.filters.network.rbac`) on a TCP chain.

The same engine as the HTTP filter (filters/rbac.py) decides, over what a
connection has: its addresses, the SNI and the verified peer certificate
(Istio's TCP translation keeps no HTTP field). As Envoy: ALLOW lets through
only what a policy matches, DENY stops what one matches; a denied connection
is closed without a byte, its access log line saying
`rbac_access_denied_matched_policy[NAME]`; counters
`<stat_prefix>rbac.allowed|denied` and the shadow ones.

One difference: the decision is made when the connection is accepted, not on
its first byte (Envoy's ONE_TIME_ON_FIRST_BYTE), so a denied client never
gets an upstream connection, even to a server that speaks first.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2
from google.protobuf.any_pb2 import Any as AnyProto

from pilotfish.proxy.filters.base import PROCEED, Connection, Exchange, LocalReply
from pilotfish.proxy.filters.errors import FilterConfigError
from pilotfish.proxy.filters.rbac import RbacFilter, compile_rbac
from pilotfish.proxy.proto_fields import unsupported
from pilotfish.proxy.routing.request import Request

FIELDS = frozenset({"stat_prefix", "rules", "shadow_rules", "shadow_rules_stat_prefix"})
_NO_REQUEST = Request(method=b"", path=b"", scheme=b"")


class NetworkRbacError(ValueError):
    """A network RBAC config that cannot be enforced; the message names the field."""


@dataclass(frozen=True)
class NetworkRbac:
    stat_prefix: str
    engine: RbacFilter

    def __repr__(self) -> str:
        return f"<NetworkRbac {self.stat_prefix}>"

    def check(self, connection: Connection, counters: Counter[str]) -> str | None:
        """None when the connection may go on, else why not (Envoy's
        connection termination details); adds to `counters` by full stat name."""
        ex = Exchange(request=_NO_REQUEST, connection=connection)
        step = self.engine.decode(ex, random.Random())
        for name, value in ex.counters.items():
            counters[self.stat_prefix + name] += value
        if step is PROCEED:
            return None
        if isinstance(step, LocalReply):
            return step.details
        return "rbac_access_denied_matched_policy[none]"


def compile_network_rbac(config: AnyProto, where: str) -> NetworkRbac:
    proto = rbac_pb2.RBAC()
    config.Unpack(proto)
    bad = unsupported(proto, FIELDS)
    if bad:
        raise NetworkRbacError(f"{where}: field not supported by pilotfish: {', '.join(bad)}")
    if not proto.stat_prefix:
        raise NetworkRbacError(f"{where}.stat_prefix: value length must be at least 1 characters")
    http = http_rbac_pb2.RBAC(shadow_rules_stat_prefix=proto.shadow_rules_stat_prefix)
    if proto.HasField("rules"):
        http.rules.CopyFrom(proto.rules)
    if proto.HasField("shadow_rules"):
        http.shadow_rules.CopyFrom(proto.shadow_rules)
    try:
        engine = compile_rbac("envoy.filters.network.rbac", http, where)
    except FilterConfigError as e:
        raise NetworkRbacError(f"{where}: {e}") from None
    return NetworkRbac(proto.stat_prefix, engine)
