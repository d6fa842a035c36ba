"""`pilotfish rollout` and describe's Events, through a real control plane
process (with its rollout controller running): a Canary whose targetRef is a
`kind: Deployment` (naming a Workload that does not exist), a status written
through the API as the controller would write it, then the CLI as a user
runs it.

The Canaries' interval is an hour, so after its first look (which records a
"not found" event) the controller leaves them alone while the tests write
their status."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from tests.e2e.processes import REPO, ControlPlane
from tests.ports import free_port

from pilotfish.api.kinds import registry
from pilotfish.client import Client

pytestmark = pytest.mark.slow
Obj = dict[str, Any]
CANARY = registry().resolve("Canary")
EVENT = registry().resolve("Event")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    tmp = tmp_path_factory.mktemp("rollout-cli")
    env = {**os.environ, "HOME": str(tmp / "home"), "PILOTFISH_CONFIG": str(tmp / "config.yaml")}
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN"):
        env.pop(var, None)
    running = ControlPlane(tmp / "data", free_port(), env)
    running.start()
    yield running
    if running.process and running.process.poll() is None:
        running.stop()


@pytest.fixture(scope="module")
def client(plane: ControlPlane) -> Client:
    return Client(plane.server, (plane.data_dir / "token").read_text().strip(), timeout=10)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def canary(name: str) -> Obj:
    return {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "service": {"port": 9080},
            "analysis": {
                "interval": "60m",
                "threshold": 5,
                "maxWeight": 50,
                "stepWeight": 10,
                "metrics": [
                    {"name": "request-success-rate", "thresholdRange": {"min": 99}},
                    {"name": "request-duration", "thresholdRange": {"max": 500}},
                    {
                        "name": "error-rate",
                        "thresholdRange": {"max": 1},
                        "templateRef": {"name": "error-rate"},
                    },
                ],
            },
        },
    }


def progressing(now: datetime, phase: str = "Progressing") -> Obj:
    return {
        "phase": phase,
        "canaryWeight": 30,
        "failedChecks": 1,
        "iterations": 0,
        "lastTransitionTime": stamp(now),
        "conditions": [
            {
                "type": "Promoted",
                "status": "Unknown",
                "reason": phase,
                "message": "New revision detected, progressing canary analysis.",
            }
        ],
        "lastAnalysis": {
            "time": stamp(now - timedelta(seconds=20)),
            "metrics": [
                {"name": "request-success-rate", "value": 99.5, "min": 99, "max": None},
                {
                    "name": "request-duration",
                    "value": 612.3,
                    "min": None,
                    "max": 500,
                    "message": "p99 above the threshold",
                },
                {"name": "error-rate", "value": None, "message": "no traffic yet"},
            ],
        },
    }


def new_canary(plane: ControlPlane, client: Client, name: str) -> None:
    """Applied, and seen once by the controller (so it will not write the
    status again within the hour)."""
    ok(plane.cli("apply", "-f", "-", stdin=yaml.safe_dump(canary(name))))
    deadline = time.monotonic() + 20
    while not any(
        e["message"] == f"{name}.default not found" for e in client.list(EVENT, "default")["items"]
    ):
        assert time.monotonic() < deadline, "the controller never looked at the canary"
        time.sleep(0.1)


def set_status(client: Client, name: str, status: Obj) -> None:
    live = client.get(CANARY, name, "default")
    client.update_status({**live, "status": status}, manager="flagger")


def event(name: str, i: int, at: datetime, **extra: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.step{i}", "namespace": "default"},
        "involvedObject": {
            "apiVersion": "flagger.app/v1beta1",
            "kind": "Canary",
            "name": name,
            "namespace": "default",
        },
        "reason": "Synced",
        "message": f"step {i} of {name}",
        "type": "Normal",
        "count": 1,
        "firstTimestamp": stamp(at),
        "lastTimestamp": stamp(at),
        "source": {"component": "tests"},
        **extra,
    }


def add_events(plane: ControlPlane, name: str, now: datetime) -> None:
    """Six events from ten minutes ago on, older than the controller's."""
    events = [event(name, i, now - timedelta(minutes=11 - i)) for i in range(1, 7)]
    events[2]["count"] = 3
    events[2]["firstTimestamp"] = stamp(now - timedelta(minutes=30))
    events[5]["type"] = "Warning"
    ok(plane.cli("apply", "-f", "-", stdin=yaml.safe_dump_all(events)))


# -- status ----------------------------------------------------------------------------------


def test_status_shows_phase_traffic_checks_analysis_and_recent_events(
    plane: ControlPlane, client: Client
) -> None:
    name, now = "rv-status", datetime.now(UTC)
    new_canary(plane, client, name)
    set_status(client, name, progressing(now))
    add_events(plane, name, now)
    shown = ok(plane.cli("rollout", "status", name))
    lines = shown.splitlines()
    assert lines[:4] == [
        f"Name:           {name}",
        "Namespace:      default",
        f"Target:         Deployment/{name}",
        "Phase:          Progressing",
    ]
    assert "Message:        New revision detected, progressing canary analysis." in lines
    assert "Strategy:       canary, every 60m" in lines
    bar = "[" + "#" * 18 + "-" * 12 + "]"  # 30 of 50, in 30 cells
    assert f"Traffic:        {bar} 30% to the canary (max 50%)" in lines
    assert "Failed checks:  1/5" in lines
    assert any(re.match(r"Last analysis:  \d+s ago \(\d{4}-", line) for line in lines), shown
    rows = {line.split()[1]: line.split() for line in lines if line.startswith("  ")}
    assert rows["request-success-rate"] == ["ok", "request-success-rate", "99.5", "(min", "99)"]
    assert rows["request-duration"][:5] == ["FAIL", "request-duration", "612.3", "(max", "500)"]
    assert "p99 above the threshold" in " ".join(rows["request-duration"])
    assert rows["error-rate"][:6] == ["FAIL", "error-rate", "no", "data", "(max", "1)"]
    assert "no traffic yet" in " ".join(rows["error-rate"])
    events = shown[shown.index("Events (the last 5 of 7):") :]
    assert "step 2 of" not in events and "step 3 of" in events, events
    assert events.index("step 6 of") < events.index(f"{name}.default not found")
    assert re.search(r"\d+m \(x3 over 30m\)\s+Normal\s+step 3 of", events), events
    assert re.search(r"Warning\s+step 6 of", events), events


def test_status_of_a_canary_that_does_not_exist(plane: ControlPlane) -> None:
    missing = plane.cli("rollout", "status", "nothing-here")
    assert missing.returncode == 1
    assert 'Error from server (NotFound): canaries.flagger.app "nothing-here" not found' in (
        missing.stderr
    )


def watch(plane: ControlPlane, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pilotfish", "rollout", "status", name, "--watch"],
        env=plane.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_watch_redraws_until_the_release_succeeds_or_fails(
    plane: ControlPlane, client: Client
) -> None:
    name, now = "rv-watch", datetime.now(UTC)
    new_canary(plane, client, name)
    for final, code in (("Succeeded", 0), ("Failed", 1)):
        set_status(client, name, progressing(now))
        watching = watch(plane, name)
        time.sleep(2.5)
        assert watching.poll() is None, "the watch ended while the release ran"
        moved = progressing(now)
        moved["canaryWeight"] = 40
        set_status(client, name, moved)
        time.sleep(1.5)
        set_status(client, name, {**moved, "phase": final})
        out, err = watching.communicate(timeout=10)
        assert watching.returncode == code, err
        frames = out.split("\n\n")
        assert "Phase:          Progressing" in frames[0] and "30% to the canary" in frames[0]
        assert any("40% to the canary" in f for f in frames[1:]), out
        assert f"Phase:          {final}" in frames[-1]
        assert "\x1b[" not in out  # not a terminal: frames, no redrawing


# -- steering ---------------------------------------------------------------------------------


def test_watch_into_a_closed_pipe_ends_quietly(plane: ControlPlane, client: Client) -> None:
    """`rollout status --watch | head -1`: the next frame meets a closed pipe;
    the watch ends at once, with no traceback, as kubectl does (141)."""
    name, now = "rv-head", datetime.now(UTC)
    new_canary(plane, client, name)
    set_status(client, name, progressing(now))
    watching = watch(plane, name)
    assert watching.stdout is not None
    assert watching.stdout.readline().startswith("Name:")
    watching.stdout.close()  # what `head -1` does once it has its line
    moved = progressing(now)
    moved["canaryWeight"] = 40
    set_status(client, name, moved)  # a new frame to write
    assert watching.wait(timeout=15) == 141
    assert watching.stderr is not None and watching.stderr.read() == ""


def annotations(client: Client, name: str) -> dict[str, str]:
    return dict(client.get(CANARY, name, "default")["metadata"].get("annotations") or {})


def test_promote_abort_pause_and_resume_write_what_the_controller_reads(
    plane: ControlPlane, client: Client
) -> None:
    name = "rv-steer"
    new_canary(plane, client, name)
    set_status(client, name, progressing(datetime.now(UTC)))

    out = ok(plane.cli("rollout", "promote", name))
    said = f"canary.flagger.app/{name} promotion requested: the controller acts at its next step"
    assert out == said + "\n"
    requested = annotations(client, name)["rollout.pilotfish.dev/promote"]
    assert RFC3339.match(requested)
    at = datetime.strptime(requested, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - at).total_seconds()) < 30
    live = client.get(CANARY, name, "default")
    assert any(
        m["manager"] == "pilotfish-rollout" and m["operation"] == "Apply"
        for m in live["metadata"]["managedFields"]
    )
    assert "Requested:      promote, " in ok(plane.cli("rollout", "status", name))

    assert ok(plane.cli("rollout", "pause", name)) == f"canary.flagger.app/{name} paused\n"
    assert client.get(CANARY, name, "default")["spec"]["suspend"] is True
    assert "rollout.pilotfish.dev/promote" in annotations(client, name), "pause dropped a request"
    shown = ok(plane.cli("rollout", "status", name))
    assert "Phase:          Progressing (paused: spec.suspend is true)" in shown

    assert ok(plane.cli("rollout", "resume", name)) == f"canary.flagger.app/{name} resumed\n"
    assert client.get(CANARY, name, "default")["spec"]["suspend"] is False
    ok(plane.cli("rollout", "abort", name))
    both = annotations(client, name)
    assert RFC3339.match(both["rollout.pilotfish.dev/abort"])
    assert "rollout.pilotfish.dev/promote" in both
    assert client.get(CANARY, name, "default")["spec"]["suspend"] is False, "abort dropped resume"
    # The rest of the spec is the user's: untouched.
    assert client.get(CANARY, name, "default")["spec"]["analysis"]["maxWeight"] == 50


def test_a_request_on_a_canary_not_in_analysis_says_when_it_applies(
    plane: ControlPlane, client: Client
) -> None:
    name = "rv-idle"
    new_canary(plane, client, name)
    set_status(client, name, progressing(datetime.now(UTC), phase="Succeeded"))
    out = ok(plane.cli("rollout", "abort", name))
    assert out.strip().endswith("the controller acts when an analysis runs (now Succeeded)")
    missing = plane.cli("rollout", "promote", "nothing-here")
    assert missing.returncode == 1 and "NotFound" in missing.stderr


# -- describe and get ---------------------------------------------------------------------------


def test_describe_ends_with_the_objects_events_oldest_first(
    plane: ControlPlane, client: Client
) -> None:
    name, now = "rv-describe", datetime.now(UTC)
    new_canary(plane, client, name)
    add_events(plane, name, now)
    ok(plane.cli("apply", "-f", "-", stdin=yaml.safe_dump(event("someone-else", 9, now))))
    described = ok(plane.cli("describe", "canary", name))
    section = described[described.index("\nEvents:\n") + 1 :].splitlines()
    assert section[1].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert section[2].split() == ["----", "------", "----", "----", "-------"]
    rows = section[3:]
    assert len(rows) == 7 and "someone-else" not in described
    assert [r.split()[0] for r in rows] == ["Normal"] * 5 + ["Warning", "Warning"]
    assert [r.split()[-3] for r in rows[:6]] == [str(i) for i in range(1, 7)]  # "step N of"
    assert re.search(r"Normal\s+Synced\s+8m \(x3 over 30m\)\s+tests\s+step 3 of", rows[2]), rows
    assert re.search(rf"Warning\s+Synced\s+\d+s\s+flagger\s+{name}.default not found", rows[-1])

    ok(plane.cli("apply", "-f", "-", stdin=yaml.safe_dump(service("quiet"))))
    assert ok(plane.cli("describe", "service", "quiet")).rstrip().endswith("Events:       <none>")


def service(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 9080}]},
    }


def test_get_canaries_prints_flaggers_columns(plane: ControlPlane, client: Client) -> None:
    name, now = "rv-get", datetime.now(UTC)
    new_canary(plane, client, name)
    set_status(client, name, progressing(now))
    table = ok(plane.cli("get", "canaries")).splitlines()
    assert table[0].split() == ["NAME", "STATUS", "WEIGHT", "LASTTRANSITIONTIME", "AGE"]
    row = next(line.split() for line in table if line.startswith(name + " "))
    assert row[1:4] == ["Progressing", "30", stamp(now)]
    wide = ok(plane.cli("get", "canary", name, "-o", "wide")).splitlines()
    assert wide[0].split()[:5] == ["NAME", "STATUS", "WEIGHT", "SUSPENDED", "FAILEDCHECKS"]
