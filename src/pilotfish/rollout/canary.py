"""A Canary's spec read once, with Flagger's defaults, so the phase table and
the router never look into raw dictionaries.

Flagger's CRD allows targetRef kinds Deployment, DaemonSet and Service; here
`kind: Deployment` names a pilotfish Workload, the nearest thing to one, and
`kind: Workload` (pilotfish.dev/v1alpha1) names it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pilotfish.api.gotypes import parse_duration_ns
from pilotfish.objects import Obj

# Flagger's defaults (pkg/apis/flagger/v1beta1/canary.go).
ANALYSIS_INTERVAL_S = 60.0
PROGRESS_DEADLINE_S = 600.0
DEFAULT_THRESHOLD = 1
DEFAULT_MAX_WEIGHT = 100
TARGET_KINDS = ("Deployment", "Workload")


class Strategy(StrEnum):
    CANARY = "canary"  # progressive weights
    AB = "ab-testing"  # iterations, matching users only
    BLUE_GREEN = "blue-green"  # iterations, all or nothing (optionally mirrored)


def seconds(text: str | None, default: float) -> float:
    """A Go duration in seconds; the default when absent."""
    if not text:
        return default
    return parse_duration_ns(text) / 1e9


@dataclass(frozen=True)
class Canary:
    """What the controller reads from a Canary object."""

    name: str
    namespace: str
    uid: str
    target: str
    service: str  # the apex service: spec.service.name or the target's name
    port: int
    target_port: int | str
    interval_s: float
    threshold: int
    step_weights: tuple[int, ...]  # the weights to pass through, in order
    step_weight_promotion: int
    iterations: int
    match: tuple[Obj, ...]
    mirror: bool
    mirror_weight: int
    progress_deadline_s: float
    suspended: bool
    skip_analysis: bool
    spec: Obj

    @property
    def max_weight(self) -> int:
        return self.step_weights[-1] if self.step_weights else DEFAULT_MAX_WEIGHT

    @property
    def strategy(self) -> Strategy:
        if self.iterations > 0 and self.match:
            return Strategy.AB
        if self.iterations > 0:
            return Strategy.BLUE_GREEN
        return Strategy.CANARY

    def next_weight(self, weight: int) -> int:
        """The weight after `weight`, or `weight` when max is reached."""
        return next((w for w in self.step_weights if w > weight), weight)

    @property
    def analysis(self) -> Obj:
        return analysis_of(self.spec)

    @property
    def session_affinity(self) -> Obj | None:
        """`analysis.sessionAffinity`, where it applies: weighted releases, a cookie named."""
        affinity = self.analysis.get("sessionAffinity") or {}
        if not affinity.get("cookieName") or self.strategy is not Strategy.CANARY:
            return None
        return dict(affinity)

    @property
    def target_kind(self) -> str:
        return str(self.spec["targetRef"]["kind"])

    @property
    def display(self) -> str:
        return f"{self.target}.{self.namespace}"

    @property
    def primary(self) -> str:
        return f"{self.target}-primary"


def analysis_of(spec: Obj) -> Obj:
    """`spec.analysis`; {} when absent. (Flagger's older `canaryAnalysis` is
    not in its v1beta1 schema, so the store never holds one.)"""
    return dict(spec.get("analysis") or {})


def read_canary(obj: Obj) -> Canary:
    """The Canary with Flagger's defaults; ValueError names a field it cannot use."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    target = spec.get("targetRef") or {}
    if target.get("kind") not in TARGET_KINDS:
        raise ValueError(
            f"spec.targetRef.kind: {target.get('kind')!r} is not supported: "
            "use Deployment (it names a pilotfish Workload) or Workload"
        )
    analysis = analysis_of(spec)
    service = spec.get("service") or {}
    return Canary(
        name=meta["name"],
        namespace=meta.get("namespace") or "default",
        uid=meta.get("uid", ""),
        target=target["name"],
        service=service.get("name") or target["name"],
        port=int(service.get("port", 0)),
        target_port=service.get("targetPort") or service.get("port", 0),
        interval_s=seconds(analysis.get("interval"), ANALYSIS_INTERVAL_S),
        threshold=int(analysis.get("threshold") or DEFAULT_THRESHOLD),
        step_weights=_step_weights(analysis),
        step_weight_promotion=int(analysis.get("stepWeightPromotion") or 0),
        iterations=int(analysis.get("iterations") or 0),
        match=tuple(analysis.get("match") or ()),
        mirror=bool(analysis.get("mirror")),
        mirror_weight=int(analysis.get("mirrorWeight") or 100),
        progress_deadline_s=float(spec.get("progressDeadlineSeconds") or PROGRESS_DEADLINE_S),
        suspended=bool(spec.get("suspend")),
        skip_analysis=bool(spec.get("skipAnalysis")),
        spec=spec,
    )


def _step_weights(analysis: Obj) -> tuple[int, ...]:
    """Flagger's two ways of saying it: explicit stepWeights, or stepWeight
    repeated up to maxWeight (100 when unset)."""
    if analysis.get("stepWeights"):
        return tuple(int(w) for w in analysis["stepWeights"])
    step = int(analysis.get("stepWeight") or 0)
    top = int(analysis.get("maxWeight") or DEFAULT_MAX_WEIGHT)
    if step <= 0:
        return ()
    weights = list(range(step, top, step))
    return (*weights, top)
