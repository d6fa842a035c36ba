"""Issue 4 end to end through sidecars: the control plane drives real
`pilotfish proxy` processes over ADS, Istio's Bookinfo files are applied with
the CLI, and curl goes through the caller's sidecar (outbound listener, HTTP
proxy form) to the callee's sidecar (inbound listener) to a real backend.

Mesh: productpage-v1 (a caller: sidecar only), reviews v1 and v2 and
ratings v1 (apps behind sidecars), details v1 (an app with no sidecar, so it
sees what the caller's sidecar puts on the wire).
"""

from __future__ import annotations

import base64
import re
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from google.protobuf import json_format, struct_pb2
from mesh_processes import XdsControlPlane, wait_until
from processes import REPO
from sidecar_mesh import Backend, Response, Sidecar, SidecarMesh, curl, curl_many, isolated_env
from tests.ports import free_port

pytestmark = pytest.mark.slow

BOOKINFO = REPO.parent / "shared" / "conformance" / "istio" / "bookinfo-networking"
REVIEWS = "http://reviews:9080/"
RATINGS = "http://ratings:9080/"
REVIEWS_HOST = "reviews.default.svc.cluster.local"
JASON = {"end-user": "jason"}
CHANGE_DEADLINE_S = 1.5  # "within about a second" of the CLI returning

SERVICES = "\n---\n".join(
    f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, labels: {{app: {name}, service: {name}}}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 9080}}]
"""
    for name in ("productpage", "reviews", "ratings", "details")
)


def bookinfo_file(name: str) -> str:
    path = BOOKINFO / name
    if not path.exists():
        pytest.skip(f"Istio's Bookinfo samples are not at {BOOKINFO}")
    return path.read_text()


def reviews_weights(v1: int, v2: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}
"""


def ratings_route(extra: str, jason_extra: str = "") -> str:
    """ratings v1 for everyone; `jason_extra` YAML (indented four spaces)
    on a first route matching `end-user: jason`, `extra` on the catch-all."""
    jason = (
        f"""
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
{jason_extra}
    route: [{{destination: {{host: ratings, subset: v1}}}}]"""
        if jason_extra
        else ""
    )
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  http:{jason}
  - route: [{{destination: {{host: ratings, subset: v1}}}}]
{extra}
"""


class Bookinfo:
    def __init__(self, mesh: SidecarMesh) -> None:
        self.mesh = mesh
        mesh.apply(SERVICES)
        mesh.apply(bookinfo_file("destination-rule-all.yaml"))
        self.reviews_v1 = self._app(mesh, "reviews", "v1")
        self.reviews_v2 = self._app(mesh, "reviews", "v2")
        self.ratings = self._app(mesh, "ratings", "v1")
        self.details = mesh.plain_workload(
            "details-v1-0", {"app": "details", "version": "v1"}, Backend("details-v1")
        )
        self.productpage = mesh.client("productpage-v1-0", {"app": "productpage", "version": "v1"})
        for sidecar in mesh.sidecars:
            mesh.wait_serving(sidecar)
        self.sidecars = {s.who.instance: s for s in mesh.sidecars}

    @staticmethod
    def _app(mesh: SidecarMesh, app: str, version: str) -> Backend:
        _, backend = mesh.workload(
            f"{app}-{version}-0", {"app": app, "version": version}, Backend(f"{app}-{version}")
        )
        return backend

    def get(self, url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> Response:
        return curl(url, proxy=self.productpage.outbound_port, headers=headers, timeout=timeout)

    def versions(self, n: int, url: str = REVIEWS, *headers: str) -> Counter[str]:
        """Which backend answered each of `n` requests (curl --parallel)."""
        extra = [a for h in headers for a in ("-H", h)]
        proxy = ["-x", f"http://127.0.0.1:{self.productpage.outbound_port}"]
        results = curl_many([url] * n, *proxy, *extra, parallel=8)
        return Counter(f"{status} {fields['x-backend']}".strip() for status, fields in results)

    def route(self, manifest: str) -> None:
        self.mesh.apply_and_wait(manifest, self.productpage)


@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bookinfo]:
    tmp = tmp_path_factory.mktemp("sidecars")
    env = isolated_env(tmp)
    plane = XdsControlPlane(tmp / "data", free_port(), env, xds_port=free_port())
    mesh = SidecarMesh(plane, tmp)
    try:
        plane.start()
        yield Bookinfo(mesh)
    finally:
        mesh.close()


def test_default_route_reaches_both_versions(bookinfo: Bookinfo) -> None:
    bookinfo.mesh.delete("virtualservice", "reviews")
    counts = bookinfo.versions(40)
    assert counts["200 reviews-v1"] >= 5 and counts["200 reviews-v2"] >= 5, counts
    assert sum(counts.values()) == counts["200 reviews-v1"] + counts["200 reviews-v2"], counts


def test_bookinfo_80_20_weights_hold(bookinfo: Bookinfo) -> None:
    bookinfo.route(bookinfo_file("virtual-service-reviews-80-20.yaml"))
    n = 600
    counts = bookinfo.versions(n)
    assert counts["200 reviews-v1"] + counts["200 reviews-v2"] == n, counts
    # Binomial(600, 0.2): mean 120, sd 9.8; 4.5 sd either side.
    assert 76 <= counts["200 reviews-v2"] <= 164, counts


def test_bookinfo_jason_goes_to_v2(bookinfo: Bookinfo) -> None:
    bookinfo.route(bookinfo_file("virtual-service-reviews-test-v2.yaml"))
    assert bookinfo.versions(30, REVIEWS, "end-user: jason") == Counter({"200 reviews-v2": 30})
    assert bookinfo.versions(30) == Counter({"200 reviews-v1": 30})
    assert bookinfo.versions(10, REVIEWS, "end-user: jasonx") == Counter({"200 reviews-v1": 10})


def test_fault_abort_503_for_a_match(bookinfo: Bookinfo) -> None:
    abort = "    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}"
    bookinfo.route(ratings_route("", jason_extra=abort))
    bookinfo.ratings.reset()
    aborted = bookinfo.get(RATINGS, JASON)
    assert aborted.status == 503 and aborted.flags == "FI", (aborted.status, aborted.headers)
    assert bookinfo.versions(20, RATINGS, "end-user: jason") == Counter({"503": 20})
    assert bookinfo.ratings.count == 0, "an aborted request reached the app"
    assert bookinfo.versions(20, RATINGS) == Counter({"200 ratings-v1": 20})


def test_bookinfo_ratings_abort_file(bookinfo: Bookinfo) -> None:
    bookinfo.route(bookinfo_file("virtual-service-ratings-test-abort.yaml"))
    assert bookinfo.get(RATINGS, JASON).status == 500
    assert bookinfo.get(RATINGS).status == 200


def test_fault_delay_for_a_match(bookinfo: Bookinfo) -> None:
    delay = "    fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}"
    bookinfo.route(ratings_route("", jason_extra=delay))
    started = time.monotonic()
    delayed = bookinfo.get(RATINGS, JASON)
    took = time.monotonic() - started
    assert delayed.status == 200 and delayed.header("x-backend") == "ratings-v1"
    assert 1.0 <= took < 2.5, took
    started = time.monotonic()
    assert bookinfo.get(RATINGS).status == 200
    assert time.monotonic() - started < 0.8


def test_retries_hide_a_failing_first_attempt(bookinfo: Bookinfo) -> None:
    ratings = bookinfo.ratings
    try:
        ratings.fail_first = 1
        bookinfo.route(ratings_route("    retries: {attempts: 2, retryOn: 5xx}"))
        ratings.reset()
        answer = bookinfo.get(RATINGS)
        assert answer.status == 200, (answer.status, answer.headers)
        assert ratings.count == 2, "the first attempt failed and the retry succeeded"
        bookinfo.route(ratings_route("    retries: {attempts: 0}"))
        ratings.reset()
        assert bookinfo.get(RATINGS).status == 503, "without retries the failure shows"
        bookinfo.route(ratings_route(""))  # Istio's default policy retries a 503
        ratings.reset()
        assert bookinfo.get(RATINGS).status == 200
    finally:
        ratings.fail_first = 0


def test_weight_change_with_the_cli_takes_effect_within_a_second(bookinfo: Bookinfo) -> None:
    bookinfo.route(reviews_weights(100, 0))
    assert bookinfo.versions(10) == Counter({"200 reviews-v1": 10})
    bookinfo.mesh.apply(reviews_weights(0, 100))
    applied = time.monotonic()
    while bookinfo.get(REVIEWS).header("x-backend") != "reviews-v2":
        assert time.monotonic() - applied < CHANGE_DEADLINE_S, "the change did not arrive in time"
    took = time.monotonic() - applied
    assert bookinfo.versions(20) == Counter({"200 reviews-v2": 20}), f"after {took:.2f}s"


# -- telemetry: Istio's metrics, with the peers' metadata exchanged ------------

_SERIES = re.compile(r"^istio_requests_total\{(.*)\} (\d+)$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def requests_total(sidecar: Sidecar, **wanted: str) -> int:
    """istio_requests_total summed over the series carrying `wanted` labels."""
    total = 0
    for labels, value in _SERIES.findall(sidecar.stats()):
        found = dict(_LABEL.findall(labels))
        if all(found.get(k) == v for k, v in wanted.items()):
            total += int(value)
    return total


SOURCE = {"source_workload": "productpage-v1", "source_app": "productpage"}


def _destination(version: str) -> dict[str, str]:
    return {"destination_workload": f"reviews-{version}", "destination_version": version}


def test_both_sidecars_report_istio_requests_total(bookinfo: Bookinfo) -> None:
    bookinfo.route(reviews_weights(50, 50))
    client, server = bookinfo.productpage, bookinfo.sidecars["reviews-v1-0"]
    labels = {**SOURCE, **_destination("v1"), "response_code": "200"}
    before_source = requests_total(client, reporter="source", **labels)
    before_dest = requests_total(server, reporter="destination", **labels)
    bookinfo.reviews_v1.reset()
    counts = bookinfo.versions(40)
    reached = bookinfo.reviews_v1.count
    assert reached == counts["200 reviews-v1"] > 0, counts
    source = requests_total(client, reporter="source", destination_service=REVIEWS_HOST, **labels)
    assert source - before_source == reached, "client sidecar: reporter=source"
    dest = requests_total(server, reporter="destination", **labels)
    assert dest - before_dest == reached, "server sidecar: reporter=destination"
    assert requests_total(server, reporter="source", **labels) == 0


def test_destination_reporter_names_the_service(bookinfo: Bookinfo) -> None:
    """The callee's sidecar names the service from its inbound cluster's
    `istio.services` metadata, which translation fills in."""
    bookinfo.route(reviews_weights(100, 0))
    server = bookinfo.sidecars["reviews-v1-0"]
    before = requests_total(server, reporter="destination", destination_service=REVIEWS_HOST)
    assert bookinfo.versions(5) == Counter({"200 reviews-v1": 5})
    after = requests_total(server, reporter="destination", destination_service=REVIEWS_HOST)
    assert after - before == 5, "destination_service on the inbound side"


def test_peer_metadata_exchange_headers(bookinfo: Bookinfo) -> None:
    """What the caller's sidecar sends is Istio's: the caller's node metadata
    as a base64 Struct, and its node id; a callee's sidecar removes both
    before the app, and the caller's removes the callee's from the answer."""
    bookinfo.details.reset()
    answer = bookinfo.get("http://details:9080/echo")
    assert answer.status == 200 and answer.header("x-backend") == "details-v1"
    seen = bookinfo.details.requests[-1].headers
    assert seen.get("x-envoy-peer-metadata-id") == bookinfo.productpage.node_id
    struct = struct_pb2.Struct()
    struct.ParseFromString(base64.b64decode(seen["x-envoy-peer-metadata"]))
    meta = json_format.MessageToDict(struct)
    assert meta["WORKLOAD_NAME"] == "productpage-v1" and meta["NAMESPACE"] == "default"
    assert meta["LABELS"] == {"app": "productpage", "version": "v1"}
    assert meta["SERVICE_ACCOUNT"] == "bookinfo-productpage"
    behind = bookinfo.get(REVIEWS + "echo", JASON).json()["headers"]
    assert not any(h.startswith("x-envoy-peer-metadata") for h in behind), behind
    assert not any(h.startswith("x-envoy-peer-metadata") for h in answer.headers)


def test_proxy_status_lists_the_sidecars_synced(bookinfo: Bookinfo) -> None:
    done = bookinfo.mesh.proxy_status()
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:] if line}
    for sidecar in bookinfo.mesh.sidecars:
        assert sidecar.node_id in rows, done.stdout
        assert rows[sidecar.node_id][:2] == ["sidecar", "default"], done.stdout
        assert rows[sidecar.node_id][2:] == ["SYNCED"] * 4, done.stdout
    header = done.stdout.splitlines()[0].split()
    assert header[-4:] == ["CDS", "LDS", "EDS", "RDS"], header


def test_a_sidecar_started_by_hand_registers_its_instance(bookinfo: Bookinfo) -> None:
    """`pilotfish proxy --register`: the instance is in the registry while the
    sidecar serves (who it is from the bootstrap's node metadata), callers
    reach the app through it, and it leaves the registry when stopped."""
    mesh = bookinfo.mesh
    mesh.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: hello}\n"
        "spec: {selector: {app: hello}, ports: [{name: http, port: 9080}]}\n"
    )
    labels = {"app": "hello", "version": "v1"}
    sidecar, backend = mesh.self_registered("hello-v1-0", labels, Backend("hello-v1"))
    mesh.wait_serving(sidecar)
    wanted = {
        "workload": "hello-v1",
        "labels": labels,
        "ports": {"http": sidecar.inbound_port},
        "appPorts": {"http": backend.port},
        "metricsPort": sidecar.proxy.admin_port,
        "serviceAccount": "bookinfo-hello",
        "healthy": True,
    }

    def registered() -> bool:
        found = mesh.instances().get("hello-v1-0") or {}
        return {k: found.get(k) for k in wanted} == wanted

    wait_until(registered, 10, f"not registered as {wanted}: {mesh.instances()}")

    def reached() -> bool:
        return bookinfo.get("http://hello:9080/").header("x-backend") == "hello-v1"

    wait_until(reached, 10, "hello is not reached through its sidecar")
    assert sidecar.proxy.stop() == 0
    assert "hello-v1-0" not in mesh.instances(), "deregistered when stopped"
