"""`pilotfish tap` in the sidecar: which finished requests a live tap sees.

The control plane starts and stops taps over the sidecar's own connection to
it (proxy/tap_stream.py); nothing listens for taps on the sidecar, so its
admin port (open to local users) serves none. Each tap has a filter (path
prefix, method) and a rate (`maxRps`, linkerd's default 100/s, a token
bucket): requests over it are sampled out. Matching requests wait in one
bounded buffer until the stream sends them; a slow control plane only fills
it, and what does not fit is dropped and counted, never waited for. With no
tap running the request path pays one attribute test (`Tap.filters`).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pilotfish.objects import Obj
from pilotfish.proxy.accesslog import AccessRecord
from pilotfish.proxy.telemetry import UNKNOWN, WorkloadInfo

DEFAULT_MAX_RPS = 100.0  # linkerd viz tap's --max-rps default
MAX_RPS = 1000.0  # the most any one tap may ask for
MAX_TAPS = 8  # at once on one sidecar
BUFFER = 1000  # events waiting to be sent
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # an HTTP token


class InvalidTap(ValueError):
    """A tap request that cannot be served; the message says why."""


@dataclass
class TapFilter:
    """One tap: what it matches and its token bucket."""

    tap_id: str
    path_prefix: str = ""
    method: str = ""
    max_rps: float = DEFAULT_MAX_RPS
    tokens: float = 1.0
    refilled: float = 0.0

    @classmethod
    def parse(cls, message: Obj, now: float) -> TapFilter:
        tap_id = message.get("tap")
        if not isinstance(tap_id, str) or not 0 < len(tap_id) <= 64:
            raise InvalidTap("a tap needs an id of 1 to 64 characters")
        path, method = message.get("path") or "", message.get("method") or ""
        if not isinstance(path, str) or (path and not path.startswith("/")) or len(path) > 1024:
            raise InvalidTap(f'invalid path prefix "{str(path)[:64]}": it must start with "/"')
        if not isinstance(method, str) or (method and not _METHOD.fullmatch(method)):
            raise InvalidTap(f'invalid method "{str(method)[:40]}"')
        rate = message.get("maxRps", DEFAULT_MAX_RPS)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 < rate <= MAX_RPS:
            raise InvalidTap(f"invalid maxRps {rate!r}: expected more than 0, at most {MAX_RPS:g}")
        return cls(tap_id, path, method.upper(), float(rate), min(1.0, float(rate)), now)

    def admits(self, record: AccessRecord, now: float) -> bool:
        if self.method and record.method != self.method:
            return False
        if self.path_prefix and not (record.path or "").startswith(self.path_prefix):
            return False
        capacity = max(1.0, self.max_rps)  # a burst of one second's worth
        self.tokens = min(capacity, self.tokens + (now - self.refilled) * self.max_rps)
        self.refilled = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class Tap:
    """The sidecar's live taps, and the events waiting to leave."""

    me: WorkloadInfo
    identity: str = ""  # this workload's SPIFFE id, when it holds a certificate
    clock: Callable[[], float] = time.monotonic
    filters: dict[str, TapFilter] = field(default_factory=dict)
    buffer: deque[Obj] = field(default_factory=deque)
    dropped: int = 0  # events that did not fit in the buffer, since the last batch
    wake: Callable[[], None] = lambda: None  # the stream's: there is something to send

    def command(self, message: Obj) -> Obj | None:
        """Apply {"start": {...}} or {"stop": ID}; an answer for the control plane, if any."""
        if "stop" in message:
            self.filters.pop(str(message["stop"]), None)
            return None
        start = message.get("start")
        if not isinstance(start, dict):
            return {"error": "expected start or stop"}
        try:
            tap = TapFilter.parse(start, self.clock())
            if len(self.filters) >= MAX_TAPS and tap.tap_id not in self.filters:
                raise InvalidTap(f"this sidecar already serves {MAX_TAPS} taps")
        except InvalidTap as e:
            return {"tap": start.get("tap"), "error": str(e)}
        self.filters[tap.tap_id] = tap
        return None

    def stop_all(self) -> None:
        self.filters.clear()
        self.buffer.clear()

    def offer(self, record: AccessRecord, inbound: bool, peer: WorkloadInfo) -> None:
        """A finished request: to every tap that admits it, if the buffer has room."""
        now = self.clock()
        taps = [tap_id for tap_id, f in self.filters.items() if f.admits(record, now)]
        if not taps:
            return
        if len(self.buffer) >= BUFFER:
            self.dropped += 1
            return
        self.buffer.append({"taps": taps, **self.event(record, inbound, peer)})
        self.wake()

    def take(self) -> Obj | None:
        """Everything waiting, as one batch; None if nothing is."""
        if not self.buffer and not self.dropped:
            return None
        batch = {"events": list(self.buffer), "dropped": self.dropped}
        self.buffer.clear()
        self.dropped = 0
        return batch

    def event(self, record: AccessRecord, inbound: bool, peer: WorkloadInfo) -> Obj:
        """What linkerd's tap shows of a request: who called whom, and how it went."""
        me = _side(self.me, self.identity, None)
        if inbound:
            source = _side(
                peer, record.downstream_peer_uri_san or "", record.downstream_remote_address
            )
            destination = {**me, "address": record.downstream_local_address}
        else:
            source = me
            destination = {
                **_side(peer, "", record.upstream_host),
                "cluster": record.upstream_cluster,
            }
        return {
            "proxy": "in" if inbound else "out",
            "time": record.start_time,
            "method": record.method,
            "authority": record.authority,
            "path": record.path,
            "status": record.response_code,
            "latencyMs": record.duration,
            "flags": record.response_flags or "-",
            "tls": bool(record.downstream_peer_uri_san) if inbound else None,
            "source": source,
            "destination": destination,
        }


def _side(who: WorkloadInfo, identity: str, address: str | None) -> Obj:
    known = who.workload != UNKNOWN
    return {
        "address": address,
        "identity": identity or None,
        "workload": who.workload if known else None,
        "namespace": who.namespace if known else None,
    }
