"""How an exchange's response reaches its client: the downstream writer seam.

The exchange decides what the response is (status, headers, body pieces,
trailers, or a local reply); its downstream's `writer` turns each into the
bytes for the client's connection, which the exchange writes with
`down.write()` (gathering the pieces of one upstream read into one write).
HTTP/1.1 frames them itself (`H1_WRITER`: a status line, chunked encoding);
an HTTP/2 stream hands them to its connection's codec and returns the frames
that are ready (proxy/h2_downstream.py). `express` says whether the exchange
may splice an HTTP/1.1 response head through as received (protocol/express).
"""

from __future__ import annotations

from typing import Protocol

from pilotfish.proxy.protocol.http1 import (
    CONTINUE_RESPONSE,
    Header,
    Headers,
    encode_chunk,
    encode_last_chunk,
    error_response,
    serialize_response_head,
)


class ResponseWriter(Protocol):
    express: bool

    def head(self, status: int, headers: Headers, chunked: bool) -> bytes: ...
    def data(self, data: bytes, chunked: bool) -> bytes: ...
    def end(self, trailers: tuple[Header, ...], chunked: bool) -> bytes: ...
    def local_reply(self, status: int, body: bytes, headers: Headers, close: bool) -> bytes: ...
    def informational(self) -> bytes: ...


class H1Writer:
    """HTTP/1.1's framing, as the exchange wrote it inline before the seam."""

    express = True

    def __repr__(self) -> str:
        return "<H1Writer>"

    def head(self, status: int, headers: Headers, chunked: bool) -> bytes:
        return serialize_response_head(status, headers, chunked=chunked)

    def data(self, data: bytes, chunked: bool) -> bytes:
        return encode_chunk(data) if chunked else data

    def end(self, trailers: tuple[Header, ...], chunked: bool) -> bytes:
        return encode_last_chunk(trailers) if chunked else b""

    def local_reply(self, status: int, body: bytes, headers: Headers, close: bool) -> bytes:
        return error_response(status, body, headers, close=close)

    def informational(self) -> bytes:
        return CONTINUE_RESPONSE


H1_WRITER = H1Writer()
