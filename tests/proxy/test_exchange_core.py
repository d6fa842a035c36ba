"""The exchange core without sockets: each row of its table, and Hypothesis
over event orders (resets, timeouts, lost clients at any point, retries on
and off) checking that every exchange ends once, gives back every upstream
connection it was handed, and writes one access-log record."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.proxy import exchange_core as core_mod
from pilotfish.proxy.exchange_core import (
    BACKOFF,
    COMMAND_NAMES,
    CONNECTING,
    DONE,
    EVENT_NAMES,
    HEAD_IN,
    HELD,
    PICKING,
    RESPONDING,
    RETRY_ASKED,
    SENT,
    START,
    STATE_NAMES,
    TRANSITIONS,
    TRY_FAILED,
    TUNNEL,
    ExchangeCore,
    ExchangeStateError,
)
from pilotfish.proxy.exchange_core import (
    CONNECT_FAILED as E_CONNECT_FAILED,
)
from pilotfish.proxy.exchange_core import (
    CONNECTED as E_CONNECTED,
)
from pilotfish.proxy.routing import RetryOn, RetryPolicy

E = core_mod  # events and commands by name: E.FORWARD, E.OPEN ...
RETRY = RetryPolicy(
    retry_on=RetryOn.FIVE_XX | RetryOn.CONNECT_FAILURE | RetryOn.RESET, num_retries=2
)
TRANSIENT = {PICKING, HEAD_IN, TRY_FAILED, RETRY_ASKED, HELD}


def names(commands: tuple[int, ...]) -> list[str]:
    return [COMMAND_NAMES[c] for c in commands]


def reach(state: int) -> ExchangeCore:
    """A core in `state`, by the events a real exchange would see."""
    core = ExchangeCore()
    if state == START:
        return core
    if state == DONE:
        core.on(E.LOCAL_REPLY)
        return core
    core.forward(RETRY, RETRY.num_retries)
    core.on(E.HOST_PICKED)
    if state == CONNECTING:
        return core
    if state == BACKOFF:
        core.on(E.CONNECT_FAILED)
        core.on(E.RETRY_GRANTED)
        return core
    core.on(E.CONNECTED)
    if state == RESPONDING:
        core.on(E.RESPONSE_HEAD, 200)
    elif state == TUNNEL:
        core.on(E.SWITCHED)
    assert core.state == state, STATE_NAMES[core.state]
    return core


DIRECT_ROWS = sorted(
    (key, row) for key, row in TRANSITIONS.items() if key[0] not in TRANSIENT and key[1] < 20
)


@pytest.mark.parametrize(
    ("key", "row"),
    [pytest.param(k, r, id=f"{STATE_NAMES[k[0]]}-{EVENT_NAMES[k[1]]}") for k, r in DIRECT_ROWS],
)
def test_each_row_of_a_settled_state(key: tuple[int, int], row: tuple[tuple[int, ...], int]) -> None:
    state, event = key
    core = reach(state)
    outcome: str | int = 200 if event == E.RESPONSE_HEAD else ""
    commands = core.on(event, outcome)
    expected, next_state = row
    if next_state in (HEAD_IN, TRY_FAILED):  # left at once, by the verdict: here "accept"
        verdict_row = TRANSITIONS[next_state, core_mod._ACCEPT]
        if event == E.CONNECT_FAILED or event == E.UPSTREAM_RESET or event == E.TRY_TIMEOUT:
            verdict_row = TRANSITIONS[next_state, core_mod._RETRY]  # RETRY retries these
        expected, next_state = expected + verdict_row[0], verdict_row[1]
    assert names(commands) == names(expected)
    assert STATE_NAMES[core.state] == STATE_NAMES[next_state]


@pytest.mark.parametrize(
    ("status", "retries", "commands", "state"),
    [
        (200, 2, ["cancel try timer", "write response"], RESPONDING),
        (503, 2, ["cancel try timer", "acquire retry"], HELD),
        (503, 0, ["cancel try timer", "mark exhausted", "write response"], RESPONDING),
    ],
)
def test_a_response_head_is_accepted_held_for_a_retry_or_exhausted(
    status: int, retries: int, commands: list[str], state: int
) -> None:
    core = ExchangeCore()
    core.forward(RETRY, retries)
    core.on(E.HOST_PICKED)
    core.on(E.CONNECTED)
    assert names(core.on(E.RESPONSE_HEAD, status)) == commands
    assert core.state == state


def test_a_held_response_goes_out_when_the_retry_budget_refuses() -> None:
    core = reach(SENT)
    core.on(E.RESPONSE_HEAD, 503)
    assert names(core.on(E.RETRY_REFUSED)) == ["mark exhausted", "write response"]
    assert core.state == RESPONDING


def test_a_held_response_is_dropped_with_its_connection_when_the_retry_is_granted() -> None:
    core = reach(SENT)
    core.on(E.RESPONSE_HEAD, 503)
    assert names(core.on(E.RETRY_GRANTED)) == ["close connection", "start backoff"]
    assert (core.state, core.retries_left, core.attempt) == (BACKOFF, 1, 1)
    assert names(core.on(E.BACKOFF_ELAPSED)) == ["pick host"]


def test_a_trailers_only_grpc_status_in_the_head_is_weighed_for_a_retry() -> None:
    core = ExchangeCore()
    core.forward(RetryPolicy(retry_on=RetryOn.GRPC_UNAVAILABLE, num_retries=1), 1)
    core.on(E.HOST_PICKED)
    core.on(E.CONNECTED)
    assert names(core.on(E.RESPONSE_HEAD, 200, 14)) == ["cancel try timer", "acquire retry"]
    assert core.state == HELD
    core.on(E.RETRY_GRANTED)
    core.on(E.BACKOFF_ELAPSED)
    core.on(E.HOST_PICKED)
    core.on(E.CONNECTED)
    assert names(core.on(E.RESPONSE_HEAD, 200, 0)) == ["cancel try timer", "write response"]


@pytest.mark.parametrize(
    ("retry", "retries", "commands"),
    [
        (None, 0, ["cancel try timer", "write failure", "finish"]),
        (RETRY, 2, ["cancel try timer", "acquire retry"]),
        (RETRY, 0, ["cancel try timer", "mark exhausted", "write failure", "finish"]),
    ],
)
def test_a_failed_connect_fails_retries_or_is_exhausted(
    retry: RetryPolicy | None, retries: int, commands: list[str]
) -> None:
    core = ExchangeCore()
    core.forward(retry, retries)
    core.on(E.HOST_PICKED)
    assert names(core.on(E.CONNECT_FAILED)) == commands
    assert core.failure == "UF"


@pytest.mark.parametrize(
    ("mirror", "deadline"), [(m, d) for m in (False, True) for d in (False, True)]
)
def test_a_route_without_a_mirror_or_a_timeout_is_not_told_to_arm_them(
    mirror: bool, deadline: bool
) -> None:
    core = ExchangeCore()
    commands = core.forward(None, 0, mirror=mirror, deadline=deadline)
    expected = ["mirror"] * mirror + ["arm deadline"] * deadline + ["pick host"]
    assert names(commands) == expected
    assert core.state == PICKING
    assert names(core.on(E.HOST_PICKED)) == ["start try timer", "open"]


def test_a_try_without_a_per_try_timeout_has_no_timer_commands() -> None:
    core = ExchangeCore()
    assert names(core.forward(RETRY, 1, try_timer=False)) == ["mirror", "arm deadline", "pick host"]
    assert names(core.on(E.HOST_PICKED)) == ["open"]
    assert names(core.on(E.CONNECT_FAILED)) == ["acquire retry"]  # no "cancel try timer"
    assert names(core.on(E.RETRY_GRANTED)) == ["start backoff"]
    assert names(core.on(E.BACKOFF_ELAPSED)) == ["pick host"]
    assert names(core.on(E.HOST_PICKED)) == ["open"]
    assert names(core.on(E.CONNECTED)) == ["write upstream"]
    assert names(core.on(E.RESPONSE_HEAD, 503)) == ["mark exhausted", "write response"]
    assert (core.state, core.attempt, core.retries_left) == (RESPONDING, 1, 0)
    assert names(core.on(E.RESPONSE_END)) == ["release connection", "finish"]


def test_the_untimed_table_is_the_table_without_timer_commands() -> None:
    timers = {E.START_TRY_TIMER, E.CANCEL_TRY_TIMER}
    assert core_mod.UNTIMED.keys() == TRANSITIONS.keys()
    for key, (commands, next_state) in TRANSITIONS.items():
        lean = tuple(c for c in commands if c not in timers)
        assert core_mod.UNTIMED[key] == (lean, next_state)


@pytest.mark.parametrize(
    ("table", "flat", "verdicts"),
    [
        (TRANSITIONS, core_mod.FLAT, core_mod._FUSED),
        (core_mod.UNTIMED, core_mod.FLAT_UNTIMED, core_mod._UNTIMED_FUSED),
    ],
    ids=["timed", "untimed"],
)
def test_the_flat_tables_the_core_reads_are_the_tables_as_written(
    table: core_mod.Table, flat: core_mod.FlatTable, verdicts: core_mod.FlatTable
) -> None:
    """`on` indexes flat tuples (state * N_EVENTS + event) built from the
    dicts: every pair of state and event finds the dict's row, or None where
    the dict has none (an error), and every row into a verdict state finds
    its row fused with the one each verdict leaves by."""
    assert len(EVENT_NAMES) == core_mod.N_EVENTS
    assert len(flat) == len(STATE_NAMES) * core_mod.N_EVENTS
    fused = core_mod.fused(table)
    for state in range(len(STATE_NAMES)):
        for event in range(len(EVENT_NAMES)):
            at = state * core_mod.N_EVENTS + event
            assert flat[at] == table.get((state, event)), (STATE_NAMES[state], EVENT_NAMES[event])
            for taken in range(core_mod.N_VERDICTS):
                row = verdicts[at * core_mod.N_VERDICTS + taken]
                assert row == fused.get((state, event, taken))
    assert sum(row is not None for row in verdicts) == len(fused)


def test_forward_twice_is_an_error_and_changes_nothing() -> None:
    core = reach(SENT)
    with pytest.raises(ExchangeStateError, match="unexpected forward while SENT"):
        core.forward(None, 0, mirror=False, deadline=False, try_timer=False)
    assert core.state == SENT
    assert names(core.on(E.RESPONSE_HEAD, 200)) == ["cancel try timer", "write response"]


def test_a_body_not_kept_whole_cannot_be_retried() -> None:
    core = reach(SENT)
    core.replayable = False
    assert names(core.on(E.UPSTREAM_RESET, "UC")) == [
        "cancel try timer", "close connection", "mark exhausted", "write failure", "finish",
    ]  # fmt: skip
    assert core.failure == "UC"


def test_a_refused_retry_of_a_failure_answers_with_that_failure() -> None:
    core = reach(CONNECTING)
    core.on(E.TRY_TIMEOUT)
    assert names(core.on(E.RETRY_REFUSED)) == ["mark exhausted", "write failure", "finish"]
    assert (core.state, core.failure) == (DONE, "UT")


def test_the_deadline_mid_response_cuts_it_short() -> None:
    core = reach(RESPONDING)
    assert names(core.on(E.DEADLINE)) == [
        "cut short", "close connection", "close downstream", "finish",
    ]  # fmt: skip
    assert core.failure == "UT"


def test_a_response_that_ends_before_the_request_still_releases_through_the_shell() -> None:
    core = reach(RESPONDING)
    assert not core.request_done  # RELEASE_CONNECTION closes it, then
    assert names(core.on(E.RESPONSE_END)) == ["release connection", "finish"]
    core.on(E.REQUEST_END)
    assert core.request_done


def test_an_event_with_no_row_is_an_error_naming_it() -> None:
    core = ExchangeCore()
    with pytest.raises(ExchangeStateError, match="unexpected response end while START"):
        core.on(E.RESPONSE_END)
    assert core.state == START  # and nothing changed
    done = reach(DONE)
    with pytest.raises(ExchangeStateError, match="unexpected forward while DONE"):
        done.on(E.FORWARD)


def test_every_row_is_reachable_and_every_command_named() -> None:
    assert len(COMMAND_NAMES) == E.RETURN_CONNECTION + 1
    assert len(EVENT_NAMES) == core_mod._EXHAUSTED + 1
    for (state, event), (commands, next_state) in TRANSITIONS.items():
        assert 0 <= state < len(STATE_NAMES) and 0 <= next_state < len(STATE_NAMES)
        assert all(0 <= c < len(COMMAND_NAMES) for c in commands)
        # A command whose outcome comes back as an event ends its row.
        for feeding in (E.PICK_HOST, E.OPEN, E.ACQUIRE_RETRY):
            assert feeding not in commands[:-1], (STATE_NAMES[state], EVENT_NAMES[event])


# -- Hypothesis: a world that delivers whatever could happen next --------------------------------


@dataclass
class World:
    """The shell and its sockets, reduced to what the core's promises are about."""

    draw: st.DataObject
    core: ExchangeCore = field(default_factory=ExchangeCore)
    per_try: bool = False
    held: int | None = None  # the connection the exchange holds
    sent: bool = False  # the request went on `held`
    answering: bool = False  # a response is coming on `held`
    in_flight: list[int] = field(default_factory=list)  # connects asked for, not yet delivered
    given_back: set[int] = field(default_factory=set)  # released, closed or returned
    delivered: set[int] = field(default_factory=set)
    late: int | None = None  # a connection delivered after its try was given up
    next_conn: int = 0
    try_timer: bool = False
    backoff: bool = False
    deadline: bool = False
    downstream_open: bool = True
    request_done: bool = False
    forwarded: bool = False
    finished: int = 0
    access_log: int = 0
    written: int = 0  # responses written downstream (the proxy's or the upstream's)
    log: list[str] = field(default_factory=list)

    def feed(self, event: int, outcome: str | int = "") -> None:
        self.log.append(f"{EVENT_NAMES[event]} {outcome}".strip())
        commands = self.core.on(event, outcome)
        assert self.finished == 0 or not commands or commands[0] in (
            E.RETURN_CONNECTION,
        ), f"{names(commands)} after the end"
        for command in commands:
            self.carry_out(command)

    def give_back(self) -> None:
        if self.held is not None:
            self.given_back.add(self.held)
        self.held, self.sent, self.answering = None, False, False

    def carry_out(self, command: int) -> None:
        self.log.append(f"  {COMMAND_NAMES[command]}")
        if command == E.PICK_HOST:
            self.feed(E.HOST_PICKED if self.draw.draw(st.booleans()) else E.NO_HOST)
        elif command == E.OPEN:
            if self.draw.draw(st.integers(0, 9)) == 0:
                self.feed(E.OVERFLOW)
                return
            self.next_conn += 1
            self.in_flight.append(self.next_conn)
            if self.draw.draw(st.booleans()):  # an idle connection, at once
                self.deliver(self.in_flight.pop())
        elif command == E.START_TRY_TIMER:
            self.try_timer = self.per_try
        elif command == E.CANCEL_TRY_TIMER:
            self.try_timer = False
        elif command == E.WRITE_UPSTREAM:
            assert self.held is not None
            self.sent = True
        elif command in (E.CLOSE_CONNECTION, E.RELEASE_CONNECTION):
            self.give_back()
        elif command == E.RETURN_CONNECTION:
            assert self.late is not None
            self.given_back.add(self.late)
            self.late = None
        elif command == E.ACQUIRE_RETRY:
            self.feed(E.RETRY_GRANTED if self.draw.draw(st.booleans()) else E.RETRY_REFUSED)
        elif command == E.START_BACKOFF:
            self.backoff = True
        elif command in (E.WRITE_RESPONSE, E.WRITE_LOCAL, E.WRITE_FAILURE):
            self.written += 1
        elif command == E.ARM_DEADLINE:
            self.deadline = True
        elif command == E.CLOSE_DOWNSTREAM:
            self.downstream_open = False
        elif command == E.FINISH:
            self.finished += 1
            self.access_log += 1  # the shell's finish() writes the record
            self.try_timer = self.backoff = self.deadline = False

    def deliver(self, conn: int) -> None:
        self.delivered.add(conn)
        if self.core.state == CONNECTING:
            self.held, self.sent, self.answering = conn, False, False
        else:
            self.late = conn  # the core must give it back (RETURN_CONNECTION)
        self.feed(E_CONNECTED)
        assert self.late is None, "a late connection was kept"

    def possible(self) -> list[str]:
        """What sockets and timers could bring now."""
        out = []
        if self.core.state == START and not self.forwarded:
            out += ["forward", "local reply"]
        if self.core.state != DONE:
            out.append("local reply")  # a request or stream-idle timeout
        if self.downstream_open:
            out.append("downstream lost")
        if not self.request_done:
            out += ["request body", "request end"]
        if self.in_flight:
            out += ["connected", "connect failed"]
        if self.try_timer:
            out.append("try timeout")
        if self.backoff:
            out.append("backoff elapsed")
        if self.deadline:
            out.append("deadline")
        if self.held is not None and self.sent:
            out += ["reset"]
            out += ["response body", "response end"] if self.answering else ["response head"]
        return out

    def step(self, what: str) -> None:
        if what == "forward":
            self.forwarded = True
            retry = self.draw.draw(st.sampled_from([None, RETRY]))
            self.per_try = self.draw.draw(st.booleans())
            if retry is None and self.per_try:
                self.feed(E.FORWARD)
            else:
                self.run_forward(retry)
        elif what == "local reply":
            self.forwarded = True
            self.feed(E.LOCAL_REPLY)
        elif what == "downstream lost":
            self.downstream_open = False
            self.feed(E.DOWNSTREAM_LOST)
        elif what == "request body":
            self.feed(E.REQUEST_BODY)
        elif what == "request end":
            self.request_done = True
            self.feed(E.REQUEST_END)
        elif what == "connected":
            self.deliver(self.in_flight.pop(self.draw.draw(st.integers(0, len(self.in_flight) - 1))))
        elif what == "connect failed":
            self.in_flight.pop(self.draw.draw(st.integers(0, len(self.in_flight) - 1)))
            self.feed(E_CONNECT_FAILED)
        elif what == "try timeout":
            self.try_timer = False
            self.feed(E.TRY_TIMEOUT)
        elif what == "backoff elapsed":
            self.backoff = False
            self.feed(E.BACKOFF_ELAPSED)
        elif what == "deadline":
            self.deadline = False
            self.feed(E.DEADLINE)
        elif what == "reset":
            self.give_back()  # the pool closed it
            self.feed(E.UPSTREAM_RESET, self.draw.draw(st.sampled_from(["UC", "UPE", "UF"])))
        elif what == "response head":
            self.answer()
        elif what == "response body":
            self.feed(E.RESPONSE_BODY)
        elif what == "response end":
            self.feed(E.RESPONSE_END)  # a tunnel's changes nothing: it ends when a side closes

    def run_forward(self, retry: RetryPolicy | None) -> None:
        """Through forward(); a try without a per-try timeout runs on the
        table without timer commands, which must keep every promise too."""
        retries = retry.num_retries if retry is not None else 0
        self.log.append(f"forward (retries {retries}, try timer {self.per_try})")
        mirror, deadline = self.draw.draw(st.booleans()), self.draw.draw(st.booleans())
        commands = self.core.forward(
            retry, retries, mirror=mirror, deadline=deadline, try_timer=self.per_try
        )
        assert (E.MIRROR in commands, E.ARM_DEADLINE in commands) == (mirror, deadline)
        for command in commands:
            self.carry_out(command)

    def answer(self) -> None:
        if self.draw.draw(st.integers(0, 7)) == 0:
            self.answering = True
            self.feed(E.SWITCHED)
            return
        status = self.draw.draw(st.sampled_from([200, 404, 503]))
        self.answering = True
        self.feed(E.RESPONSE_HEAD, status)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_every_exchange_ends_once_gives_back_its_connections_and_logs_once(
    data: st.DataObject,
) -> None:
    world = World(data)
    for _ in range(60):
        possible = world.possible()
        if not possible:
            break
        world.step(data.draw(st.sampled_from(possible)))
    # Then the world winds down: the client goes, late connects land.
    if world.downstream_open:
        world.step("downstream lost")
    while world.in_flight:
        world.step("connected")
    trace = "\n".join(world.log)
    assert world.core.state == DONE, trace
    assert (world.finished, world.access_log) == (1, 1), trace
    assert world.written <= 1, trace
    assert world.held is None, trace
    assert world.delivered <= world.given_back, trace
    assert not (world.try_timer or world.backoff or world.deadline), trace
