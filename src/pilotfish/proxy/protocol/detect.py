"""Envoy's http_inspector, sans-I/O: which application protocol a
connection's first bytes speak, read without consuming them.

`detect(data)` is NEED_MORE while the bytes could still be either; then
"h2c" for the HTTP/2 connection preface, "http/1.1" or "http/1.0" for a
request line (`METHOD SP target SP HTTP/1.x CRLF`), else "" (not HTTP: the
connection is plain TCP). These are the names a filter chain's
`application_protocols` match, as Envoy's inspector sets them.

Only the request line is read, as Envoy's inspector reads no further; a line
longer than MAX_INSPECT bytes is not HTTP (Envoy inspects 8 KiB at most).
"""

from __future__ import annotations

from typing import Final

NEED_MORE: Final = None
H2C, HTTP11, HTTP10 = "h2c", "http/1.1", "http/1.0"
HTTP_PROTOCOLS: Final = (HTTP10, HTTP11, H2C)
NOT_HTTP: Final = ""
MAX_INSPECT = 8 * 1024
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# RFC 9110 tchar: what a method token is made of.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VERSIONS = {b"HTTP/1.1": HTTP11, b"HTTP/1.0": HTTP10}


def detect(data: bytes) -> str | None:
    """NEED_MORE, one of HTTP_PROTOCOLS, or NOT_HTTP."""
    if not data:
        return NEED_MORE
    head = data[: len(H2_PREFACE)]
    if H2_PREFACE.startswith(head):
        return H2C if len(head) == len(H2_PREFACE) else NEED_MORE
    end = data.find(b"\n", 0, MAX_INSPECT)
    line = data[:MAX_INSPECT] if end < 0 else data[:end]
    verdict = _request_line(line.removesuffix(b"\r"), complete=end >= 0)
    if verdict is NEED_MORE and len(data) >= MAX_INSPECT:
        return NOT_HTTP
    return verdict


def _request_line(line: bytes, complete: bool) -> str | None:
    """A request line's version, NOT_HTTP as soon as a byte rules it out,
    NEED_MORE while what has come could begin one."""
    method, sp, rest = line.partition(b" ")
    if not method or any(b not in _TCHAR for b in method):
        return NOT_HTTP if method or complete or sp else NEED_MORE
    if not sp:
        return NOT_HTTP if complete else NEED_MORE
    target, sp, version = rest.partition(b" ")
    if any(b <= 0x20 or b == 0x7F for b in target):
        return NOT_HTTP
    if not sp:
        return NOT_HTTP if complete else NEED_MORE
    if complete:
        return _VERSIONS.get(version, NOT_HTTP)
    return NEED_MORE if any(v.startswith(version) for v in _VERSIONS) else NOT_HTTP
