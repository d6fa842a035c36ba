"""The upstream HTTP/2 client core without sockets: the exchange's HTTP/1.1
bytes in, frames out to a real HTTP/2 server state machine (h2's server
side), its frames back in, HTTP/1.1 events out."""

from __future__ import annotations

import itertools

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.proxy.protocol.http1 import EndOfMessage, ProtocolError, ResponseHead
from pilotfish.proxy.routing import RetryOn, RetryPolicy
from pilotfish.proxy.upstream.h2_core import HIGH_WATER, MAX_HEADER_LIST, STREAM_WINDOW, H2Client
from pilotfish.proxy.upstream.retry import ACCEPT, RETRY, verdict


class Peer:
    """An HTTP/2 server's state machine, wired to a client core."""

    def __init__(self, client: H2Client, **settings: int) -> None:
        self.client = client
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(
                {getattr(h2.settings.SettingCodes, k): v for k, v in settings.items()}
            )
        self.events: list[h2.events.Event] = []
        self.pump()

    def pump(self) -> list[tuple[int, object]]:
        """Move bytes both ways until quiet; what the client delivered."""
        delivered: list[tuple[int, object]] = []
        while True:
            to_server = self.client.data_to_send()
            if to_server:
                self.events += self.h2.receive_data(to_server)
            to_client = self.h2.data_to_send()
            if not to_client and not to_server:
                return delivered
            if to_client:
                delivered += self.client.receive(to_client)

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, kind)]


def request(client: H2Client, raw: bytes) -> int:
    client.reserved += 1
    sid, error = client.send_request(raw)
    assert error is None
    return sid


GET = b"GET /p?q=1 HTTP/1.1\r\nHost: reviews:9080\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nTE: gzip\r\nX-A: 1\r\n\r\n"


def test_the_request_head_becomes_pseudo_headers_without_connection_fields() -> None:
    client = H2Client(b"https")
    peer = Peer(client)
    sid = request(client, GET)
    peer.pump()
    (received,) = peer.of(h2.events.RequestReceived)
    assert received.stream_id == sid
    assert received.headers == [
        (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"reviews:9080"),
        (b":path", b"/p?q=1"), (b"x-a", b"1"),
    ]  # fmt: skip
    assert peer.of(h2.events.StreamEnded)  # no body: END_STREAM with the HEADERS


def test_a_grpc_request_keeps_te_trailers_and_a_chunked_body_sends_its_trailers() -> None:
    client = H2Client(b"http")
    peer = Peer(client)
    head = (
        b"POST /svc/M HTTP/1.1\r\nHost: a\r\ncontent-type: application/grpc\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    sid = request(client, head + b"3\r\nabc\r\n")
    assert client.send_body(sid, b"0\r\nx-sum: 7\r\n\r\n") is None
    peer.pump()
    (received,) = peer.of(h2.events.RequestReceived)
    assert received.headers.count((b"te", b"trailers")) == 1
    assert (b"transfer-encoding", b"chunked") not in received.headers
    assert b"".join(e.data for e in peer.of(h2.events.DataReceived)) == b"abc"
    (trailers,) = peer.of(h2.events.TrailersReceived)
    assert trailers.headers == [(b"x-sum", b"7")]


def test_the_response_comes_back_as_http1_events_with_trailers() -> None:
    client = H2Client(b"http")
    peer = Peer(client)
    sid = request(client, GET)
    peer.pump()
    peer.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    peer.h2.send_data(sid, b"hello")
    peer.h2.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    delivered = peer.pump()
    events = [e for s, evs in delivered if s == sid for e in evs]  # type: ignore[attr-defined]
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert (head.status, head.content_length, head.keep_alive) == (200, None, True)
    assert head.headers == [(b"content-type", b"application/grpc")]
    assert events[1:] == [b"hello", EndOfMessage(((b"grpc-status", b"0"),))]
    assert sid not in client.streams


def test_goaway_refuses_the_streams_above_its_last_id_and_takes_no_more() -> None:
    client = H2Client(b"http")
    peer = Peer(client)
    first, second = request(client, GET), request(client, GET)
    peer.pump()
    goaway = GoAwayFrame(0, last_stream_id=first).serialize()
    delivered = dict(client.receive(goaway))
    error = delivered[second]
    assert isinstance(error, ProtocolError) and error.flag == "UR"
    assert first not in delivered and first in client.streams
    assert client.capacity == 0
    # The stream the server kept finishes on the draining connection.
    peer.h2.send_headers(first, [(b":status", b"204")], end_stream=True)
    (events,) = [evs for sid, evs in peer.pump() if sid == first]
    assert isinstance(events[0], ResponseHead) and events[0].status == 204  # type: ignore[index]
    retry = RetryPolicy(retry_on=RetryOn.REFUSED_STREAM)
    assert verdict(retry, 1, True, "UR") == RETRY
    assert verdict(RetryPolicy(retry_on=RetryOn.CONNECT_FAILURE), 1, True, "UR") == ACCEPT


def test_a_refused_reset_is_ur_and_another_reset_is_uc() -> None:
    client = H2Client(b"http")
    peer = Peer(client)
    refused, other = request(client, GET), request(client, GET)
    peer.pump()
    peer.h2.reset_stream(refused, ErrorCodes.REFUSED_STREAM)
    peer.h2.reset_stream(other, ErrorCodes.INTERNAL_ERROR)
    delivered = dict(peer.pump())
    assert [delivered[refused].flag, delivered[other].flag] == ["UR", "UC"]  # type: ignore[union-attr]


def test_streams_up_to_the_peers_limit_or_the_clusters() -> None:
    client = H2Client(b"http")
    assert client.capacity == 100  # until the peer's SETTINGS come
    Peer(client, MAX_CONCURRENT_STREAMS=3)
    assert client.capacity == 3
    request(client, GET)
    assert client.capacity == 2
    capped = H2Client(b"http", max_streams=1)
    Peer(capped, MAX_CONCURRENT_STREAMS=3)
    assert capped.capacity == 1


def test_a_body_beyond_the_peers_window_waits_for_window_updates() -> None:
    client = H2Client(b"http")
    peer = Peer(client)
    size = 65535 + HIGH_WATER + 10  # the peer's initial window, and more than we hold quietly
    sid = request(client, b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: %d\r\n\r\n" % size)
    client.send_body(sid, b"x" * size)
    peer.pump()
    assert client.blocked(sid)
    got = sum(len(e.data) for e in peer.of(h2.events.DataReceived))
    assert got == 65535
    acked = 0
    while got > acked:  # the server reads what it got; the client sends on
        peer.h2.acknowledge_received_data(got - acked, sid)
        acked = got
        peer.pump()
        got = sum(len(e.data) for e in peer.of(h2.events.DataReceived))
    assert not client.blocked(sid)
    assert got == size
    assert peer.of(h2.events.StreamEnded)


def test_a_response_is_not_acknowledged_while_its_client_is_paused() -> None:
    client = H2Client(b"http")
    peer = Peer(client)
    sid = request(client, GET)
    peer.pump()
    client.pause(sid, True)
    peer.h2.send_headers(sid, [(b":status", b"200")])
    sent = 0
    while sent < STREAM_WINDOW - 1000:
        peer.h2.send_data(sid, b"x" * 16384)
        sent += 16384
    peer.pump()
    assert peer.h2.local_flow_control_window(sid) == STREAM_WINDOW - sent  # no WINDOW_UPDATE
    client.pause(sid, False)
    peer.pump()
    assert peer.h2.local_flow_control_window(sid) == STREAM_WINDOW


def test_te_trailers_goes_on_and_other_te_values_do_not() -> None:
    client = H2Client(b"http")
    peer = Peer(client)
    request(client, b"GET / HTTP/1.1\r\nHost: a\r\nte: trailers\r\n\r\n")
    request(client, b"GET / HTTP/1.1\r\nHost: a\r\nte: gzip\r\n\r\n")
    peer.pump()
    kept, dropped = (e.headers for e in peer.of(h2.events.RequestReceived))
    assert [v for n, v in kept if n == b"te"] == [b"trailers"]
    assert [v for n, v in dropped if n == b"te"] == []


def test_a_response_header_list_over_the_limit_fails_the_connection_not_the_proxy() -> None:
    client = H2Client(b"http")
    peer = Peer(client)
    sid = request(client, GET)
    peer.pump()
    peer.h2.send_headers(sid, [(b":status", b"200"), (b"x-big", b"v" * (MAX_HEADER_LIST + 1))])
    delivered = dict(peer.pump())
    error = delivered[sid]
    assert isinstance(error, ProtocolError) and error.flag == "UPE"
    assert client.broken is not None and client.capacity == 0


@settings(max_examples=60, deadline=None)
@given(
    body=st.binary(max_size=300_000),
    cuts=st.lists(st.integers(min_value=0, max_value=300_000), max_size=8),
    trailers=st.booleans(),
)
def test_any_chunked_body_arrives_whole_with_its_trailers(
    body: bytes, cuts: list[int], trailers: bool
) -> None:
    """However the client's chunks fall, the server reads the same body (the
    windows opened as it reads), then the trailers or the end."""
    client = H2Client(b"http")
    peer = Peer(client)
    head = b"POST /u HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n"
    sid = request(client, head)
    edges = sorted({0, len(body), *(c for c in cuts if c < len(body))})
    for start, end in itertools.pairwise(edges):
        assert client.send_body(sid, b"%x\r\n%s\r\n" % (end - start, body[start:end])) is None
    assert client.send_body(sid, b"0\r\nx-t: 1\r\n\r\n" if trailers else b"0\r\n\r\n") is None
    received = b""
    for _ in range(100):
        peer.pump()
        got = b"".join(e.data for e in peer.of(h2.events.DataReceived))
        if len(got) > len(received):
            peer.h2.acknowledge_received_data(len(got) - len(received), sid)
            received = got
        elif peer.of(h2.events.StreamEnded):
            break
    assert received == body
    assert bool(peer.of(h2.events.TrailersReceived)) == trailers
    assert peer.of(h2.events.StreamEnded)
