"""The Bookinfo apps started as plain processes, with a stand-in for their
sidecars: one small forward proxy that every app's HTTP_PROXY points at. It
maps `http://SERVICE:9080/...` to the app chosen for that service, records
every request it forwards (so tests can see which headers were propagated),
and can answer for a service itself, to play a failing one."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from tests.ports import free_port

APPS = Path(__file__).resolve().parents[2] / "examples" / "bookinfo" / "apps"

# What Istio's deployments set for each version (bookinfo.yaml).
VARIANTS: dict[str, dict[str, str]] = {
    "productpage": {},
    "details": {},
    "ratings": {},
    "reviews-v1": {"ENABLE_RATINGS": "false"},
    "reviews-v2": {"ENABLE_RATINGS": "true", "STAR_COLOR": "black"},
    "reviews-v3": {"ENABLE_RATINGS": "true", "STAR_COLOR": "red"},
}


@dataclass
class Seen:
    service: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeMesh:
    """Service name -> app port, faults by service, and what went through."""

    routes: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def calls_to(self, service: str) -> list[Seen]:
        return [s for s in self.seen if s.service == service]


def _proxy_handler(mesh: FakeMesh) -> type[BaseHTTPRequestHandler]:
    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            service = url.hostname or ""
            mesh.seen.append(
                Seen(service, url.path, {k.lower(): v for k, v in self.headers.items()})
            )
            if service in mesh.faults:
                self._answer(mesh.faults[service], b"fault filter abort")
                return
            port = mesh.routes.get(service)
            if port is None:
                self._answer(503, b"no healthy upstream")
                return
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{url.path}", headers=dict(self.headers.items())
            )
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            try:
                with direct.open(request, timeout=15) as response:
                    self._answer(response.status, response.read())
            except urllib.error.HTTPError as e:
                self._answer(e.code, e.read())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Proxy


@contextmanager
def fake_mesh() -> Iterator[tuple[FakeMesh, str]]:
    mesh = FakeMesh()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(mesh))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield mesh, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class App:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_app(
    variant: str, proxy: str, log_dir: Path, extra_env: dict[str, str] | None = None
) -> App:
    script = variant.split("-")[0] + ".py"
    port = free_port()
    env = {
        **os.environ,
        **VARIANTS[variant],
        **(extra_env or {}),
        "PORT": str(port),
        "HTTP_PROXY": proxy,
        "POD_NAME": f"{variant}-0",
    }
    log = (log_dir / f"{variant}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(APPS / script)],
        env=env,
        cwd=APPS,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    app = App(variant, port, process)
    wait_http(f"{app.url}/health", process)
    return app


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{url}: the app exited with {process.returncode}"
        try:
            with direct.open(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer in {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
