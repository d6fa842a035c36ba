"""The control plane's long-lived heap, kept out of Python's full collections.

With 2,000 ADS streams the control plane holds about 400,000 tracked
objects that live as long as their streams (and the config, schemas and
modules). CPython's collector walks all of them in each full (generation 2)
collection: every ~4 s during a burst of changes, 0.3-0.7 s each on a loaded
machine, with the GIL held, so a third of the pushes in bench/xds_push.py
waited for one. `gc.freeze()` moves what is alive into a generation the
collector skips: a pass every few seconds collects what is new and freezes
what survived, and a full collection (everything unfrozen first) runs only
every `full_every` passes, at a time of its own rather than in a push, so
that cyclic garbage among frozen objects lives at most that long.
"""

from __future__ import annotations

import gc

from pilotfish.periodic import Periodic

PASS_S = 10.0  # how often survivors are frozen
FULL_EVERY = 30  # passes between full collections (5 minutes)


class HeapKeeper:
    def __init__(self, pass_s: float = PASS_S, full_every: int = FULL_EVERY) -> None:
        self.full_every = full_every
        self.passes = 0
        self._periodic = Periodic("heap", pass_s, self.step)

    def __repr__(self) -> str:
        return f"HeapKeeper({self.passes} passes, {gc.get_freeze_count()} frozen)"

    def step(self) -> None:
        """Collect what is not frozen (all of it on every `full_every`-th
        pass), then freeze what survived."""
        self.passes += 1
        if self.passes % self.full_every == 0:
            gc.unfreeze()
        gc.collect()
        gc.freeze()

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        """Stop, and hand every object back to the collector."""
        self._periodic.stop()
        gc.unfreeze()
