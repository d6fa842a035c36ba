"""The two request/response shapes of the benchmark.

tiny:      3 request headers (host, user-agent, accept); the backend answers
           5 headers (server, date, content-type, content-length, connection)
           and a 6-byte body.
realistic: 9 request headers (host, user-agent, accept, accept-encoding,
           accept-language, cookie, x-request-id, traceparent, tracestate);
           the backend answers 11 headers (the 5 above + 6 it adds) and a
           1024-byte JSON body.
"""

from __future__ import annotations

from dataclasses import dataclass

TINY_BODY = b"hello\n"


def _json_body(size: int) -> bytes:
    """A JSON document of exactly `size` bytes, with no ' or $ (it sits in an
    nginx single-quoted string)."""
    head = b'{"items":['
    item = b'{"id":1234,"name":"reviews-v2","rating":5,"stars":"*****"},'
    n = (size - len(head) - len(b'],"pad":""}')) // len(item)
    body = head + item * n
    body = body.rstrip(b",") + b'],"pad":"'
    return body + b"x" * (size - len(body) - 2) + b'"}'


REALISTIC_BODY = _json_body(1024)

# Added by the backend to its 5 default headers: 11 in all.
REALISTIC_EXTRA_HEADERS: list[tuple[str, str]] = [
    ("cache-control", "private, max-age=0, no-cache"),
    ("vary", "Accept-Encoding, Accept-Language"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("x-request-id", "$http_x_request_id"),  # echoed, as services do
    ("server-timing", "app;dur=1.7, db;dur=0.4"),
]

UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36"
)


@dataclass(frozen=True)
class Shape:
    """A request the load generators send and the body it must get back."""

    name: str
    path: str
    headers: tuple[tuple[str, str], ...]  # besides Host, which the clients add
    body: bytes

    def __repr__(self) -> str:
        return f"Shape({self.name!r}, {len(self.headers) + 1} request headers, {len(self.body)} B)"


SHAPES: dict[str, Shape] = {
    "tiny": Shape(
        "tiny",
        "/tiny",
        (("user-agent", "bench/1.0"), ("accept", "*/*")),
        TINY_BODY,
    ),
    "realistic": Shape(
        "realistic",
        "/api/v1/reviews/0",
        (
            ("user-agent", UA),
            ("accept", "application/json, text/plain, */*"),
            ("accept-encoding", "gzip, deflate, br"),
            ("accept-language", "en-US,en;q=0.9"),
            ("cookie", "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; ab=b"),
            ("x-request-id", "0d8a6d4e-5b3c-4f8e-9a61-2c7e4b1f9d03"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ),
        REALISTIC_BODY,
    ),
}
