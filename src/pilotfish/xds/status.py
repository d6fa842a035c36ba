"""What the ADS server knows about its proxies, as JSON for the REST API:
sync state per type (`pilotfish proxy-status`, like istiod's /debug/syncz)
and the resources a proxy was last sent (`pilotfish proxy-config`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict

from pilotfish.api.gotypes import rfc3339
from pilotfish.objects import Obj
from pilotfish.xds import types
from pilotfish.xds.connection import Connection, Nack, WatchedType


def proxy_status(conn: Connection) -> Obj:
    proxy = conn.proxy
    return {
        "proxy": proxy.node_id if proxy else "",
        "connectionId": conn.conn_id,
        "type": str(proxy.type) if proxy else "",
        "namespace": proxy.namespace if proxy else "",
        "workload": proxy.workload if proxy else "",
        "peer": conn.peer,
        "connectedAt": rfc3339(conn.connected_at),
        "types": {
            types.short_name(t): _type_status(conn.watched[t])
            for t in types.PUSH_ORDER
            if t in conn.watched
        },
    }


def _type_status(watched: WatchedType) -> Obj:
    out: Obj = {
        "state": str(watched.state),
        "sentVersion": watched.sent.version if watched.sent else "",
        "ackedVersion": watched.acked_version,
        "resources": len(watched.sent.resources) if watched.sent else 0,
        "names": sorted(watched.names),
    }
    if watched.nack is not None:
        out["nack"] = _nack(watched.nack)
    return out


def _nack(nack: Nack) -> Obj:
    return {
        "version": nack.version,
        "nonce": nack.nonce,
        "message": nack.message,
        "time": rfc3339(nack.at),
    }


def find_connection(connections: Sequence[Connection], proxy_id: str) -> Connection | None:
    """By node id, else by the `NAME.NAMESPACE` part of an Istio-style id
    (what istioctl takes), else by a prefix of the id that only one proxy has."""
    live = [c for c in connections if c.proxy is not None]
    for conn in live:
        assert conn.proxy is not None
        if conn.proxy.node_id == proxy_id:
            return conn
    by_pod = [c for c in live if _pod_name(c) == proxy_id]
    if len(by_pod) == 1:
        return by_pod[0]
    prefixed = [c for c in live if c.proxy and c.proxy.node_id.startswith(proxy_id)]
    return prefixed[0] if len(prefixed) == 1 else None


def _pod_name(conn: Connection) -> str:
    parts = conn.proxy.node_id.split("~") if conn.proxy else []
    return parts[2] if len(parts) == 4 else ""


def config_dump(conn: Connection, type_url: str) -> Obj:
    """The resources of one type last sent to the proxy, decoded to JSON."""
    watched = conn.watched.get(type_url)
    sent = watched.sent if watched else None
    return {
        "proxy": conn.proxy.node_id if conn.proxy else "",
        "typeUrl": type_url,
        "state": str(watched.state) if watched else "NOT SENT",
        "version": sent.version if sent else "",
        "resources": [_decoded(r) for r in sent.resources] if sent else [],
    }


def _decoded(resource: Any) -> Obj:
    body: Obj = MessageToDict(resource, preserving_proto_field_name=False)
    return body
