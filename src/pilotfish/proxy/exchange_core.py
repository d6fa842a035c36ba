"""One request/response exchange as a state machine, without I/O.

The shell (proxy/exchange.py) turns what happens on sockets and timers into
events, feeds them to `ExchangeCore.on`, and carries out the commands that
come back, in order. The core decides what the exchange does next: which
tries it makes, when it gives up, how it ends; the shell decides how (HTTP/1.1
framing, header rewriting, the pool, asyncio timers). Nothing here knows
about HTTP/1.1: an HTTP/2 stream drives the same events.

Three commands have an outcome the shell feeds straight back as an event,
so each ends its row: PICK_HOST (HOST_PICKED, NO_HOST), OPEN (CONNECTED now
or later, CONNECT_FAILED later, OVERFLOW now), ACQUIRE_RETRY (the cluster's
retry budget: RETRY_GRANTED, RETRY_REFUSED).

The states marked * are transient. HEAD_IN and TRY_FAILED are left within
the same `on` call by asking upstream/retry.verdict whether the try's
outcome is accepted, retried, or retriable with no retry left (EXHAUSTED:
Envoy's URX); RETRY_ASKED and HELD (a response held while its retry is
asked for) by the answer to ACQUIRE_RETRY.
"""

from __future__ import annotations

from typing import Final

from pilotfish.proxy.routing import RetryPolicy
from pilotfish.proxy.upstream.retry import ACCEPT, EXHAUSTED, RETRY, verdict

# -- the state machine ------------------------------------------------------------------------
#
#           forward          host picked           connected         response head
#   START ---------> PICKING* ---------> CONNECTING --------> SENT -----------> HEAD_IN*
#     |                | no host,          | connect failed,   | reset,           | accept,
#     |                | overflow          | try timeout       | try timeout      | exhausted
#     |                v                   v                   |                  v
#     |              DONE             TRY_FAILED* <------------+   RESPONDING --end--> DONE
#     |                                 |     |                    (TUNNEL on a switch)
#     |                          accept,|     |retry                      ^
#     |                        exhausted|     v                   refused |   retry
#     |  local reply,                   |  RETRY_ASKED*          HELD* <--+---- HEAD_IN
#     |  downstream lost                v     | granted            | granted
#     +----------------> DONE         DONE    +---> BACKOFF <------+
#                                   (refused)         | elapsed
#                                                     +--------> PICKING
#
#    From every state but the transient ones (*) and DONE: a local reply
#    (route, filters, request or idle timeout), the route's deadline and a
#    lost downstream end the exchange, dropping whatever upstream it holds.
#
# Plain ints rather than an Enum, as protocol/http1 has them: the shell feeds
# several events per request. Final literals, so that mypyc inlines them (see
# protocol/http1).

START: Final = 0
PICKING: Final = 1
CONNECTING: Final = 2
SENT: Final = 3
HEAD_IN: Final = 4
TRY_FAILED: Final = 5
RETRY_ASKED: Final = 6
HELD: Final = 7
BACKOFF: Final = 8
RESPONDING: Final = 9
TUNNEL: Final = 10
DONE: Final = 11
STATE_NAMES: Final = (
    "START", "PICKING", "CONNECTING", "SENT", "HEAD_IN", "TRY_FAILED",
    "RETRY_ASKED", "HELD", "BACKOFF", "RESPONDING", "TUNNEL", "DONE",
)  # fmt: skip

# Events, from the shell.
FORWARD: Final = 0
LOCAL_REPLY: Final = 1
DOWNSTREAM_LOST: Final = 2
REQUEST_BODY: Final = 3
REQUEST_END: Final = 4
HOST_PICKED: Final = 5
NO_HOST: Final = 6
OVERFLOW: Final = 7
CONNECTED: Final = 8
CONNECT_FAILED: Final = 9
RESPONSE_HEAD: Final = 10
SWITCHED: Final = 11
RESPONSE_BODY: Final = 12
RESPONSE_END: Final = 13
UPSTREAM_RESET: Final = 14
TRY_TIMEOUT: Final = 15
DEADLINE: Final = 16
BACKOFF_ELAPSED: Final = 17
RETRY_GRANTED: Final = 18
RETRY_REFUSED: Final = 19
# Events the core gives itself, leaving a transient state.
_ACCEPT: Final = 20
_RETRY: Final = 21
_EXHAUSTED: Final = 22
EVENT_NAMES: Final = (
    "forward", "local reply", "downstream lost", "request body", "request end",
    "host picked", "no host", "overflow", "connected", "connect failed",
    "response head", "switched", "response body", "response end", "upstream reset",
    "try timeout", "deadline", "backoff elapsed", "retry granted", "retry refused",
    "accept", "retry", "exhausted",
)  # fmt: skip

# Commands, to the shell.
MIRROR: Final = 0
ARM_DEADLINE: Final = 1
PICK_HOST: Final = 2
START_TRY_TIMER: Final = 3
OPEN: Final = 4
WRITE_UPSTREAM: Final = 5
BUFFER: Final = 6
CANCEL_TRY_TIMER: Final = 7
LEAVE_QUEUE: Final = 8
CLOSE_CONNECTION: Final = 9
RELEASE_CONNECTION: Final = 10
ACQUIRE_RETRY: Final = 11
START_BACKOFF: Final = 12
MARK_EXHAUSTED: Final = 13
WRITE_RESPONSE: Final = 14
WRITE_DOWNSTREAM: Final = 15
WRITE_LOCAL: Final = 16
WRITE_FAILURE: Final = 17
CUT_SHORT: Final = 18
FLAG_DC: Final = 19
CLOSE_DOWNSTREAM: Final = 20
FINISH: Final = 21
RETURN_CONNECTION: Final = 22
COMMAND_NAMES: Final = (
    "mirror", "arm deadline", "pick host", "start try timer", "open",
    "write upstream", "buffer", "cancel try timer", "leave queue", "close connection",
    "release connection", "acquire retry", "start backoff", "mark exhausted", "write response",
    "write downstream", "write local", "write failure", "cut short", "flag DC",
    "close downstream", "finish", "return connection",
)  # fmt: skip

Row = tuple[tuple[int, ...], int]

# Ending before any response went downstream: the client gets the proxy's
# reply; after one began, all it can be told is a closed connection.
_ANSWER_LOCAL: Final = (WRITE_LOCAL, FINISH)
_CUT: Final = (CLOSE_CONNECTION, CLOSE_DOWNSTREAM, FINISH)
_FAIL: Final = (WRITE_FAILURE, FINISH)

TRANSITIONS: Final[dict[tuple[int, int], Row]] = {
    (START, FORWARD): ((MIRROR, ARM_DEADLINE, PICK_HOST), PICKING),
    (START, LOCAL_REPLY): (_ANSWER_LOCAL, DONE),
    (START, DOWNSTREAM_LOST): ((FLAG_DC, FINISH), DONE),
    (START, REQUEST_BODY): ((BUFFER,), START),
    (START, REQUEST_END): ((), START),
    (PICKING, HOST_PICKED): ((START_TRY_TIMER, OPEN), CONNECTING),
    (PICKING, NO_HOST): (_FAIL, DONE),
    (CONNECTING, OVERFLOW): ((CANCEL_TRY_TIMER, *_FAIL), DONE),
    (CONNECTING, CONNECTED): ((WRITE_UPSTREAM,), SENT),
    (CONNECTING, CONNECT_FAILED): ((CANCEL_TRY_TIMER,), TRY_FAILED),
    (CONNECTING, TRY_TIMEOUT): ((LEAVE_QUEUE,), TRY_FAILED),
    (CONNECTING, DEADLINE): ((LEAVE_QUEUE, *_FAIL), DONE),
    (CONNECTING, LOCAL_REPLY): ((LEAVE_QUEUE, *_ANSWER_LOCAL), DONE),
    (CONNECTING, DOWNSTREAM_LOST): ((FLAG_DC, LEAVE_QUEUE, FINISH), DONE),
    (CONNECTING, REQUEST_BODY): ((BUFFER,), CONNECTING),
    (CONNECTING, REQUEST_END): ((), CONNECTING),
    (SENT, RESPONSE_HEAD): ((CANCEL_TRY_TIMER,), HEAD_IN),
    (SENT, SWITCHED): ((CANCEL_TRY_TIMER, WRITE_RESPONSE), TUNNEL),
    (SENT, UPSTREAM_RESET): ((CANCEL_TRY_TIMER, CLOSE_CONNECTION), TRY_FAILED),
    (SENT, TRY_TIMEOUT): ((CLOSE_CONNECTION,), TRY_FAILED),
    (SENT, DEADLINE): ((CLOSE_CONNECTION, *_FAIL), DONE),
    (SENT, LOCAL_REPLY): ((CLOSE_CONNECTION, *_ANSWER_LOCAL), DONE),
    (SENT, DOWNSTREAM_LOST): ((FLAG_DC, CLOSE_CONNECTION, FINISH), DONE),
    (SENT, REQUEST_BODY): ((WRITE_UPSTREAM,), SENT),
    (SENT, REQUEST_END): ((WRITE_UPSTREAM,), SENT),
    (HEAD_IN, _ACCEPT): ((WRITE_RESPONSE,), RESPONDING),
    (HEAD_IN, _EXHAUSTED): ((MARK_EXHAUSTED, WRITE_RESPONSE), RESPONDING),
    (HEAD_IN, _RETRY): ((ACQUIRE_RETRY,), HELD),
    (TRY_FAILED, _ACCEPT): (_FAIL, DONE),
    (TRY_FAILED, _EXHAUSTED): ((MARK_EXHAUSTED, *_FAIL), DONE),
    (TRY_FAILED, _RETRY): ((ACQUIRE_RETRY,), RETRY_ASKED),
    (RETRY_ASKED, RETRY_GRANTED): ((START_BACKOFF,), BACKOFF),
    (RETRY_ASKED, RETRY_REFUSED): ((MARK_EXHAUSTED, *_FAIL), DONE),
    # A response held for a retry is dropped with its connection once the
    # retry is granted; refused, it goes to the client after all (URX).
    (HELD, RETRY_GRANTED): ((CLOSE_CONNECTION, START_BACKOFF), BACKOFF),
    (HELD, RETRY_REFUSED): ((MARK_EXHAUSTED, WRITE_RESPONSE), RESPONDING),
    (BACKOFF, BACKOFF_ELAPSED): ((PICK_HOST,), PICKING),
    (BACKOFF, DEADLINE): (_FAIL, DONE),
    (BACKOFF, LOCAL_REPLY): (_ANSWER_LOCAL, DONE),
    (BACKOFF, DOWNSTREAM_LOST): ((FLAG_DC, FINISH), DONE),
    (BACKOFF, REQUEST_BODY): ((BUFFER,), BACKOFF),
    (BACKOFF, REQUEST_END): ((), BACKOFF),
    (RESPONDING, RESPONSE_BODY): ((WRITE_DOWNSTREAM,), RESPONDING),
    (RESPONDING, RESPONSE_END): ((RELEASE_CONNECTION, FINISH), DONE),
    (RESPONDING, UPSTREAM_RESET): ((CUT_SHORT, *_CUT), DONE),
    (RESPONDING, DEADLINE): ((CUT_SHORT, *_CUT), DONE),
    (RESPONDING, LOCAL_REPLY): (_CUT, DONE),
    (RESPONDING, DOWNSTREAM_LOST): ((FLAG_DC, CLOSE_CONNECTION, FINISH), DONE),
    (RESPONDING, REQUEST_BODY): ((WRITE_UPSTREAM,), RESPONDING),
    (RESPONDING, REQUEST_END): ((WRITE_UPSTREAM,), RESPONDING),
    # A tunnel carries bytes both ways until either side closes.
    (TUNNEL, RESPONSE_BODY): ((WRITE_DOWNSTREAM,), TUNNEL),
    (TUNNEL, RESPONSE_END): ((), TUNNEL),
    (TUNNEL, REQUEST_BODY): ((WRITE_UPSTREAM,), TUNNEL),
    (TUNNEL, REQUEST_END): ((), TUNNEL),
    (TUNNEL, UPSTREAM_RESET): (_CUT, DONE),
    (TUNNEL, DEADLINE): ((CUT_SHORT, *_CUT), DONE),
    (TUNNEL, LOCAL_REPLY): (_CUT, DONE),
    (TUNNEL, DOWNSTREAM_LOST): ((CLOSE_CONNECTION, FINISH), DONE),
    # After the end, late news changes nothing: the rest of a request
    # answered early is read and dropped.
    (DONE, DOWNSTREAM_LOST): ((), DONE),
    (DONE, REQUEST_BODY): ((), DONE),
    (DONE, REQUEST_END): ((), DONE),
}
# A connection an earlier try asked for (a connect the pool could not call
# off) may come, or fail, once the exchange moved on: it goes back unused.
for _state in (SENT, BACKOFF, RESPONDING, TUNNEL, DONE):
    TRANSITIONS[_state, CONNECTED] = ((RETURN_CONNECTION,), _state)
    TRANSITIONS[_state, CONNECT_FAILED] = ((), _state)

_VERDICT_EVENTS: Final = {ACCEPT: _ACCEPT, RETRY: _RETRY, EXHAUSTED: _EXHAUSTED}

Table = dict[tuple[int, int], Row]
# What `on` reads: a table laid out flat, row (state, event) at
# state * N_EVENTS + event (None: no such row). Indexing a tuple by an int is
# a fraction of hashing a (state, event) tuple for a dict, several times a
# request; the dicts stay the readable form, and these are built from them.
FlatTable = tuple[Row | None, ...]
N_EVENTS: Final = 23  # len(EVENT_NAMES)
N_VERDICTS: Final = 3  # ACCEPT, RETRY, EXHAUSTED


def without(table: Table, dropped: frozenset[int]) -> Table:
    """`table` with the commands in `dropped` taken out of every row."""
    return {key: (tuple(c for c in row if c not in dropped), s) for key, (row, s) in table.items()}


def fused(table: Table) -> dict[tuple[int, int, int], Row]:
    """Each row into a transient verdict state joined with the row that leaves
    it, by verdict: built once, so a request's `on` allocates no tuple."""
    return {
        (state, event, taken): (cmds + table[after, left][0], table[after, left][1])
        for (state, event), (cmds, after) in table.items()
        if after in (TRY_FAILED, HEAD_IN)
        for taken, left in _VERDICT_EVENTS.items()
    }


def flat(table: Table) -> FlatTable:
    """`table` as `on` reads it: row (state, event) at state * N_EVENTS + event."""
    rows: list[Row | None] = [None] * (len(STATE_NAMES) * N_EVENTS)
    for (state, event), row in table.items():
        rows[state * N_EVENTS + event] = row
    return tuple(rows)


def flat_fused(table: Table) -> FlatTable:
    """`fused(table)` laid out flat: row (state, event, verdict) at
    (state * N_EVENTS + event) * N_VERDICTS + verdict."""
    rows: list[Row | None] = [None] * (len(STATE_NAMES) * N_EVENTS * N_VERDICTS)
    for (state, event, taken), row in fused(table).items():
        rows[(state * N_EVENTS + event) * N_VERDICTS + taken] = row
    return tuple(rows)


# A try with no per-try timeout has no timer to start or cancel: its
# exchange runs on a table without those commands (one shell call less
# per try, and one per response).
UNTIMED: Final = without(TRANSITIONS, frozenset({START_TRY_TIMER, CANCEL_TRY_TIMER}))
FLAT: Final = flat(TRANSITIONS)
FLAT_UNTIMED: Final = flat(UNTIMED)
_FUSED: Final = flat_fused(TRANSITIONS)
_UNTIMED_FUSED: Final = flat_fused(UNTIMED)

# (START, FORWARD) for a route without a mirror and/or a timeout, at
# mirror * 2 + deadline: a command with nothing to do is still a shell call.
# A tuple indexed by an int, where a dict keyed by (mirror, deadline) built
# and hashed a tuple per request.
_FORWARD_ROWS: Final = tuple(
    tuple(
        c for c in TRANSITIONS[START, FORWARD][0]
        if (c != MIRROR or mirror) and (c != ARM_DEADLINE or deadline)
    )
    for mirror in (False, True)
    for deadline in (False, True)
)  # fmt: skip

# The Envoy flag of a failure, where the event alone says it ("" for the
# others); by event, a tuple: `on` reads it for most events, and a dict's
# get boxed the event and hashed it.
_FLAGS: Final = {
    NO_HOST: "UH", OVERFLOW: "UO", CONNECT_FAILED: "UF", TRY_TIMEOUT: "UT", DEADLINE: "UT",
    UPSTREAM_RESET: "UC",
}  # fmt: skip
_FLAG_OF: Final = tuple(_FLAGS.get(event, "") for event in range(N_EVENTS))


class ExchangeStateError(Exception):
    """An event the transition table has no entry for: a bug in the shell."""


class ExchangeCore:
    """Where one exchange is, and what its retries have left.

    `failure` is the Envoy flag of the last failed try (or of a deadline),
    for WRITE_FAILURE; `replayable` goes False when the request body was not
    kept whole, so it cannot be sent again; `request_done` says whether the
    whole request went upstream, so a response that ends before it closes
    its connection rather than releasing it (RELEASE_CONNECTION means
    "release if the request is complete, else close")."""

    __slots__ = (
        "attempt", "failure", "replayable", "request_done", "retries_left", "retry", "state",
        "table", "verdict_rows",
    )  # fmt: skip

    def __init__(self) -> None:
        self.state = START
        self.retry: RetryPolicy | None = None
        self.retries_left = 0
        self.attempt = 0  # retries granted so far
        self.failure = ""
        self.replayable = True
        self.request_done = False
        self.table: FlatTable = FLAT
        self.verdict_rows: FlatTable = _FUSED

    def __repr__(self) -> str:
        return f"<ExchangeCore {STATE_NAMES[self.state]} retries_left={self.retries_left}>"

    def forward(
        self,
        retry: RetryPolicy | None,
        retries: int,
        *,
        mirror: bool = True,
        deadline: bool = True,
        try_timer: bool = True,
    ) -> tuple[int, ...]:
        """The route forwards: the commands that start the first try. A route
        with no mirror, no timeout or no per-try timeout says so, and is not
        told to MIRROR, ARM_DEADLINE or START/CANCEL_TRY_TIMER."""
        self._step(self.state, FORWARD)  # raises unless START, changing nothing
        self.retry, self.retries_left = retry, retries
        if not try_timer:
            self.table, self.verdict_rows = FLAT_UNTIMED, _UNTIMED_FUSED
        self.state = PICKING
        return _FORWARD_ROWS[2 * mirror + deadline]

    def on(
        self, event: int, outcome: str | int = "", grpc_status: int | None = None
    ) -> tuple[int, ...]:
        """The commands for `event`. `outcome` is a response head's status
        (RESPONSE_HEAD, with the grpc-status among its headers, if any) or a
        failure's Envoy flag: UPSTREAM_RESET's (UC by default, UPE, UF for a
        refused certificate); the others' are implied."""
        if event == REQUEST_END:
            self.request_done = True
        commands, state = self._step(self.state, event)
        if isinstance(outcome, str):
            outcome = outcome or _FLAG_OF[event]
            if outcome:
                self.failure = outcome
        if state in (TRY_FAILED, HEAD_IN):
            taken = verdict(self.retry, self.retries_left, self.replayable, outcome, grpc_status)
            fused_row = self.verdict_rows[(self.state * N_EVENTS + event) * N_VERDICTS + taken]
            assert fused_row is not None  # every row into a verdict state has its three
            commands, state = fused_row
        elif event == RETRY_GRANTED:
            self.retries_left -= 1
            self.attempt += 1
        self.state = state
        return commands

    def _step(self, state: int, event: int) -> Row:
        row = self.table[state * N_EVENTS + event]
        if row is None:
            raise ExchangeStateError(
                f"unexpected {EVENT_NAMES[event]} while {STATE_NAMES[state]}"
            )
        return row

