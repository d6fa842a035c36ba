"""The instance lifecycle without processes: events in, commands out."""

from __future__ import annotations

import pytest

from pilotfish.agent import lifecycle as lc
from pilotfish.agent.lifecycle import (
    AppStarted,
    AppStartFailed,
    Begin,
    Exited,
    KillApp,
    Lifecycle,
    Probe,
    ProbeResult,
    Register,
    StartApp,
    StartSidecar,
    Tick,
    step,
)

SPEC = {"labels": {"app": "a"}, "ports": [{"name": "http", "port": 80}]}
LIVE = {
    **SPEC,
    "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1, "failureThreshold": 2},
}


def running(spec: dict = SPEC, now: float = 0.0) -> Lifecycle:
    state = Lifecycle(spec, "http")
    assert step(state, Begin(sidecar_running=False), now) == [StartSidecar(), Register(False)]
    assert StartApp() in step(state, Tick(), now)
    assert step(state, AppStarted("2024-05-01T12:00:00Z"), now) == []
    return state


def test_a_new_instance_starts_its_sidecar_registers_unhealthy_then_starts_the_app() -> None:
    state = running()
    assert state.status.phase == "Running" and not state.status.ready
    assert state.status.started_at == "2024-05-01T12:00:00Z"


def test_readiness_passing_registers_healthy_once_and_heartbeats_after() -> None:
    state = running()
    commands = step(state, Tick(), 0.1)
    assert Probe("readiness") in commands
    assert step(state, ProbeResult("readiness", True), 0.1) == [Register(True)]
    assert state.status.ready
    assert step(state, ProbeResult("readiness", True), 1.2) == []  # no change, no call
    assert Register(True) in step(state, Tick(), 2.5)  # the heartbeat renews the lease


def test_a_crash_backs_off_doubling_to_thirty_seconds() -> None:
    state = running()
    step(state, ProbeResult("readiness", True), 0.0)
    commands = step(state, Exited("app", 3, "boom"), 1.0)
    assert commands == [Register(False)]
    assert state.status.phase == "CrashLoopBackOff" and state.status.restarts == 1
    assert state.status.last_error == "app exited with code 3: boom"
    assert StartApp() not in step(state, Tick(), 1.5)
    assert StartApp() in step(state, Tick(), 2.0)  # 1 s after the crash
    now, delays = 2.0, []
    for _ in range(7):
        step(state, AppStarted("t"), now)
        step(state, Exited("app", 1), now)
        delays.append(state.restart_at - now)
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_thirty_seconds_of_running_resets_the_back_off() -> None:
    state = running()
    step(state, Exited("app", 1), 0.0)
    step(state, AppStarted("t"), 1.0)
    step(state, Exited("app", 1), 1.5)
    assert state.backoff == 4.0
    step(state, AppStarted("t"), 4.0)
    step(state, Tick(), 34.0)
    step(state, Exited("app", 1), 35.0)
    assert state.restart_at == 36.0


def test_a_program_that_cannot_start_is_a_crash_with_its_reason() -> None:
    state = Lifecycle(SPEC, "http")
    step(state, Begin(sidecar_running=False), 0.0)
    step(state, AppStartFailed("cannot start ./nope: [Errno 2] No such file"), 0.0)
    assert state.status.phase == "CrashLoopBackOff" and state.status.restarts == 1
    assert "cannot start ./nope" in state.status.last_error
    assert StartApp() in step(state, Tick(), 1.0)


def test_failing_liveness_kills_the_app_and_says_why() -> None:
    state = running(LIVE)
    step(state, ProbeResult("readiness", True), 0.0)
    assert step(state, ProbeResult("liveness", False, "connection refused"), 1.0) == []
    commands = step(state, ProbeResult("liveness", False, "connection refused"), 2.0)
    assert commands == [KillApp(), Register(False)]
    assert state.status.phase == "Running"  # as Kubernetes shows it until the exit
    assert step(state, ProbeResult("readiness", True), 2.0) == []  # the rest of the tick
    step(state, Exited("app", -9), 2.1)
    assert state.status.phase == "CrashLoopBackOff"
    assert state.status.last_error == "Liveness probe failed: connection refused"


def test_a_killed_app_names_the_signal_and_a_dead_sidecar_is_restarted() -> None:
    state = running()
    assert step(state, Exited("sidecar", 1, "bad"), 0.5) == [StartSidecar()]
    assert state.status.last_error == "sidecar exited with code 1: bad"
    assert state.phase == lc.RUNNING
    step(state, Exited("app", -9), 1.0)
    assert state.status.last_error == "app exited with code -9 (SIGKILL)"
    assert step(state, Exited("sidecar", -15), 1.0) == [StartSidecar()]
    assert state.status.restarts == 3


def test_an_adopted_instance_keeps_its_processes_and_is_ready_again_by_its_probe() -> None:
    state = Lifecycle.adopted(SPEC, "http", 100.0)
    assert state.status.phase == "Running" and not state.status.ready
    assert step(state, Begin(sidecar_running=True), 100.0) == [Register(False)]
    commands = step(state, Tick(), 100.1)
    assert StartApp() not in commands and StartSidecar() not in commands
    assert Probe("readiness") in commands
    assert step(state, ProbeResult("readiness", True), 100.1) == [Register(True)]
    step(state, Exited("app", lc.UNKNOWN_EXIT), 101.0)
    assert state.status.last_error == "app exited (adopted from a previous agent: code unknown)"
    assert StartApp() in step(state, Tick(), 102.0)


def test_stopping_leaves_the_endpoint_set_first_and_deregisters_last() -> None:
    state = running()
    step(state, ProbeResult("readiness", True), 0.0)
    commands = step(state, lc.Stop(app_running=True), 1.0)
    assert commands == [
        Register(False),
        lc.Settle(),
        lc.Terminate("sidecar"),
        lc.Terminate("app"),
        lc.Deregister(),
    ]
    assert state.status.phase == "Terminating" and not state.status.ready
    assert lc.Settle() not in step(Lifecycle(SPEC), lc.Stop(app_running=False), 0.0)
    step(state, lc.Stopped(), 2.0)
    assert state.status.phase == "Terminated"


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (Lifecycle(SPEC), ProbeResult("readiness", True)),
        (Lifecycle(SPEC), Exited("app", 0)),
        (Lifecycle.adopted(SPEC, "http", 0.0), AppStarted("t")),
    ],
)
def test_an_event_the_table_has_no_entry_for_is_an_error(state: Lifecycle, event: lc.Event) -> None:
    with pytest.raises(lc.UnexpectedEvent):
        step(state, event, 0.0)


def test_nothing_happens_after_termination() -> None:
    state = running()
    step(state, lc.Stop(app_running=True), 0.0)
    step(state, lc.Stopped(), 0.0)
    with pytest.raises(lc.UnexpectedEvent, match="unexpected Tick while Terminated"):
        step(state, Tick(), 1.0)
