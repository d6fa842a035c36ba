"""The built-in metrics from sampled sidecar pages: windows ending now,
sums over a workload's instances as they come and go, restarts, retention;
and the sampler against real HTTP servers, dead and hung ones included."""

from __future__ import annotations

import time

import pytest
from tests.rollout.metrics.sidecar_pages import (
    Sidecar,
    dead_port,
    instance,
    serving,
    silent_port,
)

from pilotfish.rollout.metrics.builtin import SCRAPE_TIMEOUT_S, MeshMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mesh(clock: Clock) -> MeshMetrics:
    return MeshMetrics(list, clock=clock)


def test_success_rate_counts_only_the_window(mesh: MeshMetrics, clock: Clock) -> None:
    sidecar = Sidecar()
    sidecar.serve(503, n=50)  # long before the window: not counted
    for second in range(60):
        clock.now = 1000.0 + second
        if second >= 30:
            sidecar.serve(200, n=9)
            sidecar.serve(503)
        mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    assert mesh.success_rate("shop", "reviews", 30) == pytest.approx(90.0)
    assert mesh.success_rate("shop", "reviews", 10) == pytest.approx(90.0)


def test_instances_are_summed_as_they_come_and_go(mesh: MeshMetrics, clock: Clock) -> None:
    old, new = Sidecar(), Sidecar()
    for second in range(20):
        clock.now = 1000.0 + second
        if second < 12:  # `old` serves 10 ok a second, then is gone
            old.serve(200, n=10)
            mesh.record(instance("reviews-old"), old.page(), clock.now)
        if second >= 8:  # `new` starts at 8 s and fails one in two
            new.serve(200, n=5)
            new.serve(500, n=5)
            mesh.record(instance("reviews-new"), new.page(), clock.now)
    # The last 15 s, from 1004: old sampled 1004..1011 (+70 ok); new sampled 1008..1019,
    # its first sample the baseline (+55 ok, +55 errors).
    assert mesh.success_rate("shop", "reviews", 15) == pytest.approx(100 * 125 / 180)
    # In the last 5 s, only `new` counted.
    assert mesh.success_rate("shop", "reviews", 5) == pytest.approx(50.0)


def test_a_restarted_sidecar_counts_from_zero_again(mesh: MeshMetrics, clock: Clock) -> None:
    sidecar = Sidecar()
    sidecar.serve(200, n=100)
    mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    sidecar.serve(200, n=50)
    clock.now += 1
    mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    sidecar.restart()
    sidecar.serve(500, n=20)  # the new process failed 20 before its first scrape
    clock.now += 1
    mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    sidecar.serve(200, n=30)
    clock.now += 1
    mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    counted = mesh.increase("shop", "reviews", 60)
    assert (counted.requests, counted.ok) == (100, 80)
    assert mesh.success_rate("shop", "reviews", 60) == pytest.approx(80.0)


def test_the_first_error_of_a_sidecar_counts(mesh: MeshMetrics, clock: Clock) -> None:
    """A 5xx series appears on the page with its first error: it counts whole."""
    sidecar = Sidecar()
    sidecar.serve(200, n=10)
    mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    sidecar.serve(503, n=3)
    sidecar.serve(200, n=7)
    clock.now += 1
    mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    assert mesh.success_rate("shop", "reviews", 60) == pytest.approx(70.0)


def test_no_requests_in_the_window_is_no_value(mesh: MeshMetrics, clock: Clock) -> None:
    sidecar = Sidecar()
    sidecar.serve(200, n=5)
    for _ in range(3):
        clock.now += 1
        mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    assert mesh.success_rate("shop", "reviews", 60) is None
    assert mesh.duration_p99("shop", "reviews", 60) is None
    sidecar.serve(200)
    clock.now += 1
    mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    assert mesh.success_rate("shop", "reviews", 60) == 100.0
    assert mesh.success_rate("shop", "ratings", 60) is None, "another workload"
    assert mesh.success_rate("other", "reviews", 60) is None, "another namespace"


def test_one_sample_is_not_a_rate(mesh: MeshMetrics, clock: Clock) -> None:
    sidecar = Sidecar()
    sidecar.serve(200, n=5)
    mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    assert mesh.success_rate("shop", "reviews", 60) is None


def test_outbound_traffic_of_the_workload_does_not_count(mesh: MeshMetrics, clock: Clock) -> None:
    sidecar = Sidecar()
    mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    sidecar.serve(200, n=10)
    sidecar.serve(503, n=90, outbound=True)  # calls reviews makes to others
    clock.now += 1
    mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    assert mesh.success_rate("shop", "reviews", 60) == 100.0


def test_p99_over_the_window_across_instances(mesh: MeshMetrics, clock: Clock) -> None:
    a, b = Sidecar(), Sidecar()
    a.serve(200, n=1000, duration_ms=800)  # before the window
    mesh.record(instance("reviews-a"), a.page(), clock.now)
    mesh.record(instance("reviews-b"), b.page(), clock.now)
    a.serve(200, n=60, duration_ms=3)  # (1, 5]
    b.serve(200, n=30, duration_ms=3)
    b.serve(200, n=10, duration_ms=40)  # (25, 50]
    clock.now += 1
    mesh.record(instance("reviews-a"), a.page(), clock.now)
    mesh.record(instance("reviews-b"), b.page(), clock.now)
    # 100 requests: rank 99 is 9/10 of the way into (25, 50].
    assert mesh.duration_p99("shop", "reviews", 30) == pytest.approx(47.5)


def test_samples_older_than_the_retention_are_forgotten(clock: Clock) -> None:
    mesh = MeshMetrics(list, clock=clock, retention_s=60)
    sidecar = Sidecar()
    for _ in range(3):
        sidecar.serve(200)
        clock.now += 1
        mesh.record(instance("reviews-1"), sidecar.page(), clock.now)
    mesh.sample(clock.now + 30)
    assert mesh.success_rate("shop", "reviews", 3600) == 100.0
    mesh.sample(clock.now + 61.5)
    assert mesh.success_rate("shop", "reviews", 3600) is None
    assert "0 sidecars" in repr(mesh)


def test_sampling_real_sidecars_skips_dead_hung_and_unknown_ones(clock: Clock) -> None:
    one, two, other = Sidecar(), Sidecar(), Sidecar(workload="ratings")
    with (
        serving(one) as port1,
        serving(two) as port2,
        serving(other) as port3,
        silent_port() as hung,
    ):
        registered = [
            instance("reviews-1", port=port1),
            instance("reviews-2", port=port2),
            instance("ratings-1", workload="ratings", port=port3),
            instance("reviews-dead", port=dead_port()),
            instance("reviews-hung", port=hung),
            instance("reviews-unknown", port=0),  # registered without a metrics port
        ]
        mesh = MeshMetrics(lambda: registered, clock=clock)
        started = time.monotonic()
        mesh.sample()
        assert time.monotonic() - started < SCRAPE_TIMEOUT_S + 1.5, "scrapes run side by side"
        one.serve(200, n=30)
        two.serve(200, n=10)
        two.serve(503, n=10)
        other.serve(500, n=40)
        clock.now += 1
        mesh.sample()
    assert mesh.success_rate("shop", "reviews", 60) == pytest.approx(80.0)
    assert mesh.success_rate("shop", "ratings", 60) == 0.0
    assert "3 sidecars" in repr(mesh)


def test_the_sampler_thread_scrapes_until_stopped() -> None:
    sidecar = Sidecar()
    with serving(sidecar) as port:
        mesh = MeshMetrics(lambda: [instance("reviews-1", port=port)], period_s=0.05)
        mesh.start()
        try:
            deadline = time.monotonic() + 5
            while mesh.success_rate("shop", "reviews", 60) is None:
                assert time.monotonic() < deadline, "the sampler never counted the requests"
                sidecar.serve(200)
                time.sleep(0.05)
        finally:
            mesh.stop()
    assert mesh.success_rate("shop", "reviews", 60) == 100.0
