"""Localities (region/zone/subzone) and the labels that carry them, as
Kubernetes and Istio spell them: a node agent, a registered instance and a
caller all read and write them the same way."""

from __future__ import annotations

from pilotfish.model.types import Labels

REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"
LOCALITY_LABELS = (REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL)
ISTIO_LOCALITY_LABEL = "istio-locality"  # region.zone.subzone: a label value has no '/'

Locality = tuple[str, str, str]


def split_locality(text: str) -> Locality:
    region, zone, subzone = [*text.split("/"), "", "", ""][:3]
    return region, zone, subzone


def locality_from_labels(labels: Labels) -> str:
    """A workload's locality from its labels, as Istio reads a pod's:
    `istio-locality` (dots for slashes), else the topology labels; "" if none."""
    if labels.get(ISTIO_LOCALITY_LABEL):
        return "/".join(split_locality(labels[ISTIO_LOCALITY_LABEL].replace(".", "/"))).rstrip("/")
    parts = [labels.get(name, "") for name in LOCALITY_LABELS]
    return "/".join(parts).rstrip("/") if parts[0] else ""


def locality_labels(locality: str) -> dict[str, str]:
    """The topology labels a locality stands for (Istio's AugmentLabels)."""
    return {k: v for k, v in zip(LOCALITY_LABELS, split_locality(locality), strict=True) if v}


def check_locality(text: str) -> str:
    """`region[/zone[/subzone]]`, or "": the text back, else ValueError."""
    parts = text.split("/") if text else []
    if len(parts) > 3 or any(not p.strip() or p != p.strip() for p in parts):
        raise ValueError(f"{text!r}: expected REGION[/ZONE[/SUBZONE]]")
    return text
