"""Jaeger's query API shapes (pure): search parameters in, traces out.

As Jaeger's HTTP API (`/api/traces`, the one its UI calls): every answer is
`{"data": ..., "total": N, "limit": 0, "offset": 0, "errors": null}`, and
an error `{"data": null, ..., "errors": [{"code": 400, "msg": "..."}]}`.
A trace is `{"traceID", "spans", "processes", "warnings"}`, each span
naming its process by key ("p1", "p2", ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from pilotfish.api.gotypes import parse_duration_ns
from pilotfish.objects import Obj
from pilotfish.tracing.store import Query

DEFAULT_LIMIT = 20  # the Jaeger UI's default
MAX_LIMIT = 1000
STATUSES = {"error": True, "ok": False}
_TRACE_ID = re.compile(r"[0-9a-fA-F]{1,32}")


class BadQuery(ValueError):
    """A parameter Jaeger would refuse with 400; the message says which and why."""


def answer(data: object, total: int | None = None) -> Obj:
    count = total if total is not None else len(data) if isinstance(data, list) else 0
    return {"data": data, "total": count, "limit": 0, "offset": 0, "errors": None}


def error_answer(code: int, message: str) -> Obj:
    return {
        "data": None,
        "total": 0,
        "limit": 0,
        "offset": 0,
        "errors": [{"code": code, "msg": message}],
    }


def trace_id(text: str) -> str:
    """Jaeger's id as the store keeps it: lower-case hex, left-padded to 32 digits."""
    if not _TRACE_ID.fullmatch(text):
        raise BadQuery(f"malformed parameter traceID: {text[:64]!r} is not a hexadecimal trace id")
    return text.lower().rjust(32, "0")


def parse_query(params: Mapping[str, str]) -> Query:
    service = params.get("service", "")
    if not service:
        raise BadQuery("parameter 'service' is required")
    minimum = _duration_us(params, "minDuration")
    maximum = _duration_us(params, "maxDuration")
    if minimum is not None and maximum is not None and maximum < minimum:
        raise BadQuery("'maxDuration' should be greater than 'minDuration'")
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadQuery(f"malformed parameter status: {status!r}: expected error or ok")
    return Query(
        service=service,
        operation=params.get("operation") or None,
        min_duration_us=minimum,
        max_duration_us=maximum,
        error=None if status is None else STATUSES[status],
        start_us=_int(params, "start"),
        end_us=_int(params, "end"),
        tags=_tags(params.get("tags") or ""),
        limit=_limit(params),
    )


def _duration_us(params: Mapping[str, str], name: str) -> int | None:
    text = params.get(name) or ""
    if not text:
        return None
    try:
        nanos = parse_duration_ns(text)
    except ValueError as e:
        raise BadQuery(f"malformed parameter {name}: {e}") from e
    if nanos < 0:
        raise BadQuery(f"malformed parameter {name}: {text!r} is negative")
    return nanos // 1000


def _int(params: Mapping[str, str], name: str) -> int | None:
    text = params.get(name) or ""
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise BadQuery(f"malformed parameter {name}: {text[:40]!r} is not a number of microseconds")
    return int(text)


def _limit(params: Mapping[str, str]) -> int:
    text = params.get("limit") or ""
    if not text:
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit() and len(text) <= 7 and 0 < int(text) <= MAX_LIMIT):
        raise BadQuery(f"malformed parameter limit: {text[:40]!r}: expected 1 to {MAX_LIMIT}")
    return int(text)


def _tags(text: str) -> tuple[tuple[str, str], ...]:
    """Jaeger's `tags={"key":"value"}` (a JSON object of strings)."""
    if not text:
        return ()
    try:
        parsed = json.loads(text)
    except ValueError as e:
        raise BadQuery(f"malformed parameter tags: {e}") from e
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise BadQuery(
            'malformed parameter tags: expected a JSON object of strings, e.g. {"k":"v"}'
        )
    return tuple(sorted(parsed.items()))


def trace(spans: list[Obj]) -> Obj:
    """Jaeger's trace from stored spans (each with its process inline)."""
    processes: dict[str, Obj] = {}
    keys: dict[str, str] = {}
    out = []
    for span in spans:
        process = span.get("process") or {}
        signature = json.dumps(process, sort_keys=True)
        if signature not in keys:
            keys[signature] = f"p{len(keys) + 1}"
            processes[keys[signature]] = process
        out.append(
            {**{k: v for k, v in span.items() if k != "process"}, "processID": keys[signature]}
        )
    return {"traceID": spans[0]["traceID"], "spans": out, "processes": processes, "warnings": None}
