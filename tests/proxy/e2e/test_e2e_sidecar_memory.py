"""A sidecar loads only what its config uses. `pilotfish proxy` with a static
bootstrap (routing, the fault filter, an upstream; no ADS server, no TLS, no
JWT rule, no --register) serves without gRPC, cryptography, PyJWT, the client
library, the API's kinds or the CLI's other commands, nor HTTP/2 to its
upstreams, OpenSSL's digests (hashlib), the idna codec, the build checks,
the span exporter, shutil, the TCP relay (with CONNECT), PyYAML (the bootstrap
is JSON, as the node agent writes it) or pathlib: each of them costs its memory on every host of
the mesh (docs/benchmarks.md, "Idle memory"; the memory itself is measured
there, by bench/proxy/idle.py and run.py, not asserted here).

The modules are read in a process that runs the sidecar as the `pilotfish`
command does (pilotfish.cli.run) and, once the proxy is ready and has
forwarded a request, writes its sys.modules out and stops itself with
SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Backend,
    bootstrap,
    fault_filter,
    free_port,
    listener,
    route,
    static_cluster,
    vhost,
)

# Imported where a config asks for them (ADS, SDS, ext_authz over gRPC, JWT,
# --register), never by a plain start.
LAZY = (
    "grpc",
    "cryptography",
    "jwt",
    "pilotfish.client",
    "pilotfish.api",
    "pilotfish.agent",
    "pilotfish.ca.workload",
    "pilotfish.cli.main",
    "pilotfish.controlplane",
    "pilotfish.translate",
    "pilotfish.proxy.sds",
    "pilotfish.proxy.xds_client",
    "pilotfish.proxy.ads",
    "envoy.service.discovery",
    "pilotfish.proxy.register",
    # with the first HTTP/2 upstream connection
    "h2",
    "hpack",
    "hyperframe",
    "pilotfish.proxy.upstream.h2_core",
    # hashlib loads _hashlib, which walks OpenSSL's digests (BLAKE2 is _blake2's)
    "hashlib",
    "_hashlib",
    # getaddrinfo of a str host: listeners and the admin bind their own sockets
    "encodings.idna",
    "stringprep",
    # /server_info's "compiled" (and its build checks: ast, hashlib)
    "pilotfish.proxy.compiled",
    # with the first config that has them (xds_types.ON_DEMAND)
    "pilotfish.proxy.filters.rbac",
    "pilotfish.proxy.filters.ext_authz",
    "pilotfish.proxy.filters.jwt_authn",
    "pilotfish.proxy.tcp.rbac",
    "envoy.config.rbac",
    "envoy.extensions.filters.http.rbac",
    "envoy.extensions.filters.http.ext_authz",
    "envoy.extensions.filters.http.jwt_authn",
    "envoy.extensions.filters.network.rbac",
    # with the first sampled span (tracing/tracer.py)
    "pilotfish.proxy.tracing.exporter",
    "pilotfish.proxy.tracing.spans",
    "opentelemetry",
    # argparse's width from the terminal, where there is none (cli/sidecar.py)
    "shutil",
    "lzma",
    "bz2",
    # with the first TCP listener, sniffed listener or CONNECT (process.py, connect.py)
    "pilotfish.proxy.tcp.relay",
    "pilotfish.proxy.connect_relay",
    "pilotfish.proxy.detecting",
    # a YAML bootstrap's (bootstrap.py reads JSON as JSON)
    "yaml",
    # pathlib (with urllib.parse and ipaddress) for --ca-token-file; urllib for a tracing provider
    "pathlib",
    "urllib",
    "ipaddress",
)
# As a sidecar is started: pytest exports COLUMNS, which a supervisor does not,
# and with it set, argparse asks shutil for the width.
SIDECAR_ENV = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}

# Waits for /ready and one proxied answer over plain sockets (urllib would
# load http.client and email into the process being looked at).
WATCH = """
import os, signal, socket, sys, threading, time

def answer(port, path):
    try:
        with socket.socket() as s:  # not create_connection: its getaddrinfo loads idna
            s.settimeout(1)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET " + path + b" HTTP/1.1\\r\\nhost: app\\r\\nconnection: close\\r\\n\\r\\n")
            return s.recv(64)
    except OSError:
        return b""

def watch(admin, port, out):
    while not answer(admin, b"/ready").startswith(b"HTTP/1.1 200"):
        time.sleep(0.05)
    status = answer(port, b"/echo")[:12].decode()
    if info == "1":
        status += answer(admin, b"/server_info")[:12].decode()
    with open(out, "w") as f:
        f.write(status + "\\n" + "\\n".join(sorted(sys.modules)))
    os.kill(os.getpid(), signal.SIGTERM)

admin, port, out, path, info = sys.argv[1:6]
threading.Thread(target=watch, args=(int(admin), int(port), out), daemon=True).start()
sys.argv = ["pilotfish", "proxy", "--bootstrap", path]
from pilotfish.cli import run
sys.exit(run())
"""


@pytest.fixture
def app() -> Backend:
    backend = Backend("app").start()
    yield backend  # type: ignore[misc]
    backend.stop()


def plain_config(port: int, app: Backend) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Listeners and clusters: routing and the fault filter, to one static cluster."""
    routes = [route("app", prefix="/")]
    inbound = listener(
        "inbound", port, [vhost("app", ["*"], routes)], http_filters=[fault_filter()]
    )
    return [inbound], [static_cluster("app", [app.port])]


def loaded_by_a_plain_sidecar(tmp_path: Path, app: Backend, server_info: bool = False) -> list[str]:
    admin, port = free_port(), free_port()
    path = tmp_path / "bootstrap.json"  # JSON, as the node agent writes it
    path.write_text(json.dumps(bootstrap(*plain_config(port, app), admin)), encoding="utf-8")
    out = tmp_path / "modules.txt"
    argv = [
        sys.executable,
        "-c",
        textwrap.dedent(WATCH),
        str(admin),
        str(port),
        str(out),
        str(path),
        "1" if server_info else "0",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=SIDECAR_ENV)
    assert done.returncode == 0, done.stderr
    status, *modules = out.read_text().splitlines()
    assert status == "HTTP/1.1 200" * (2 if server_info else 1), status
    return modules


def test_a_plain_sidecar_loads_none_of_what_its_config_does_not_use(
    tmp_path: Path, app: Backend
) -> None:
    modules = loaded_by_a_plain_sidecar(tmp_path, app)
    assert "pilotfish.proxy.process" in modules
    assert "pilotfish.proxy.filters.fault" in modules
    loaded = sorted(m for m in modules for lazy in LAZY if m == lazy or m.startswith(lazy + "."))
    assert not loaded, loaded


def test_server_info_loads_the_build_record_not_its_checks(tmp_path: Path, app: Backend) -> None:
    """/server_info (which bench/proxy/run.py asks before it reads RSS) says
    which modules run compiled by asking the import system: it loads neither
    pathlib nor the build checks' hashlib into the sidecar."""
    modules = loaded_by_a_plain_sidecar(tmp_path, app, server_info=True)
    assert "pilotfish.proxy.compiled" in modules
    loaded = sorted(m for m in ("pathlib", "hashlib", "_hashlib", "urllib", "ipaddress") if m in modules)
    assert not loaded, loaded
