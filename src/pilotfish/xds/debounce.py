"""Istio's push debouncing: a burst of changes becomes one push, which
starts once changes stop for PILOT_DEBOUNCE_AFTER (100 ms) or PILOT_DEBOUNCE_MAX
(10 s) after the first, whichever comes first; both read from the
environment as istiod reads them (Go durations: "100ms", "10s")."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from pilotfish.api.gotypes import parse_duration_ns

DEBOUNCE_AFTER_S, DEBOUNCE_MAX_S = 0.1, 10.0
AFTER_ENV, MAX_ENV = "PILOT_DEBOUNCE_AFTER", "PILOT_DEBOUNCE_MAX"


def debounce_from_env(environ: Mapping[str, str]) -> tuple[float, float]:
    """(quiet, longest) seconds from the environment, Istio's defaults where
    unset; ValueError naming the variable for a value that is not a duration
    istiod would take."""
    after = _seconds(environ, AFTER_ENV, DEBOUNCE_AFTER_S)
    longest = _seconds(environ, MAX_ENV, DEBOUNCE_MAX_S)
    if longest < after:
        raise ValueError(
            f"{MAX_ENV} ({longest:g}s) must not be shorter than {AFTER_ENV} ({after:g}s)"
        )
    return after, longest


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name)
    if text is None:
        return default
    try:
        ns = parse_duration_ns(text)
    except ValueError as e:
        raise ValueError(f"{name}={text!r}: {e}") from None
    if ns < 0:
        raise ValueError(f"{name}={text!r}: must not be negative")
    return ns / 1e9


class Debounce:
    """Turns a burst of change events into one push: `wait_for_quiet` returns
    True once events stop for `quiet` seconds or `longest` after the first."""

    def __init__(self, quiet: float, longest: float) -> None:
        self.quiet, self.longest = quiet, longest
        self._cond = threading.Condition()
        self._first: float | None = None
        self._last = 0.0

    def __repr__(self) -> str:
        pending = self._first is not None
        return f"Debounce(quiet={self.quiet}, longest={self.longest}, pending={pending})"

    def event(self) -> None:
        with self._cond:
            self._last = time.monotonic()
            if self._first is None:
                self._first = self._last
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_for_quiet(self, stopping: threading.Event) -> bool:
        """Block until a burst settles (True), or `stopping` is set (False)."""
        with self._cond:
            while not stopping.is_set():
                if self._first is None:
                    self._cond.wait()
                    continue
                due = min(self._last + self.quiet, self._first + self.longest)
                left = due - time.monotonic()
                if left <= 0:
                    self._first = None
                    return True
                self._cond.wait(left)
            return False
