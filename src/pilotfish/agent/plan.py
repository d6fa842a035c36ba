"""What to start and stop so a Workload's instances converge on its spec:
the Deployment controller's arithmetic, as a pure function.

- Scaling: start the missing instances, stop the surplus (unready first).
- RollingUpdate: instances of an older template are replaced while the
  total stays within replicas + maxSurge and the ready ones within
  replicas - maxUnavailable (Kubernetes' rounding: surge up, unavailable
  down; both zero means a surge of one).
- Recreate: every old instance goes first; new ones start once none is left.

Instances being stopped are not counted: they have left the endpoint set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class View:
    """One running instance, as the plan sees it."""

    name: str
    template: str
    ready: bool
    started: float = 0.0


@dataclass(frozen=True)
class Strategy:
    recreate: bool = False
    max_surge: int | str = "25%"
    max_unavailable: int | str = "25%"

    @classmethod
    def from_spec(cls, spec: dict[str, object]) -> Strategy:
        strategy = spec.get("strategy") or {}
        assert isinstance(strategy, dict)
        rolling = strategy.get("rollingUpdate") or {}
        return cls(
            recreate=strategy.get("type") == "Recreate",
            max_surge=rolling.get("maxSurge", "25%"),
            max_unavailable=rolling.get("maxUnavailable", "25%"),
        )


@dataclass(frozen=True)
class Plan:
    start: int = 0
    stop: list[str] = field(default_factory=list)


def scaled(value: int | str, replicas: int, *, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    share = int(value.rstrip("%")) * replicas / 100
    return math.ceil(share) if round_up else math.floor(share)


def plan(
    replicas: int, template: str, instances: list[View], strategy: Strategy, stopping: int = 0
) -> Plan:
    old = [i for i in instances if i.template != template]
    new = [i for i in instances if i.template == template]
    surplus = _surplus(new, replicas)
    if not old:
        # Recreate: the new template starts only once the old one is gone.
        waiting = strategy.recreate and stopping > 0
        return Plan(start=0 if waiting else max(0, replicas - len(new)), stop=surplus)
    if strategy.recreate:
        return Plan(start=0, stop=[i.name for i in old] + surplus)
    return _rolling(replicas, old, new, strategy, surplus)


def _rolling(
    replicas: int, old: list[View], new: list[View], strategy: Strategy, surplus: list[str]
) -> Plan:
    surge = scaled(strategy.max_surge, replicas, round_up=True)
    unavailable = scaled(strategy.max_unavailable, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        surge = 1
    start = max(0, min(replicas + surge - len(old) - len(new), replicas - len(new)))
    ready = sum(i.ready for i in old) + sum(i.ready for i in new[:replicas])
    may_stop = ready - (replicas - unavailable)
    stop = [i.name for i in old if not i.ready]
    for instance in sorted((i for i in old if i.ready), key=lambda i: i.started):
        if may_stop <= 0:
            break
        stop.append(instance.name)
        may_stop -= 1
    return Plan(start=start, stop=stop + surplus)


def _surplus(new: list[View], replicas: int) -> list[str]:
    """Beyond `replicas`: the unready first, then the youngest, as a
    ReplicaSet scales down."""
    ranked = sorted(new, key=lambda i: (i.ready, -i.started))
    return [i.name for i in ranked[: max(0, len(new) - replicas)]]
