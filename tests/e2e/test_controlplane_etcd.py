"""The control plane on etcd (`--store etcd://...`), driven by the CLI as a user
would, against a real etcd: plaintext, and TLS with client certificates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from processes import REPO, ControlPlane
from tests.etcd_server import EtcdServer, make_certs
from tests.ports import free_port

from pilotfish.api.errors import Expired
from pilotfish.api.kinds import registry
from pilotfish.client import Client
from pilotfish.config import load_client_config
from pilotfish.store.etcd_client import message

BOOKINFO = str(REPO / "examples" / "bookinfo")
VS = registry().resolve("virtualservice")


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def plane_on(where: Path, *args: str) -> ControlPlane:
    where.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(where / "home"),
        "PILOTFISH_CONFIG": str(where / "config.yaml"),
    }
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN"):
        env.pop(var, None)
    return ControlPlane(where / "data", free_port(), env, args=args)


def stopped(plane: ControlPlane) -> None:
    if plane.process and plane.process.poll() is None:
        plane.process.kill()
        plane.process.wait()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd").start()
    yield server
    server.stop()


@pytest.fixture
def plane(tmp_path: Path, etcd: EtcdServer) -> Iterator[ControlPlane]:
    running = plane_on(tmp_path / "a", "--store", etcd.url)
    running.start()
    yield running
    stopped(running)


def client_of(plane: ControlPlane) -> Client:
    config = load_client_config(path=Path(plane.env["PILOTFISH_CONFIG"]))
    return Client(config.server, config.token)


def test_apply_get_watch_delete_are_kept_in_etcd(plane: ControlPlane, etcd: EtcdServer) -> None:
    assert "virtualservice.networking.istio.io/reviews created" in ok(
        plane.cli("apply", "-f", BOOKINFO)
    )
    vs = yaml.safe_load(ok(plane.cli("get", "virtualservice", "reviews", "-o", "yaml")))
    etcd_client = etcd.client()
    try:
        key = b"/pilotfish/networking.istio.io/virtualservices/default/reviews"
        [kv] = etcd_client.call("Range", message("RangeRequest", key=key)).kvs
        assert json.loads(kv.value)["spec"] == vs["spec"]
        assert vs["metadata"]["resourceVersion"] == str(kv.mod_revision)
        core = etcd_client.call(
            "Range", message("RangeRequest", key=b"/pilotfish/services/default/reviews")
        )
        assert len(core.kvs) == 1  # the core group has no group segment, as in Kubernetes
    finally:
        etcd_client.close()

    watcher = subprocess.Popen(
        [sys.executable, "-m", "pilotfish", "get", "vs", "-w", "-o", "name"],
        env=plane.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        initial = sorted(watcher.stdout.readline().strip() for _ in range(3))
        assert initial[2] == "virtualservice.networking.istio.io/reviews"
        ok(plane.cli("delete", "vs", "ratings"))
        assert watcher.stdout.readline().strip() == "virtualservice.networking.istio.io/ratings"
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=10)
    missing = plane.cli("get", "vs", "ratings")
    assert missing.returncode == 1 and '"ratings" not found' in missing.stderr


def test_two_control_planes_share_one_etcd(
    plane: ControlPlane, etcd: EtcdServer, tmp_path: Path
) -> None:
    other = plane_on(tmp_path / "b", "--store", etcd.url)
    other.start()
    try:
        ok(plane.cli("apply", "-f", f"{BOOKINFO}/20-routing.yaml"))
        names = ok(other.cli("get", "vs", "-o", "name")).split()
        assert "virtualservice.networking.istio.io/reviews" in names
        # A write pinned to the resourceVersion one plane served is refused by
        # the other once a write through the first moved it on.
        served = yaml.safe_load(ok(other.cli("get", "vs", "reviews", "-o", "yaml")))
        pinned = {
            "apiVersion": served["apiVersion"],
            "kind": "VirtualService",
            "metadata": {
                "name": "reviews",
                "resourceVersion": served["metadata"]["resourceVersion"],
            },
            "spec": served["spec"],
        }
        moved = {**pinned, "metadata": {"name": "reviews", "labels": {"moved": "yes"}}}
        ok(other.cli("apply", "-f", "-", stdin=yaml.safe_dump(moved)))
        stale = plane.cli("apply", "-f", "-", stdin=yaml.safe_dump(pinned))
        assert stale.returncode == 1
        assert "the object has been modified" in stale.stderr
    finally:
        stopped(other)


def test_a_compacted_resource_version_is_410_expired(plane: ControlPlane, etcd: EtcdServer) -> None:
    ok(plane.cli("apply", "-f", f"{BOOKINFO}/20-routing.yaml"))
    old = yaml.safe_load(ok(plane.cli("get", "vs", "reviews", "-o", "yaml")))
    ok(plane.cli("apply", "-f", f"{BOOKINFO}/10-services.yaml"))
    head = yaml.safe_load(ok(plane.cli("get", "svc", "ratings", "-o", "yaml")))
    revision = int(head["metadata"]["resourceVersion"])
    etcd_client = etcd.client()
    try:  # as `etcdctl compact` or etcd's --auto-compaction-retention would
        etcd_client.call("Compact", message("CompactionRequest", revision=revision))
    finally:
        etcd_client.close()
    since = old["metadata"]["resourceVersion"]
    with pytest.raises(Expired, match=f"too old resource version: {since} \\({revision - 1}\\)"):
        list(client_of(plane).watch(VS, "default", resource_version=since))


def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "pki")
    etcd = EtcdServer(tmp_path / "etcd", certs=certs).start()
    tls = (
        f"--etcd-cafile={certs.ca}",
        f"--etcd-certfile={certs.client_cert}",
        f"--etcd-keyfile={certs.client_key}",
    )
    secure = plane_on(tmp_path / "a", "--store", etcd.url, *tls)
    try:
        secure.start()
        ok(secure.cli("apply", "-f", f"{BOOKINFO}/20-routing.yaml"))
        assert "reviews" in ok(secure.cli("get", "vs", "reviews"))
        # Without a client certificate etcd refuses the connection: the plane does not start.
        anonymous = plane_on(tmp_path / "b", "--store", etcd.url, f"--etcd-cafile={certs.ca}")
        refused = anonymous.cli("controlplane", *controlplane_args(anonymous), timeout=60)
        assert refused.returncode == 1
        assert f"cannot open the store {etcd.url}: etcd is unavailable" in refused.stderr
    finally:
        stopped(secure)
        etcd.stop()


def controlplane_args(plane: ControlPlane) -> list[str]:
    return [
        "--data-dir",
        str(plane.data_dir),
        "--listen",
        f"127.0.0.1:{plane.port}",
        "--xds-port=-1",
        *plane.args,
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--store", "etcd:/127.0.0.1:2379"],
            'error: --store "etcd:/127.0.0.1:2379": expected sqlite, etcd://HOST:PORT[,HOST:PORT...] or etcds://HOST:PORT[,HOST:PORT...]',
        ),
        (
            ["--store", "etcd://127.0.0.1:2379,127.0.0.1"],
            'error: --store "etcd://127.0.0.1:2379,127.0.0.1": "127.0.0.1" is not HOST:PORT',
        ),
        (
            ["--store", "etcd://127.0.0.1:2379", "--etcd-cafile", "ca.pem"],
            "error: --etcd-cafile, --etcd-certfile and --etcd-keyfile need an etcds:// store",
        ),
        (
            ["--store", "etcd://127.0.0.1:2379", "--etcd-prefix", "/registry/"],
            'error: --etcd-prefix "/registry/": must start with "/" and not end with one',
        ),
    ],
)
def test_bad_store_options_are_refused(tmp_path: Path, args: list[str], error: str) -> None:
    plane = plane_on(tmp_path, *args)
    result = plane.cli("controlplane", *controlplane_args(plane))
    assert result.returncode == 1
    assert error in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was started or written
    assert not (tmp_path / "config.yaml").exists()


def test_an_unreachable_etcd_fails_start_up_clearly(tmp_path: Path) -> None:
    port = free_port()
    plane = plane_on(tmp_path, "--store", f"etcd://127.0.0.1:{port}")
    started = time.monotonic()
    result = plane.cli("controlplane", *controlplane_args(plane), timeout=60)
    assert result.returncode == 1
    assert (
        f"error: cannot open the store etcd://127.0.0.1:{port}: etcd is unavailable (127.0.0.1:{port})"
        in result.stderr
    )
    assert time.monotonic() - started < 30


def wait_for_log(plane: ControlPlane, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in plane.log[-1].read_text():
        assert time.monotonic() < deadline, f"no {text!r} in\n{plane.log[-1].read_text()}"
        time.sleep(0.1)


def test_one_control_plane_leads_the_rollout_controller_and_hands_over_on_sigterm(
    plane: ControlPlane, etcd: EtcdServer, tmp_path: Path
) -> None:
    leading = "/pilotfish-election/rollout: leading as"
    wait_for_log(plane, leading, 10)
    other = plane_on(tmp_path / "b", "--store", etcd.url)
    other.start()
    try:
        time.sleep(3)  # more than a retry period: it has campaigned and lost
        assert leading not in other.log[-1].read_text()
        assert plane.stop(signal.SIGTERM) == 0
        wait_for_log(other, leading, 6)  # the key was given up: no lease to wait out
    finally:
        stopped(other)


def test_a_killed_leader_is_replaced_once_its_lease_runs_out(
    plane: ControlPlane, etcd: EtcdServer, tmp_path: Path
) -> None:
    leading = "/pilotfish-election/rollout: leading as"
    wait_for_log(plane, leading, 10)
    other = plane_on(tmp_path / "b", "--store", etcd.url)
    other.start()
    try:
        time.sleep(3)
        assert plane.stop(signal.SIGKILL) == -signal.SIGKILL
        killed = time.monotonic()
        wait_for_log(other, leading, 25)
        took = time.monotonic() - killed
        # Not before the dead leader's 15 s lease (renewed every 2 s) ran out; soon after.
        assert 15 - 2 - 0.5 <= took <= 15 + 2 + 3, took
    finally:
        stopped(other)
