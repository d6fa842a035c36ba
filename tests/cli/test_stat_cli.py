"""`pilotfish stat` and `pilotfish dashboard` against a real control plane
whose sampler holds known counts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotfish.cli.main import main
from pilotfish.cli.stat import stat_table
from pilotfish.controlplane.main import ControlPlane
from pilotfish.dashboard.series import Edge
from pilotfish.rollout.metrics.builtin import Totals

HOP = ("default", "productpage-v1", "reviews.default.svc.cluster.local", "default", "reviews")


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    running = ControlPlane.open(tmp_path / "data", "127.0.0.1:0", tmp_path / "config.yaml")
    running.server.start()
    assert running.sampler is not None
    inbound = Edge("destination", *HOP, "default", "reviews-v2", "http", "none")
    buckets = {5.0: 10.0, 10.0: 30.0, float("inf"): 30.0}
    running.sampler.store.add(time.time(), {inbound: Totals(30.0, 27.0, buckets)})
    yield running
    running.close()


def test_stat_prints_linkerds_columns(
    plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stat", "workloads", "--server", plane.server.url, "-t", "30s"]) == 0
    head, row = capsys.readouterr().out.splitlines()
    assert head.split() == [
        "NAME",
        "MESHED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
    ]
    assert row.split() == ["reviews-v2", "-", "90.00%", "1.0rps", "6ms", "10ms", "10ms", "0"]
    assert main(["stat", "services", "reviews", "--server", plane.server.url, "-A"]) == 0
    head, row = capsys.readouterr().out.splitlines()
    assert head.split()[:2] == ["NAMESPACE", "NAME"] and row.split()[:2] == ["default", "reviews"]
    assert main(["stat", "workloads", "--from", "details-v1", "--server", plane.server.url]) == 0
    assert capsys.readouterr().out == "No traffic found in namespace default.\n"


def test_bad_input_is_refused_with_the_reason(
    plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stat", "workloads", "--server", plane.server.url, "-t", "2h"]) == 1
    assert 'invalid window "2h": the control plane keeps the last 1h' in capsys.readouterr().err
    assert main(["stat", "workloads", "--server", plane.server.url, "-t", "soon"]) == 1
    assert 'invalid window "soon"' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stat", "deployments"])
    assert "invalid choice: 'deployments'" in capsys.readouterr().err


def test_dashboard_prints_the_url(plane: ControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--server", plane.server.url]) == 0
    assert capsys.readouterr().out == f"{plane.server.url}/dashboard/\n"


def test_canary_rows_print_each_leaf_with_its_weight() -> None:
    rows = [
        {
            "namespace": "default",
            "name": "reviews",
            "leaf": "reviews-primary",
            "weight": 70,
            "success": 1.0,
            "rps": 2.0,
            "latency_ms_p50": 3.0,
            "latency_ms_p95": 9.0,
            "latency_ms_p99": 12.0,
        },
        {
            "namespace": "default",
            "name": "reviews",
            "leaf": "reviews",
            "weight": 30,
            "success": None,
            "rps": None,
            "latency_ms_p50": None,
            "latency_ms_p95": None,
            "latency_ms_p99": None,
        },
    ]
    head, primary, canary = stat_table(rows, canaries=True, namespaces=False).splitlines()
    assert head.split() == [
        "NAME",
        "LEAF",
        "WEIGHT",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
    ]
    assert primary.split() == [
        "reviews",
        "reviews-primary",
        "70",
        "100.00%",
        "2.0rps",
        "3ms",
        "9ms",
        "12ms",
    ]
    assert canary.split() == ["reviews", "reviews", "30", "-", "-", "-", "-", "-"]
