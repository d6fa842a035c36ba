"""The Config page's rows: every mesh object with what is said about it, as
Kiali's Istio Config list shows it: its analysis messages (the whole stored
mesh analyzed once, as `pilotfish analyze` does), the validation messages in
its status, and its conditions that are not met."""

from __future__ import annotations

from collections import defaultdict

from pilotfish.analysis import Message, analyze
from pilotfish.analysis.messages import Resource
from pilotfish.api.kinds import registry
from pilotfish.objects import Obj
from pilotfish.store.resources import ResourceStore

GROUPS = (
    "networking.istio.io",
    "security.istio.io",
    "telemetry.istio.io",
    "flagger.app",
    "pilotfish.dev",
)


def messages(obj: Obj, analysis: list[Message]) -> list[str]:
    status = obj.get("status") or {}
    said = [f"{m.type.level} [{m.type.code}]: {m.text}" for m in analysis]
    for m in status.get("validationMessages") or []:
        level = (m.get("type") or {}).get("code") or m.get("level") or "Info"
        said.append(f"{level}: {m.get('description') or m.get('message') or ''}")
    for c in status.get("conditions") or []:
        if c.get("status") == "False":
            said.append(f"{c.get('type')}: {c.get('message') or c.get('reason') or ''}")
    return said


def config_rows(store: ResourceStore) -> list[Obj]:
    objects = [
        obj
        for kind in registry()
        if kind.group in GROUPS or kind.group == ""
        for obj in store.list(kind.group, kind.kind)[0]
    ]
    by_resource: dict[Resource, list[Message]] = defaultdict(list)
    for message in analyze(objects, stored=True):
        by_resource[message.resource].append(message)
    rows = []
    for obj in objects:
        if str(obj.get("apiVersion", "")).rpartition("/")[0] not in GROUPS:
            continue
        meta = obj.get("metadata") or {}
        rows.append(
            {
                "kind": obj.get("kind"),
                "apiVersion": obj.get("apiVersion"),
                "namespace": meta.get("namespace") or "",
                "name": meta.get("name") or "",
                "messages": messages(obj, by_resource[Resource.of(obj)]),
            }
        )
    return rows
