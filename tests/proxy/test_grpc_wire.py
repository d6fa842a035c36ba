"""proxy/grpc.py: gRPC's wire conventions, as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotfish.proxy import grpc


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"application/grpc;charset=utf-8", True),
        (b"application/grpc-web", False),  # gRPC-Web is a protocol of its own
        (b"application/grpcfoo", False),
        (b"application/json", False),
        (None, False),
    ],
)
def test_grpc_content_type_as_envoy(content_type: bytes | None, expected: bool) -> None:
    assert grpc.is_grpc_content_type(content_type) is expected


@pytest.mark.parametrize(
    ("http", "code"),
    [(400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14), (504, 14),
     (500, 2), (408, 2), (200, 2)],
)  # fmt: skip
def test_http_to_grpc_is_envoys_mapping(http: int, code: int) -> None:
    assert grpc.http_to_grpc(http) == code


def test_status_of_reads_headers_or_trailers_in_any_case() -> None:
    assert grpc.status_of([(b"content-type", b"application/grpc"), (b"grpc-status", b"14")]) == 14
    assert grpc.status_of(((b"Grpc-Status", b" 0 "),)) == 0
    assert grpc.status_of([(b"grpc-status", b"x")]) is None
    assert grpc.status_of([(b"grpc-message", b"14")]) is None


def test_camel_names_are_envoys() -> None:
    assert [grpc.camel_name(c) for c in (0, 1, 4, 14, 16)] == [
        "OK", "Canceled", "DeadlineExceeded", "Unavailable", "Unauthenticated",
    ]  # fmt: skip
    assert grpc.camel_name(17) == "InvalidCode"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"250m", 0.25), (b"1500u", 0.0015),
     (b"99999999n", 0.099999999)],
)  # fmt: skip
def test_grpc_timeout_units(header: bytes, seconds: float) -> None:
    assert grpc.parse_timeout(header) == pytest.approx(seconds)


@pytest.mark.parametrize("header", [b"", b"S", b"123456789S", b"10s", b"1.5S", b"-1S", None])
def test_malformed_grpc_timeout_is_ignored(header: bytes | None) -> None:
    assert grpc.parse_timeout(header) is None


def test_route_timeout_follows_envoys_final_timeout() -> None:
    assert grpc.route_timeout(2.0, 0.0, None) == 2.0  # Istio's 0: uncapped
    assert grpc.route_timeout(None, 0.0, None) is None  # no header, no cap: none at all
    assert grpc.route_timeout(None, 5.0, None) == 5.0  # no header: the cap
    assert grpc.route_timeout(9.0, 5.0, None) == 5.0
    assert grpc.route_timeout(2.0, 5.0, 0.5) == 1.5
    assert grpc.route_timeout(0.4, 0.0, 0.5) == 0.4  # an offset never takes it to 0


def test_message_percent_encoding() -> None:
    assert grpc.encode_message(b"no healthy upstream") == b"no healthy upstream"
    assert grpc.encode_message(b"100% caf\xc3\xa9\n") == b"100%25 caf%C3%A9%0A"


@given(st.binary(max_size=64))
def test_encoded_message_is_printable_and_decodes_back(message: bytes) -> None:
    from urllib.parse import unquote_to_bytes

    encoded = grpc.encode_message(message)
    assert all(0x20 <= c <= 0x7E for c in encoded)
    assert unquote_to_bytes(encoded) == message


def test_local_reply_is_trailers_only() -> None:
    status, headers, body = grpc.local_reply(
        503, b"no healthy upstream", [(b"content-type", b"text/plain"), (b"x-extra", b"1")]
    )
    assert (status, body) == (200, b"")
    assert headers == [
        (b"content-type", b"application/grpc"),
        (b"x-extra", b"1"),
        (b"grpc-status", b"14"),
        (b"grpc-message", b"no healthy upstream"),
    ]


def test_local_reply_without_body_has_no_message_and_keeps_a_given_status() -> None:
    assert grpc.local_reply(404, b"", []) == (
        200, [(b"content-type", b"application/grpc"), (b"grpc-status", b"12")], b"",
    )  # fmt: skip
    assert grpc.local_reply(200, b"", [], grpc_status=8)[1][-1] == (b"grpc-status", b"8")


def test_local_reply_applied_twice_changes_nothing() -> None:
    once = grpc.local_reply(403, b"RBAC: access denied", [])
    assert once[1][1] == (b"grpc-status", b"7")
    assert grpc.local_reply(once[0], once[2], once[1]) == once


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.0001, b"1m"), (0.3, b"300m"), (5, b"5000m"), (99999.999, b"99999999m"),
     (100000, b"100000S"), (6e8, b"10000000M"), (1e12, b"99999999H")],
)  # fmt: skip
def test_grpc_timeout_formatting_as_envoy(seconds: float, header: bytes) -> None:
    assert grpc.format_timeout(seconds) == header
    parsed = grpc.parse_timeout(header)
    assert parsed is not None and (parsed >= seconds or header == b"99999999H" or seconds < 1e-3)


def test_expected_timeout_prefers_a_shorter_try() -> None:
    assert grpc.expected_timeout(5.0, 0.2) == 0.2
    assert grpc.expected_timeout(5.0, 9.0) == 5.0
    assert grpc.expected_timeout(None, 0.2) == 0.2
    assert grpc.expected_timeout(None, None) is None


@pytest.mark.parametrize(
    ("te", "kept"),
    [(b"trailers", True), (b"gzip, trailers", True), (b" trailers ", True), (b"gzip", False),
     (None, False)],
)  # fmt: skip
def test_te_trailers_is_kept_as_envoys_sanitize(te: bytes | None, kept: bool) -> None:
    headers = [(b"host", b"x")] + ([(b"te", te)] if te is not None else [])
    assert grpc.keeps_te(headers) is kept


def test_grpc_to_http_is_envoys_mapping() -> None:
    assert [grpc.grpc_to_http(c) for c in (0, 1, 4, 8, 12, 14, 16, 17, -1)] == [
        200, 499, 504, 429, 501, 503, 401, 500, 500,
    ]  # fmt: skip
