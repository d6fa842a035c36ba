"""W3C Trace Context and B3 read and written without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotfish.proxy.tracing.propagation import (
    Incoming,
    decide,
    extract,
    inject,
    parse_traceparent,
    start_span,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


def test_traceparent_parsed() -> None:
    found = extract([(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()), (b"tracestate", b"a=1")])
    assert found == Incoming(bytes.fromhex(TRACE), bytes.fromhex(PARENT), True, b"a=1")
    assert extract([(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode())]).sampled is False


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper case
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent
        f"ff-{TRACE}-{PARENT}-01",  # forbidden version
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-1",
        "garbage",
        "",
    ],
)
def test_malformed_traceparent_ignored(value: str) -> None:
    assert parse_traceparent(value.encode()) is None
    # ...and the request is treated as carrying no context (a new trace).
    assert extract([(b"traceparent", value.encode())]) == Incoming()


def test_future_version_may_append_fields() -> None:
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01-more".encode()) is not None


def test_b3_multi_and_64_bit_ids() -> None:
    found = extract(
        [(b"x-b3-traceid", b"463ac35c9f6413ad"), (b"x-b3-spanid", PARENT.encode()),
         (b"x-b3-sampled", b"1")]
    )  # fmt: skip
    assert found.trace_id == bytes(8) + bytes.fromhex("463ac35c9f6413ad")
    assert found.sampled is True and not found.single_b3
    assert extract([(b"x-b3-sampled", b"0")]) == Incoming(sampled=False)
    assert extract([(b"x-b3-flags", b"1")]).sampled is True  # debug


def test_b3_single() -> None:
    found = extract([(b"b3", f"{TRACE}-{PARENT}-d-{PARENT}".encode())])
    assert (found.trace_id.hex(), found.parent_id.hex(), found.sampled) == (TRACE, PARENT, True)
    assert found.single_b3
    assert extract([(b"b3", b"0")]) == Incoming(sampled=False, single_b3=True)
    assert extract([(b"b3", f"{TRACE}-{PARENT}-x".encode())]) == Incoming()


def test_w3c_preferred_over_b3() -> None:
    other = "80f198ee56343ba864fe8b2a57d3eff7"
    found = extract(
        [(b"x-b3-traceid", other.encode()), (b"x-b3-spanid", PARENT.encode()),
         (b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())]
    )  # fmt: skip
    assert found.trace_id.hex() == TRACE


def test_sampling_decided_once() -> None:
    assert decide(Incoming(sampled=True), 0.0) is True  # an incoming decision is kept
    assert decide(Incoming(sampled=False), 100.0) is False
    assert decide(Incoming(sampled=False, forced=True), 0.0) is True
    assert extract([(b"x-envoy-force-trace", b"true")]).forced
    assert decide(Incoming(), 1.0, rand=0.005) is True  # 0.5 < 1 percent
    assert decide(Incoming(), 1.0, rand=0.02) is False
    share = sum(decide(Incoming(), 1.0) for _ in range(20_000)) / 20_000
    assert 0.003 < share < 0.02  # Istio's default 1%


def test_inject_replaces_trace_headers() -> None:
    incoming = Incoming(bytes.fromhex(TRACE), bytes.fromhex(PARENT), True, b"a=1", single_b3=True)
    span = start_span(incoming, True)
    headers = [(b"traceparent", b"stale"), (b"x-b3-spanid", b"stale"), (b"x-user", b"jason")]
    inject(headers, span)
    got = dict(headers)
    own = span.span_id.hex()
    assert got[b"traceparent"] == f"00-{TRACE}-{own}-01".encode()
    assert got[b"tracestate"] == b"a=1"
    assert got[b"x-b3-traceid"] == TRACE.encode() and got[b"x-b3-spanid"] == own.encode()
    assert got[b"x-b3-parentspanid"] == PARENT.encode() and got[b"x-b3-sampled"] == b"1"
    assert got[b"b3"] == f"{TRACE}-{own}-1".encode()
    assert got[b"x-user"] == b"jason" and len(headers) == 8


def test_new_trace_when_none_comes_in() -> None:
    span = start_span(Incoming(), False)
    assert len(span.trace_id) == 16 and len(span.span_id) == 8 and span.parent_id == b""
    headers: list[tuple[bytes, bytes]] = []
    inject(headers, span)
    assert dict(headers)[b"traceparent"].endswith(b"-00")
    assert b"x-b3-parentspanid" not in dict(headers)


@given(st.binary(max_size=80), st.binary(max_size=80))
def test_any_bytes_parse_or_are_ignored(traceparent: bytes, b3: bytes) -> None:
    found = extract([(b"traceparent", traceparent), (b"b3", b3), (b"x-b3-traceid", b3)])
    assert found.trace_id == b"" or len(found.trace_id) == 16
    # What it forwards always parses back to the same trace.
    span = start_span(found, bool(found.sampled))
    headers: list[tuple[bytes, bytes]] = []
    inject(headers, span)
    again = extract(headers)
    assert (again.trace_id, again.parent_id, again.sampled) == (
        span.trace_id, span.span_id, span.sampled,
    )  # fmt: skip
