"""Zero failed requests while instances go away: a steady stream of requests
through the agent's ingress gateway, whose VirtualService retries, to
productpage while (a) Chaos Monkey kills one of its instances and (b) a
ConfigMap change rolls its instances forward. The caller must see only
200s, and the agent must restore the replica count."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import yaml
from tests.agent.mesh_harness import DIRECT, Mesh, free_port, mesh_up, wait_for

pytestmark = pytest.mark.slow

RETRYING_VS = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "bookinfo"},
    "spec": {
        "hosts": ["*"],
        "gateways": ["bookinfo-gateway"],
        "http": [
            {
                "match": [{"uri": {"exact": "/productpage"}}, {"uri": {"prefix": "/api/v1"}}],
                "route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}],
                "retries": {
                    "attempts": 3,
                    "perTryTimeout": "5s",
                    "retryOn": "gateway-error,connect-failure,refused-stream,reset",
                },
            }
        ],
    },
}


@dataclass
class Load:
    """Callers sending GET /productpage in a loop on keep-alive connections,
    counting answers by status (exceptions count under their name)."""

    port: int
    callers: int = 4
    results: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.callers):
            thread = threading.Thread(target=self._call, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _call(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        while not self._stop.is_set():
            try:
                connection.request("GET", "/productpage")
                response = connection.getresponse()
                body = response.read()
                self._record(str(response.status), body[:200].decode(errors="replace"))
            except (OSError, http.client.HTTPException) as e:
                connection.close()
                self._record(type(e).__name__, str(e))
            time.sleep(0.01)
        connection.close()

    def _record(self, outcome: str, detail: str) -> None:
        self.results[outcome] += 1
        if outcome != "200":
            self.failures.append(f"{time.strftime('%H:%M:%S')} {outcome}: {detail}")

    def wait_for_some(self, count: int) -> None:
        wait_for(lambda: self.results.total() >= count, 30, f"load is not flowing: {self.results}")


def gateway_stats(mesh: Mesh) -> str:
    """The gateway's retry and upstream counters, to say why a request failed."""
    bootstrap = next((mesh.state / "instances" / "istio-system").glob("*/bootstrap.yaml"))
    admin = yaml.safe_load(bootstrap.read_text())["admin"]["address"]["socket_address"]
    with DIRECT.open(f"http://127.0.0.1:{admin['port_value']}/stats", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return "\n".join(
        line for line in lines if "productpage" in line and ("retry" in line or "_rq_5" in line)
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("zero")
    gateway = free_port()
    with mesh_up(tmp, gateway_port=gateway) as m:
        m.gateway_port = gateway  # type: ignore[attr-defined]
        (tmp / "retrying-vs.json").write_text(json.dumps(RETRYING_VS))
        m.cli("apply", "-f", str(tmp / "retrying-vs.json"), "--force-conflicts")
        m.cli("scale", "productpage-v1", "2")
        wait_for(lambda: m.ready("productpage-v1", 2), 30, "productpage did not scale to 2")
        yield m


def test_chaos_kill_under_load_fails_no_request_and_is_healed(mesh: Mesh) -> None:
    with Load(mesh.gateway_port) as load:  # type: ignore[attr-defined]
        load.wait_for_some(20)
        assert mesh.node_cli("chaos", "kill", "productpage-v1").startswith("killed ")
        wait_for(
            lambda: mesh.status("productpage-v1")["restarts"] >= 1, 10, "the kill was not seen"
        )
        wait_for(lambda: mesh.ready("productpage-v1", 2), 30, "productpage was not healed")
        before = load.results.total()
        load.wait_for_some(before + 20)
    assert load.failures == [], f"{load.results}: {load.failures[:10]}\n{gateway_stats(mesh)}"
    assert load.results["200"] >= 60


def test_configmap_rollout_under_load_fails_no_request(mesh: Mesh) -> None:
    before = {i["name"] for i in mesh.status("productpage-v1")["instances"]}
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "productpage-config"},
        "data": {"SESSION_SECRET": f"rotated-{time.time()}"},
    }
    (mesh.tmp / "rotated.json").write_text(json.dumps(config))

    def rolled() -> bool:
        names = {i["name"] for i in mesh.status("productpage-v1").get("instances") or []}
        return not names & before and mesh.ready("productpage-v1", 2)

    with Load(mesh.gateway_port) as load:  # type: ignore[attr-defined]
        load.wait_for_some(20)
        mesh.cli("apply", "-f", str(mesh.tmp / "rotated.json"))
        wait_for(rolled, 60, "productpage was not rolled forward")
        done = load.results.total()
        load.wait_for_some(done + 20)
    assert load.failures == [], f"{load.results}: {load.failures[:10]}\n{gateway_stats(mesh)}"
    assert load.results["200"] >= 60
