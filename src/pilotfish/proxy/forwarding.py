"""The forwarding policy, written once for both readings of HTTP/1.1.

A request or response head is read either the express way (protocol/express:
the header lines as received, with spans to cut) or the long way
(protocol/http1: a list of pairs). Both readings find the same facts (the
client's x-forwarded-for, whether x-forwarded-proto and x-request-id are
there, Istio's peer metadata); what the proxy then adds, cuts and trusts is
decided here, and each reading only applies it to its own form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from pilotfish.proxy.protocol.http1 import Headers

XFF: Final = b"x-forwarded-for"
XFP: Final = b"x-forwarded-proto"
REQUEST_ID: Final = b"x-request-id"
FLAGS: Final = b"x-pilotfish-flags"


def request_additions(
    forwarded_for: bytes | None,
    has_proto: bool,
    has_request_id: bool,
    client: bytes,
    scheme: bytes,
    append_xff: bool,
    new_id: Callable[[], bytes] | None,
) -> tuple[Headers, bytes | None]:
    """The headers a forwarded request gets after the client's (whose
    x-forwarded-for is cut and given again here), and the x-request-id made
    up for it, if any. Envoy's connection manager: x-forwarded-for appended
    with the client's address unless skip_xff_append; x-forwarded-proto and
    x-request-id added when absent (the latter if generate_request_id,
    `new_id` None otherwise)."""
    added: Headers = []
    if append_xff:
        added.append((XFF, forwarded_for + b", " + client if forwarded_for else client))
    elif forwarded_for is not None:
        added.append((XFF, forwarded_for))
    if not has_proto:
        added.append((XFP, scheme))
    generated = None
    if not has_request_id and new_id is not None:
        generated = new_id()
        added.append((REQUEST_ID, generated))
    return added, generated


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
