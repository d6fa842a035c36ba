"""A Canary's status as Flagger writes it, typed: the controller decides on
a `CanaryStatus`, and only the store and the API see the dict.

Reading is lenient, as the status is whatever was stored last (by an older
pilotfish, by hand with `edit --subresource status`): a field of the wrong
type reads as absent. Fields this controller does not own stay in `other`
and are written back as they were found.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pilotfish.objects import Obj

# Flagger's name of each field of CanaryStatus, in the order Flagger's
# CanaryStatus declares them (pilotfish's own `mirrored` and `lastAnalysis`
# last). Conditions are read and written on their own.
_NAMES = {
    "phase": "phase",
    "failed_checks": "failedChecks",
    "canary_weight": "canaryWeight",
    "iterations": "iterations",
    "session_affinity_cookie": "sessionAffinityCookie",
    "previous_session_affinity_cookie": "previousSessionAffinityCookie",
    "primary_session_affinity_cookie": "primarySessionAffinityCookie",
    "tracked_configs": "trackedConfigs",
    "last_applied_spec": "lastAppliedSpec",
    "last_promoted_spec": "lastPromotedSpec",
    "last_transition_time": "lastTransitionTime",
    "mirrored": "mirrored",
    "last_analysis": "lastAnalysis",
}
_INTS = ("failed_checks", "canary_weight", "iterations")


@dataclass(frozen=True)
class Condition:
    """Flagger's one condition, `Promoted`."""

    type: str
    status: str
    reason: str
    message: str
    last_update_time: str
    last_transition_time: str

    @classmethod
    def of(cls, obj: Any) -> Condition | None:
        if not isinstance(obj, Mapping):
            return None
        keys = ("type", "status", "reason", "message", "lastUpdateTime", "lastTransitionTime")
        return cls(*(str(obj.get(k) or "") for k in keys))

    def to_obj(self) -> Obj:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastUpdateTime": self.last_update_time,
            "lastTransitionTime": self.last_transition_time,
        }


@dataclass(frozen=True)
class CanaryStatus:
    phase: str = ""
    failed_checks: int = 0
    canary_weight: int = 0
    iterations: int = 0
    session_affinity_cookie: str | None = None
    previous_session_affinity_cookie: str | None = None
    primary_session_affinity_cookie: str | None = None
    tracked_configs: Mapping[str, str] | None = None
    last_applied_spec: str | None = None
    last_promoted_spec: str | None = None
    last_transition_time: str | None = None
    # A weighted release with `mirror` first mirrors at weight 0 for one step,
    # as Flagger does. Flagger reads that state back from the VirtualService;
    # here routes come from the status alone, so the status says it.
    mirrored: bool = False
    last_analysis: Obj | None = None  # the last metrics measured, for `describe`
    conditions: tuple[Condition, ...] = ()
    other: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, status: Any) -> CanaryStatus:
        """The status of a stored Canary (its `status`, or None)."""
        if not isinstance(status, Mapping):
            return cls()
        fields = {name: _read(name, status.get(key)) for name, key in _NAMES.items()}
        conditions = (Condition.of(c) for c in _list(status.get("conditions")))
        known = {*_NAMES.values(), "conditions"}
        return cls(
            **{k: v for k, v in fields.items() if v is not None},
            conditions=tuple(c for c in conditions if c is not None),
            other={k: v for k, v in status.items() if k not in known},
        )

    def to_obj(self) -> Obj:
        """The dict the store keeps: absent and empty optional fields left out."""
        out: Obj = dict(self.other)
        for name, key in _NAMES.items():
            value = getattr(self, name)
            if name in _INTS:
                out[key] = value
            elif value:
                out[key] = dict(value) if name == "tracked_configs" else value
        if self.conditions:
            out["conditions"] = [c.to_obj() for c in self.conditions]
        return out

    def but(self, **fields: Any) -> CanaryStatus:
        return replace(self, **fields)


def _read(name: str, value: Any) -> Any:
    if name in _INTS:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if name == "mirrored":
        return value is True or None
    if name in ("tracked_configs", "last_analysis"):
        return dict(value) if isinstance(value, Mapping) else None
    return value if isinstance(value, str) and value else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
