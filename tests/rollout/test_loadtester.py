"""The built-in load tester: hey and curl commands parsed (no sockets), then
run against real HTTP servers found through a hand-built mesh snapshot; jobs
and their deduplication; flagger-loadtester's HTTP API and gates."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pilotfish.api.validation import validate_or_raise
from pilotfish.controlplane.api import Api, Request, Response
from pilotfish.controlplane.loadtester_api import LoadTesterApi
from pilotfish.model.snapshot import Snapshot, build_snapshot
from pilotfish.model.types import Instance
from pilotfish.rollout import loadcommands, loadtester
from pilotfish.rollout.loadcommands import CommandError, parse_command
from pilotfish.rollout.loadtester import (
    Busy,
    LoadTester,
    UnknownHost,
    candidate_names,
    mesh_resolver,
    resolve_host,
)
from pilotfish.store.resources import ResourceStore
from pilotfish.store.sqlite import SqliteBackend

Obj = dict[str, Any]


# -- parsing ------------------------------------------------------------------------------


def test_hey_as_flaggers_docs_write_it() -> None:
    load = parse_command("hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/")
    assert (load.tool, load.duration_s, load.qps, load.concurrency) == ("hey", 60.0, 10.0, 2)
    assert (load.url.host, load.url.port, load.url.target) == ("podinfo-canary.test", 9898, "/")
    assert load.method == "GET" and load.body == b"" and load.timeout_s == 20.0
    assert dict(load.headers) == {
        "Content-Type": "text/html",  # hey's default -T
        "Host": "podinfo-canary.test:9898",
        "User-Agent": "hey/0.0.1",
    }


def test_hey_requests_method_headers_body_and_go_flag_forms() -> None:
    load = parse_command(
        "hey -n=40 --c 4 -m post -H 'X-Canary: insider' -H 'User-Agent: probe' "
        "-d '{\"a\": 1}' -T application/json -t 5 -host reviews.example "
        "-disable-keepalive http://reviews:9080/api?x=1"
    )
    assert (load.requests, load.concurrency, load.duration_s) == (40, 4, 0.0)
    assert load.method == "POST" and load.body == b'{"a": 1}' and load.timeout_s == 5.0
    assert load.url.target == "/api?x=1" and not load.keepalive
    assert dict(load.headers) == {
        "Content-Type": "application/json",
        "X-Canary": "insider",
        "Host": "reviews.example",
        "User-Agent": "probe hey/0.0.1",
    }


def test_curl_as_acceptance_tests_write_it() -> None:
    load = parse_command("curl -sf http://reviews-canary:9080/health")
    assert (load.tool, load.method, load.fail_on_error, load.redirects) == ("curl", "GET", True, 0)
    posted = parse_command("curl -sd 'test' http://podinfo-canary:9898/token")
    assert posted.method == "POST" and posted.body == b"test" and not posted.fail_on_error
    assert dict(posted.headers)["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_command("curl -I reviews:9080/").method == "HEAD"


def test_curl_options() -> None:
    load = parse_command(
        "curl --silent --show-error -X put -H 'Content-Type: text/plain' --data-raw a "
        "--data-raw b -L --max-redirs 3 -m 2.5 -u ann:secret --retry 2 -o /dev/null "
        "-w '%{http_code}' http://reviews.default.svc.cluster.local:9080/x"
    )
    assert load.method == "PUT" and load.body == b"a&b" and load.redirects == 3
    assert load.timeout_s == 2.5 and load.retries == 2 and not load.keep_body
    assert dict(load.headers)["Content-Type"] == "text/plain"
    assert dict(load.headers)["Authorization"] == "Basic YW5uOnNlY3JldA=="
    assert load.write_out == "%{http_code}"
    json_post = parse_command("""curl --json '{"a":1}' http://r:80/""")
    assert json_post.method == "POST" and dict(json_post.headers)["Accept"] == "application/json"


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("", "the command is empty"),
        ("wrk -t2 http://a:80/", '"wrk" is not built in'),
        ("/bin/sh -c 'hey http://a/'", '"/bin/sh" is not built in'),
        ("curl -s http://a:80/ | grep ok", '"|": shell operators'),
        ("hey http://a:80/ > out.txt", '">": shell operators'),
        ("curl http://a:80/; rm -rf /", '";": shell operators'),
        ("curl http://a:80/ && curl http://b:80/", '"&&": shell operators'),
        ("curl 'http://a:80/", "cannot split the command"),
        ("hey", "hey: no URL given"),
        ("hey -z", "hey: -z needs a value"),
        ("hey -z soon http://a/", 'invalid value "soon" for flag -z'),
        ("hey -n many http://a/", 'invalid value "many" for flag -n'),
        ("hey -frobnicate http://a/", "flag provided but not defined: -frobnicate"),
        ("hey -D body.json http://a/", "-D is not supported: it reads the body from a file"),
        ("hey -h2 http://a/", "-h2 is not supported"),
        ("hey -n 1 -c 2 http://a/", "-n cannot be less than -c"),
        ("hey -c 0 -z 1m http://a/", "-c cannot be smaller than 1"),
        ("hey -H 'no colon' http://a/", "could not parse the provided input"),
        ("hey http://a/ -z 1m", "unexpected '-z' after the URL"),
        ("hey -o json http://a/", '"csv" is the only supported alternative'),
        ("hey https://a/", "only http:// URLs of mesh services"),
        ("hey http://ann:pw@a/", "credentials in the URL are not supported"),
        ("hey http://a:99999/", "out of range"),
        ("curl", "curl: no URL given"),
        ("curl http://a/ http://b/", "one URL at a time"),
        ("curl -Z http://a/", "option -Z is not supported"),
        ("curl --proxy x http://a/", "option --proxy is not supported"),
        ("curl -d @payload.json http://a/", "reading files is not supported"),
        ("curl -m soon http://a/", '--max-time: "soon" is not a number'),
        ("curl -H nocolon http://a/", 'a header is "Name: value"'),
        ("curl -u justme http://a/", 'credentials are "user:password"'),
        # -q NaN passed every bound (comparisons with NaN are false) and then
        # paced nothing: as many requests as 100 workers could send, for an hour.
        ("hey -q NaN -z 1h -c 100 http://a/", 'invalid value "NaN" for flag -q'),
        ("hey -q inf -n 1 -c 1 http://a/", 'invalid value "inf" for flag -q'),
        ("curl -m nan http://a/", '--max-time: "nan" is not a number'),
        ("curl --retry 1 --retry-delay nan http://a/", '--retry-delay: "nan" is not a number'),
        ("curl -L --max-redirs inf http://a/", '--max-redirs: "inf" is not a number'),
        ("curl http://[::1:9080/", "Invalid IPv6 URL"),
    ],
)
def test_bad_commands_are_refused_with_the_reason(command: str, why: str) -> None:
    with pytest.raises(CommandError, match=None) as caught:
        parse_command(command)
    assert why in str(caught.value)


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("hey -z 2h http://a/", "-z is longer than the limit of 3600s"),
        ("hey -z 1m -c 500 http://a/", "-c is above the limit of 100 workers"),
        ("hey -z 1m -q 100 -c 20 http://a/", "2000 requests per second, above the limit"),
        ("hey -n 2000000 -c 1 http://a/", "-n is above the limit"),
        ("curl --retry 50 http://a/", "--retry is above the limit of 10"),
    ],
)
def test_load_beyond_the_bounds_is_refused(command: str, why: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse_command(command)
    assert why in str(caught.value)


def test_unlimited_rates_and_timeouts_are_bounded() -> None:
    load = parse_command("hey -z 1m -c 4 -t 0 http://a/")
    assert load.worker_rate == loadcommands.MAX_RATE / 4
    assert load.timeout_s == loadcommands.MAX_TIMEOUT_S


# -- hosts ---------------------------------------------------------------------------------


def mesh(*ports: int, name: str = "reviews", namespace: str = "default") -> Snapshot:
    """A Service over one instance per port, each standing in for a sidecar."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 9080}]},
    }
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "ext", "namespace": namespace},
        "spec": {
            "hosts": ["api.example.com"],
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "endpoints": [{"address": "127.0.0.1", "ports": {"http": ports[0] if ports else 1}}],
        },
    }
    instances = [
        Instance(
            name=f"{name}-{i}",
            namespace=namespace,
            workload=name,
            address="127.0.0.1",
            ports={"http": port},
            labels={"app": name},
        )
        for i, port in enumerate(ports)
    ]
    return build_snapshot([service, entry], instances)


def test_hosts_resolve_as_a_pods_resolver_would() -> None:
    assert candidate_names("reviews", "test") == [
        "reviews.test.svc.cluster.local",
        "reviews.svc.cluster.local",
        "reviews.cluster.local",
        "reviews",
    ]
    snap = mesh(8001, 8002)
    found = [("127.0.0.1", 8001), ("127.0.0.1", 8002)]
    for host in (
        "reviews",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "REVIEWS.default.svc.cluster.local.",
    ):
        assert resolve_host(snap, host, 9080, "default") == found, host
    assert resolve_host(snap, "api.example.com", 80, "default") == [("127.0.0.1", 8001)]


def test_a_host_that_is_no_mesh_service_is_refused_with_the_reason() -> None:
    snap = mesh(8001)
    with pytest.raises(UnknownHost, match='"ratings" is not a service of the mesh'):
        resolve_host(snap, "ratings", 9080, "default")
    with pytest.raises(UnknownHost, match='"reviews" is not a service of the mesh'):
        resolve_host(snap, "reviews", 9080, "other")  # a short name is the canary's namespace
    with pytest.raises(UnknownHost, match=r'service "reviews" has no port 80 \(its ports: 9080\)'):
        resolve_host(snap, "reviews", 80, "default")


# -- running against real servers ------------------------------------------------------------


class App(BaseHTTPRequestHandler):
    """Stands in for an instance's sidecar: counts what it gets."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, str, bytes]]

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, self.headers.get("Host", ""), body))
        code, headers, text = 200, [], f"hello from {self.server.server_address[1]}".encode()
        if self.path.startswith("/fail"):
            code, text = 503, b"unavailable"
        elif self.path.startswith("/moved"):
            code, headers, text = 302, [("Location", "/landed")], b""
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(text)
        if self.path.startswith("/drop"):
            self.close_connection = True  # without saying so: the client finds out on reuse

    def log_message(self, *args: Any) -> None:
        pass


class Server:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, bytes]] = []
        handler = type("Handler", (App,), {"seen": self.seen})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    pair = (Server(), Server())
    yield pair
    for s in pair:
        s.close()


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_hey_spreads_its_requests_over_the_instances(servers: tuple[Server, Server]) -> None:
    a, b = servers
    tester = LoadTester(mesh_resolver(lambda: mesh(a.port, b.port)))
    result = tester.run("hey -n 20 -c 2 -m POST -d hi http://reviews:9080/ping")
    assert result.ok, result.message
    assert result.message == "hey: 20 requests, 20 answered (200: 20)"
    assert len(a.seen) + len(b.seen) == 20 and len(a.seen) >= 5 and len(b.seen) >= 5
    assert {s[:4] for s in a.seen + b.seen} == {("POST", "/ping", "reviews:9080", b"hi")}


def test_background_load_follows_the_instances_as_they_change(
    servers: tuple[Server, Server],
) -> None:
    a, b = servers
    current = {"snap": mesh(a.port)}
    tester = LoadTester(mesh_resolver(lambda: current["snap"]))
    assert tester.start("hey -z 30s -q 50 -c 1 http://reviews:9080/", canary="reviews.default")
    try:
        eventually(lambda: len(a.seen) >= 5)
        assert not b.seen
        current["snap"] = mesh(b.port)
        eventually(lambda: len(b.seen) >= 5)
        settled = len(a.seen)
        time.sleep(0.3)
        assert len(a.seen) == settled, "the instance that left still gets load"
        [job] = tester.jobs()
        assert job.to_json()["sent"] >= 10 and job.canary == "reviews.default"
    finally:
        started = time.monotonic()
        tester.close()
    assert time.monotonic() - started < 2 and tester.jobs() == []


def test_a_command_running_for_a_canary_is_not_started_twice(
    servers: tuple[Server, Server],
) -> None:
    a, _ = servers
    tester = LoadTester(mesh_resolver(lambda: mesh(a.port)))
    command = "hey -z 30s -q 5 -c 1 http://reviews.default:9080/"
    try:
        assert tester.start(command, canary="reviews.default") is True
        assert tester.start(command, canary="reviews.default") is False
        assert tester.start(command, canary="ratings.default") is True  # keyed by canary too
        assert len(tester.jobs()) == 2
    finally:
        tester.close()
    with pytest.raises(Busy, match="shutting down"):
        tester.start(command, canary="other.default")


def test_jobs_are_bounded(servers: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = servers
    monkeypatch.setattr(loadtester, "MAX_JOBS", 1)
    tester = LoadTester(mesh_resolver(lambda: mesh(a.port)))
    try:
        tester.start("hey -z 30s -q 5 -c 1 http://reviews:9080/one")
        with pytest.raises(Busy, match="1 load tests run already"):
            tester.start("hey -z 30s -q 5 -c 1 http://reviews:9080/two")
    finally:
        tester.close()


def test_an_unknown_service_fails_the_start_or_the_run() -> None:
    tester = LoadTester(mesh_resolver(lambda: mesh(1)))
    with pytest.raises(UnknownHost, match='"ratings" is not a service of the mesh'):
        tester.start("hey -z 1m -q 1 -c 1 http://ratings:9080/")
    result = tester.run("curl -sf http://ratings:9080/health")
    assert not result.ok and result.message == 'curl: "ratings" is not a service of the mesh'
    assert tester.jobs() == []


def test_a_service_without_instances_gets_nothing_through() -> None:
    tester = LoadTester(mesh_resolver(lambda: mesh()))
    result = tester.run("hey -n 2 -c 1 http://reviews:9080/")
    assert not result.ok
    assert "2 without answer (reviews:9080 has no ready endpoints)" in result.message


def test_curl_fails_on_an_error_status_only_with_f(servers: tuple[Server, Server]) -> None:
    a, _ = servers
    tester = LoadTester(mesh_resolver(lambda: mesh(a.port)))
    failed = tester.run("curl -sf http://reviews:9080/fail")
    assert not failed.ok and "answered 503" in failed.message
    assert tester.run("curl -s http://reviews:9080/fail").ok
    ok = tester.run("curl -sf http://reviews.default:9080/health")
    assert ok.ok and ok.output == f"hello from {a.port}".encode()


def test_curl_follows_redirects_with_l(servers: tuple[Server, Server]) -> None:
    a, _ = servers
    tester = LoadTester(mesh_resolver(lambda: mesh(a.port)))
    assert tester.run("curl -s http://reviews:9080/moved").output == b""
    followed = tester.run("curl -sL -w ' %{http_code}' http://reviews:9080/moved")
    assert followed.ok and followed.output == f"hello from {a.port} 200".encode()
    assert [s[1] for s in a.seen] == ["/moved", "/moved", "/landed"]


def test_a_kept_connection_the_server_dropped_is_replaced(servers: tuple[Server, Server]) -> None:
    a, _ = servers
    tester = LoadTester(mesh_resolver(lambda: mesh(a.port)))
    result = tester.run("hey -n 5 -c 1 http://reviews:9080/drop")
    assert result.message == "hey: 5 requests, 5 answered (200: 5)"
    assert len(a.seen) == 5


def test_a_refused_connection_is_a_failed_run() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), App) as idle:
        port = int(idle.server_address[1])
    tester = LoadTester(mesh_resolver(lambda: mesh(port)))
    result = tester.run("curl -s http://reviews:9080/")
    assert not result.ok and result.message == "curl: http://reviews:9080/: connection refused"


# -- the HTTP API -----------------------------------------------------------------------


@pytest.fixture
def api(servers: tuple[Server, Server]) -> Iterator[LoadTesterApi]:
    a, _ = servers
    extension = LoadTesterApi(snapshot=lambda: mesh(a.port))
    yield extension
    extension.close()


def post(api: LoadTesterApi, path: str, body: Obj | bytes | None = None) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
    answer = api(Request.of("POST", path, {"Content-Type": "application/json"}, raw), path)
    assert answer is not None
    return answer


def task(cmd: str, **metadata: str) -> Obj:
    return {"name": "reviews", "namespace": "default", "phase": "Progressing",
            "checksum": "x", "metadata": {"cmd": cmd, **metadata}}  # fmt: skip


def test_a_task_starts_in_the_background_once(
    api: LoadTesterApi, servers: tuple[Server, Server]
) -> None:
    command = "hey -z 30s -q 20 -c 1 http://reviews:9080/"
    first = post(api, "/loadtester", task(command))
    assert first.status == 202 and first.body == f"started: {command}".encode()
    again = post(api, "/loadtester", task(command, type="cmd"))
    assert again.status == 202 and again.body.startswith(b"already running")
    eventually(lambda: len(servers[0].seen) >= 3)
    listed = api(Request.of("GET", "/loadtester/"), "/loadtester")
    assert listed is not None and [j["command"] for j in listed.json()["jobs"]] == [command]


def test_a_bash_task_runs_to_its_end_and_answers_with_its_outcome(
    api: LoadTesterApi, servers: tuple[Server, Server]
) -> None:
    ok = post(api, "/loadtester/", task("curl -sf http://reviews:9080/health", type="bash"))
    assert (ok.status, ok.body) == (200, b"")
    shown = task("curl -sf http://reviews:9080/", type="bash", returnCmdOutput="true")
    assert post(api, "/loadtester/", shown).body == f"hello from {servers[0].port}".encode()
    failed = post(api, "/loadtester/", task("curl -sf http://reviews:9080/fail", type="bash"))
    assert failed.status == 500 and b"answered 503" in failed.body
    unknown = post(api, "/loadtester/", task("curl -sf http://ratings:9080/", type="bash"))
    assert unknown.status == 500 and b'"ratings" is not a service of the mesh' in unknown.body


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (task("wrk http://reviews:9080/"), b'"wrk" is not built in'),
        (task("curl -s http://reviews:9080/ | grep x", type="bash"), b"shell operators"),
        (task("hey -z 1m -q 1 -c 1 http://ratings:9080/"), b'"ratings" is not a service'),
        (task("helm test podinfo", type="helmv3"), b"unknown task type helmv3"),
        ({"name": "reviews", "namespace": "default"}, b"metadata not found in payload"),
        ({"name": "reviews", "metadata": {"type": "cmd"}}, b"cmd not found in metadata"),
        (b"{not json", b"decoding the request body failed"),
    ],
)
def test_bad_tasks_get_400_with_the_reason(
    api: LoadTesterApi, body: Obj | bytes, why: bytes
) -> None:
    answer = post(api, "/loadtester/", body)
    assert answer.status == 400 and why in answer.body, answer.body


def test_gates_as_flagger_loadtester_keeps_them(api: LoadTesterApi) -> None:
    reviews = {"name": "reviews", "namespace": "default"}
    ratings = {"name": "ratings", "namespace": "default"}
    assert post(api, "/loadtester/gate/approve").status == 200
    assert post(api, "/loadtester/gate/halt").status == 403
    assert post(api, "/loadtester/gate/check", reviews).status == 403  # closed by default
    assert post(api, "/loadtester/gate/open", reviews).status == 202
    check = post(api, "/loadtester/gate/check", reviews)
    assert (check.status, check.body) == (200, b"Approved")
    assert post(api, "/loadtester/gate/check", ratings).status == 403  # per canary
    assert post(api, "/loadtester/rollback/check", reviews).status == 403  # a gate of its own
    assert post(api, "/loadtester/gate/close", reviews).status == 202
    assert post(api, "/loadtester/gate/check", reviews).status == 403
    assert post(api, "/loadtester/rollback/open", ratings).status == 202
    assert post(api, "/loadtester/rollback/check", ratings).status == 200
    assert post(api, "/loadtester/rollback/close", ratings).status == 202
    assert post(api, "/loadtester/rollback/check", ratings).status == 403
    assert post(api, "/loadtester/gate/check", b"").status == 400
    assert post(api, "/loadtester/gate/nope", reviews).status == 404
    assert api(Request.of("GET", "/apis/x"), "/apis/x") is None


def test_webhooks_reach_the_load_tester_without_a_token(api: LoadTesterApi, tmp_path: Path) -> None:
    store = ResourceStore(SqliteBackend(tmp_path / "store.db"), validate=validate_or_raise)
    whole = Api(store, "secret", extension=api)
    try:
        body = json.dumps({"name": "reviews", "namespace": "default"}).encode()
        headers = {"Content-Type": "application/json"}

        def status(path: str, peer: str = "127.0.0.1") -> int:
            return whole.handle(Request.of("POST", path, headers, body, peer)).status

        assert status("/loadtester/gate/check") == 403
        assert status("/loadtester/gate/open") == 202
        assert status("/loadtester/gate/check") == 200
        assert status("/api/v1/namespaces/default/services") == 403  # system:anonymous
        assert status("/loadtester/gate/approve", peer="10.1.2.3") == 401  # local callers only
    finally:
        store.close()


@pytest.mark.parametrize(
    "command",
    [
        "curl -s -H $'X: a\\rb' http://reviews:9080/",
        "curl -s -A $'x\\ny' http://reviews:9080/",
        "curl -s -H 'Bad Name: v' http://reviews:9080/",
        "curl -s -X 'GET /admin' http://reviews:9080/",
        "hey -n 1 -c 1 -m 'GET /admin' http://reviews:9080/",
        "hey -n 1 -c 1 -H $'X: a\\rb' http://reviews:9080/",
    ],
)
def test_a_command_cannot_forge_a_request_line_or_header(
    api: LoadTesterApi, servers: tuple[Server, Server], command: str
) -> None:
    """An anonymous caller's command: a 400 naming the bad part, not a 500 from
    deep in http.client (or, for a method with spaces, another request line)."""
    text = command.replace("$'", "'").replace("\\r", "\r").replace("\\n", "\n")
    for kind in ("bash", "cmd"):
        answer = post(api, "/loadtester/", task(text, type=kind))
        assert answer.status == 400, (kind, answer.body)
        assert b"invalid method" in answer.body or b"invalid header" in answer.body


def test_an_unparsable_url_is_a_400_not_a_500(api: LoadTesterApi) -> None:
    answer = post(api, "/loadtester/", task("curl -s http://[::1:9080/", type="bash"))
    assert answer.status == 400 and b"Invalid IPv6 URL" in answer.body, answer.body
