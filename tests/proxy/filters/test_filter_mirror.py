"""The mirror's copy of a request, made from a plain request value."""

from __future__ import annotations

from pilotfish.proxy.filters.mirror import MirrorRequest, mirror_bytes
from pilotfish.proxy.routing import MirrorPolicy

REQUEST = MirrorRequest(
    method=b"POST",
    path=b"/v2/orders?x=1",
    authority=b"reviews:9080",
    headers=[(b"host", b"reviews:9080"), (b"content-length", b"999"), (b"x-request-id", b"r1")],
    body=b"hello",
)


def test_the_copy_goes_to_the_shadow_authority_with_its_whole_body() -> None:
    copy = mirror_bytes(REQUEST, MirrorPolicy("mirror"))
    head, _, body = copy.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v2/orders?x=1 HTTP/1.1"
    assert lines[1:] == [b"host: reviews-shadow:9080", b"x-request-id: r1", b"content-length: 5"]
    assert body == b"hello"


def test_without_the_shadow_suffix_the_authority_is_kept() -> None:
    copy = mirror_bytes(REQUEST, MirrorPolicy("mirror", shadow_suffix=False))
    assert b"\r\nhost: reviews:9080\r\n" in copy
