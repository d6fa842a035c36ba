"""The rollout controller as the control plane runs it: the scheduler with
the mesh's own metrics (sampled from the sidecars), real webhooks and alerts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from pilotfish.api.errors import NotFound
from pilotfish.model.types import Instance
from pilotfish.objects import Obj
from pilotfish.periodic import when
from pilotfish.rollout import alerts, webhooks
from pilotfish.rollout.canary import Canary
from pilotfish.rollout.metrics import MeshMetrics, measure
from pilotfish.rollout.phases import Alert
from pilotfish.rollout.scheduler import RolloutController
from pilotfish.rollout.types import MetricResult, WebhookResult
from pilotfish.store.resources import ResourceStore
from pilotfish.store.types import Key

GROUPS = {"MetricTemplate": "flagger.app", "AlertProvider": "flagger.app", "Secret": ""}
log = logging.getLogger("pilotfish.rollout")


class RolloutService:
    def __init__(
        self,
        store: ResourceStore,
        instances: Callable[[], Iterable[Instance]],
        leading: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self._leading = leading  # None: the only control plane, always acting
        self.controller = RolloutController(
            store, self.measure, self.call_hooks, threads=True, alert=self.alert
        )
        self.metrics = MeshMetrics(lambda: self._analysed(instances()))

    def __repr__(self) -> str:
        return f"RolloutService({self.controller!r}, {self.metrics!r})"

    def start(self) -> None:
        if self._leading is not None:
            # Steps and samples happen once, on the leader: a pass starts only while it leads.
            for loop in (self.metrics.loop, self.controller.loop):
                loop.work = when(self._leading, loop.work)
        self.metrics.loop.start()
        self.controller.loop.start()

    def stop(self) -> None:
        self.controller.loop.stop()
        self.metrics.loop.stop()

    def measure(self, canary: Obj, metric: Obj) -> MetricResult:
        return measure(canary, metric, mesh=self.metrics, lookup=self._lookup)

    def call_hooks(
        self, canary: Obj, hook_type: str, phase: str, extra: Mapping[str, str]
    ) -> tuple[WebhookResult, ...]:
        checksum = webhooks.checksum(canary)
        return tuple(
            webhooks.call(
                hook, webhooks.payload(canary, hook, phase=phase, checksum=checksum, extra=extra)
            )
            for hook in webhooks.hooks_of(canary, hook_type)
        )

    def alert(self, canary: Canary, alert: Alert) -> None:
        for error in alerts.send(canary, alert, self._lookup):
            log.warning("rollout: %s/%s: %s", canary.namespace, canary.name, error)

    def _analysed(self, instances: Iterable[Instance]) -> list[Instance]:
        """Only Canary targets' sidecars are sampled: the built-in metrics
        are about them, and scraping every sidecar each second is not free."""
        wanted = self.controller.targets
        return [i for i in instances if (i.namespace, i.workload) in wanted]

    def _lookup(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.store.get(Key(GROUPS.get(kind, ""), kind, namespace, name))
        except NotFound:
            return None
