"""FractionalPercent, the one way pilotfish turns an Envoy percentage into a coin.

Envoy's percentages are fractions over 100, 10 000 or 1 000 000; a request is
in when a uniform draw below the denominator falls below the numerator. Drawing
an integer from the denominator's range (not comparing floats) keeps the
distribution exact, so 1/1 000 000 is exactly one in a million.
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random
from typing import Any

from pilotfish.proxy.filters.errors import FilterConfigError
from pilotfish.proxy.routing.policies import DENOMINATORS


@dataclass(frozen=True, slots=True)
class Percent:
    """numerator / denominator; a numerator above the denominator means always, as in Envoy."""

    numerator: int
    denominator: int = 100

    def __repr__(self) -> str:
        return f"Percent({self.numerator}/{self.denominator})"

    @property
    def probability(self) -> float:
        return min(self.numerator, self.denominator) / self.denominator

    def sample(self, rng: Random) -> bool:
        # Certain outcomes draw nothing, so a 0% or 100% filter does not
        # perturb the draws of the filters that follow it.
        if self.numerator <= 0:
            return False
        if self.numerator >= self.denominator:
            return True
        return rng.randrange(self.denominator) < self.numerator

    def capped(self, numerator: int) -> Percent:
        """The same denominator with at most this numerator (header-controlled faults)."""
        return Percent(min(numerator, self.numerator), self.denominator)


ALWAYS = Percent(100, 100)
NEVER = Percent(0, 100)


def percent_from_proto(fraction: Any, path: str) -> Percent:
    """envoy.type.v3.FractionalPercent."""
    if not 0 <= fraction.denominator < len(DENOMINATORS):
        raise FilterConfigError(
            f"{path}.denominator", f"unknown denominator {fraction.denominator}"
        )
    return Percent(int(fraction.numerator), DENOMINATORS[fraction.denominator])


def runtime_percent(msg: Any, field: str, default: Percent, path: str) -> Percent:
    """A RuntimeFractionalPercent field's default_value, or `default` when unset.
    pilotfish has no runtime layer, so runtime_key is a label, as in an Envoy
    with an empty runtime."""
    if not msg.HasField(field):
        return default
    return percent_from_proto(getattr(msg, field).default_value, f"{path}.{field}.default_value")
