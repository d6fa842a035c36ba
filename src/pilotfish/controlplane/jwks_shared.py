"""JWKS across control-plane replicas: only the leader fetches remote keys
(one fetch per refresh for the whole mesh, one writer of the policies'
status); it keeps the last good keys in the store, in the ConfigMap
istio-system/pilotfish-jwks, and the followers serve those to their proxies.
A follower that becomes leader starts from them, so it does not fetch again
before the refresh interval is up.

    data:
      jwks-<sha256 of the URI, 32 hex>: {"uri": ..., "jwks": ..., "keys": N, "fetchedAt": T}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pilotfish.api.errors import NotFound
from pilotfish.controlplane.jwks import JwksEntry, JwksState
from pilotfish.objects import Obj
from pilotfish.store.resources import ResourceStore
from pilotfish.store.types import Key

NAMESPACE, NAME = "istio-system", "pilotfish-jwks"
MANAGER = "pilotfish-jwks"


def cache_key(uri: str) -> str:
    return "jwks-" + hashlib.sha256(uri.encode()).hexdigest()[:32]


def to_cache(state: JwksState) -> dict[str, str]:
    """The last good keys of each URI (failures are the leader's own business:
    they are in the policies' status)."""
    out = {}
    for uri, entry in sorted(state.entries.items()):
        if entry.keys is None:
            continue
        value = {"uri": uri, "jwks": entry.keys, "keys": entry.key_count}
        out[cache_key(uri)] = json.dumps({**value, "fetchedAt": entry.fetched_at})
    return out


def from_cache(data: Mapping[str, str]) -> JwksState:
    """The state a follower serves; an unreadable entry is skipped (the leader
    rewrites the whole map on its next change)."""
    entries = {}
    for value in data.values():
        try:
            item = json.loads(value)
            fetched = float(item["fetchedAt"])
            entry = JwksEntry(str(item["jwks"]), int(item["keys"]), fetched, fetched)
            entries[str(item["uri"])] = entry
        except (ValueError, KeyError, TypeError):
            continue
    return JwksState(MappingProxyType(entries))


@dataclass(frozen=True)
class SharedJwks:
    """Where the cache lives and who leads; `leading` is the election's."""

    store: ResourceStore
    leading: Callable[[], bool]

    def load(self) -> JwksState:
        try:
            found = self.store.get(Key("", "ConfigMap", NAMESPACE, NAME))
        except NotFound:
            return JwksState()
        return from_cache(found.get("data") or {})

    def save(self, state: JwksState) -> None:
        config: Obj = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "data": to_cache(state),
        }
        self.store.apply(config, manager=MANAGER, force=True)
