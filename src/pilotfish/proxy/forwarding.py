"""The forwarding policy, written once for both readings of HTTP/1.1.

A request or response head is read either the express way (protocol/express:
the header lines as received, with spans to cut) or the long way
(protocol/http1: a list of pairs). Both readings find the same facts (the
client's x-forwarded-for, whether x-forwarded-proto and x-request-id are
there, Istio's peer metadata); what the proxy then adds, cuts and trusts is
decided here, and each reading only applies it to its own form.
"""

from __future__ import annotations

import binascii
import os
from typing import Final

from pilotfish.proxy.protocol.http1 import Headers

XFF: Final = b"x-forwarded-for"
XFP: Final = b"x-forwarded-proto"
REQUEST_ID: Final = b"x-request-id"
FLAGS: Final = b"x-pilotfish-flags"


# What request_additions gives: the values of x-forwarded-for,
# x-forwarded-proto and x-request-id to add after the client's headers, each
# None when not added. Values rather than header pairs, so that each reading
# writes them in its own form without building pairs first.
Additions = tuple[bytes | None, bytes | None, bytes | None]


def request_additions(
    forwarded_for: bytes | None,
    has_proto: bool,
    has_request_id: bool,
    client: bytes,
    scheme: bytes,
    append_xff: bool,
    ids: RequestIds | None,
) -> Additions:
    """What a forwarded request gets after the client's headers (whose
    x-forwarded-for is cut and given again here). Envoy's connection
    manager: x-forwarded-for appended with the client's address unless
    skip_xff_append; x-forwarded-proto and x-request-id added when absent
    (the latter taken from `ids` if generate_request_id, None otherwise):
    an x-request-id here is always one the proxy made."""
    if append_xff:
        xff: bytes | None = forwarded_for + b", " + client if forwarded_for else client
    else:
        xff = forwarded_for
    proto = None if has_proto else scheme
    return xff, proto, ids.take() if ids is not None and not has_request_id else None


def addition_headers(added: Additions) -> Headers:
    """`added` as header pairs (protocol/http1's reading)."""
    xff, proto, request_id = added
    headers: Headers = []
    if xff is not None:
        headers.append((XFF, xff))
    if proto is not None:
        headers.append((XFP, proto))
    if request_id is not None:
        headers.append((REQUEST_ID, request_id))
    return headers


XFF_LINE: Final = b"\r\n" + XFF + b": "
_XFP_LINE: Final = b"\r\n" + XFP + b": "
_REQUEST_ID_LINE: Final = b"\r\n" + REQUEST_ID + b": "
_XFP_HTTP: Final = _XFP_LINE + b"http"
_XFP_HTTP_ID: Final = _XFP_HTTP + _REQUEST_ID_LINE
END_OF_HEAD: Final = b"\r\n\r\n"
# What head_tail gives: pieces of a head's join, b"" where absent.
Tail = tuple[bytes, bytes, bytes, bytes, bytes]


def head_tail(added: Additions, own: bytes, own_xff: bytes) -> Tail:
    """The end of a head read the express way, after the client's header
    lines: this proxy's own lines `own` (its peer metadata, outbound; else
    b""), `added` as header lines each led by CRLF, and the blank line, as
    five pieces of the head's one join (protocol/express's reading).
    `own_xff` is `own + XFF_LINE`, made once by the caller. Few pieces, the
    constant ones made at import: each is a buffer the join acquires and
    releases, and more than ten make it allocate an array of its own."""
    xff, proto, request_id = added
    if proto is None:
        middle = b"" if request_id is None else _REQUEST_ID_LINE
    elif proto == b"http":
        middle = _XFP_HTTP if request_id is None else _XFP_HTTP_ID
    else:
        middle = _XFP_LINE + proto + (b"" if request_id is None else _REQUEST_ID_LINE)
    if xff is None:
        return own, b"", middle, request_id or b"", END_OF_HEAD
    return own_xff, xff, middle, request_id or b"", END_OF_HEAD


def response_additions(flags: str, close: bool) -> Headers:
    """What every response the proxy forwards ends with: the response flags
    it set, and `connection: close` when the client's connection ends."""
    added: Headers = []
    if flags:
        added.append((FLAGS, flags.encode()))
    if close:
        added.append((b"connection", b"close"))
    return added


# What becomes of Istio's metadata-exchange headers (x-envoy-peer-metadata, -id)
# on a response: cut or passed through, and whether the proxy adds its own.
def response_peers(inbound: bool, speaks_for_itself: bool) -> tuple[bool, bool]:
    """(cut the upstream's peer headers, add this proxy's). Inbound, the
    answer comes from the local app, which cannot speak for this workload:
    cut, and the proxy says who answers. Outbound, a peer's metadata is read
    (and cut) only by a proxy that sends its own: a peer answers in kind only
    to a peer; otherwise the headers pass through untouched."""
    if inbound:
        return True, True
    return speaks_for_itself, False


class ClientAddress:
    """The client's address as bytes, for x-forwarded-for: the last one
    encoded, kept with the str it came from (a connection's requests share
    that str; an encode is ~120 instructions a request)."""

    __slots__ = ("raw", "text")

    def __init__(self) -> None:
        self.text = ""
        self.raw = b""

    def __repr__(self) -> str:
        return f"<ClientAddress {self.text!r}>"

    def encode(self, text: str) -> bytes:
        if text is not self.text:
            self.text, self.raw = text, text.encode()
        return self.raw


CLIENT_ADDRESS: Final = ClientAddress()


# -- x-request-id -------------------------------------------------------------------------------
#
# Envoy's generated x-request-id is a random version 4 UUID in canonical text
# form. Formatting 128 random bits per request was about 5,000 instructions;
# making a batch of them at once from one os.urandom read, with a handful of
# bulk bytearray operations, leaves a slice per request.

UUID_TEXT: Final = 36  # 8-4-4-4-12 hex digits and dashes
IDS_PER_BATCH: Final = 256
# The variant digit (RFC 4122: 10xx) from any hex digit, each of 8, 9, a, b
# from four of them, so its two random bits stay uniform.
_VARIANT_DIGIT: Final = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")


def uuid4_batch(count: int) -> bytes:
    """`count` random version 4 UUIDs, canonical text, back to back: the
    hex of 18 random bytes per UUID, with the dashes, the version digit and
    the variant digit written over their places."""
    text = bytearray(binascii.hexlify(os.urandom(count * UUID_TEXT // 2)))
    for dash in (8, 13, 18, 23):
        text[dash::UUID_TEXT] = b"-" * count
    text[14::UUID_TEXT] = b"4" * count
    text[19::UUID_TEXT] = text[19::UUID_TEXT].translate(_VARIANT_DIGIT)
    return bytes(text)


class RequestIds:
    """Where the next generated x-request-id comes from: a batch of UUIDs,
    made again when used up. A forked child starts a batch of its own, or
    parent and child would hand out the same ids."""

    __slots__ = ("at", "batch")

    def __init__(self) -> None:
        self.batch = b""
        self.at = 0

    def __repr__(self) -> str:
        return f"<RequestIds {(len(self.batch) - self.at) // UUID_TEXT} left>"

    def take(self) -> bytes:
        at = self.at
        if at >= len(self.batch):
            self.batch, at = uuid4_batch(IDS_PER_BATCH), 0
        self.at = at + UUID_TEXT
        return self.batch[at : at + UUID_TEXT]

    def discard(self) -> None:
        self.batch, self.at = b"", 0


REQUEST_IDS: Final = RequestIds()
os.register_at_fork(after_in_child=REQUEST_IDS.discard)
