"""The Config page's rows: every mesh object with what is said about it, as
Kiali's Istio Config list shows it: the analysis warnings a write of it
would get (`api/analysis.py`, as `istioctl analyze`), the validation
messages in its status, and its conditions that are not met."""

from __future__ import annotations

from pilotfish.api.kinds import registry
from pilotfish.controlplane.api import Analyzer, Lookup
from pilotfish.store.resources import ResourceStore
from pilotfish.store.types import Obj

GROUPS = (
    "networking.istio.io",
    "security.istio.io",
    "telemetry.istio.io",
    "flagger.app",
    "pilotfish.dev",
)


def messages(obj: Obj, analyze: Analyzer, lookup: Lookup) -> list[str]:
    status = obj.get("status") or {}
    said = [f"Warning: {w}" for w in analyze(obj, lookup)]
    for m in status.get("validationMessages") or []:
        level = (m.get("type") or {}).get("code") or m.get("level") or "Info"
        said.append(f"{level}: {m.get('description') or m.get('message') or ''}")
    for c in status.get("conditions") or []:
        if c.get("status") == "False":
            said.append(f"{c.get('type')}: {c.get('message') or c.get('reason') or ''}")
    return said


def config_rows(store: ResourceStore, analyze: Analyzer) -> list[Obj]:
    def lookup(group: str, kind: str, namespace: str) -> list[Obj]:
        return store.list(group, kind, namespace)[0]

    rows = []
    for kind in registry():
        if kind.group not in GROUPS:
            continue
        for obj in store.list(kind.group, kind.kind)[0]:
            meta = obj.get("metadata") or {}
            rows.append(
                {
                    "kind": kind.kind,
                    "apiVersion": obj.get("apiVersion"),
                    "namespace": meta.get("namespace") or "",
                    "name": meta.get("name") or "",
                    "messages": messages(obj, analyze, lookup),
                }
            )
    return rows
