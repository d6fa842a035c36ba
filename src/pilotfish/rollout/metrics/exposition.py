"""Prometheus' text exposition format, read: just enough for the sidecars'
own pages (sample lines with labels; comments, types and timestamps skipped).

The one reader of the format in src/: the proxy only writes it."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPE = re.compile(r'\\[\\"n]')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def samples(text: str, names: Collection[str] | None = None) -> Iterator[Sample]:
    """Each sample line (of `names` only, when given); a malformed line and a
    NaN are skipped, as a sample that says nothing."""
    prefixes = tuple(names) if names is not None else ("",)
    for line in text.split("\n"):  # not splitlines(): a label value may hold \x1e or \u2028
        if not line.startswith(prefixes) or line.startswith("#") or not line:
            continue  # cheap tests first: a sidecar's page is mostly other series
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
    return {
        match.group(1): _ESCAPE.sub(lambda m: _UNESCAPE[m.group(0)], match.group(2))
        for match in _LABEL.finditer(text)
    }
