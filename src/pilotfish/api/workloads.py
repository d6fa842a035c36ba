"""What a Workload's spec references and what identifies its template: read
by the node agent (which instances to run) and by the rollout controller (a
new revision of a Canary's target), so they live with the API's kinds.

The template hash covers the spec and the data of every referenced ConfigMap
or Secret, as Wave and Reloader do: a change to either is a new revision.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from pilotfish.objects import Obj

# (kind, name) -> data; Secrets are stored base64-encoded, as in Kubernetes.
ConfigData = Mapping[tuple[str, str], Mapping[str, str]]


def referenced(spec: Obj) -> set[tuple[str, str]]:
    """Every (kind, name) of ConfigMap or Secret the spec reads."""
    refs: set[tuple[str, str]] = set()
    for var in spec.get("env") or []:
        source = var.get("valueFrom") or {}
        if "configMapKeyRef" in source:
            refs.add(("ConfigMap", source["configMapKeyRef"]["name"]))
        if "secretKeyRef" in source:
            refs.add(("Secret", source["secretKeyRef"]["name"]))
    for source in spec.get("envFrom") or []:
        if "configMapRef" in source:
            refs.add(("ConfigMap", source["configMapRef"]["name"]))
        if "secretRef" in source:
            refs.add(("Secret", source["secretRef"]["name"]))
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            refs.add(("ConfigMap", volume["configMap"]["name"]))
        if "secret" in volume:
            refs.add(("Secret", volume["secret"]["secretName"]))
    return refs


def template_hash(spec: Obj, configs: ConfigData) -> str:
    """What identifies an instance's template: the spec less replicas (scaling
    is not an update) plus the referenced data."""
    template = {k: v for k, v in spec.items() if k != "replicas"}
    data = {f"{k}/{n}": dict(configs.get((k, n)) or {}) for k, n in sorted(referenced(spec))}
    blob = json.dumps([template, data], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]
