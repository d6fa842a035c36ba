"""The shell's side of each exchange_core command: the Exchange method that
carries it out.

A chain of comparisons rather than a table of unbound methods: compiled,
each branch is a direct call of the compiled method, where a table entry is
a generic Python call (argument parsing, a bound-method object) for every
command of every request. The body commands (BUFFER, WRITE_DOWNSTREAM, and
WRITE_UPSTREAM for a body piece) are carried out where the bytes are, in
Exchange.request_body and on_response; reaching them here is a bug.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pilotfish.proxy.exchange_core import (
    ACQUIRE_RETRY,
    ARM_DEADLINE,
    BUFFER,
    CANCEL_TRY_TIMER,
    CLOSE_CONNECTION,
    CLOSE_DOWNSTREAM,
    CUT_SHORT,
    FINISH,
    FLAG_DC,
    LEAVE_QUEUE,
    MARK_EXHAUSTED,
    MIRROR,
    OPEN,
    PICK_HOST,
    RELEASE_CONNECTION,
    RETURN_CONNECTION,
    START_BACKOFF,
    START_TRY_TIMER,
    WRITE_DOWNSTREAM,
    WRITE_FAILURE,
    WRITE_LOCAL,
    WRITE_RESPONSE,
    WRITE_UPSTREAM,
)

if TYPE_CHECKING:
    from pilotfish.proxy.exchange import Exchange


def carry_out(ex: Exchange, command: int) -> None:
    """Run `command` on `ex`. One flat chain, a forwarded request's commands
    first in the order they come: interpreted, a nested helper per group of
    commands was one more Python call for each."""
    if command == PICK_HOST:
        ex.pick_host()
    elif command == OPEN:
        ex.open_connection()
    elif command == WRITE_UPSTREAM:
        ex.send_request()
    elif command == WRITE_RESPONSE:
        ex.write_response()
    elif command == RELEASE_CONNECTION:
        ex.release_connection()
    elif command == FINISH:
        ex.finish()
    elif command == WRITE_LOCAL:
        ex.write_local()
    elif command == MIRROR:
        ex.mirror_now()
    elif command == ARM_DEADLINE:
        ex.start_deadline()
    elif command == START_TRY_TIMER:
        ex.start_try_timer()
    elif command == CANCEL_TRY_TIMER:
        ex.cancel_try_timer()
    elif command == LEAVE_QUEUE:
        ex.leave_queue()
    elif command == CLOSE_CONNECTION:
        ex.close_connection()
    elif command == ACQUIRE_RETRY:
        ex.acquire_retry()
    elif command == START_BACKOFF:
        ex.start_backoff()
    elif command == MARK_EXHAUSTED:
        ex.mark_exhausted()
    elif command == WRITE_FAILURE:
        ex.write_failure()
    elif command == CUT_SHORT:
        ex.cut_short()
    elif command == FLAG_DC:
        ex.flag_dc()
    elif command == CLOSE_DOWNSTREAM:
        ex.close_downstream()
    elif command == RETURN_CONNECTION:
        ex.return_connection()
    elif command in (BUFFER, WRITE_DOWNSTREAM):
        ex.cannot_carry()
    else:
        raise ValueError(f"no such exchange command: {command}")
