"""Prometheus' text exposition format, read: just enough for the sidecars'
own pages (sample lines with labels; comments and timestamps skipped)."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def samples(text: str, names: Collection[str] | None = None) -> Iterator[Sample]:
    """Each sample line (of `names` only, when given); a malformed line is skipped."""
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        if names is not None and name not in names:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if not math.isnan(number):
            yield Sample(name, _labels(labels or ""), number)


def _labels(text: str) -> dict[str, str]:
    found = {}
    for match in _LABEL.finditer(text):
        raw = match.group(2)
        found[match.group(1)] = re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], raw)
    return found
