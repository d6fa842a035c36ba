"""Resources of one type for one proxy, and their version.

The translate functions are pure and sorted, so the same snapshot and proxy
give byte-identical resources; the version is a hash of those bytes. A push
that would send the same version again is therefore skipped, which is how
only the proxies and types a change affects get a push.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message

from pilotfish.model import Proxy, Snapshot
from pilotfish.translate import (
    translate_clusters,
    translate_endpoints,
    translate_listeners,
    translate_routes,
)
from pilotfish.xds import types


@dataclass(frozen=True)
class Generated:
    version: str
    resources: tuple[AnyProto, ...]
    names: tuple[str, ...]  # each resource's name, same order


def generate(snapshot: Snapshot, proxy: Proxy, type_url: str, names: frozenset[str]) -> Generated:
    """What `proxy` gets of `type_url` when it asked for `names` (for LDS and
    CDS, none means all)."""
    messages = _translate(snapshot, proxy, type_url, names)
    if names and type_url in types.WILDCARD_TYPES:
        messages = [m for m in messages if _name(m) in names]
    packed = []
    for message in messages:
        wrapped = AnyProto()
        wrapped.Pack(message, deterministic=True)
        packed.append(wrapped)
    digest = hashlib.sha256()
    for wrapped in packed:
        digest.update(wrapped.value)
        digest.update(b"\0")
    return Generated(digest.hexdigest()[:16], tuple(packed), tuple(map(_name, messages)))


def _translate(
    snapshot: Snapshot, proxy: Proxy, type_url: str, names: frozenset[str]
) -> Sequence[Message]:
    if type_url == types.LISTENER:
        return translate_listeners(snapshot, proxy)
    if type_url == types.CLUSTER:
        return translate_clusters(snapshot, proxy)
    if type_url == types.ROUTE:
        return translate_routes(snapshot, proxy, sorted(names)) if names else []
    if type_url == types.ENDPOINT:
        return translate_endpoints(snapshot, proxy, sorted(names)) if names else []
    return []


def _name(message: Message) -> str:
    """Listeners, clusters and routes have `name`; assignments `cluster_name`."""
    for field in ("name", "cluster_name"):
        if field in message.DESCRIPTOR.fields_by_name:
            return str(getattr(message, field))
    return ""
