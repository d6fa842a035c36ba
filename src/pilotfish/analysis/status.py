"""`status.validationMessages`, as istiod writes it when its analysis is on:
which objects' status must change for the messages found. Pure; the writer
is controlplane/analysis_status.py.

Analysis never reads status, so writing it cannot change what the next pass
finds: once written, a second pass asks for nothing (no write loop)."""

from __future__ import annotations

from collections.abc import Iterator

from pilotfish.analysis.config import NETWORKING, SECURITY, TELEMETRY, group_kind, mapping
from pilotfish.analysis.messages import Message, Resource
from pilotfish.objects import Obj

# Istio's kinds carry an IstioStatus; others (Canary, Service) have their own status.
ISTIO_GROUPS = frozenset({NETWORKING, SECURITY, TELEMETRY, "extensions.istio.io"})
FIELD = "validationMessages"


def status_changes(objects: list[Obj], messages: list[Message]) -> Iterator[tuple[Obj, Obj]]:
    """(object, its new status) for each Istio object whose messages changed."""
    wanted: dict[Resource, list[Obj]] = {}
    for message in messages:
        wanted.setdefault(message.resource, []).append(message.to_status())
    for obj in objects:
        if group_kind(obj)[0] not in ISTIO_GROUPS:
            continue
        status = mapping(obj.get("status"))
        desired = wanted.get(Resource.of(obj), [])
        if (status.get(FIELD) or []) == desired:
            continue
        new = {k: v for k, v in status.items() if k != FIELD}
        if desired:
            new[FIELD] = desired
        yield obj, new
