"""Writes `status.validationMessages` on Istio objects, as istiod does when
its analysis is on (Istio: PILOT_ENABLE_ANALYSIS; here
PILOTFISH_ENABLE_ANALYSIS=true). A thin shell over analysis.status: each pass
reads the live objects, analyzes them, and writes only the statuses that
differ, so a quiet store sees no writes."""

from __future__ import annotations

import logging
import os

from pilotfish.analysis import analyze
from pilotfish.analysis.status import status_changes
from pilotfish.api.errors import Conflict, NotFound
from pilotfish.controlplane.analyze_api import live_objects
from pilotfish.periodic import Periodic
from pilotfish.store.resources import ResourceStore

log = logging.getLogger("pilotfish")
ENV = "PILOTFISH_ENABLE_ANALYSIS"
MANAGER = "pilotfish-analysis"
PERIOD_S = 2.0


def enabled() -> bool:
    return os.environ.get(ENV, "").lower() in ("1", "true")


class StatusWriter:
    def __init__(self, store: ResourceStore, period_s: float = PERIOD_S) -> None:
        self.store = store
        self._loop = Periodic("analysis-status", period_s, self.sync)

    def __repr__(self) -> str:
        return f"StatusWriter({self.store!r})"

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def sync(self) -> int:
        """One pass; the number of statuses written."""
        objects = live_objects(self.store)
        written = 0
        for obj, status in status_changes(objects, analyze(objects, stored=True)):
            meta = obj["metadata"]
            try:
                self.store.update_status(
                    self.store.key_of(obj),
                    status,
                    resource_version=str(meta.get("resourceVersion") or "") or None,
                    manager=MANAGER,
                )
            except (Conflict, NotFound):
                continue  # changed or gone since it was read: the next pass sees it
            written += 1
        return written
