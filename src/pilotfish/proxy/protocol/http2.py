"""HTTP/2 without I/O: the server side of a downstream connection, over `h2`.

The shell feeds the client's bytes to `H2ServerCodec.receive()` and gets
per-stream events back: `StreamHead` (a `RequestHead` with the same values
protocol/http1 makes, so the exchange cannot tell the two apart), `StreamData`,
`StreamEnd` (with trailers), `StreamReset`, `WindowOpened`, and `Terminated`
once the connection is over. It answers with `send_head` / `send_data` /
`send_end` / `reset` and writes whatever `data_to_send()` returns.

The limits and counters are Envoy's codec's (`http2.*` stats), so that a
misbehaving peer gets a GOAWAY, never a crash or unbounded memory:

- streams: at most `max_concurrent_streams` open (SETTINGS; one more is a
  PROTOCOL_ERROR, as nghttp2 treats a peer that ignores the acknowledged limit);
- header blocks: `max_header_list_size` decoded bytes (Envoy's
  max_request_headers_kb, 60 KiB), so an HPACK bomb stops there, and at most
  64 CONTINUATION frames per block (h2's backlog): both ENHANCE_YOUR_CALM;
- rapid reset (CVE-2023-44487): once `premature_reset_total_stream_count`
  streams have closed, a connection on which half or more were reset by the
  client before a response began is sent GOAWAY ENHANCE_YOUR_CALM, as Envoy's
  premature-reset check does;
- empty DATA frames: more than `max_consecutive_inbound_frames_with_empty_payload`
  in a row is a flood;
- outbound frames the peer does not read (the shell says when its transport is
  backed up with `set_blocked`): over `max_outbound_control_frames` control
  frames (SETTINGS and PING acknowledgements, RST_STREAM) or
  `max_outbound_frames` frames in all, the connection goes.

Flow control both ways: received DATA is acknowledged (WINDOW_UPDATE) only
when the shell says it was consumed (`consumed`); response bytes beyond the
peer's window wait here, per stream, until a WINDOW_UPDATE lets them go.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from pilotfish.proxy.protocol.detect import H2_PREFACE
from pilotfish.proxy.protocol.http1 import Header, Headers, RequestHead

PREFACE: Final = H2_PREFACE
NO_ERROR: Final = int(h2.errors.ErrorCodes.NO_ERROR)
PROTOCOL_ERROR: Final = int(h2.errors.ErrorCodes.PROTOCOL_ERROR)
INTERNAL_ERROR: Final = int(h2.errors.ErrorCodes.INTERNAL_ERROR)
CANCEL: Final = int(h2.errors.ErrorCodes.CANCEL)
REFUSED_STREAM: Final = int(h2.errors.ErrorCodes.REFUSED_STREAM)
ENHANCE_YOUR_CALM: Final = int(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
# Connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2): an HTTP/1.1
# response's framing and hop-by-hop headers never go out on a stream.
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
_NO_LENGTH: Final = _CONNECTION_SPECIFIC | {b"content-length"}
_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})


@dataclass(frozen=True, slots=True)
class H2Limits:
    """Envoy's names. The stream and window sizes are the values Envoy's edge
    proxy best practices give (its built-in defaults, 2^31-1 streams and 256
    MiB windows, trust the peer far more than a Python proxy can afford)."""

    max_concurrent_streams: int = 100
    initial_stream_window_size: int = 65536
    initial_connection_window_size: int = 1048576
    max_header_list_size: int = 60 * 1024  # max_request_headers_kb
    max_outbound_frames: int = 10000
    max_outbound_control_frames: int = 1000
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    premature_reset_total_stream_count: int = 500


@dataclass(frozen=True, slots=True)
class StreamHead:
    stream_id: int
    head: RequestHead
    end_stream: bool  # no body follows


@dataclass(frozen=True, slots=True)
class StreamData:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnd:
    stream_id: int
    trailers: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The client reset the stream (RST_STREAM), or it broke a stream rule."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """Response bytes that waited for the peer's window went out (0: several streams)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class Terminated:
    """The connection is over: the peer sent GOAWAY, or this side did (a flood,
    a protocol error); streams above `last_stream_id` were never processed."""

    error_code: int
    last_stream_id: int
    reason: str


H2Event = StreamHead | StreamData | StreamEnd | StreamReset | WindowOpened | Terminated


@dataclass(slots=True)
class _Outbound:
    """Response bytes a stream holds until the peer's window lets them go."""

    chunks: deque[bytes] = field(default_factory=deque)
    size: int = 0
    end: tuple[Header, ...] | None = None  # the end was asked for: trailers, maybe none
    responded: bool = False


class H2ServerCodec:
    """One downstream HTTP/2 connection; see the module docstring."""

    def __init__(
        self, limits: H2Limits | None = None, stats: Counter[str] | None = None, prefix: str = ""
    ) -> None:
        """`stats`: where the `http2.*` counters go, each name after `prefix`."""
        self.limits = limits = limits or H2Limits()
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.prefix = prefix
        # What we receive keeps RFC 9113's checks (they guard against
        # smuggling); what we send is built lowercased and without
        # connection-specific fields by send_head/send_end, so h2's second
        # pass over it would only cost time.
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config)
        self.conn.decoder.max_header_list_size = limits.max_header_list_size
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_stream_window_size,
            },
        )
        self.conn.initiate_connection()
        extra = limits.initial_connection_window_size - 65535
        if extra > 0:
            self.conn.increment_flow_control_window(extra)
        self.outbound: dict[int, _Outbound] = {}  # open streams, as this side sees them
        self.closed_streams = 0
        self.premature_resets = 0
        self.empty_frames = 0
        self.blocked = False
        self.blocked_frames = 0
        self.blocked_control_frames = 0
        self.terminated: Terminated | None = None
        self.goaway_last: int | None = None  # our graceful GOAWAY's last stream, once sent
        self.goaway_frame = b""  # that GOAWAY, until written

    def __repr__(self) -> str:
        return f"<H2ServerCodec streams={len(self.outbound)} closed={self.closed_streams}>"

    # -- bytes in -------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[H2Event]:
        """The events `data` makes; after a `Terminated`, nothing more."""
        if self.terminated is not None:
            return []
        try:
            raw = self.conn.receive_data(data)
        except h2.exceptions.DenialOfServiceError as e:
            self._count("header_overflow" if "header" in str(e) else "too_many_header_frames")
            return [self._terminate(ENHANCE_YOUR_CALM, str(e), already=True)]
        except h2.exceptions.TooManyStreamsError as e:
            self._count("rx_messaging_error")
            return [self._terminate(PROTOCOL_ERROR, str(e), already=True)]
        except h2.exceptions.ProtocolError as e:
            if "continuation" in str(e).lower():
                self._count("too_many_header_frames")
            else:
                self._count("rx_messaging_error")
            code = int(getattr(e, "error_code", PROTOCOL_ERROR))
            return [self._terminate(code, str(e), already=True)]
        events: list[H2Event] = []
        for event in raw:
            self._translate(event, events)
            if self.terminated is not None:
                events.append(self.terminated)
                break
        return events

    def _translate(self, event: h2.events.Event, out: list[H2Event]) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._data(event, out)
            return
        self.empty_frames = 0
        if isinstance(event, h2.events.RequestReceived):
            self._request(event, out)
        elif isinstance(event, h2.events.TrailersReceived):
            trailers = tuple(_plain(event.headers or []))
            if event.stream_id in self.outbound:
                out.append(StreamEnd(event.stream_id, trailers))
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id in self.outbound and not _ended_with_trailers(out, event.stream_id):
                out.append(StreamEnd(event.stream_id))
        elif isinstance(event, h2.events.StreamReset):
            self._client_reset(event, out)
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_opened(event.stream_id or 0, out)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._control_frame()  # its acknowledgement
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._window_opened(0, out)
        elif isinstance(event, h2.events.PingReceived):
            self._control_frame()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # The client's GOAWAY: without an error, streams open go on.
            ended = Terminated(int(event.error_code or 0), int(event.last_stream_id or 0), "GOAWAY")
            if ended.error_code:
                self.terminated = ended
                self.outbound.clear()
            else:
                # h2 would send nothing more; the client's own streams are
                # still owed their responses (RFC 9113 6.8): keep it open.
                self.conn.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
                out.append(ended)
        # Priority, acknowledgements of our SETTINGS and the like need nothing.

    def _request(self, event: h2.events.RequestReceived, out: list[H2Event]) -> None:
        stream_id = event.stream_id
        if self.goaway_last is not None and stream_id > self.goaway_last:
            self.conn.reset_stream(stream_id, REFUSED_STREAM)  # after our GOAWAY: retry elsewhere
            self._control_frame()
            return
        head = request_head(event.headers or [], event.stream_ended is not None)
        self.outbound[stream_id] = _Outbound()
        out.append(StreamHead(stream_id, head, event.stream_ended is not None))

    def _data(self, event: h2.events.DataReceived, out: list[H2Event]) -> None:
        stream_id, data = event.stream_id, event.data or b""
        if data or event.stream_ended is not None:
            self.empty_frames = 0
        else:
            self.empty_frames += 1
            if self.empty_frames > self.limits.max_consecutive_inbound_frames_with_empty_payload:
                self._count("inbound_empty_frames_flood")
                self._terminate(ENHANCE_YOUR_CALM, "too many consecutive empty DATA frames")
                return
        if stream_id not in self.outbound:
            # A stream this side is done with: its bytes count against the
            # connection's window only, given back at once.
            self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            return
        if data:
            out.append(StreamData(stream_id, data))
        if event.flow_controlled_length > len(data):  # padding is consumed as it comes
            self.conn.acknowledge_received_data(
                event.flow_controlled_length - len(data), stream_id
            )

    def _client_reset(self, event: h2.events.StreamReset, out: list[H2Event]) -> None:
        stream_id = event.stream_id
        if not event.remote_reset:  # h2 reset a stream that broke a rule
            self._count("rx_messaging_error")
            self._control_frame()
        else:
            self._count("rx_reset")
        state = self.outbound.pop(stream_id, None)
        if state is None:
            return
        self._stream_closed(premature=event.remote_reset and not state.responded)
        out.append(StreamReset(stream_id, int(event.error_code or 0)))

    def _stream_closed(self, premature: bool) -> None:
        self.closed_streams += 1
        self.premature_resets += premature
        limit = self.limits.premature_reset_total_stream_count
        if self.closed_streams >= limit and self.premature_resets * 2 >= self.closed_streams:
            self._count("downstream_rq_too_many_premature_resets")
            self._terminate(ENHANCE_YOUR_CALM, "too many streams reset before a response")

    # -- bytes out ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        data = self.conn.data_to_send()
        if self.goaway_frame:
            data, self.goaway_frame = data + self.goaway_frame, b""
        return data

    def set_blocked(self, blocked: bool) -> None:
        """The shell's transport is backed up (the peer is not reading) or drained."""
        self.blocked = blocked
        if not blocked:
            self.blocked_frames = self.blocked_control_frames = 0

    def send_head(self, stream_id: int, status: int, headers: Headers, end: bool) -> None:
        state = self.outbound.get(stream_id)
        if state is None or self.terminated is not None:
            return
        state.responded = True
        fields = [(b":status", b"%d" % status)]
        # A 204 has no Content-Length (RFC 9110 8.6), whatever the upstream said:
        # an HTTP/2 client takes one as a promise of DATA and resets the stream.
        dropped = _NO_LENGTH if status == 204 else _CONNECTION_SPECIFIC
        fields += [(n.lower(), v) for n, v in headers if n.lower() not in dropped]
        self.conn.send_headers(stream_id, fields, end_stream=end)
        self._frame()
        if end:
            self._closed_by_us(stream_id)

    def send_data(self, stream_id: int, data: bytes) -> None:
        state = self.outbound.get(stream_id)
        if state is None or not data or self.terminated is not None:
            return
        state.chunks.append(data)
        state.size += len(data)
        self._flush(stream_id, state)

    def send_end(self, stream_id: int, trailers: Headers | tuple[Header, ...] = ()) -> None:
        state = self.outbound.get(stream_id)
        if state is None or self.terminated is not None:
            return
        state.end = tuple((n.lower(), v) for n, v in trailers)
        self._flush(stream_id, state)

    def pending(self, stream_id: int) -> int:
        """Response bytes of the stream that wait for the peer's window."""
        state = self.outbound.get(stream_id)
        return state.size if state is not None else 0

    def reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        if self.outbound.pop(stream_id, None) is None or self.terminated is not None:
            return
        self._count("tx_reset")
        self.conn.reset_stream(stream_id, error_code)
        self._control_frame()
        self._stream_closed(premature=False)

    def abort_request(self, stream_id: int) -> None:
        """The response is complete but the request is not: ask the client to
        stop sending it (RST_STREAM NO_ERROR), if the stream is still open
        and no response bytes wait for the window (the reset would drop them)."""
        stream = self.conn.streams.get(stream_id)
        if stream_id in self.outbound or self.terminated is not None:
            return
        if stream is not None and not stream.closed:
            self.conn.reset_stream(stream_id, NO_ERROR)
            self._control_frame()

    def consumed(self, stream_id: int, size: int) -> None:
        """`size` bytes of the stream's request body went on: the client may send more."""
        if size and self.terminated is None:
            self.conn.acknowledge_received_data(size, stream_id)

    def goaway(self) -> None:
        """Drain: GOAWAY NO_ERROR; the streams open finish, newer ones are
        refused (the shell closes once none is left). The frame is written
        here rather than by h2, whose connection could send nothing more
        after it, not even the responses of the streams it lets finish."""
        if self.terminated is None and self.goaway_last is None:
            self.goaway_last = self.conn.highest_inbound_stream_id or 0
            frame = GoAwayFrame(0, last_stream_id=self.goaway_last, error_code=NO_ERROR)
            self.goaway_frame = frame.serialize()

    @property
    def streams(self) -> int:
        return len(self.outbound)

    # -- inside ---------------------------------------------------------------------------

    def _flush(self, stream_id: int, state: _Outbound) -> None:
        conn = self.conn
        while state.chunks:
            window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if window <= 0:
                return
            chunk = state.chunks.popleft()
            if len(chunk) > window:
                state.chunks.appendleft(chunk[window:])
                chunk = chunk[:window]
            state.size -= len(chunk)
            conn.send_data(stream_id, chunk)
            self._frame()
        if state.end is not None:
            if state.end:
                conn.send_headers(stream_id, list(state.end), end_stream=True)
            else:
                conn.end_stream(stream_id)
            self._frame()
            self._closed_by_us(stream_id)

    def _closed_by_us(self, stream_id: int) -> None:
        """The response is complete: the stream is done on this side."""
        self.outbound.pop(stream_id, None)
        self._stream_closed(premature=False)

    def _window_opened(self, stream_id: int, out: list[H2Event]) -> None:
        targets = [stream_id] if stream_id else list(self.outbound)
        for target in targets:
            state = self.outbound.get(target)
            if state is not None and (state.chunks or state.end is not None) and state.responded:
                self._flush(target, state)
        out.append(WindowOpened(stream_id))

    def _frame(self) -> None:
        if self.blocked:
            self.blocked_frames += 1
            if self.blocked_frames > self.limits.max_outbound_frames:
                self._count("outbound_flood")
                self._terminate(ENHANCE_YOUR_CALM, "too many frames the peer does not read")

    def _control_frame(self) -> None:
        if self.blocked:
            self.blocked_control_frames += 1
            if self.blocked_control_frames > self.limits.max_outbound_control_frames:
                self._count("outbound_control_flood")
                self._terminate(ENHANCE_YOUR_CALM, "too many control frames the peer does not read")
            self._frame()

    def _count(self, name: str) -> None:
        self.stats[self.prefix + name] += 1

    def _terminate(self, code: int, reason: str, already: bool = False) -> Terminated:
        """GOAWAY (h2 has queued it already when it raised: `already`)."""
        if self.terminated is None:
            if not already:
                last = self.conn.highest_inbound_stream_id
                self.conn.close_connection(code, last_stream_id=last)
            self.terminated = Terminated(code, self.conn.highest_inbound_stream_id or 0, reason)
            self.outbound.clear()
        return self.terminated


def request_head(fields: list[tuple[bytes, bytes]], ended: bool) -> RequestHead:
    """The RequestHead protocol/http1 would make of the same request: the
    pseudo-headers become the request line and Host (from :authority), split
    cookies are joined again (RFC 9113 8.2.3), and a body of no stated length
    is `chunked` (an HTTP/1.1 upstream needs framing for it); no body, no
    length, as an HTTP/1.1 GET."""
    pseudo: dict[bytes, bytes] = {}
    headers: Headers = []
    cookies: list[bytes] = []
    host = None
    for name, value in _plain(fields):
        if name in _PSEUDO:
            pseudo[name] = value
        elif name == b"cookie":
            cookies.append(value)
        else:
            if name == b"host":
                host = value
            headers.append((name, value))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    authority = pseudo.get(b":authority", host)
    if authority is not None:
        headers = [(b"host", authority), *(h for h in headers if h[0] != b"host")]
    method = pseudo.get(b":method", b"GET")
    connect = method == b"CONNECT"
    target = (authority or b"") if connect else pseudo.get(b":path", b"/")
    length_text = next((v for n, v in headers if n == b"content-length"), None)
    length = int(length_text) if length_text is not None and length_text.isdigit() else None
    return RequestHead(
        method, target, b"2", headers, True, connect, False,
        length, not ended and length is None and not connect, authority,
    )  # fmt: skip


def _plain(fields: list[tuple[bytes, bytes]] | list[tuple[str, str]]) -> list[Header]:
    return [
        (n if isinstance(n, bytes) else n.encode(), v if isinstance(v, bytes) else v.encode())
        for n, v in fields
    ]


def _ended_with_trailers(out: list[H2Event], stream_id: int) -> bool:
    return any(isinstance(e, StreamEnd) and e.stream_id == stream_id for e in out[-1:])
