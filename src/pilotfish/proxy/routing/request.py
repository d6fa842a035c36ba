"""What the route table reads of a request, in the form the HTTP shell has it.

The shell parses with httptools, which hands over the target and each header as
bytes; it lower-cases header names as they arrive (it must, to find hop-by-hop
headers), so the view carries:

- `method`: b"GET"
- `path`: the request target's path with its query, as received: b"/a/b?x=1"
  (an absolute-form target is reduced to this by the shell)
- `authority`: the Host header, or the absolute-form authority, as received
  (any case, port kept); the table lower-cases and strips as Envoy does
- `scheme`: b"http" or b"https", what Envoy calls x-forwarded-proto
- `headers`: a sequence of (lower-case name, value) pairs, in arrival order
- `source_ip`: the downstream peer's address, for hash policies

Nothing is decoded or copied up front: most routes look at the path only, so
header lookups are paid for by the routes that match on headers, once per
request (`HeaderIndex`). Pseudo-headers in matchers (`:method`, `:path`,
`:authority`, `:scheme`) read the attributes above, as Envoy's HTTP/2 view does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

Headers = Sequence[tuple[bytes, bytes]]


class RequestView(Protocol):
    @property
    def method(self) -> bytes: ...
    @property
    def path(self) -> bytes: ...
    @property
    def authority(self) -> bytes: ...
    @property
    def scheme(self) -> bytes: ...
    @property
    def headers(self) -> Headers: ...
    @property
    def source_ip(self) -> str: ...
    @property
    def client_certificate_verified(self) -> bool: ...


@dataclass(slots=True)
class Request:
    """A plain RequestView, for tests and for shells without their own request object."""

    method: bytes = b"GET"
    path: bytes = b"/"
    authority: bytes = b""
    scheme: bytes = b"http"
    headers: Headers = field(default_factory=list)
    source_ip: str = "127.0.0.1"
    client_certificate_verified: bool = False  # the connection's TLS client certificate


def index_headers(headers: Headers) -> dict[bytes, bytes]:
    """Name -> value; repeated headers joined with "," as Envoy joins them for
    matching. dict() runs in C; the join is paid only when a name repeats."""
    index = dict(headers)
    if len(index) == len(headers):
        return index
    joined: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        joined.setdefault(name, []).append(value)
    return {name: b",".join(values) for name, values in joined.items()}


# How a matcher reads one header: from the index, or from the view for pseudo-headers.
HeaderGetter = Callable[[RequestView, dict[bytes, bytes]], "bytes | None"]
PSEUDO_HEADERS: dict[bytes, HeaderGetter] = {
    b":method": lambda req, _: req.method,
    b":path": lambda req, _: req.path,
    b":authority": lambda req, _: req.authority,
    b"host": lambda req, _: req.authority,
    b":scheme": lambda req, _: req.scheme,
}


def header_getter(name: bytes) -> HeaderGetter:
    pseudo = PSEUDO_HEADERS.get(name)
    if pseudo is not None:
        return pseudo
    return lambda _, index: index.get(name)


def path_only(path: bytes) -> bytes:
    """The path without query or fragment, which Envoy's exact and regex matches see."""
    end = path.find(b"?")
    if end < 0:
        end = path.find(b"#")
    return path if end < 0 else path[:end]


def query_params(path: bytes) -> dict[bytes, bytes]:
    """Raw (undecoded) query parameters; the first of repeated names wins, as in Envoy."""
    start = path.find(b"?")
    if start < 0:
        return {}
    end = path.find(b"#", start)
    params: dict[bytes, bytes] = {}
    for pair in path[start + 1 : end if end >= 0 else None].split(b"&"):
        if pair:
            name, _, value = pair.partition(b"=")
            params.setdefault(name, value)
    return params
