"""The ClientHello's server name, read without terminating TLS: from real
ClientHellos (Python's ssl, as any client's), cut anywhere, and from any
bytes at all (Hypothesis): a name, NEED_MORE or "", never an exception."""

from __future__ import annotations

import contextlib
import ssl

from hypothesis import given
from hypothesis import strategies as st

from pilotfish.proxy.tcp.sni import NEED_MORE, client_hello_sni


def client_hello(server_name: str | None) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = server_name is not None
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_the_name_of_a_real_client_hello() -> None:
    assert client_hello_sni(client_hello("Redis.Example.com")) == "redis.example.com"


def test_no_name_and_not_tls() -> None:
    assert client_hello_sni(client_hello(None)) == ""
    assert client_hello_sni(b"GET / HTTP/1.1\r\n\r\n") == ""
    assert client_hello_sni(b"PRI * HTTP/2.0\r\n") == ""


def test_every_cut_of_a_client_hello_needs_more() -> None:
    hello = client_hello("a.example")
    for cut in range(len(hello)):
        assert client_hello_sni(hello[:cut]) is NEED_MORE


@given(st.binary(max_size=600))
def test_any_bytes_give_an_answer(data: bytes) -> None:
    assert client_hello_sni(data) in (NEED_MORE, "") or isinstance(client_hello_sni(data), str)


@given(st.binary(min_size=1, max_size=300))
def test_a_corrupted_handshake_record_never_raises(body: bytes) -> None:
    record = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    assert isinstance(client_hello_sni(record), str)
