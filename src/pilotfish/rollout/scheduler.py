"""The rollout controller's shell: reads the store, asks phases.step() what
to do, does it. It runs in the control plane's process.

Each Canary is stepped once per `analysis.interval`. In the control plane
each step runs on a thread of its own, as Flagger runs a job per Canary: a
slow webhook, load test or metrics query of one Canary holds up no other,
and a Canary whose step is still running is not stepped again meanwhile.
A restarted control plane resumes from the stored status: an analysing
Canary's next step is due one interval after its lastTransitionTime, so no
step runs twice. Routes and replica counts are written from the status
before and after each step (router.py), and the status is written before the
step's one-shot actions (events, alerts, post-rollout hooks), so a crash
repeats no promotion and skips no rollback.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from pilotfish.api.errors import ApiError, Conflict, NotFound
from pilotfish.api.gotypes import parse_rfc3339, rfc3339
from pilotfish.api.workloads import referenced, template_hash
from pilotfish.objects import Obj
from pilotfish.periodic import Periodic
from pilotfish.rollout import router
from pilotfish.rollout.canary import ANALYSIS_INTERVAL_S, Canary, read_canary
from pilotfish.rollout.events import EventRecorder
from pilotfish.rollout.phases import (
    ABORT,
    ANALYSING,
    METRICS,
    PROMOTE,
    Alert,
    ClearRequest,
    Decision,
    Event,
    Observations,
    RunHooks,
    step,
)
from pilotfish.rollout.status import CanaryStatus
from pilotfish.rollout.types import EVENT, MetricResult, WebhookResult
from pilotfish.store.resources import ResourceStore
from pilotfish.store.types import FenceLost, Key

log = logging.getLogger("pilotfish.rollout")

MANAGER = "flagger"
FINALIZER = "finalizer.flagger.app"
TERMINATING = "Terminating"
REQUEST_ANNOTATION = "rollout.pilotfish.dev/"
CANARY = ("flagger.app", "Canary")
WORKLOAD = ("pilotfish.dev", "Workload")
Measure = Callable[[Obj, Obj], MetricResult]
# canary, hook type, phase, extra metadata (an event's message and type)
CallHooks = Callable[[Obj, str, str, Mapping[str, str]], tuple[WebhookResult, ...]]
SendAlert = Callable[[Canary, Alert], None]
NEEDS_ROUNDS = 8  # at most one round per kind of answer a step can need


class RolloutController:
    def __init__(
        self,
        store: ResourceStore,
        measure: Measure,
        call_hooks: CallHooks,
        *,
        clock: Callable[[], float] = time.time,
        period_s: float = 0.5,
        threads: bool = False,
        alert: SendAlert = lambda canary, alert: None,
    ) -> None:
        self.store = store
        self.alert = alert
        self.threads = threads  # each step on its own thread; else within sync()
        self._stepping: set[str] = set()  # uids of the Canaries whose step is running
        self._lock = threading.Lock()
        self.measure = measure
        self.call_hooks = call_hooks
        self.clock = clock
        self.events = EventRecorder(store, clock, on_event=self._event_hooks)
        self._due: dict[str, float] = {}
        # (namespace, workload) of every Canary's target: what the metrics follow
        self.targets: frozenset[tuple[str, str]] = frozenset()
        self.loop = Periodic("rollout", period_s, self.sync)

    def __repr__(self) -> str:
        return f"RolloutController({len(self._due)} canaries)"

    def sync(self) -> None:
        """Step every Canary that is due."""
        canaries, _ = self.store.list(*CANARY)
        now = self.clock()
        seen, targets = set(), set()
        for obj in canaries:
            uid = obj["metadata"].get("uid", "")
            seen.add(uid)
            try:
                canary = read_canary(obj)
            except (ValueError, KeyError) as e:
                if now >= self._due.get(uid, now):
                    self._due[uid] = now + ANALYSIS_INTERVAL_S  # say so once an interval
                    self._complain(obj, str(e))
                continue
            targets.add((canary.namespace, canary.target))
            due = self._due.setdefault(uid, _first_due(canary, obj))
            if (now < due and not _deleting(obj)) or self.stepping(uid):
                continue
            self._due[uid] = now + canary.interval_s
            self._start(uid, canary, obj)
        self.targets = frozenset(targets)
        for uid in set(self._due) - seen:
            del self._due[uid]

    def stepping(self, uid: str) -> bool:
        with self._lock:
            return uid in self._stepping

    def _start(self, uid: str, canary: Canary, obj: Obj) -> None:
        if not self.threads:
            self._step(uid, canary, obj)
            return
        with self._lock:
            self._stepping.add(uid)
        name = f"rollout {canary.namespace}/{canary.name}"
        threading.Thread(target=self._step, args=(uid, canary, obj), name=name, daemon=True).start()

    def _step(self, uid: str, canary: Canary, obj: Obj) -> None:
        """One Canary's step; what goes wrong in it stays with it."""
        try:
            self.tick(canary, obj)
        except FenceLost as lost:  # the lead went mid-step; the next leader steps it again
            name = f"{canary.namespace}/{canary.name}"
            log.warning("rollout: the step of %s stopped: %s", name, lost)
        except Exception:
            log.exception("rollout: the step of %s/%s failed", canary.namespace, canary.name)
        finally:
            with self._lock:
                self._stepping.discard(uid)

    # -- one step --------------------------------------------------------------------

    def tick(self, canary: Canary, obj: Obj) -> None:
        """Read the target, its configs and the primary once; put back what
        the stored status implies, decide, and write again only what moved."""
        if _deleting(obj):
            self._finalize(canary, obj)
            return
        self._hold(obj, revert=bool(canary.spec.get("revertOnDeletion")))
        status = CanaryStatus.of(obj.get("status"))
        target = self._get(WORKLOAD, canary.namespace, canary.target)
        if target is None:
            decision = self._decide(canary, obj, status, None)
        else:
            seen = _Seen(target, self._configs(canary.namespace, target), None)
            seen.primary = self._get(WORKLOAD, canary.namespace, canary.primary)
            seen.primary = self._reconcile(canary, seen, status)
            decision = self._decide(canary, obj, status, seen)
        if decision.status.to_obj() != obj.get("status"):
            self.store.update_status(_key(obj), decision.status.to_obj(), manager=MANAGER)
            if target is not None:
                self._reconcile(canary, seen, decision.status)
        self._act(canary, obj, decision)

    def _decide(
        self, canary: Canary, obj: Obj, status: CanaryStatus, seen: _Seen | None
    ) -> Decision:
        obs = self._observe(canary, obj, seen)
        decision = step(canary, status, obs)
        for _ in range(NEEDS_ROUNDS):
            if not decision.needs:
                break
            obs = self._answer(canary, obj, status, obs, decision.needs)
            decision = step(canary, status, obs)
        return decision

    def _observe(self, canary: Canary, obj: Obj, seen: _Seen | None) -> Observations:
        now = datetime.fromtimestamp(self.clock(), UTC)
        if seen is None:
            return Observations(now=now, checksum=None)
        target, primary = seen.target, seen.primary
        data = {key: _data_of(o) for key, o in seen.configs.items()}
        annotations = obj["metadata"].get("annotations") or {}
        return Observations(
            now=now,
            checksum=template_hash(target["spec"], data),
            tracked_configs={f"{k.lower()}/{n}": _digest(d) for (k, n), d in data.items()},
            primary_ready=primary is not None and _ready(primary),
            canary_ready=_ready(target) and int(target["spec"].get("replicas", 1)) > 0,
            requested=frozenset(
                r for r in (PROMOTE, ABORT) if REQUEST_ANNOTATION + r in annotations
            ),
        )

    def _answer(
        self,
        canary: Canary,
        obj: Obj,
        status: CanaryStatus,
        obs: Observations,
        needs: tuple[str, ...],
    ) -> Observations:
        phase = status.phase
        hooks = dict(obs.hooks)
        metrics = obs.metrics
        for need in needs:
            if need == METRICS:
                wanted = canary.analysis.get("metrics") or []
                metrics = tuple(self.measure(obj, m) for m in wanted)
            else:
                hooks[need] = self.call_hooks(obj, need, phase, {})
        return replace(obs, hooks=hooks, metrics=metrics)

    # -- writing what the status implies ---------------------------------------------------

    def _reconcile(self, canary: Canary, seen: _Seen, status: CanaryStatus) -> Obj:
        """Write what `status` implies; the primary as it now is."""
        phase = status.phase
        target, primary = seen.target, seen.primary
        if primary is None or phase == "Promoting":
            for copied in router.config_copies(target, seen.configs):
                self._apply(copied)
            primary = self._apply(router.primary_workload(canary, target, primary))
        if phase in ("", "Initializing"):
            return primary  # nothing routes to the primary before it is ready
        for obj in [*router.services(canary, target), *router.destination_rules(canary)]:
            self._apply(obj)
        self._apply(router.virtual_service(canary, status))
        replicas = router.canary_replicas(status, primary)
        if int(target["spec"].get("replicas", 1)) != replicas:
            self._apply(_scale(target, replicas))
        return primary

    def _apply(self, obj: Obj) -> Obj:
        return self.store.apply(obj, manager=MANAGER, force=True)

    # -- deletion (revertOnDeletion) ----------------------------------------------------------

    def _hold(self, obj: Obj, *, revert: bool) -> bool:
        """With revertOnDeletion, Flagger's finalizer holds a deleted Canary
        until its target is restored; opting out drops it. False: the Canary
        changed meanwhile, and the next step looks again."""
        finalizers = list(obj["metadata"].get("finalizers") or [])
        if revert == (FINALIZER in finalizers):
            return True
        kept = [f for f in finalizers if f != FINALIZER]
        meta = {**obj["metadata"], "finalizers": [*kept, FINALIZER] if revert else kept}
        try:
            self.store.update({**obj, "metadata": meta}, manager=MANAGER)
        except Conflict:
            return False
        return True

    def _finalize(self, canary: Canary, obj: Obj) -> None:
        """Flagger's revert, then the finalizer goes and the Canary with it:
        the target scaled back to the primary's replicas; once it is ready,
        the Canary's Service selects it again and what the Canary made goes."""
        if FINALIZER not in (obj["metadata"].get("finalizers") or []):
            return
        status = CanaryStatus.of(obj.get("status"))
        if status.phase != TERMINATING:
            status = status.but(phase=TERMINATING, last_transition_time=rfc3339(self.clock()))
            self.store.update_status(_key(obj), status.to_obj(), manager=MANAGER)
            self.events.record(obj, f"Terminating canary {canary.name}.{canary.namespace}")
        target = self._get(WORKLOAD, canary.namespace, canary.target)
        if target is not None and not self._revert(canary, target):
            return  # the target is not ready yet: the next step looks again
        if self._hold(self.store.get(_key(obj)), revert=False):  # then it goes, as in Flagger
            self.events.record(obj, f"Terminated canary {canary.name}.{canary.namespace}")

    def _revert(self, canary: Canary, target: Obj) -> bool:
        """One step of giving the Service back to the target; True once done."""
        primary = self._get(WORKLOAD, canary.namespace, canary.primary)
        replicas = int((primary or {}).get("spec", {}).get("replicas", 1))
        if int(target["spec"].get("replicas", 1)) != replicas:
            self._apply(_scale(target, replicas))
            return False
        if not _ready(target):
            return False
        self._apply(router.reverted_service(canary, target))
        for key in router.generated(canary, target):
            with contextlib.suppress(NotFound):
                self.store.delete(key)
        return True

    # -- one-shot actions --------------------------------------------------------------------

    def _act(self, canary: Canary, obj: Obj, decision: Decision) -> None:
        for action in decision.actions:
            if isinstance(action, Event):
                self.events.record(obj, action.message, warning=action.warning)
            elif isinstance(action, Alert):
                self.alert(canary, action)
            elif isinstance(action, RunHooks):
                for result in self.call_hooks(obj, action.type, action.phase, {}):
                    if not result.ok:
                        log.warning("rollout: %s", result.message)
            elif isinstance(action, ClearRequest):
                self._clear_request(obj, action.request)

    def _clear_request(self, obj: Obj, request: str) -> None:
        for _ in range(5):
            live = self._get(
                CANARY, obj["metadata"].get("namespace", "default"), obj["metadata"]["name"]
            )
            if live is None:
                return
            live["metadata"].get("annotations", {}).pop(REQUEST_ANNOTATION + request, None)
            try:
                self.store.update(live, manager=MANAGER)
                return
            except ApiError as e:
                if e.code != 409:
                    raise

    def _event_hooks(self, obj: Obj, message: str, warning: bool) -> None:
        phase = str((obj.get("status") or {}).get("phase") or "")
        kind = "Warning" if warning else "Normal"
        self.call_hooks(obj, EVENT, phase, {"eventMessage": message, "eventType": kind})

    def _complain(self, obj: Obj, reason: str) -> None:
        self.events.record(obj, f"cannot run {obj['metadata']['name']}: {reason}", warning=True)

    # -- reads -----------------------------------------------------------------------------

    def _get(self, kind: tuple[str, str], namespace: str, name: str) -> Obj | None:
        try:
            return self.store.get(Key(kind[0], kind[1], namespace, name))
        except NotFound:
            return None

    def _configs(self, namespace: str, target: Obj) -> dict[tuple[str, str], Obj]:
        found = {}
        for kind, name in referenced(target["spec"]):
            obj = self._get(("", kind), namespace, name)
            if obj is not None:
                found[(kind, name)] = obj
        return found


@dataclass
class _Seen:
    """What one tick read of a Canary's world."""

    target: Obj
    configs: dict[tuple[str, str], Obj]
    primary: Obj | None


def _first_due(canary: Canary, obj: Obj) -> float:
    """An analysis in flight continues one interval after its last move;
    anything else is looked at now."""
    status = CanaryStatus.of(obj.get("status"))
    if status.phase not in (*ANALYSING, "Promoting", "Finalising"):
        return 0.0
    try:
        moved = parse_rfc3339(status.last_transition_time or "")
    except ValueError:
        return 0.0
    return moved.timestamp() + canary.interval_s


def _deleting(obj: Obj) -> bool:
    return "deletionTimestamp" in obj["metadata"]


def _ready(workload: Obj) -> bool:
    """All wanted instances run the current spec and are ready."""
    spec, status = workload.get("spec") or {}, workload.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    if status.get("observedGeneration") != workload["metadata"].get("generation"):
        return False
    return all(int(status.get(k) or 0) >= wanted for k in ("readyReplicas", "updatedReplicas"))


def _scale(target: Obj, replicas: int) -> Obj:
    meta = target["metadata"]
    return {
        "apiVersion": target["apiVersion"],
        "kind": "Workload",
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace", "default")},
        "spec": {"replicas": replicas},
    }


def _data_of(obj: Obj) -> Mapping[str, str]:
    data = dict(obj.get("data") or {})
    if obj.get("kind") == "Secret":
        for k, v in (obj.get("stringData") or {}).items():
            data[k] = base64.b64encode(str(v).encode()).decode()
    return data


def _digest(data: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(data), sort_keys=True).encode()).hexdigest()[:16]


def _key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return Key(CANARY[0], CANARY[1], meta.get("namespace") or "default", meta["name"])
