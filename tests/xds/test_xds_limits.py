"""What a hostile xDS client can make the ADS server hold, over real gRPC:
streams per peer and in total, streams that never say who they are, and the
names one stream may subscribe to. Each test failed before the limits."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3.ads_pb2_grpc import AggregatedDiscoveryServiceStub
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from tests.e2e.processes import ControlPlane
from tests.ports import free_port
from xds_harness import CDS, EDS, RDS, SIDECAR, AdsStream, MutableMesh, instance, node, service

from pilotfish.xds import limits
from pilotfish.xds.generate import MEMO_NAMES
from pilotfish.xds.limits import Limits
from pilotfish.xds.server import AdsServer


@pytest.fixture
def mesh() -> MutableMesh:
    return MutableMesh([service("reviews")], [instance("reviews", "v1", 19081)])


@pytest.fixture
def server(mesh: MutableMesh) -> Iterator[AdsServer]:
    ads = AdsServer(mesh.snapshot, "127.0.0.1:0")
    ads.start()
    yield ads
    ads.stop()


class Streams:
    """Streams a test opens, all closed at its end."""

    def __init__(self, server: AdsServer) -> None:
        self.target = f"127.0.0.1:{server.port}"
        self.opened: list[AdsStream] = []

    def open(self, node_id: str) -> AdsStream:
        stream = AdsStream(self.target, node(node_id, NAMESPACE="default"))
        self.opened.append(stream)
        return stream

    def identified(self, node_id: str) -> AdsStream:
        """A stream that sent its node and got its clusters."""
        stream = self.open(node_id)
        stream.send(CDS)
        stream.receive()
        return stream

    def close(self) -> None:
        for stream in self.opened:
            stream.close()


@contextlib.contextmanager
def serving(mesh: MutableMesh, with_limits: Limits) -> Iterator[tuple[AdsServer, Streams]]:
    ads = AdsServer(mesh.snapshot, "127.0.0.1:0", limits=with_limits)
    ads.start()
    opened = Streams(ads)
    try:
        yield ads, opened
    finally:
        opened.close()
        ads.stop()


@pytest.fixture
def streams(server: AdsServer) -> Iterator[Streams]:
    opened = Streams(server)
    yield opened
    opened.close()


def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_peer_at_its_limit_is_refused_and_others_still_connect(
    server: AdsServer, streams: Streams
) -> None:
    for _ in range(limits.MAX_STREAMS_PER_PEER):
        streams.identified("attacker")
    one_more = streams.open("attacker")
    one_more.send(CDS)
    refused = one_more.refusal()
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert refused.details() == (  # type: ignore[attr-defined]
        f"node 'attacker' from 127.0.0.1 already holds {limits.MAX_STREAMS_PER_PEER} "
        "xDS streams, the limit per peer"
    )
    proxy = streams.open(SIDECAR)
    proxy.send(CDS)
    assert proxy.receive().type_url == CDS
    wait_for(lambda: len(server.connections()) == limits.MAX_STREAMS_PER_PEER + 1)


def test_streams_in_total_are_bounded(mesh: MutableMesh) -> None:
    with serving(mesh, Limits(streams=4)) as (ads, opened):
        for i in range(4):
            opened.identified(f"proxy-{i}")
        fifth = opened.open("proxy-4")
        fifth.send(CDS)
        refused = fifth.refusal()
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "maximum of 4 streams" in refused.details()  # type: ignore[attr-defined]
        opened.opened[0].close()  # a stream that ends makes room
        wait_for(lambda: len(ads.connections()) == 3)
        opened.identified("proxy-5")


def test_a_stream_that_never_sends_its_node_is_closed(mesh: MutableMesh) -> None:
    with serving(mesh, Limits(identify_within=0.5)) as (ads, opened):
        silent = opened.open(SIDECAR)
        started = time.monotonic()
        refused = silent.refusal(timeout=5)
        assert refused.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        assert refused.details() == (  # type: ignore[attr-defined]
            "no DiscoveryRequest with a node arrived within 0.5s of the stream opening"
        )
        assert 0.4 < time.monotonic() - started < 3
        wait_for(lambda: not ads.connections())
        opened.identified(SIDECAR)  # a proxy that says who it is stays
        time.sleep(0.8)
        assert len(ads.connections()) == 1


def test_silent_streams_cannot_take_every_slot(mesh: MutableMesh) -> None:
    with serving(mesh, Limits(unidentified=3)) as (ads, opened):
        for _ in range(3):
            opened.open("silent")
        wait_for(lambda: len(ads.connections()) == 3)
        fourth = opened.open("silent")
        refused = fourth.refusal()
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "3 xDS streams have not yet sent a node" in refused.details()  # type: ignore[attr-defined]
        opened.opened[0].send(CDS)  # one identifies: room for another newcomer
        opened.opened[0].receive()
        opened.identified(SIDECAR)


def test_too_many_names_for_one_type_are_refused(server: AdsServer, streams: Streams) -> None:
    stream = streams.open(SIDECAR)
    stream.send(EDS, [f"outbound|80||svc-{i}.default.svc.cluster.local" for i in range(4097)])
    refused = stream.refusal()
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert refused.details() == (  # type: ignore[attr-defined]
        f"4097 resource_names for {EDS}; the limit per type is 4096"
    )
    wait_for(lambda: not server.connections())


def test_a_name_too_long_is_refused(server: AdsServer, streams: Streams) -> None:
    stream = streams.open(SIDECAR)
    stream.send(RDS, ["80", "r" * 513])
    refused = stream.refusal()
    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert refused.details() == (  # type: ignore[attr-defined]
        f"a resource name of 513 bytes for {RDS}; the limit is 512 bytes"
    )


def test_a_stream_holds_at_most_512_kib_of_names(server: AdsServer, streams: Streams) -> None:
    stream = streams.open(SIDECAR)
    stream.send(EDS, [f"{i:0100d}" for i in range(4000)])  # 400,000 bytes: within the limit
    stream.receive()
    stream.send(RDS, [f"{i:0100d}" for i in range(1500)])
    refused = stream.refusal()
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert refused.details() == (  # type: ignore[attr-defined]
        "the resource names of this stream would total 550000 bytes; the limit per stream is 524288"
    )


def test_too_many_types_are_refused(server: AdsServer, streams: Streams) -> None:
    stream = streams.open(SIDECAR)
    for i in range(limits.MAX_TYPES_PER_STREAM):
        stream.send(f"type.googleapis.com/example.Made{i}")
        stream.receive()
    stream.send("type.googleapis.com/example.OneTooMany")
    refused = stream.refusal()
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert refused.details() == "a stream may watch at most 8 resource types"  # type: ignore[attr-defined]


def test_churning_subscriptions_keep_the_cache_bounded(server: AdsServer, streams: Streams) -> None:
    """Every new list of route names used to stay cached for the snapshot's
    life (~200 MB per stream in seconds); now the cache is bounded."""
    stream = streams.open(SIDECAR)
    stream.send(RDS, [f"fresh-0-{i}" for i in range(4000)])
    response = stream.receive()
    before = rss_mib()
    for round_ in range(1, 150):  # 600,000 names, none of them routes the mesh has
        names = [f"fresh-{round_}-{i}" for i in range(4000)]
        stream.ack(response, names)
        response = stream.receive()
    gc.collect()
    grown = rss_mib() - before
    assert grown < 30, f"{grown} MiB more"  # 57 MiB more before the bound; 8 after
    assert server._generator.cached_names() <= MEMO_NAMES + 4001
    assert len(server.connections()) == 1  # the client stayed within its limits


def rss_mib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def test_a_request_larger_than_4_mib_is_refused(server: AdsServer, streams: Streams) -> None:
    stream = streams.open(SIDECAR)
    huge = DiscoveryRequest(type_url=CDS, node=node(SIDECAR), resource_names=["x" * 500] * 9000)
    stream.send_raw(huge)
    refused = stream.refusal()
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "larger than max" in refused.details()  # type: ignore[attr-defined]


def os_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


async def hold_streams(target: str, silent: int, identified: int, check: Callable[[], int]) -> int:
    """Open `silent` streams that send nothing and `identified` that send a
    node each, then a real proxy's; the threads `check()` counts meanwhile."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = AggregatedDiscoveryServiceStub(channel)
        calls = [stub.StreamAggregatedResources(_requests([])) for _ in range(silent)]
        for i in range(identified):
            first = DiscoveryRequest(type_url=EDS, node=node(f"idle-{i}"))
            calls.append(stub.StreamAggregatedResources(_requests([first])))
        for call in calls[silent:]:
            assert (await call.read()).type_url == EDS  # type: ignore[union-attr]
        await asyncio.sleep(0.5)
        counted = check()
        proxy = stub.StreamAggregatedResources(
            _requests([DiscoveryRequest(type_url=CDS, node=node(SIDECAR))])
        )
        assert (await proxy.read()).type_url == CDS  # type: ignore[union-attr]
        for call in [*calls, proxy]:
            call.cancel()
        return counted


async def _requests(first: list[DiscoveryRequest]) -> AsyncIterator[DiscoveryRequest]:
    for request in first:
        yield request
    await asyncio.Event().wait()  # then say nothing, as an idle client does


def test_idle_streams_cost_the_control_plane_no_threads(tmp_path: Path) -> None:
    """2,048 idle streams took 4,110 threads (one per stream, one reading it)."""
    env = {**os.environ, "HOME": str(tmp_path), "PILOTFISH_CONFIG": str(tmp_path / "c.yaml")}
    plane = ControlPlane(tmp_path / "data", free_port(), env, xds_port=free_port())
    plane.start()
    try:
        assert plane.process is not None
        pid = plane.process.pid
        before = os_threads(pid)
        target = f"127.0.0.1:{plane.xds_port}"
        during = asyncio.run(hold_streams(target, 200, 300, lambda: os_threads(pid)))
        assert during - before < 32, f"threads {before} -> {during}"  # main: 15 -> 1014
    finally:
        plane.stop()


def test_stream_counts_follow_a_stream_from_open_to_close() -> None:
    counts = limits.StreamCounts(Limits(streams=3, unidentified=2, per_peer=1))
    counts.open("10.0.0.1")
    counts.open("10.0.0.1")
    with pytest.raises(limits.StreamRefused, match="2 xDS streams have not yet sent a node"):
        counts.open("10.0.0.2")
    counts.identify("10.0.0.1", "a")
    with pytest.raises(limits.StreamRefused, match="already holds 1 xDS streams"):
        counts.identify("10.0.0.1", "a")  # refused: it stays unidentified until it closes
    counts.close(("10.0.0.1", ""))
    counts.open("10.0.0.2")
    counts.identify("10.0.0.2", "a")  # the same node id from another address is another peer
    counts.open("10.0.0.3")
    with pytest.raises(limits.StreamRefused, match="maximum of 3 streams"):
        counts.open("10.0.0.4")
    for peer in (("10.0.0.1", "a"), ("10.0.0.2", "a"), ("10.0.0.3", "")):
        counts.close(peer)
    assert repr(counts) == "StreamCounts(0 open, 0 unidentified)"
    assert counts.held(("10.0.0.1", "a")) == 0


def test_a_node_id_too_long_is_refused(server: AdsServer, streams: Streams) -> None:
    stream = streams.open("n" * 513)
    stream.send(CDS)
    refused = stream.refusal()
    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert refused.details() == "the node id is 513 bytes; the limit is 512"  # type: ignore[attr-defined]


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing `sock`; None if it is still open."""
    sock.settimeout(0.1)
    received, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


def test_raw_connections_are_capped_and_timed_out(mesh: MutableMesh) -> None:
    """TCP connections that never speak HTTP/2 were held 120 s each, with no
    cap: enough of them took every file descriptor of the control plane."""
    with serving(mesh, Limits(connections=8, handshake_within=2.0)) as (ads, _):
        raw = [socket.create_connection(("127.0.0.1", ads.port)) for _ in range(12)]
        try:
            time.sleep(0.3)
            held = [s for s in raw if closed_within(s, 0.05) is None]
            assert len(held) == 8  # beyond the cap: closed at once
            assert all(closed_within(s, 4) is not None for s in held)  # then the handshake's 2 s
        finally:
            for s in raw:
                s.close()


def test_a_connection_with_no_stream_is_closed_when_idle(mesh: MutableMesh) -> None:
    with serving(mesh, Limits(idle_connection=0.5)) as (ads, opened):
        proxy = opened.identified(SIDECAR)
        with socket.create_connection(("127.0.0.1", ads.port)) as idle:
            idle.sendall(H2_PREFACE)
            said = closed_within(idle, 5)
            assert said is not None and b"connection idle" in said  # a GOAWAY saying why
        proxy.send(EDS, [])  # a stream keeps its connection however quiet
        assert proxy.receive().type_url == EDS


def test_max_streams_flag_scales_the_related_limits_and_refuses_nonsense(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pilotfish.cli.main import main

    limits = Limits.for_streams(3000)
    assert (limits.streams, limits.connections, limits.unidentified) == (3000, 6000, 1500)
    small = Limits.for_streams(10)  # never fewer connections than the default
    assert (small.streams, small.connections, small.unidentified) == (10, 2048, 5)
    code = main(["controlplane", "--data-dir", str(tmp_path / "d"), "--xds-max-streams", "0"])
    assert code == 1
    assert "the maximum of xDS streams must be at least 1, not 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything was created
