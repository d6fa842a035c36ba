"""A function run every few seconds on a daemon thread, until stopped: the
registry's lease sweep, the rollout scheduler, the metrics sampler."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pilotfish.store.types import FenceLost

log = logging.getLogger("pilotfish")


class Periodic:
    def __init__(self, name: str, period_s: float, work: Callable[[], object]) -> None:
        self.name = name
        self.period_s = period_s
        self.work = work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Periodic({self.name!r}, every {self.period_s:g}s)"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.work()
            except FenceLost as lost:  # the lead went mid-pass: the next leader does it
                log.warning("%s stopped: %s", self.name, lost)
            except Exception:  # one bad pass must not end the loop
                log.exception("%s failed", self.name)


def when(leading: Callable[[], bool], work: Callable[[], object]) -> Callable[[], object]:
    """`work`, done only while `leading()`: on etcd, one elected control plane acts."""

    def gated() -> object:
        return work() if leading() else None

    return gated
