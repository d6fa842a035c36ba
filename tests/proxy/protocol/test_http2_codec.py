"""The downstream HTTP/2 codec without sockets: a real client (h2's, or raw
frames from hyperframe) feeds it bytes; the events, frames and limits are checked."""

from __future__ import annotations

from collections import Counter

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotfish.proxy.protocol.http2 import (
    ENHANCE_YOUR_CALM,
    PREFACE,
    PROTOCOL_ERROR,
    H2Limits,
    H2ServerCodec,
    StreamData,
    StreamEnd,
    StreamHead,
    StreamReset,
    Terminated,
)

GET = [(b":method", b"GET"), (b":path", b"/a?b"), (b":scheme", b"http"), (b":authority", b"x.y")]
POST = [(b":method", b"POST"), *GET[1:]]


def pair(**limits: int) -> tuple[H2ServerCodec, h2.connection.H2Connection, Counter[str]]:
    stats: Counter[str] = Counter()
    server = H2ServerCodec(H2Limits(**limits), stats)
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    server.receive(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive(client.data_to_send())  # the client's SETTINGS acknowledgement
    return server, client, stats


def goaway_code(server: H2ServerCodec, client: h2.connection.H2Connection) -> int | None:
    for event in client.receive_data(server.data_to_send()):
        if isinstance(event, h2.events.ConnectionTerminated):
            return int(event.error_code)
    return None


def test_request_head_has_http1s_values() -> None:
    server, client, _ = pair()
    client.send_headers(1, [*POST, (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"x-k", b"v")])
    client.send_data(1, b"hello")
    client.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    events = server.receive(client.data_to_send())
    heads = [e for e in events if isinstance(e, StreamHead)]
    assert len(heads) == 1 and not heads[0].end_stream
    head = heads[0].head
    assert (head.method, head.target, head.version, head.host) == (b"POST", b"/a?b", b"2", b"x.y")
    assert head.headers == [(b"host", b"x.y"), (b"x-k", b"v"), (b"cookie", b"a=1; b=2")]
    assert head.chunked and head.content_length is None and head.keep_alive
    assert StreamData(1, b"hello") in events
    assert events[-1] == StreamEnd(1, ((b"grpc-status", b"0"),))


def test_a_get_has_no_body_and_no_framing() -> None:
    server, client, _ = pair()
    client.send_headers(1, GET, end_stream=True)
    events = server.receive(client.data_to_send())
    head = next(e for e in events if isinstance(e, StreamHead))
    assert head.end_stream and not head.head.chunked and head.head.content_length is None
    assert events[-1] == StreamEnd(1)


def test_response_waits_for_the_window_and_goes_when_it_opens() -> None:
    server, client, _ = pair()
    client.send_headers(1, GET, end_stream=True)
    server.receive(client.data_to_send())
    server.send_head(1, 200, [(b"Content-Type", b"text/plain"), (b"connection", b"close")], False)
    server.send_data(1, b"x" * 100_000)
    server.send_end(1, [(b"grpc-status", b"0")])
    assert server.pending(1) == 100_000 - 65535
    got = client.receive_data(server.data_to_send())
    response = next(e for e in got if isinstance(e, h2.events.ResponseReceived))
    # Connection-specific fields never go out on a stream (RFC 9113 8.2.2).
    assert response.headers == [(b":status", b"200"), (b"content-type", b"text/plain")]
    received = sum(len(e.data) for e in got if isinstance(e, h2.events.DataReceived))
    assert received == 65535
    client.increment_flow_control_window(1 << 20)
    client.increment_flow_control_window(1 << 20, 1)
    server.receive(client.data_to_send())
    assert server.pending(1) == 0
    got = client.receive_data(server.data_to_send())
    received += sum(len(e.data) for e in got if isinstance(e, h2.events.DataReceived))
    assert received == 100_000
    assert any(isinstance(e, h2.events.TrailersReceived) for e in got)
    assert any(isinstance(e, h2.events.StreamEnded) for e in got)


def test_request_bytes_are_acknowledged_only_once_consumed() -> None:
    server, client, _ = pair()
    client.send_headers(1, POST)
    for _ in range(4):
        client.send_data(1, b"a" * 15_000)
    server.receive(client.data_to_send())
    assert client.receive_data(server.data_to_send()) == []  # no WINDOW_UPDATE yet
    assert client.local_flow_control_window(1) == 65536 - 60_000
    server.consumed(1, 60_000)
    client.receive_data(server.data_to_send())
    assert client.local_flow_control_window(1) == 65536


def test_client_reset_and_our_reset() -> None:
    server, client, stats = pair()
    client.send_headers(1, GET, end_stream=True)
    client.send_headers(3, GET, end_stream=True)
    server.receive(client.data_to_send())
    client.reset_stream(1, 8)
    assert server.receive(client.data_to_send()) == [StreamReset(1, 8)]
    server.reset(3, 2)
    got = client.receive_data(server.data_to_send())
    assert [(e.stream_id, e.error_code) for e in got if isinstance(e, h2.events.StreamReset)] == [
        (3, 2)
    ]
    assert stats["rx_reset"] == 1 and stats["tx_reset"] == 1
    assert server.streams == 0


def test_rapid_reset_gets_goaway_enhance_your_calm() -> None:
    server, client, stats = pair(premature_reset_total_stream_count=50)
    events = []
    for stream_id in range(1, 200, 2):
        client.send_headers(stream_id, GET, end_stream=True)
        client.reset_stream(stream_id)
        events += server.receive(client.data_to_send())
        if server.terminated:
            break
    assert isinstance(events[-1], Terminated) and events[-1].error_code == ENHANCE_YOUR_CALM
    assert goaway_code(server, client) == ENHANCE_YOUR_CALM
    assert stats["downstream_rq_too_many_premature_resets"] == 1
    assert 49 <= server.closed_streams <= 50


def test_streams_answered_before_reset_are_not_premature() -> None:
    server, client, _ = pair(premature_reset_total_stream_count=50)
    for stream_id in range(1, 300, 2):
        client.send_headers(stream_id, GET, end_stream=True)
        server.receive(client.data_to_send())
        server.send_head(stream_id, 200, [], end=True)
        client.receive_data(server.data_to_send())
    assert server.terminated is None


def test_hpack_bomb_gets_goaway_and_a_header_overflow() -> None:
    server, client, stats = pair()
    client.send_headers(1, GET + [(b"x-bomb", b"a" * 4000)] * 20, end_stream=True)
    events = server.receive(client.data_to_send())
    assert events[-1].error_code == ENHANCE_YOUR_CALM  # type: ignore[union-attr]
    assert stats["header_overflow"] == 1
    assert goaway_code(server, client) == ENHANCE_YOUR_CALM
    assert server.receive(b"\x00" * 100) == []  # nothing is read after the end


def test_continuation_flood_gets_goaway() -> None:
    server, _, stats = pair()
    head = HeadersFrame(1, data=b"\x82\x86\x84", flags=["END_STREAM"])
    data = head.serialize() + ContinuationFrame(1, data=b"").serialize() * 100
    events = server.receive(data)
    assert isinstance(events[-1], Terminated)
    assert stats["too_many_header_frames"] == 1


def test_empty_data_frame_flood_gets_goaway() -> None:
    server, client, stats = pair()
    client.send_headers(1, POST)
    server.receive(client.data_to_send())
    events = server.receive(DataFrame(1, data=b"").serialize() * 5)
    assert events == [Terminated(ENHANCE_YOUR_CALM, 1, "too many consecutive empty DATA frames")]
    assert stats["inbound_empty_frames_flood"] == 1


def test_control_frames_the_peer_does_not_read_are_bounded() -> None:
    server, _client, stats = pair(max_outbound_control_frames=100)
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    assert not any(isinstance(e, Terminated) for e in server.receive(ping * 500))  # it reads them
    server.data_to_send()
    server.set_blocked(True)
    events = server.receive(ping * 500)
    assert isinstance(events[-1], Terminated) and events[-1].error_code == ENHANCE_YOUR_CALM
    assert stats["outbound_control_flood"] == 1
    # What one read queued (h2 acknowledges a read's PINGs at once), then the GOAWAY.
    assert len(server.data_to_send()) <= 500 * 17 + 17
    assert server.receive(ping * 500) == []
    assert server.data_to_send() == b""


def test_more_streams_than_the_limit_is_a_protocol_error() -> None:
    server = H2ServerCodec(H2Limits(max_concurrent_streams=3))
    # A client that does not wait for the server's SETTINGS.
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    for stream_id in (1, 3, 5, 7):
        client.send_headers(stream_id, GET, end_stream=True)
    events = server.receive(client.data_to_send())
    assert isinstance(events[-1], Terminated) and events[-1].error_code == PROTOCOL_ERROR


# -- Hypothesis over frame sequences --------------------------------------------------------

STREAM_IDS = st.sampled_from([0, 1, 2, 3, 5, 7, 9, 2**31 - 1])
HEADER_BLOCKS = st.sampled_from(
    [b"\x82\x86\x84\x41\x03x.y", b"\x82\x86\x84", b"", b"\xff\xff\xff\xff", b"\x3f\xe1\x1f"]
)
FLAGS = st.sets(st.sampled_from(["END_STREAM", "END_HEADERS", "ACK", "PADDED"]))


def _frame(kind: str, sid: int, flags: set[str], data: bytes, block: bytes, n: int) -> Frame:
    if kind in ("headers", "continuation", "data", "rst", "priority"):
        sid = sid or 1  # hyperframe will not build these on stream 0
    if kind == "headers":
        return HeadersFrame(sid, data=block, flags=flags & {"END_STREAM", "END_HEADERS"})
    if kind == "continuation":
        return ContinuationFrame(sid, data=block, flags=flags & {"END_HEADERS"})
    if kind == "data":
        return DataFrame(sid, data=data, flags=flags & {"END_STREAM"})
    if kind == "rst":
        return RstStreamFrame(sid, error_code=n % 14)
    if kind == "window":
        return WindowUpdateFrame(sid, window_increment=max(1, n))
    if kind == "ping":
        return PingFrame(0, opaque_data=data[:8].ljust(8, b"\0"), flags=flags & {"ACK"})
    if kind == "settings":
        return SettingsFrame(0, settings={4: n % (2**31), 1: n % 70000})
    if kind == "priority":
        return PriorityFrame(sid, depends_on=n % 9)
    return GoAwayFrame(0, last_stream_id=n % 9, error_code=n % 14)


FRAMES = st.builds(
    _frame,
    st.sampled_from(
        ["headers", "continuation", "data", "rst", "window", "ping", "settings", "priority",
         "goaway"]
    ),
    STREAM_IDS,
    FLAGS,
    st.binary(max_size=40),
    HEADER_BLOCKS,
    st.integers(min_value=0, max_value=2**31 - 1),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(FRAMES, max_size=40), cut=st.integers(min_value=1, max_value=64),
       blocked=st.booleans())  # fmt: skip
def test_any_frame_sequence_never_raises_and_stays_bounded(
    frames: list[Frame], cut: int, blocked: bool
) -> None:
    server = H2ServerCodec(H2Limits(max_concurrent_streams=4, max_outbound_control_frames=8))
    server.set_blocked(blocked)
    wire = PREFACE + SettingsFrame(0).serialize() + b"".join(f.serialize() for f in frames)
    ended = False
    for start in range(0, len(wire), cut):
        events = server.receive(wire[start : start + cut])
        assert not ended or events == []  # nothing after the end
        for event in events:
            if isinstance(event, StreamHead):
                server.send_head(event.stream_id, 200, [], end=False)
                server.send_data(event.stream_id, b"z" * 70000)
            ended = ended or (isinstance(event, Terminated) and event.error_code != 0)
        assert server.streams <= 4
        assert len(server.conn.incoming_buffer._data) <= 16384 + 9 + cut  # one frame, at most
        assert len(server.conn.incoming_buffer._headers_buffer) <= 65
        assert sum(server.pending(s) for s in list(server.outbound)) <= 4 * 70000
        server.data_to_send()


@settings(max_examples=50, deadline=None)
@given(kind=st.sampled_from(["ping", "settings", "rst", "empty"]), prefix=st.lists(FRAMES, max_size=5))
def test_every_flood_is_answered_with_goaway(kind: str, prefix: list[Frame]) -> None:
    server, client, _ = pair(max_outbound_control_frames=50, premature_reset_total_stream_count=50)
    client.send_headers(1, POST)
    server.receive(client.data_to_send())
    server.data_to_send()
    server.set_blocked(True)
    if kind == "rst":
        flood = b""
        for stream_id in range(3, 400, 2):
            client.send_headers(stream_id, GET, end_stream=True)
            client.reset_stream(stream_id)
        flood = client.data_to_send()
    else:
        frame = {
            "ping": PingFrame(0, opaque_data=b"12345678"),
            "settings": SettingsFrame(0, settings={4: 65535}),
            "empty": DataFrame(1, data=b""),
        }[kind]
        flood = frame.serialize() * 200
    events: list[object] = []
    for start in range(0, len(flood), 997):
        events += server.receive(flood[start : start + 997])
    terminated = [e for e in events if isinstance(e, Terminated)]
    assert terminated and terminated[0].error_code == ENHANCE_YOUR_CALM
    del prefix


def test_a_response_complete_before_its_request_asks_the_client_to_stop() -> None:
    server, client, _ = pair()
    client.send_headers(1, POST)
    client.send_data(1, b"part")
    server.receive(client.data_to_send())
    server.send_head(1, 404, [(b"content-length", b"0")], end=True)
    server.abort_request(1)
    got = client.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.ResponseReceived) for e in got)
    resets = [e for e in got if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(1, 0)]
    server.abort_request(1)  # once only
    assert server.data_to_send() == b""


def test_streams_open_at_a_graceful_goaway_still_get_their_responses() -> None:
    # Our GOAWAY on drain: the stream in flight is answered, a newer one refused.
    server, client, _ = pair()
    client.send_headers(1, GET, end_stream=True)
    server.receive(client.data_to_send())
    server.goaway()
    got = client.receive_data(server.data_to_send())
    assert [(e.error_code, e.last_stream_id) for e in got
            if isinstance(e, h2.events.ConnectionTerminated)] == [(0, 1)]  # fmt: skip
    server.send_head(1, 200, [], end=False)
    server.send_data(1, b"late")
    server.send_end(1)
    raw = server.data_to_send()
    assert b"late" in raw
    newer = HeadersFrame(3, data=b"\x82\x86\x84\x41\x03x.y", flags=["END_STREAM", "END_HEADERS"])
    assert server.receive(newer.serialize()) == []
    assert RstStreamFrame(3, error_code=7).serialize() in server.data_to_send()  # REFUSED_STREAM


def test_the_clients_graceful_goaway_leaves_its_streams_answered() -> None:
    server, client, _ = pair()
    client.send_headers(1, GET, end_stream=True)
    client.close_connection()
    events = server.receive(client.data_to_send())
    assert isinstance(events[-1], Terminated) and events[-1].error_code == 0
    server.send_head(1, 200, [(b"content-length", b"2")], end=False)
    server.send_data(1, b"ok")
    server.send_end(1)
    assert server.data_to_send().endswith(b"\x00\x00\x00\x00\x01\x00\x00\x00\x01")  # END_STREAM


def test_a_204_goes_out_without_content_length() -> None:
    # An HTTP/1.1 upstream may say one; an HTTP/2 client takes it as DATA to
    # come and resets the stream (curl: PROTOCOL_ERROR).
    server, client, _ = pair()
    client.send_headers(1, GET, end_stream=True)
    server.receive(client.data_to_send())
    server.send_head(1, 204, [(b"Content-Length", b"17"), (b"x-k", b"v")], end=False)
    server.send_end(1)
    got = client.receive_data(server.data_to_send())
    head = next(e for e in got if isinstance(e, h2.events.ResponseReceived))
    assert head.headers == [(b":status", b"204"), (b"x-k", b"v")]
    assert any(isinstance(e, h2.events.StreamEnded) for e in got)
