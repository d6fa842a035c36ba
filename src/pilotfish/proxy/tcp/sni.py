"""The server name of a TLS ClientHello, read without terminating TLS (what
Envoy's tls_inspector gives a `server_names` filter chain match): sans-I/O,
bytes in, a name out.

`client_hello_sni(data)` is NEED_MORE while the ClientHello is incomplete,
"" when the bytes are TLS without an SNI (or not TLS at all), else the name
in lower case. Only the first handshake record is read; a ClientHello split
over several records (legal, never seen from real clients) is treated as
having no name.
"""

from __future__ import annotations

from typing import Final

NEED_MORE: Final = None
MAX_CLIENT_HELLO = 16 * 1024 + 5  # one TLS record and its header
_HANDSHAKE, _CLIENT_HELLO, _SERVER_NAME, _HOST_NAME = 0x16, 0x01, 0x0000, 0x00


def client_hello_sni(data: bytes) -> str | None:
    if len(data) < 5:
        return NEED_MORE
    if data[0] != _HANDSHAKE:
        return ""
    end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < end:
        return NEED_MORE
    try:
        return _sni(memoryview(data)[5:end])
    except IndexError:  # a length that points past the record: malformed
        return ""


def _sni(hello: memoryview) -> str:
    if hello[0] != _CLIENT_HELLO:
        return ""
    at = 4 + 2 + 32  # handshake header, version, random
    at += 1 + hello[at]  # session id
    at += 2 + int.from_bytes(hello[at : at + 2], "big")  # cipher suites
    at += 1 + hello[at]  # compression methods
    end = at + 2 + int.from_bytes(hello[at : at + 2], "big")
    at += 2
    while at + 4 <= end:
        kind = int.from_bytes(hello[at : at + 2], "big")
        size = int.from_bytes(hello[at + 2 : at + 4], "big")
        if kind == _SERVER_NAME:
            return _host_name(hello[at + 4 : at + 4 + size])
        at += 4 + size
    return ""


def _host_name(extension: memoryview) -> str:
    at = 2  # server_name_list length
    while at + 3 <= len(extension):
        kind, size = extension[at], int.from_bytes(extension[at + 1 : at + 3], "big")
        if kind == _HOST_NAME:
            return bytes(extension[at + 3 : at + 3 + size]).decode("ascii", "replace").lower()
        at += 3 + size
    return ""
