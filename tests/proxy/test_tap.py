"""The sidecar's tap without sockets: filters, the rate per tap, the bounded
buffer and its drop count, refusals of bad commands."""

from __future__ import annotations

import pytest

from pilotfish.proxy.accesslog import AccessRecord
from pilotfish.proxy.tap import BUFFER, MAX_TAPS, Tap
from pilotfish.proxy.telemetry import UNKNOWN_WORKLOAD, WorkloadInfo

ME = WorkloadInfo(workload="reviews-v1", namespace="default")
CALLER = WorkloadInfo(workload="productpage-v1", namespace="default")


def record(path: str = "/reviews/0", method: str = "GET", status: int = 200) -> AccessRecord:
    return AccessRecord(
        start_time=1.0,
        method=method,
        path=path,
        response_code=status,
        duration=7,
        authority="reviews:9080",
        downstream_remote_address="10.0.0.1:5000",
        downstream_local_address="10.0.0.2:9080",
        downstream_peer_uri_san="spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tap_with(clock: Clock, **start: object) -> Tap:
    tap = Tap(ME, "spiffe://cluster.local/ns/default/sa/bookinfo-reviews", clock)
    assert tap.command({"start": {"tap": "t1", **start}}) is None
    return tap


def test_an_event_says_who_called_whom_and_how_it_went() -> None:
    tap = tap_with(Clock())
    tap.offer(record(), inbound=True, peer=CALLER)
    (event,) = tap.take()["events"]  # type: ignore[index]
    assert event == {
        "taps": ["t1"],
        "proxy": "in",
        "time": 1.0,
        "method": "GET",
        "authority": "reviews:9080",
        "path": "/reviews/0",
        "status": 200,
        "latencyMs": 7,
        "flags": "-",
        "tls": True,
        "source": {
            "address": "10.0.0.1:5000",
            "identity": "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
            "workload": "productpage-v1",
            "namespace": "default",
        },
        "destination": {
            "address": "10.0.0.2:9080",
            "identity": "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            "workload": "reviews-v1",
            "namespace": "default",
        },
    }
    assert tap.take() is None


def test_filters_by_path_prefix_and_method() -> None:
    tap = tap_with(Clock(), path="/reviews", method="get")
    tap.offer(record("/reviews/1"), True, UNKNOWN_WORKLOAD)
    tap.offer(record("/ratings/1"), True, UNKNOWN_WORKLOAD)
    tap.offer(record("/reviews/2", method="POST"), True, UNKNOWN_WORKLOAD)
    batch = tap.take()
    assert batch is not None
    assert [e["path"] for e in batch["events"]] == ["/reviews/1"]
    assert batch["events"][0]["source"]["workload"] is None  # an unknown peer


def test_max_rps_samples_a_burst_down_to_the_rate() -> None:
    clock = Clock()
    tap = tap_with(clock, maxRps=5)
    for _ in range(50):
        tap.offer(record(), True, CALLER)
    assert len(tap.take()["events"]) == 1  # type: ignore[index]  # starts with one token
    clock.now += 1.0
    for _ in range(50):
        tap.offer(record(), True, CALLER)
    assert len(tap.take()["events"]) == 5  # type: ignore[index]


def test_the_buffer_is_bounded_and_drops_are_counted() -> None:
    clock = Clock()
    tap = tap_with(clock, maxRps=1000)
    for _ in range(BUFFER + 250):
        clock.now += 0.01  # under the rate: every request is admitted
        tap.offer(record(), True, CALLER)
    batch = tap.take()
    assert batch is not None
    assert len(batch["events"]) == BUFFER and batch["dropped"] == 250
    assert tap.take() is None  # counts start again after each batch


def test_no_tap_no_work_and_stop_ends_it() -> None:
    tap = tap_with(Clock())
    tap.command({"stop": "t1"})
    assert tap.filters == {}
    tap.offer(record(), True, CALLER)
    assert tap.take() is None


@pytest.mark.parametrize(
    ("start", "error"),
    [
        ({"tap": "x", "path": "reviews"}, 'invalid path prefix "reviews": it must start with "/"'),
        ({"tap": "x", "method": "G E T"}, 'invalid method "G E T"'),
        ({"tap": "x", "maxRps": 0}, "invalid maxRps 0: expected more than 0, at most 1000"),
        ({"tap": "x", "maxRps": 5000}, "invalid maxRps 5000"),
        ({"tap": "x", "maxRps": True}, "invalid maxRps True"),
        ({"tap": ""}, "a tap needs an id of 1 to 64 characters"),
    ],
)
def test_bad_taps_are_refused_and_change_nothing(start: dict[str, object], error: str) -> None:
    tap = Tap(ME)
    answer = tap.command({"start": start})
    assert answer is not None and answer["error"].startswith(error)
    assert tap.filters == {}


def test_at_most_max_taps_at_once() -> None:
    tap = Tap(ME)
    for n in range(MAX_TAPS):
        assert tap.command({"start": {"tap": f"t{n}"}}) is None
    answer = tap.command({"start": {"tap": "one-more"}})
    assert answer == {"tap": "one-more", "error": f"this sidecar already serves {MAX_TAPS} taps"}
    assert len(tap.filters) == MAX_TAPS
