"""One instance's life, as a pure `step()`: an event in, commands out.

    Pending --begin--> Pending (start the sidecar unless adopted, register unhealthy)
    Pending|BackOff --tick, back-off over--> (start the app)
    Pending|BackOff --app started--> Running (probes start over)
    Pending|BackOff --app could not start--> BackOff (back-off doubles, 1 s to 30 s)
    Running --begin (adopted)--> Running (register unhealthy)
    Running --tick--> Running (heartbeat; liveness and readiness when due;
                               back-off reset after 30 s of running)
    Running --readiness changes--> Running (register ready or not)
    Running --liveness fails--> Killing (kill the app, unready)
    Running|Killing --app exited--> BackOff (unready, restart counted)
    any live phase --sidecar exited--> same phase (start it again, restart counted)
    any live phase --stop--> Terminating (register unhealthy, let callers hear it,
                                          stop sidecar then app, deregister)
    Terminating --stopped--> Terminated

Phases are what the agent knows of the app process; `Status.phase` is what
a user sees (Kubernetes' words: Killing still shows Running). The shell
(instance.py) turns process exits, probe results and clocks into events,
and runs the commands; a command that has an outcome (starting the app,
running a probe) is answered with the next event.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from pilotfish.agent.probes import ProbeState
from pilotfish.objects import Obj

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_S = 30.0
HEARTBEAT_S = 1.0
UNKNOWN_EXIT = -255  # an adopted process's exit status went to init

PENDING, RUNNING, KILLING, BACKOFF, TERMINATING, TERMINATED = (
    "Pending",
    "Running",
    "Killing",
    "BackOff",
    "Terminating",
    "Terminated",
)
SHOWN: Final = {KILLING: "Running", BACKOFF: "CrashLoopBackOff"}


@dataclass
class Status:
    """What the Workload's status shows of this instance."""

    phase: str = "Pending"
    ready: bool = False
    restarts: int = 0
    last_error: str = ""
    started_at: str = ""


# -- events (inputs) -----------------------------------------------------------------


@dataclass(frozen=True)
class Begin:
    sidecar_running: bool


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class AppStarted:
    started_at: str  # wall clock, RFC 3339


@dataclass(frozen=True)
class AppStartFailed:
    error: str


@dataclass(frozen=True)
class Exited:
    """`which` ("app" or "sidecar") exited; `tail` is its log's last line."""

    which: str
    code: int | None
    tail: str = ""


@dataclass(frozen=True)
class ProbeResult:
    kind: str  # "liveness" | "readiness"
    ok: bool
    why: str = ""


@dataclass(frozen=True)
class Stop:
    app_running: bool


@dataclass(frozen=True)
class Stopped:
    pass


Event = Begin | Tick | AppStarted | AppStartFailed | Exited | ProbeResult | Stop | Stopped

# -- commands (outputs) --------------------------------------------------------------


@dataclass(frozen=True)
class StartSidecar:
    pass


@dataclass(frozen=True)
class StartApp:
    pass


@dataclass(frozen=True)
class KillApp:
    pass


@dataclass(frozen=True)
class Register:
    healthy: bool


@dataclass(frozen=True)
class Probe:
    kind: str


@dataclass(frozen=True)
class Settle:
    """Wait for the endpoint's removal to reach the callers' proxies."""


@dataclass(frozen=True)
class Terminate:
    which: str


@dataclass(frozen=True)
class Deregister:
    pass


Command = StartSidecar | StartApp | KillApp | Register | Probe | Settle | Terminate | Deregister


@dataclass
class Lifecycle:
    """The state `step` reads and changes: the phase, the back-off clock,
    the probes' counting and the status a user sees."""

    spec: Obj
    first_port: str | int = 0
    phase: str = PENDING
    status: Status = field(default_factory=Status)
    backoff: float = BACKOFF_BASE_S
    restart_at: float = 0.0
    app_started: float = 0.0
    beat: float = float("-inf")
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None

    def __repr__(self) -> str:
        return f"<Lifecycle {self.phase} ready={self.status.ready} restarts={self.status.restarts}>"

    @classmethod
    def adopted(cls, spec: Obj, first_port: str | int, now: float) -> Lifecycle:
        """An instance a previous agent started, its app running: supervised
        from `now`, ready again once its probe passes."""
        state = cls(spec, first_port, phase=RUNNING, app_started=now)
        state.status.phase = RUNNING
        state.readiness, state.liveness = probes(spec, first_port, now)
        return state


class UnexpectedEvent(Exception):
    """An event the table has no entry for in the current phase."""


def probes(spec: Obj, first_port: str | int, now: float) -> tuple[ProbeState, ProbeState | None]:
    """Readiness (by default: the first port accepts connections) and liveness, if any."""
    ready_spec = spec.get("readinessProbe") or {
        "tcpSocket": {"port": first_port},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }
    live_spec = spec.get("livenessProbe")
    readiness = ProbeState(ready_spec, passing=False, started=now)
    liveness = ProbeState(live_spec, passing=True, started=now) if live_spec else None
    return readiness, liveness


def exit_message(which: str, code: int | None, tail: str) -> str:
    if code == UNKNOWN_EXIT:
        return f"{which} exited (adopted from a previous agent: code unknown)"
    if code is not None and code < 0:
        # Killed: its log's last line says nothing about why.
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return f"{which} exited with code {code} ({name})"
    return f"{which} exited with code {code}" + (f": {tail}" if tail else "")


# -- the handlers ----------------------------------------------------------------------

Handler = Callable[[Lifecycle, Any, float], list[Command]]


def _begin(state: Lifecycle, event: Begin, now: float) -> list[Command]:
    return [*([] if event.sidecar_running else [StartSidecar()]), Register(False)]


def _tick_waiting(state: Lifecycle, event: Tick, now: float) -> list[Command]:
    return [*_heartbeat(state, now), *([StartApp()] if now >= state.restart_at else [])]


def _app_started(state: Lifecycle, event: AppStarted, now: float) -> list[Command]:
    state.phase, state.app_started = RUNNING, now
    state.status.started_at = event.started_at
    state.readiness, state.liveness = probes(state.spec, state.first_port, now)
    return []


def _start_failed(state: Lifecycle, event: AppStartFailed, now: float) -> list[Command]:
    state.status.last_error = event.error
    return _back_off(state, now)


def _tick_running(state: Lifecycle, event: Tick, now: float) -> list[Command]:
    if now - state.app_started >= BACKOFF_RESET_S:
        state.backoff = BACKOFF_BASE_S
    due = [p for p in (state.liveness, state.readiness) if p is not None and p.due(now)]
    kinds = ["liveness" if p is state.liveness else "readiness" for p in due]
    return [*_heartbeat(state, now), *(Probe(k) for k in kinds)]


def _probed(state: Lifecycle, event: ProbeResult, now: float) -> list[Command]:
    if event.kind == "liveness":
        assert state.liveness is not None
        if state.liveness.record(event.ok, event.why, now) and not state.liveness.passing:
            state.status.last_error = f"Liveness probe failed: {event.why}"
            state.phase = KILLING
            return [KillApp(), *_set_ready(state, False)]
        return []
    assert state.readiness is not None
    state.readiness.record(event.ok, event.why, now)
    return _set_ready(state, state.readiness.passing)


def _ignore(state: Lifecycle, event: Event, now: float) -> list[Command]:
    return []


def _app_exited(state: Lifecycle, event: Exited, now: float) -> list[Command]:
    if event.which == "sidecar":
        state.status.restarts += 1
        state.status.last_error = exit_message(event.which, event.code, event.tail)
        return [StartSidecar()]
    if state.phase != KILLING:  # else the liveness failure is the better reason
        state.status.last_error = exit_message(event.which, event.code, event.tail)
    return [*_set_ready(state, False), *_back_off(state, now)]


def _sidecar_exited(state: Lifecycle, event: Exited, now: float) -> list[Command]:
    if event.which != "sidecar":
        raise UnexpectedEvent(f"app exit while {state.phase}: no app is running")
    return _app_exited(state, event, now)


def _stop(state: Lifecycle, event: Stop, now: float) -> list[Command]:
    """Leave the endpoint set but stay registered (unhealthy): the instance's
    own sidecar keeps its inbound listener, and so keeps answering what
    callers sent before they heard of the change, until it is drained and
    stopped; only then does the registration go."""
    state.phase, state.status.ready = TERMINATING, False
    settle: list[Command] = [Settle()] if event.app_running else []
    return [Register(False), *settle, Terminate("sidecar"), Terminate("app"), Deregister()]


def _stopped(state: Lifecycle, event: Stopped, now: float) -> list[Command]:
    state.phase, state.status.ready = TERMINATED, False
    return []


def _heartbeat(state: Lifecycle, now: float) -> list[Command]:
    if now - state.beat < HEARTBEAT_S:
        return []
    state.beat = now
    return [Register(state.status.ready)]


def _set_ready(state: Lifecycle, ready: bool) -> list[Command]:
    if ready == state.status.ready:
        return []
    state.status.ready = ready
    return [Register(ready)]


def _back_off(state: Lifecycle, now: float) -> list[Command]:
    state.status.restarts += 1
    state.phase = BACKOFF
    state.restart_at = now + state.backoff
    state.backoff = min(state.backoff * 2, BACKOFF_MAX_S)
    return []


_LIVE = (PENDING, RUNNING, KILLING, BACKOFF)
# (phase, event type) -> handler; the handler sets the next phase. A missing
# entry is an error: the shell sent something that cannot happen.
TRANSITIONS: Final[dict[tuple[str, type], Handler]] = {
    (PENDING, Begin): _begin,
    (RUNNING, Begin): _begin,
    (PENDING, Tick): _tick_waiting,
    (BACKOFF, Tick): _tick_waiting,
    (PENDING, AppStarted): _app_started,
    (BACKOFF, AppStarted): _app_started,
    (PENDING, AppStartFailed): _start_failed,
    (BACKOFF, AppStartFailed): _start_failed,
    (RUNNING, Tick): _tick_running,
    (RUNNING, ProbeResult): _probed,
    (RUNNING, Exited): _app_exited,
    (KILLING, Tick): _ignore,
    (KILLING, ProbeResult): _ignore,  # the rest of the tick the app was killed in
    (KILLING, Exited): _app_exited,
    (PENDING, Exited): _sidecar_exited,
    (BACKOFF, Exited): _sidecar_exited,
    **{(phase, Stop): _stop for phase in _LIVE},
    (TERMINATING, Stopped): _stopped,
}


def step(state: Lifecycle, event: Event, now: float) -> list[Command]:
    """Apply `event` at monotonic time `now`; the commands to run, in order."""
    handler = TRANSITIONS.get((state.phase, type(event)))
    if handler is None:
        raise UnexpectedEvent(f"unexpected {type(event).__name__} while {state.phase}")
    commands = handler(state, event, now)
    state.status.phase = SHOWN.get(state.phase, state.phase)
    return commands
