"""The forwarding policy both readings of HTTP/1.1 apply (proxy/forwarding.py)."""

from __future__ import annotations

import re

from pilotfish.proxy.forwarding import (
    XFF_LINE,
    ClientAddress,
    RequestIds,
    addition_headers,
    head_tail,
    request_additions,
    response_additions,
    response_peers,
)

UUID4 = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_xff_is_appended_to_and_proto_and_request_id_added_when_absent() -> None:
    added = request_additions(b"1.1.1.1", False, False, b"10.0.0.9", b"http", True, RequestIds())
    xff, proto, made = added
    assert (xff, proto) == (b"1.1.1.1, 10.0.0.9", b"http")
    assert made is not None and UUID4.fullmatch(made)
    assert addition_headers(added) == [
        (b"x-forwarded-for", b"1.1.1.1, 10.0.0.9"),
        (b"x-forwarded-proto", b"http"),
        (b"x-request-id", made),
    ]
    assert b"".join(head_tail(added, b"", XFF_LINE)) == (
        b"\r\nx-forwarded-for: 1.1.1.1, 10.0.0.9\r\nx-forwarded-proto: http"
        b"\r\nx-request-id: " + made + b"\r\n\r\n"
    )
    own = b"\r\nx-envoy-peer-metadata-id: sidecar~a"
    assert b"".join(head_tail(added, own, own + XFF_LINE)) == (
        own + b"\r\nx-forwarded-for: 1.1.1.1, 10.0.0.9\r\nx-forwarded-proto: http"
        b"\r\nx-request-id: " + made + b"\r\n\r\n"
    )
    https = (b"10.0.0.9", b"https", None)
    assert b"".join(head_tail(https, b"", XFF_LINE)) == (
        b"\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: https\r\n\r\n"
    )
    only_id = (None, None, b"abc")
    assert b"".join(head_tail(only_id, own, own + XFF_LINE)) == (
        own + b"\r\nx-request-id: abc\r\n\r\n"
    )


def test_what_the_client_sent_is_kept() -> None:
    added = request_additions(None, True, True, b"10.0.0.9", b"http", True, RequestIds())
    assert added == (b"10.0.0.9", None, None)
    assert addition_headers(added) == [(b"x-forwarded-for", b"10.0.0.9")]


def test_skip_xff_append_passes_the_clients_on_and_no_id_is_made_when_generation_is_off() -> None:
    added = request_additions(b"1.1.1.1", True, False, b"10.0.0.9", b"http", False, None)
    assert addition_headers(added) == [(b"x-forwarded-for", b"1.1.1.1")]
    nothing = request_additions(None, True, True, b"10.0.0.9", b"http", False, None)
    assert nothing == (None, None, None)
    assert addition_headers(nothing) == []
    assert b"".join(head_tail(nothing, b"", XFF_LINE)) == b"\r\n\r\n"


def test_a_response_ends_with_the_flags_and_connection_close() -> None:
    assert response_additions("", False) == []
    assert response_additions("UT,URX", True) == [
        (b"x-pilotfish-flags", b"UT,URX"),
        (b"connection", b"close"),
    ]


def test_peer_metadata_on_responses() -> None:
    assert response_peers(inbound=True, speaks_for_itself=False) == (True, True)
    assert response_peers(inbound=False, speaks_for_itself=True) == (True, False)
    assert response_peers(inbound=False, speaks_for_itself=False) == (False, False)


def test_the_client_address_follows_each_request() -> None:
    addresses = ClientAddress()
    one, other = "10.0.0.9", "".join(["10.0.0.", "7"])
    seen = [addresses.encode(text) for text in (one, one, other, one, "".join(["10.0.0.", "9"]))]
    assert seen == [b"10.0.0.9", b"10.0.0.9", b"10.0.0.7", b"10.0.0.9", b"10.0.0.9"]
