"""Leader election's decisions, without etcd: the pure step over its table."""

from __future__ import annotations

import pytest

from pilotfish.controlplane.leader import (
    Acquired,
    Held,
    Renewed,
    RenewFailed,
    State,
    Tick,
    Timing,
    acting,
    step,
)

T = Timing()  # client-go's: lease 15 s, renew deadline 10 s, retry 2 s


def test_client_gos_defaults() -> None:
    assert (T.lease, T.renew_deadline, T.retry) == (15.0, 10.0, 2.0)


def test_a_follower_campaigns_every_retry_period() -> None:
    state, commands = step(State(), Tick(100.0), T)
    assert commands == ["campaign"]
    state, commands = step(state, Held(100.1, "other"), T)
    assert (state.role, commands) == ("following", [])
    assert step(state, Tick(101.9), T)[1] == []
    assert step(state, Tick(102.2), T)[1] == ["campaign"]


def test_acquiring_starts_leading_and_renews_every_retry_period() -> None:
    state, commands = step(State(next_try=100.0), Acquired(100.0), T)
    assert (state.role, commands) == ("leading", ["start"])
    assert acting(state, 100.0, T)
    assert step(state, Tick(101.0), T)[1] == []
    state, commands = step(state, Tick(102.0), T)
    assert commands == ["renew"]
    state, commands = step(state, Renewed(102.0, ttl=15), T)
    assert commands == [] and state.renewed_at == 102.0
    assert acting(state, 111.9, T) and not acting(state, 112.0, T)


def test_a_leader_that_cannot_renew_stops_at_the_deadline_before_its_lease_ends() -> None:
    state, _ = step(State(), Acquired(100.0), T)
    for now in (102.0, 104.0, 106.0, 108.0):
        state, commands = step(state, Tick(now), T)
        assert commands == ["renew"]
        state, commands = step(state, RenewFailed(now + 0.5), T)
        assert (state.role, commands) == ("leading", [])
    assert acting(state, 109.9, T)
    state, commands = step(state, Tick(110.0), T)
    assert (state.role, commands) == ("following", ["stop"])
    assert not acting(state, 110.0, T)
    # etcd let the lease live 15 s from the last renewal it saw (100.0 at the
    # latest): nobody else can hold the key before 115.0, 5 s after we stopped.
    assert 110.0 + (T.lease - T.renew_deadline) <= 100.0 + T.lease


def test_a_lease_etcd_says_is_gone_stops_at_once() -> None:
    state, _ = step(State(), Acquired(100.0), T)
    state, commands = step(state, Tick(102.0), T)
    state, commands = step(state, Renewed(102.0, ttl=0), T)
    assert (state.role, commands) == ("following", ["stop"])
    assert step(state, Tick(104.0), T)[1] == ["campaign"]


def test_an_input_the_table_does_not_expect_is_an_error() -> None:
    with pytest.raises(ValueError, match="leader election: Renewed while following"):
        step(State(), Renewed(1.0, 15), T)
    leading, _ = step(State(), Acquired(1.0), T)
    with pytest.raises(ValueError, match="Acquired while leading"):
        step(leading, Acquired(2.0), T)


def test_timings_must_leave_the_leader_time_to_stop() -> None:
    with pytest.raises(ValueError, match="needs 0 < retry < renew_deadline < lease"):
        Timing(lease=10, renew_deadline=10, retry=2)


def test_a_follower_campaigns_as_the_holders_lease_runs_out() -> None:
    # A dead leader's key goes with its lease: campaign then, not up to a
    # retry period later (takeover within the lease duration of a kill -9).
    state, _ = step(State(), Held(100.0, "other", left=1.0), T)
    assert step(state, Tick(100.9), T)[1] == []
    assert step(state, Tick(101.0), T)[1] == ["campaign"]
    state, _ = step(State(), Held(100.0, "other", left=0.0), T)  # its last second
    assert step(state, Tick(100.0), T)[1] == ["campaign"]
    state, _ = step(State(), Held(100.0, "other", left=9.0), T)  # a live leader: retry period
    assert step(state, Tick(101.9), T)[1] == []
    assert step(state, Tick(102.0), T)[1] == ["campaign"]
