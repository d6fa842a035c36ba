"""Trace context in request headers: W3C Trace Context (`traceparent`,
`tracestate`) and B3 (the `x-b3-*` headers and the single `b3` header), read
from a request and written on the forwarded one. Pure: bytes in, bytes out.

What comes in is read in that order of preference; a header that breaks its
format is ignored, as if absent (W3C: "the vendor MUST ignore"), so a client
sending garbage starts a new trace rather than an error. What goes out is
both formats, whichever came in, so an application that copies either kind
(Istio's Bookinfo copies all of them) keeps the trace; the single `b3`
header is written only when it came in (in any of the formats' company).

Sampling is decided once, where a trace starts (the first proxy, or the
gateway): a sampled flag that comes in is kept; B3's "defer" (no flag) and a
trace that starts here are decided by the local percentage. B3 debug
(`x-b3-flags: 1`, `b3: ...-d`) and Envoy's `x-envoy-force-trace` sample.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from pilotfish.proxy.protocol.http1 import Headers

TRACE_HEADERS = frozenset(
    {
        b"traceparent",
        b"tracestate",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-b3-sampled",
        b"x-b3-flags",
    }
)
FORCE_TRACE = b"x-envoy-force-trace"
_READ = TRACE_HEADERS | {FORCE_TRACE}
_HEX = frozenset(b"0123456789abcdef")
_RNG = random.Random()


@dataclass(frozen=True, slots=True)
class Incoming:
    """What the request carried: a parent (trace id, span id), or only a
    sampling decision (B3 `b3: 0`, a lone `x-b3-sampled`), or neither."""

    trace_id: bytes = b""  # 16 bytes, or empty: no parent
    parent_id: bytes = b""  # 8 bytes
    sampled: bool | None = None  # None: no decision came in
    tracestate: bytes = b""
    single_b3: bool = False
    forced: bool = False  # x-envoy-force-trace


@dataclass(frozen=True, slots=True)
class SpanContext:
    """This proxy's span in the trace: what it forwards and reports."""

    trace_id: bytes
    span_id: bytes
    parent_id: bytes  # empty: this span starts the trace
    sampled: bool
    tracestate: bytes = b""
    single_b3: bool = False

    def __repr__(self) -> str:
        return f"<SpanContext {self.trace_id.hex()}/{self.span_id.hex()} sampled={self.sampled}>"


def extract(headers: Headers) -> Incoming:
    """The incoming context: W3C first, then single `b3`, then multi B3."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _READ and name not in found:
            found[name] = value.strip()
    if not found:
        return Incoming()
    incoming = _context(found)
    if FORCE_TRACE in found:
        return replace(incoming, forced=True)
    return incoming


def _context(found: dict[bytes, bytes]) -> Incoming:
    if b"traceparent" in found:
        parsed = parse_traceparent(found[b"traceparent"])
        if parsed is not None:
            trace_id, parent_id, sampled = parsed
            state = found.get(b"tracestate", b"")
            return Incoming(trace_id, parent_id, sampled, state, b"b3" in found)
    if b"b3" in found:
        single = parse_b3_single(found[b"b3"])
        if single is not None:
            return single
    return parse_b3_multi(found)


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """`VERSION-TRACEID-PARENTID-FLAGS` in lower-case hex; None if malformed.
    A later version may append fields after a `-`; version ff is invalid."""
    parts = value.split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or not _is_hex(parts[0]) or parts[0] == b"ff":
        return None
    if parts[0] == b"00" and len(parts) != 4:
        return None
    version, trace, parent, flags = parts[:4]
    del version
    if len(trace) != 32 or len(parent) != 16 or len(flags) != 2:
        return None
    if not (_is_hex(trace) and _is_hex(parent) and _is_hex(flags)):
        return None
    if _is_zero(trace) or _is_zero(parent):
        return None
    return bytes.fromhex(trace.decode()), bytes.fromhex(parent.decode()), bool(int(flags, 16) & 1)


def parse_b3_single(value: bytes) -> Incoming | None:
    """`TRACEID-SPANID[-SAMPLED[-PARENTSPANID]]`, or a lone `SAMPLED`."""
    parts = value.split(b"-")
    if len(parts) == 1:
        sampled = _b3_sampling(parts[0])
        return None if sampled is None else Incoming(sampled=sampled, single_b3=True)
    if len(parts) > 4:
        return None
    trace_id, span_id = _b3_trace_id(parts[0]), _b3_span_id(parts[1])
    if trace_id is None or span_id is None:
        return None
    sampled = None
    if len(parts) >= 3:
        sampled = _b3_sampling(parts[2])
        if sampled is None:
            return None
    if len(parts) == 4 and _b3_span_id(parts[3]) is None:
        return None
    return Incoming(trace_id, span_id, sampled, single_b3=True)


def parse_b3_multi(found: dict[bytes, bytes]) -> Incoming:
    """`x-b3-traceid` and `x-b3-spanid` both, or neither; `x-b3-flags: 1` is debug."""
    sampled: bool | None = None
    if found.get(b"x-b3-flags") == b"1":
        sampled = True
    elif b"x-b3-sampled" in found:
        sampled = {b"1": True, b"true": True, b"0": False, b"false": False}.get(
            found[b"x-b3-sampled"].lower()
        )
    trace_id = _b3_trace_id(found.get(b"x-b3-traceid", b""))
    span_id = _b3_span_id(found.get(b"x-b3-spanid", b""))
    if trace_id is None or span_id is None:
        return Incoming(sampled=sampled)
    return Incoming(trace_id, span_id, sampled)


def _b3_trace_id(value: bytes) -> bytes | None:
    """16 or 32 hex digits; a 64-bit id is the low half of a 128-bit one."""
    value = value.lower()
    if len(value) not in (16, 32) or not _is_hex(value) or _is_zero(value):
        return None
    return bytes.fromhex(value.decode()).rjust(16, b"\0")


def _b3_span_id(value: bytes) -> bytes | None:
    value = value.lower()
    if len(value) != 16 or not _is_hex(value) or _is_zero(value):
        return None
    return bytes.fromhex(value.decode())


def _b3_sampling(value: bytes) -> bool | None:
    return {b"1": True, b"d": True, b"0": False}.get(value)


def _is_hex(value: bytes) -> bool:
    return bool(value) and _HEX.issuperset(value)


def _is_zero(value: bytes) -> bool:
    return value.count(b"0") == len(value)


def decide(incoming: Incoming, percent: float, rand: float = -1.0) -> bool:
    """Sampled or not: forced, else what came in, else `percent` of new decisions."""
    if incoming.forced:
        return True
    if incoming.sampled is not None:
        return incoming.sampled
    return (_RNG.random() if rand < 0 else rand) * 100.0 < percent


def start_span(incoming: Incoming, sampled: bool) -> SpanContext:
    """This hop's span: a child of the incoming parent, or a new trace."""
    trace_id = incoming.trace_id or new_id(16)
    return SpanContext(
        trace_id, new_id(8), incoming.parent_id, sampled, incoming.tracestate, incoming.single_b3
    )


def new_id(size: int) -> bytes:
    """A random id, never all zeros (which both formats reserve for "none")."""
    while True:
        found = _RNG.getrandbits(size * 8)
        if found:
            return found.to_bytes(size, "big")


def inject(headers: Headers, span: SpanContext) -> None:
    """Replace the request's trace headers with this span as the parent."""
    headers[:] = [h for h in headers if h[0] not in TRACE_HEADERS]
    headers.extend(outgoing(span))


def outgoing(span: SpanContext) -> Headers:
    trace, own = span.trace_id.hex().encode(), span.span_id.hex().encode()
    flag = b"1" if span.sampled else b"0"
    out: Headers = [(b"traceparent", b"00-%s-%s-0%s" % (trace, own, flag))]
    if span.tracestate:
        out.append((b"tracestate", span.tracestate))
    out += [(b"x-b3-traceid", trace), (b"x-b3-spanid", own)]
    if span.parent_id:
        out.append((b"x-b3-parentspanid", span.parent_id.hex().encode()))
    out.append((b"x-b3-sampled", flag))
    if span.single_b3:
        out.append((b"b3", b"%s-%s-%s" % (trace, own, flag)))
    return out
