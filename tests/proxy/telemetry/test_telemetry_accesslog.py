"""Access log lines as a log shipper reads them, and the writer's buffering."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from pathlib import Path

from pilotfish.proxy.accesslog import AccessLogWriter, AccessRecord, LineBuffer, format_line

SAMPLE = AccessRecord(
    start_time=1460751420.3108,
    method="POST",
    path="/api/v1/locations?x=1",
    protocol="HTTP/1.1",
    response_code=204,
    response_flags="",
    response_code_details="via_upstream",
    bytes_received=154,
    bytes_sent=0,
    duration=226,
    upstream_service_time=100,
    x_forwarded_for="10.0.35.28",
    user_agent="nsq2http",
    request_id="cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2",
    authority="locations",
    upstream_host="10.0.2.1:80",
    upstream_cluster="outbound|80||locations.default.svc.cluster.local",
    upstream_local_address="10.0.1.5:34567",
    downstream_local_address="10.0.1.5:15001",
    downstream_remote_address="10.0.35.28:45678",
    route_name="default",
)


def test_a_sample_request_is_one_json_line_with_envoys_fields() -> None:
    line = format_line(SAMPLE)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "authority": "locations",
        "bytes_received": 154,
        "bytes_sent": 0,
        "connection_termination_details": None,
        "downstream_local_address": "10.0.1.5:15001",
        "downstream_remote_address": "10.0.35.28:45678",
        "duration": 226,
        "method": "POST",
        "path": "/api/v1/locations?x=1",
        "protocol": "HTTP/1.1",
        "request_id": "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2",
        "requested_server_name": None,
        "response_code": 204,
        "response_code_details": "via_upstream",
        "response_flags": "-",
        "route_name": "default",
        "start_time": "2016-04-15T20:17:00.310Z",
        "upstream_cluster": "outbound|80||locations.default.svc.cluster.local",
        "upstream_host": "10.0.2.1:80",
        "upstream_local_address": "10.0.1.5:34567",
        "upstream_service_time": "100",
        "upstream_transport_failure_reason": None,
        "user_agent": "nsq2http",
        "x_forwarded_for": "10.0.35.28",
    }


def test_under_mutual_tls_the_line_names_the_callers_spiffe_id() -> None:
    peer = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    line = format_line(dataclasses.replace(SAMPLE, downstream_peer_uri_san=peer))
    fields = json.loads(line)
    assert fields["downstream_peer_uri_san"] == peer
    assert list(fields) == sorted(fields)  # keys stay sorted, as Envoy prints a Struct
    assert "downstream_peer_uri_san" not in json.loads(format_line(SAMPLE))  # plaintext


def test_a_local_reply_has_flags_and_no_upstream() -> None:
    record = AccessRecord(
        start_time=0.0, method="GET", path="/", response_code=503, response_flags="UF,URX"
    )
    fields = json.loads(format_line(record))
    assert fields["response_flags"] == "UF,URX"
    assert fields["start_time"] == "1970-01-01T00:00:00.000Z"
    assert fields["upstream_host"] is None and fields["upstream_service_time"] is None


def test_hostile_request_text_cannot_break_the_line() -> None:
    record = AccessRecord(start_time=0.0, path='/a"\n{"b":1}', user_agent="\x00\u2028é")
    line = format_line(record)
    assert line.count(b"\n") == 1
    fields = json.loads(line)
    assert fields["path"] == '/a"\n{"b":1}' and fields["user_agent"] == "\x00\u2028é"


def test_line_buffer_says_when_it_is_full() -> None:
    buffer = LineBuffer(flush_size=10)
    assert buffer.append(b"12345\n") is False
    assert buffer.append(b"12345\n") is True
    assert buffer.take() == b"12345\n12345\n"
    assert buffer.size == 0 and buffer.take() == b""


def test_writer_buffers_then_flushes_on_its_interval(tmp_path: Path) -> None:
    path = tmp_path / "access.log"

    async def scenario() -> tuple[bytes, bytes]:
        with path.open("wb") as file:
            writer = AccessLogWriter(file, flush_interval=0.05)
            writer.start()
            writer.log(SAMPLE)
            before = path.read_bytes()
            await asyncio.sleep(0.3)
            after = path.read_bytes()
            await writer.aclose()
        return before, after

    before, after = asyncio.run(scenario())
    assert before == b""
    assert after == format_line(SAMPLE)


def test_writer_flushes_at_size_and_on_close_in_order(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    lines = [format_line(AccessRecord(start_time=0.0, request_id=str(i))) for i in range(500)]

    async def scenario() -> None:
        with path.open("wb") as file:
            writer = AccessLogWriter(file, flush_interval=3600, flush_size=4096)
            writer.start()
            for line in lines:
                writer.write_line(line)
            await asyncio.sleep(0.1)
            assert 0 < len(path.read_bytes()) < sum(map(len, lines))
            await writer.aclose()

    asyncio.run(scenario())
    assert path.read_bytes() == b"".join(lines)


class StuckFile:
    """A file whose writes block until released: a disk that stopped."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.release.wait(5)
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass


def test_a_stuck_file_neither_blocks_the_loop_nor_grows_memory() -> None:
    stuck = StuckFile()
    line = b"x" * 99 + b"\n"

    async def scenario() -> AccessLogWriter:
        writer = AccessLogWriter(stuck, flush_interval=3600, flush_size=1000, max_pending=5000)
        for _ in range(200):
            writer.write_line(line)  # returns at once though the file is stuck
        assert writer.dropped == 150
        stuck.release.set()
        await writer.aclose()
        return writer

    writer = asyncio.run(scenario())
    assert bytes(stuck.data) == line * 50
    assert writer.pending == 0


def test_write_errors_are_counted_not_raised() -> None:
    class Broken:
        def write(self, data: bytes) -> int:
            raise OSError("disk full")

        def flush(self) -> None:
            pass

    async def scenario() -> AccessLogWriter:
        writer = AccessLogWriter(Broken(), flush_size=1)
        writer.write_line(b"a\n")
        await writer.aclose()
        return writer

    assert asyncio.run(scenario()).errors == 1
