"""Leader election's decisions: a pure `step()` over two roles, with
client-go's timings (leaderelection.LeaderElectionConfig's usual values).

    following --tick, retry due--> following [campaign]
    following --acquired--> leading [start]          (the key is ours, on our lease)
    following --held by another--> following         (try again in `retry`, or
                                                      as the holder's lease ends if sooner)
    leading --tick, renewal due--> leading [renew]
    leading --renewed--> leading                     (the deadline moves on)
    leading --renewal failed--> leading              (still within the deadline)
    leading --tick, deadline passed | lease gone--> following [stop]

The lease held in etcd lasts `lease` seconds from the last renewal; a leader
stops acting `renew_deadline` seconds after it, so it has stopped at least
`lease - renew_deadline` seconds before anyone else can hold the key. Times
are the shell's monotonic clock, taken when a request was sent (before etcd
saw it), so a leader always believes its lease ends earlier than it does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

Role = Literal["following", "leading"]
Command = Literal["campaign", "renew", "start", "stop"]


@dataclass(frozen=True)
class Timing:
    lease: float = 15.0  # client-go LeaseDuration
    renew_deadline: float = 10.0  # client-go RenewDeadline
    retry: float = 2.0  # client-go RetryPeriod

    def __post_init__(self) -> None:
        if not 0 < self.retry < self.renew_deadline < self.lease:
            raise ValueError(f"{self}: needs 0 < retry < renew_deadline < lease")


@dataclass(frozen=True)
class State:
    role: Role = "following"
    renewed_at: float = float("-inf")  # when the last successful renewal (or acquisition) was sent
    next_try: float = float("-inf")  # when to campaign or renew next


@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class Acquired:
    sent_at: float


@dataclass(frozen=True)
class Held:
    now: float
    holder: str
    left: float = float("inf")  # seconds etcd says the holder's lease has left


@dataclass(frozen=True)
class Renewed:
    sent_at: float
    ttl: int  # what etcd says is left of the lease; <= 0: it expired


@dataclass(frozen=True)
class RenewFailed:
    now: float


Input = Tick | Acquired | Held | Renewed | RenewFailed
Outcome = tuple[State, list[Command]]


def acting(state: State, now: float, timing: Timing) -> bool:
    """Whether a leader may act now: leading and within the renew deadline."""
    return state.role == "leading" and now - state.renewed_at < timing.renew_deadline


def _tick_following(state: State, event: Tick, timing: Timing) -> Outcome:
    if event.now < state.next_try:
        return state, []
    return replace(state, next_try=event.now + timing.retry), ["campaign"]


def _acquired(state: State, event: Acquired, timing: Timing) -> Outcome:
    leading = State("leading", event.sent_at, event.sent_at + timing.retry)
    return leading, ["start"]


def _held(state: State, event: Held, timing: Timing) -> Outcome:
    # A dead leader's key goes when etcd expires its lease: try again then,
    # not up to a retry period later, so a successor leads about the lease
    # duration after the last renewal. In the lease's last second (etcd says
    # 0) that is every tick of the shell.
    wait = min(timing.retry, max(0.0, event.left))
    return State("following", state.renewed_at, event.now + wait), []


def _tick_leading(state: State, event: Tick, timing: Timing) -> Outcome:
    if not acting(state, event.now, timing):
        return _lost(event.now, timing)
    if event.now < state.next_try:
        return state, []
    return replace(state, next_try=event.now + timing.retry), ["renew"]


def _renewed(state: State, event: Renewed, timing: Timing) -> Outcome:
    if event.ttl <= 0:
        return _lost(event.sent_at, timing)
    return replace(state, renewed_at=max(state.renewed_at, event.sent_at)), []


def _renew_failed(state: State, event: RenewFailed, timing: Timing) -> Outcome:
    return _tick_leading(state, Tick(event.now), timing)


def _lost(now: float, timing: Timing) -> Outcome:
    return State("following", float("-inf"), now + timing.retry), ["stop"]


_TABLE: dict[tuple[Role, type], Callable[[State, object, Timing], Outcome]] = {
    ("following", Tick): _tick_following,  # type: ignore[dict-item]
    ("following", Acquired): _acquired,  # type: ignore[dict-item]
    ("following", Held): _held,  # type: ignore[dict-item]
    ("leading", Tick): _tick_leading,  # type: ignore[dict-item]
    ("leading", Renewed): _renewed,  # type: ignore[dict-item]
    ("leading", RenewFailed): _renew_failed,  # type: ignore[dict-item]
}


def step(state: State, event: Input, timing: Timing) -> Outcome:
    """The next state and what the shell must do. An input the table does not
    expect in a role (a late answer after a role change) is a bug."""
    handler = _TABLE.get((state.role, type(event)))
    if handler is None:
        raise ValueError(f"leader election: {type(event).__name__} while {state.role}")
    return handler(state, event, timing)
