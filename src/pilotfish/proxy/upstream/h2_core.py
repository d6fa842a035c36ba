"""The client side of one upstream HTTP/2 connection, sans I/O (on python-hyper's
`h2`): HTTP/1.1 in, HTTP/2 on the wire, HTTP/1.1 events out.

The exchange speaks to every upstream in the HTTP/1.1 form it builds anyway
(its request head, then the body, chunked or counted); each stream parses that
with the proxy's own request parser and sends it as HTTP/2: pseudo-headers
from the method, target, Host and the connection's scheme, connection-specific
fields dropped as RFC 9113 section 8.2.2 requires (`te` only as `trailers`),
the body as DATA within the peer's flow-control windows, the chunked body's
trailers as a trailing HEADERS frame. What the peer answers comes back as the
events the HTTP/1.1 response parser gives (ResponseHead, body bytes,
EndOfMessage with the trailers), so the exchange cannot tell the difference.

A stream reset by the peer with REFUSED_STREAM, or above the last stream id
of its GOAWAY, was never processed (RFC 9113 section 8.7): it fails with
Envoy's UR, which the `refused-stream` retry condition retries.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.connection import ConnectionInputs, ConnectionState
from h2.errors import ErrorCodes

from pilotfish.proxy.protocol.http1 import (
    END,
    EndOfMessage,
    Header,
    ProtocolError,
    RequestHead,
    RequestParser,
    ResponseEvent,
    ResponseHead,
    strip_hop_by_hop,
)

STREAM_WINDOW = 256 * 1024  # what the peer may send a stream before we ask for more
CONNECTION_WINDOW = 16 * 1024 * 1024  # and the whole connection: paused streams hold little of it
HIGH_WATER = (
    64 * 1024
)  # request bytes a stream holds for the peer's window before pausing its client
STREAMS_BEFORE_SETTINGS = 100  # RFC 9113 section 6.5.2's floor, until the peer's SETTINGS say
MAX_HEADER_LIST = 60 * 1024
_DROPPED = frozenset({b"host", b"http2-settings"})
TE_TRAILERS = (b"te", b"trailers")
Delivery = tuple[int, list[ResponseEvent] | ProtocolError]


def refused() -> ProtocolError:
    return ProtocolError("remote refused stream reset", 503, "UR")


@dataclass(slots=True)
class _Stream:
    """What the connection keeps per stream: the parser of the exchange's
    request bytes, the body bytes waiting for window, and the response side."""

    parser: RequestParser = field(default_factory=RequestParser)
    pending: bytearray = field(default_factory=bytearray)
    end: tuple[bool, tuple[Header, ...]] = (False, ())  # the request ended, with these trailers
    started: bool = False  # the HEADERS went out
    closed: bool = False  # nothing more goes out
    paused: bool = False  # the client is slow: DATA is not acknowledged until it reads
    unacked: int = 0
    trailers_seen: bool = False


def request_headers(head: RequestHead, scheme: bytes) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header list of an HTTP/1.1 request head."""
    out = [
        (b":method", head.method),
        (b":scheme", scheme),
        (b":authority", head.host or b""),
        (b":path", head.target),
    ]
    grpc = te = False
    for name, value in head.headers:
        lowered = name.lower()
        if lowered == b"te" and value.strip().lower() == b"trailers":
            te = True  # the one TE value HTTP/2 allows
        elif lowered == b"content-type" and value.startswith(b"application/grpc"):
            grpc = True
    for name, value in strip_hop_by_hop(head.headers):
        lowered = name.lower()
        if lowered not in _DROPPED:
            out.append((lowered, value))
    if te or grpc:
        # gRPC servers refuse a call without it, and a forwarder that took
        # TE for hop-by-hop may have dropped it.
        out.append(TE_TRAILERS)
    return out


def response_head(headers: list[tuple[bytes, bytes]]) -> ResponseHead:
    status, fields, length = 0, [], None
    for name, value in headers:
        if name == b":status":
            status = int(value)
        elif name[:1] != b":":
            fields.append((name, value))
            if name == b"content-length" and value.isdigit():
                length = int(value)
    return ResponseHead(status, b"", b"2", fields, True, False, length, False)


def _drain_on_goaway(conn: h2.connection.H2Connection) -> None:
    """h2 closes the whole connection on a GOAWAY, and then fails on the
    frames of the streams RFC 9113 section 6.8 lets finish (at or below its
    last stream id). A client stays open instead; H2Client opens no stream
    after a GOAWAY (see `capacity`)."""
    machine = conn.state_machine
    machine._transitions = {
        **machine._transitions,
        (ConnectionState.CLIENT_OPEN, ConnectionInputs.RECV_GOAWAY): (
            None,
            ConnectionState.CLIENT_OPEN,
        ),
    }


class H2Client:
    """One connection's HTTP/2 state: `send_request`/`send_body` take the
    exchange's bytes, `receive` the peer's; both leave bytes to write in
    `data_to_send()`. `max_streams`: the cluster's max_concurrent_streams."""

    def __init__(self, scheme: bytes, max_streams: int | None = None) -> None:
        # Responses keep h2's RFC 9113 checks; requests are built lowercased
        # and without connection-specific fields by request_headers.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            },
        )
        # What SETTINGS tells the peer is also what we hold it to (h2 leaves
        # its decoder at hpack's default otherwise).
        self.conn.decoder.max_header_list_size = MAX_HEADER_LIST
        _drain_on_goaway(self.conn)
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.scheme = scheme
        self.max_streams = max_streams
        self.streams: dict[int, _Stream] = {}
        self.reserved = 0  # streams given out but not yet started
        self.settled = False  # the peer's SETTINGS came
        self.last_stream_id: int | None = None  # from the peer's GOAWAY
        self.broken: ProtocolError | None = None

    def __repr__(self) -> str:
        return f"<H2Client streams={len(self.streams)} goaway={self.last_stream_id}>"

    def data_to_send(self) -> bytes:
        return bytes(self.conn.data_to_send())

    @property
    def capacity(self) -> int:
        """Streams this connection may still take."""
        if self.last_stream_id is not None or self.broken is not None:
            return 0
        limit = self.conn.remote_settings.max_concurrent_streams
        if not self.settled:
            limit = min(limit, STREAMS_BEFORE_SETTINGS)
        if self.max_streams is not None:
            limit = min(limit, self.max_streams)
        return max(0, limit - len(self.streams) - self.reserved)

    # -- the request ----------------------------------------------------------------------

    def send_request(self, data: bytes) -> tuple[int, ProtocolError | None]:
        """Start a stream with the exchange's request bytes (head, maybe body)."""
        self.reserved -= 1
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = _Stream()
        return sid, self.send_body(sid, data)

    def send_body(self, sid: int, data: bytes) -> ProtocolError | None:
        """More of the exchange's request bytes; an error fails the stream."""
        stream = self.streams.get(sid)
        if stream is None or stream.closed:
            return None
        try:
            events = stream.parser.feed(data)
        except ProtocolError as error:
            self.reset(sid)
            return error
        for event in events:
            if isinstance(event, RequestHead):
                if event.upgrade:
                    self.reset(sid)
                    return ProtocolError("upgrade over an HTTP/2 upstream", 503, "UPE")
                self.conn.send_headers(sid, request_headers(event, self.scheme))
                stream.started = True
            elif isinstance(event, EndOfMessage):
                stream.end = (True, event.trailers)
            elif isinstance(event, bytes):
                stream.pending += event
        self._flush(sid, stream)
        return None

    def blocked(self, sid: int) -> bool:
        """Whether the stream holds more than it should for the peer's window."""
        stream = self.streams.get(sid)
        return stream is not None and len(stream.pending) > HIGH_WATER

    def _flush(self, sid: int, stream: _Stream) -> None:
        while stream.pending:
            size = min(
                len(stream.pending),
                self.conn.local_flow_control_window(sid),
                self.conn.max_outbound_frame_size,
            )
            if size <= 0:
                return
            self.conn.send_data(sid, bytes(stream.pending[:size]))
            del stream.pending[:size]
        ended, trailers = stream.end
        if ended and not stream.closed:
            stream.closed = True
            if trailers:
                self.conn.send_headers(sid, [(n.lower(), v) for n, v in trailers], end_stream=True)
            else:
                self.conn.end_stream(sid)

    def reset(self, sid: int) -> None:
        """The exchange is done with a stream the peer has not finished: RST_STREAM."""
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError):  # the peer ended it first
            self.conn.reset_stream(sid, ErrorCodes.CANCEL)

    def close(self) -> None:
        """GOAWAY: this side is done with the connection."""
        with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed
            self.conn.close_connection(ErrorCodes.NO_ERROR)

    def forget(self, sid: int) -> None:
        """The stream is complete both ways."""
        self.streams.pop(sid, None)

    def pause(self, sid: int, paused: bool) -> None:
        """Hold back (or resume) WINDOW_UPDATEs for a stream whose client reads slowly."""
        stream = self.streams.get(sid)
        if stream is None:
            return
        stream.paused = paused
        if not paused and stream.unacked:
            self._ack(sid, stream, 0)

    def _ack(self, sid: int, stream: _Stream, size: int) -> None:
        stream.unacked += size
        if stream.paused:
            return
        size, stream.unacked = stream.unacked, 0
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.conn.acknowledge_received_data(size, sid)

    # -- the response ---------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Delivery]:
        """The peer's bytes: per stream, the response's events or its failure.
        A connection error fails every stream (and `broken` says why)."""
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            return self.fail_all(
                ProtocolError(f"upstream http2 protocol error: {error}", 503, "UPE")
            )
        out: dict[int, list[ResponseEvent] | ProtocolError] = {}
        for event in events:
            self._on_event(event, out)
        return list(out.items())

    def fail_all(self, error: ProtocolError) -> list[Delivery]:
        self.broken = error
        with_error = [(sid, error) for sid in self.streams]
        self.streams.clear()
        with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed
            self.conn.close_connection(ErrorCodes.PROTOCOL_ERROR)
        return list(with_error)

    def _on_event(
        self, event: h2.events.Event, out: dict[int, list[ResponseEvent] | ProtocolError]
    ) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settled = True
            self._flush_all()
        elif isinstance(event, h2.events.WindowUpdated):
            self._flush_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event.last_stream_id or 0, out)
        elif isinstance(event, h2.events.StreamReset):
            if self.streams.pop(event.stream_id, None) is not None:
                refused_code = event.error_code == ErrorCodes.REFUSED_STREAM
                out[event.stream_id] = (
                    refused() if refused_code else ProtocolError("upstream reset", 503, "UC")
                )
        else:
            self._on_stream_event(event, out)

    def _on_stream_event(
        self, event: h2.events.Event, out: dict[int, list[ResponseEvent] | ProtocolError]
    ) -> None:
        sid = getattr(event, "stream_id", 0)
        stream = self.streams.get(sid)
        if stream is None:
            return  # reset by us, or a frame h2 reports for the connection
        found = out.setdefault(sid, [])
        if isinstance(found, ProtocolError):
            return
        if isinstance(event, h2.events.ResponseReceived):
            found.append(response_head(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            if event.data:
                found.append(event.data)
            self._ack(sid, stream, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            stream.trailers_seen = True
            found.append(EndOfMessage(tuple(event.headers)))
        elif isinstance(event, h2.events.StreamEnded):
            if not stream.trailers_seen:
                found.append(END)
            if stream.closed:
                self.streams.pop(sid, None)

    def _goaway(self, last: int, out: dict[int, list[ResponseEvent] | ProtocolError]) -> None:
        """Streams above `last` were not processed: refused, safe to retry;
        the others finish on this connection, which takes no new ones."""
        self.last_stream_id = last
        for sid in [s for s in self.streams if s > last]:
            del self.streams[sid]
            out[sid] = refused()

    def _flush_all(self) -> None:
        for sid, stream in list(self.streams.items()):
            if stream.started:
                self._flush(sid, stream)
