"""Go's parsers for the strings Istio's and Kubernetes' rules are written against.

Istio's CRDs say "duration" and mean Go's `time.ParseDuration`; Kubernetes' CEL
`url()` means Go's `url.ParseRequestURI`. Python's own parsers accept different
languages, so these follow Go's rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_COMPONENT = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_MAX_NS = 2**63 - 1


def rfc3339(moment: datetime | float) -> str:
    """A time as Kubernetes writes metav1.Time: UTC, to the second. A float is
    seconds since the epoch."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def parse_rfc3339(text: str) -> datetime:
    """A metav1.Time (or any RFC 3339 date-time) as an aware datetime;
    ValueError for anything else, a date alone or a time without its offset
    included (Python's fromisoformat takes both, and a naive datetime breaks
    every comparison with an aware one)."""
    if not _RFC3339.fullmatch(text):
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))


def parse_duration_ns(text: str) -> int:
    """Nanoseconds in a Go duration ("1h30m", "300ms", "-1.5s", "0"); ValueError if not one."""
    body, sign = text, 1
    if body[:1] in "+-" and body:
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    total, pos = 0, 0
    while pos < len(body):
        match = _COMPONENT.match(body, pos)
        if match is None:
            missing = not re.match(r"[\d.]+$", body[pos:])
            reason = "invalid duration" if missing else "missing unit in duration"
            raise ValueError(f'time: {reason} "{text}"')
        number, unit = match.groups()
        whole, _, frac = number.partition(".")
        scale = _UNITS_NS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        pos = match.end()
    if total > _MAX_NS:
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


@dataclass(frozen=True)
class URL:
    """What Go's url.URL exposes to Kubernetes' CEL url library."""

    scheme: str
    host: str
    path: str
    query: str
    opaque: str = ""

    @property
    def hostname(self) -> str:
        if self.host.startswith("["):
            return self.host[1 : self.host.find("]")]
        return self.host.rpartition(":")[0] if ":" in self.host else self.host

    @property
    def port(self) -> str:
        tail = self.host[self.host.find("]") + 1 :] if self.host.startswith("[") else self.host
        return tail.rpartition(":")[2] if ":" in tail else ""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_USERINFO_OK = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:%]*$")
_HOST_OK = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:%\[\]]*$")


def parse_request_uri(raw: str) -> URL:
    """Go's url.ParseRequestURI: an absolute URI or an absolute path; ValueError if not."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise ValueError("net/url: invalid control character in URL")
    match = _SCHEME.match(raw)
    if raw.startswith(":"):
        raise ValueError("missing protocol scheme")
    scheme, rest = (match.group(1).lower(), raw[match.end() :]) if match else ("", raw)
    rest, _, query = rest.partition("?")
    if not rest.startswith("/"):
        if scheme:
            return URL(scheme, "", "", query, opaque=rest)
        raise ValueError("invalid URI for request")
    host = ""
    if scheme and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        host = _parse_authority(authority)
    if _BAD_ESCAPE.search(rest):
        raise ValueError(f"invalid URL escape in {rest!r}")
    return URL(scheme, host, rest, query)


def _parse_authority(authority: str) -> str:
    userinfo, at, host = authority.rpartition("@")
    if at and not _USERINFO_OK.match(userinfo):
        raise ValueError("net/url: invalid userinfo")
    if not _HOST_OK.match(host) or _BAD_ESCAPE.search(host):
        raise ValueError(f"invalid character in host name {host!r}")
    if ":" in host and not host.startswith("["):
        port = host.rpartition(":")[2]
        if port and not port.isdigit():
            raise ValueError(f'invalid port ":{port}" after host')
    return host
