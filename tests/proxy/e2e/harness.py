"""End-to-end harness for the sidecar proxy: free ports, an Envoy-style
bootstrap builder, the proxy process, small real HTTP/1.1 backends and curl.

Everything here talks to the proxy the way a user does: a bootstrap file,
real sockets, curl, the admin port.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[3]
PILOTFISH = REPO / ".venv" / "bin" / "pilotfish"
HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
NODE_METADATA = {
    "WORKLOAD_NAME": "productpage-v1",
    "NAMESPACE": "default",
    "CLUSTER_ID": "Kubernetes",
    "LABELS": {"app": "productpage", "version": "v1"},
}


def closed_port() -> int:
    """A port nothing listens on (bound then released)."""
    return free_port()


# --------------------------------------------------------------------------
# Bootstrap builder: plain dicts, written as YAML.
# --------------------------------------------------------------------------


def router_filter() -> dict[str, Any]:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}


def fault_filter() -> dict[str, Any]:
    """The fault filter with no policy of its own: routes bring theirs."""
    return {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT_TYPE}}


def fault_per_route(
    abort_status: int | None = None,
    abort_percent: int = 100,
    delay: str | None = None,
    delay_percent: int = 100,
) -> dict[str, Any]:
    """`typed_per_filter_config` for a route with the fault filter's policy."""
    config: dict[str, Any] = {"@type": FAULT_TYPE}
    if abort_status is not None:
        config["abort"] = {
            "http_status": abort_status,
            "percentage": {"numerator": abort_percent, "denominator": "HUNDRED"},
        }
    if delay is not None:
        config["delay"] = {
            "fixed_delay": delay,
            "percentage": {"numerator": delay_percent, "denominator": "HUNDRED"},
        }
    return {"envoy.filters.http.fault": config}


def vhost(name: str, domains: list[str], routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "domains": domains, "routes": routes}


def route(
    cluster: str | None = None,
    *,
    prefix: str | None = None,
    path: str | None = None,
    regex: str | None = None,
    headers: list[dict[str, Any]] | None = None,
    action: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One route: a match (prefix by default "/") and a `route` action to
    `cluster`, or any other action given whole (`redirect=...`,
    `direct_response=...`). `action` merges into the route action."""
    match: dict[str, Any] = {}
    if path is not None:
        match["path"] = path
    elif regex is not None:
        match["safe_regex"] = {"regex": regex}
    else:
        match["prefix"] = prefix if prefix is not None else "/"
    if headers:
        match["headers"] = headers
    result: dict[str, Any] = {"match": match}
    if cluster is not None or action:
        result["route"] = {**({"cluster": cluster} if cluster else {}), **(action or {})}
    result.update(extra)
    return result


def listener(
    name: str,
    port: int,
    virtual_hosts: list[dict[str, Any]],
    *,
    http_filters: list[dict[str, Any]] | None = None,
    outbound: bool = False,
    inbound: bool = False,
    access_log: str | None = None,
    **hcm_extra: Any,
) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "route_config": {"name": name, "virtual_hosts": virtual_hosts},
        "http_filters": [*(http_filters or []), router_filter()],
    }
    if access_log is not None:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {"@type": FILE_LOG_TYPE, "path": access_log},
            }
        ]
    hcm.update(hcm_extra)
    result: dict[str, Any] = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    if outbound:
        result["traffic_direction"] = "OUTBOUND"
    if inbound:
        result["traffic_direction"] = "INBOUND"
    return result


def static_cluster(
    name: str,
    ports: Iterable[int],
    *,
    lb_policy: str = "ROUND_ROBIN",
    connect_timeout: str = "1s",
    **extra: Any,
) -> dict[str, Any]:
    """A STATIC cluster with one endpoint per port on 127.0.0.1; `extra` adds
    circuit_breakers, outlier_detection and the like."""
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports
    ]
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": lb_policy,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        **extra,
    }


def bootstrap(
    listeners: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
    admin_port: int,
    node_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "node": {
            "id": "sidecar~127.0.0.1~productpage-v1-abc.default~default.svc.cluster.local",
            "cluster": "productpage.default",
            "metadata": node_metadata if node_metadata is not None else NODE_METADATA,
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def write_bootstrap(directory: Path, config: dict[str, Any], name: str = "bootstrap.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# The proxy process.
# --------------------------------------------------------------------------


@dataclass
class Proxy:
    bootstrap_path: Path
    admin_port: int
    stderr_path: Path
    process: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()  # more of `pilotfish proxy`'s options
    env: dict[str, str] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [str(PILOTFISH), "proxy", "--bootstrap", str(self.bootstrap_path), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr_path.open("wb"),
            cwd=REPO,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"proxy exited {self.process.returncode} at start:\n{self.stderr()}"
                )
            try:
                if self.admin_get("/ready", timeout=0.5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"proxy not ready after {timeout}s:\n{self.stderr()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def admin_get(self, path: str, timeout: float = 3.0) -> tuple[int, str]:
        return _http(f"http://127.0.0.1:{self.admin_port}{path}", "GET", timeout)

    def admin_post(self, path: str, timeout: float = 3.0) -> tuple[int, str]:
        return _http(f"http://127.0.0.1:{self.admin_port}{path}", "POST", timeout)

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    def stop(self, timeout: float = 8.0) -> int:
        """SIGTERM; the exit code (None would mean it hung: the test fails)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"proxy did not exit within {timeout}s of SIGTERM:\n{self.stderr()}"
            ) from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(url: str, method: str, timeout: float) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


# --------------------------------------------------------------------------
# Backends.
# --------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body_len: int


@dataclass
class Backend:
    """A small HTTP/1.1 server in a thread of the test process.

    Answers with its name in `x-backend` and in the body. Behaviour by
    attribute (`fail_first`, `always_status`, `delay`) or per request by
    query (`?status=503`, `?delay=0.5`, `?size=N` on /big). Paths: /echo
    (request as JSON), /upload (reads the body, answers its length and
    sha256), /big (a large streamed body, chunked), /chunked (a chunked
    answer), /count; `Upgrade: websocket` gets a 101 and a byte echo."""

    name: str
    port: int = 0
    fail_first: int = 0
    fail_status: int = 503
    always_status: int | None = None
    delay: float = 0.0
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.connections = 0

    def start(self) -> Backend:
        backend = self

        class Handler(_BackendHandler):
            owner = backend

        server = _Server(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        threading.Thread(target=server.serve_forever, daemon=True, name=self.name).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # the default backlog of 5 drops concurrent connects
    daemon_threads = True


class _BackendHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: Backend

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner.connections += 1

    def _read_body(self) -> tuple[int, str]:
        """Reads the whole body (Content-Length or chunked) without keeping it."""
        digest, size = hashlib.sha256(), 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline()
                chunk = int(line.split(b";")[0].strip(), 16)
                if chunk == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = chunk
                while remaining:
                    data = self.rfile.read(min(remaining, 1 << 16))
                    if not data:
                        raise ConnectionError("body cut short")
                    digest.update(data)
                    remaining -= len(data)
                    size += len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, 1 << 16))
                if not data:
                    raise ConnectionError("body cut short")
                digest.update(data)
                remaining -= len(data)
                size += len(data)
        return size, digest.hexdigest()

    def _answer(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("x-backend", self.owner.name)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        owner = self.owner
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._upgrade()
            return
        size, sha = self._read_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        with owner._lock:
            owner.requests.append(Seen(self.command, self.path, headers, size))
            number = len(owner.requests)
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        delay = float(query.get("delay", owner.delay))
        if delay:
            time.sleep(delay)
        if owner.always_status is not None:
            self._answer(owner.always_status, f"{owner.name} failing\n".encode())
            return
        if number <= owner.fail_first:
            self._answer(owner.fail_status, f"{owner.name} failing\n".encode())
            return
        if "status" in query:
            self._answer(int(query["status"]), f"{owner.name} status\n".encode())
            return
        if url.path.startswith("/echo"):
            body = {
                "backend": owner.name,
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "body_len": size,
            }
            self._answer(200, json.dumps(body).encode(), "application/json")
        elif url.path == "/upload":
            self._answer(200, json.dumps({"size": size, "sha256": sha}).encode())
        elif url.path == "/count":
            self._answer(200, str(owner.count).encode())
        elif url.path in ("/big", "/chunked"):
            self._stream(int(query.get("size", 1 << 20)))
        else:
            self._answer(200, f"{owner.name}\n".encode())

    def _stream(self, size: int) -> None:
        """A chunked answer of `size` bytes of a known pattern."""
        self.send_response(200)
        self.send_header("x-backend", self.owner.name)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        block = pattern(1 << 16)
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        self.wfile.write(b"0\r\n\r\n")

    def _upgrade(self) -> None:
        with self.owner._lock:
            self.owner.requests.append(
                Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, 0)
            )
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("x-backend", self.owner.name)
        self.end_headers()
        self.wfile.flush()
        self.connection.settimeout(5)
        with contextlib.suppress(OSError):
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(b"echo:" + data)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


def pattern(size: int) -> bytes:
    unit = b"0123456789abcdef"
    return (unit * (size // len(unit) + 1))[:size]


# --------------------------------------------------------------------------
# curl.
# --------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names, last value wins
    body: bytes
    stderr: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def flags(self) -> str | None:
        return self.headers.get("x-pilotfish-flags")

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def parse_head(block: bytes) -> tuple[int, dict[str, str]]:
    lines = block.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


def curl(
    url: str,
    *args: str,
    proxy: int | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    data: bytes | None = None,
) -> Response:
    """One request with curl; `proxy` is a port used as HTTP_PROXY (`-x`)."""
    command = ["curl", "-s", "-S", "-o", "-", "-D", "-", "--max-time", str(timeout)]
    if proxy is not None:
        command += ["-x", f"http://127.0.0.1:{proxy}"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    if data is not None:
        command += ["--data-binary", "@-"]
    command += [*args, url]
    done = subprocess.run(
        command, input=data, capture_output=True, timeout=timeout + 5, env=env_without_proxy()
    )
    out = done.stdout
    if done.returncode != 0 and not out:
        raise AssertionError(f"curl failed ({done.returncode}): {done.stderr.decode()}")
    while True:
        head, sep, rest = out.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"no response head from curl: {out[:300]!r} {done.stderr!r}")
        status, parsed = parse_head(head)
        out = rest
        if not 100 <= status < 200 or status == 101:
            return Response(status, parsed, out, done.stderr.decode(errors="replace"))


def curl_many(
    urls: list[str],
    *args: str,
    fields: tuple[str, ...] = ("x-backend", "x-pilotfish-flags"),
    parallel: int = 32,
    timeout: float = 20.0,
) -> list[tuple[int, dict[str, str]]]:
    """Many requests from one curl process (`--parallel`): status and the
    given response headers of each (empty string when absent); a field
    starting with "%" is a curl write-out variable, e.g. "%{time_total}"."""
    template = (
        "%{http_code}"
        + "".join(f"\t{f}" if f.startswith("%") else f"\t%header{{{f}}}" for f in fields)
        + "\\n"
    )
    command = [
        "curl",
        "-s",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        str(parallel),
        "--max-time",
        str(timeout),
        "-w",
        template,
    ]
    for url in urls:
        command += [url, "-o", "/dev/null"]
    command += list(args)
    done = subprocess.run(
        command, capture_output=True, timeout=timeout + 30, env=env_without_proxy()
    )
    results = []
    for line in done.stdout.decode().splitlines():
        parts = line.split("\t")
        results.append((int(parts[0]), dict(zip(fields, parts[1:], strict=False))))
    assert len(results) == len(urls), (len(results), done.stderr.decode()[-500:])
    return results


def concurrently(n: int, fn: Any, workers: int = 16) -> list[Any]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda _: fn(), range(n)))


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class RawServer:
    """A TCP server in a thread of the test process, for backends that must
    say exactly which bytes they send: `converse(conn)` runs for each
    connection, in a thread of its own; `close()` stops accepting."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._converse, args=(conn,), daemon=True).start()

    def _converse(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # a proxy may reset a connection it drops
            self.converse(conn)

    def converse(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


def status_of(raw: bytes) -> int:
    """The status of the first response in `raw`."""
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return parse_head(raw.partition(b"\r\n\r\n")[0])[0]


def raw_exchange(
    port: int, data: bytes, timeout: float = 5.0, read_until_close: bool = True
) -> bytes:
    """Sends raw bytes to the proxy and returns what comes back until the
    proxy closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError, ConnectionError):
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close and b"\r\n\r\n" in b"".join(chunks):
                    break
        return b"".join(chunks)


def admin_clusters_health(text: str, cluster: str) -> dict[str, str]:
    """`host:port -> health_flags` from admin /clusters (Envoy's text form)."""
    result = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
            result[parts[1]] = parts[3]
    return result


def env_without_proxy() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(var, None)
    return env


@contextlib.contextmanager
def backends(*names: str, **attrs: Any) -> Iterator[list[Backend]]:
    started = [Backend(n, **attrs).start() for n in names]
    try:
        yield started
    finally:
        for b in started:
            b.stop()


def access_log_lines(path: Path, at_least: int, timeout: float = 4.0) -> list[dict[str, Any]]:
    """The JSON lines of an access log file, once it has `at_least` of them
    (the file logger flushes about every second)."""

    def read() -> list[dict[str, Any]]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    wait_for(lambda: len(read()) >= at_least, timeout=timeout)
    return read()


def timed_curl(url: str, *args: str, **kwargs: Any) -> tuple[Response, float]:
    start = time.monotonic()
    response = curl(url, *args, **kwargs)
    return response, time.monotonic() - start
