"""Serialized delta entries are shared between streams, and what is kept of
them is bounded in bytes (a route table can weigh as much as a thousand
clusters), least recently used first out."""

from __future__ import annotations

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse
from google.protobuf.any_pb2 import Any as AnyProto

from pilotfish.xds.delta import _Entries

BODY = AnyProto(type_url="type.googleapis.com/x", value=b"x" * 300)


def test_an_entry_is_made_once_and_parses_as_a_response() -> None:
    entries = _Entries()
    first = entries.get("T", "a", "v1", BODY)
    assert entries.get("T", "a", "v1", BODY) is first
    (resource,) = DeltaDiscoveryResponse.FromString(first).resources
    assert (resource.name, resource.version, resource.resource) == ("a", "v1", BODY)


def test_what_is_kept_stays_within_its_bytes() -> None:
    size = len(_Entries().get("T", "n0", "v", BODY))
    entries = _Entries(budget=3 * size + 1)  # room for three, not four
    for i in range(10):
        entries.get("T", f"n{i}", "v", BODY)
    entries.get("T", "n7", "v", BODY)  # used again: kept over n8 and n9
    entries.get("T", "new", "v", BODY)
    kept = [name for _, name, _ in entries._cache]
    assert entries._held <= 3 * size + 1
    assert kept == ["n9", "n7", "new"]
