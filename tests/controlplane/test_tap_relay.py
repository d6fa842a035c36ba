"""The control plane's tap relay without sockets: a slow reader's queue is
bounded and says how much it dropped; events reach only their tap; bad tap
requests are refused before a sidecar sees them, and off loopback a tap
needs a token, as every read does."""

from __future__ import annotations

import asyncio
import json

import pytest

from pilotfish.controlplane.api import Api
from pilotfish.controlplane.auth import Authenticator
from pilotfish.controlplane.tap import QUEUE, TapHub, TapWatch, _Session
from pilotfish.store.resources import ResourceStore

from .cp_testkit import TOKEN, Caller

TAP = "/apis/tap.pilotfish.dev/v1alpha1/watch/namespaces/default/workloads/reviews-v1/tap"


def lines(watch: TapWatch) -> list[dict[str, object]]:
    out = []
    while (line := watch.next_line(0.01)) is not None:
        out.append(json.loads(line))
    return out


@pytest.fixture
def hub() -> TapHub:
    return TapHub(None)


def session(
    hub: TapHub, workload: str = "reviews-v1"
) -> tuple[_Session, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    found = _Session(f"sidecar~{workload}", "default", workload, loop)
    hub._sessions.add(found)
    return found, loop


def test_a_slow_reader_gets_a_bounded_queue_and_a_drop_count(hub: TapHub) -> None:
    sidecar, loop = session(hub)
    try:
        watch = hub.start("default", "reviews-v1", {"path": "", "method": "", "maxRps": 100.0})
        event = {"taps": [watch.tap_id], "path": "/"}
        hub._deliver({"events": [dict(event) for _ in range(QUEUE + 30)], "dropped": 7}, sidecar)
        got = lines(watch)
        assert got[0] == {"dropped": 37}  # 30 here, 7 in the sidecar's buffer
        assert len(got) == 1 + QUEUE and got[1] == {"node": "sidecar~reviews-v1", "path": "/"}
        watch.close()
        loop.run_until_complete(asyncio.sleep(0))  # the commands land on the session's loop
        commands = [sidecar.commands.get_nowait() for _ in range(2)]
        assert commands[0]["start"]["tap"] == watch.tap_id
        assert commands[1] == {"stop": watch.tap_id}
    finally:
        loop.close()


def test_events_reach_only_their_tap(hub: TapHub) -> None:
    sidecar, loop = session(hub)
    try:
        first = hub.start("default", "reviews-v1", {"maxRps": 1.0})
        second = hub.start("default", "reviews-v1", {"maxRps": 1.0})
        hub._deliver({"events": [{"taps": [second.tap_id], "path": "/b"}], "dropped": 0}, sidecar)
        assert lines(first) == []
        assert lines(second) == [{"node": "sidecar~reviews-v1", "path": "/b"}]
    finally:
        loop.close()


@pytest.fixture
def call(store: ResourceStore, hub: TapHub) -> Caller:
    return Caller(Api(store, Authenticator(TOKEN), extension=hub))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("maxRps=fast", 'invalid maxRps "fast": expected a number'),
        ("maxRps=0", "invalid maxRps 0.0"),
        ("maxRps=nan", "invalid maxRps nan"),
        ("path=reviews", 'invalid path prefix "reviews"'),
        ("method=G%20T", 'invalid method "G T"'),
    ],
)
def test_a_bad_tap_is_a_400(call: Caller, hub: TapHub, query: str, message: str) -> None:
    _, loop = session(hub)
    try:
        answer = call("GET", f"{TAP}?{query}", token=None)
        assert answer.status == 400 and answer.json()["message"].startswith(message)
    finally:
        loop.close()


def test_nothing_to_tap_and_wrong_paths(call: Caller) -> None:
    answer = call("GET", TAP, token=None)
    assert answer.status == 404
    assert answer.json()["message"] == (
        'workload "default/reviews-v1" has no sidecar connected to this control plane: nothing to tap'
    )
    assert call("GET", TAP.replace("/tap", "/top"), token=None).status == 404
    assert call("POST", TAP, token=TOKEN).status == 405


def test_off_loopback_a_tap_needs_a_token(call: Caller, hub: TapHub) -> None:
    _, loop = session(hub)
    try:
        assert call("GET", TAP, token=None, peer="10.0.0.9").status == 401
        answer = call("GET", TAP, token=TOKEN, peer="10.0.0.9")
        assert answer.status == 200 and answer.stream is not None
        answer.stream.close()
    finally:
        loop.close()


def test_a_sidecars_refusal_reaches_its_tap_and_junk_is_ignored(hub: TapHub) -> None:
    sidecar, loop = session(hub)
    try:
        watch = hub.start("default", "reviews-v1", {"maxRps": 1.0})
        for junk in ([1, 2], {"events": [3, {"taps": 5}]}, {"events": "x"}):
            hub._deliver(junk, sidecar)
        hub._deliver({"tap": watch.tap_id, "error": "this sidecar already serves 8 taps"}, sidecar)
        assert lines(watch) == [
            {"node": "sidecar~reviews-v1", "error": "this sidecar already serves 8 taps"}
        ]
    finally:
        loop.close()
