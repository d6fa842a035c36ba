"""Issue 20, across hosts: a node agent joins with a bootstrap token and the
CA's hash, with no admin token anywhere on its host, and runs a workload
whose sidecar gets its config over xDS TLS (15012-style); the REST API is
HTTPS off loopback by default. The joined node reads the Secret its
Workload references and no other (403), and its sidecar's spans reach the
control plane's /v1/traces with the workload's service account token. From
another host, a stolen bootstrap token cannot list Secrets (403), an expired
one is refused (401), and no token reads nothing (401).

The control plane runs in the root namespace on the bridge's address (what
the hosts reach); the join command is the one `pilotfish token create
--bootstrap --print-join-command` prints there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from tests.agent.mesh_harness import REPO, free_port, isolated_env, run_cli, stop_process, wait_for
from tests.netns.netns import Network, netns  # noqa: F401  (the fixture)

from pilotfish.agent.node import stop_leftovers
from pilotfish.controlplane.bootstrap_tokens import create_bootstrap_token

APP = """
import http.server, os

class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Echo).serve_forever()
"""


def workload(app: Path) -> str:
    return json.dumps(
        {
            "apiVersion": "pilotfish.dev/v1alpha1",
            "kind": "Workload",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {
                "nodeName": "host-a",
                "replicas": 1,
                "labels": {"app": "echo"},
                "serviceAccountName": "echo",
                "command": ["python3", str(app)],
                "env": [
                    {
                        "name": "DB_PASSWORD",
                        "valueFrom": {"secretKeyRef": {"name": "echo-db", "key": "password"}},
                    }
                ],
                "ports": [{"name": "http", "port": 80}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                "terminationGracePeriodSeconds": 2,
            },
        }
    )


def test_a_node_joins_with_a_bootstrap_token_and_a_thief_gets_nothing(
    netns: Callable[[int], Network],  # noqa: F811
    tmp_path: Path,
) -> None:
    net = netns(2)
    a, b = net.hosts
    admin_env = isolated_env(tmp_path)
    data = tmp_path / "data"
    api, xds, xds_tls = free_port(), free_port(), free_port()
    argv = [sys.executable, "-m", "pilotfish", "controlplane", "--data-dir", str(data)]
    argv += ["--listen", f"{net.gateway}:{api}", "--xds-port", str(xds)]
    argv += ["--xds-tls-port", str(xds_tls)]
    with (tmp_path / "controlplane.log").open("ab") as log:
        plane = subprocess.Popen(argv, env=admin_env, stdout=log, stderr=subprocess.STDOUT)
    agent = None
    try:
        wait_for(lambda: (tmp_path / "config.yaml").exists(), 30, "no control plane")
        server = f"https://{net.gateway}:{api}"
        admin_token = (data / "token").read_text().strip()
        log = tmp_path / "controlplane.log"  # printed once serving, after config.yaml
        wait_for(lambda: "CA certificate hash: sha256:" in log.read_text(), 30, "no CA hash")

        # The admin's host: a token and the join command, as kubeadm prints it.
        printed = run_cli(
            admin_env, "token", "create", "--bootstrap", "--print-join-command",
            "--data-dir", str(data),
        ).split()  # fmt: skip
        assert printed[:2] == ["pilotfish", "node"] and server in printed
        token = printed[printed.index("--token") + 1]
        pin = printed[printed.index("--ca-cert-hash") + 1]
        assert pin in log.read_text()

        # Host a: no admin token, no client config; only the join command.
        node_env = isolated_env(tmp_path / "host-a")
        state = tmp_path / "node-a"
        join = [sys.executable, "-m", "pilotfish", "node", "--node-name", "host-a"]
        join += ["--join", server, "--token", token, "--ca-cert-hash", pin]
        join += ["--xds", f"{net.gateway}:{xds_tls}", "--address", a.address]
        join += ["--state-dir", str(state)]
        with (tmp_path / "node-a.log").open("ab") as log:
            agent = a.popen(join, env=node_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        app = tmp_path / "echo.py"
        app.write_text(textwrap.dedent(APP))
        for name in ("echo-db", "unreferenced"):
            secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                      "stringData": {"password": "hunter2"}}  # fmt: skip
            (tmp_path / f"{name}.json").write_text(json.dumps(secret))
            run_cli(admin_env, "apply", "-f", str(tmp_path / f"{name}.json"))
        (tmp_path / "echo.json").write_text(workload(app))
        run_cli(admin_env, "apply", "-f", str(tmp_path / "echo.json"))

        def ready() -> bool:
            out = run_cli(admin_env, "get", "workloads", "echo", "-o", "json", check=False)
            return (
                bool(out.strip())
                and (json.loads(out).get("status") or {}).get("readyReplicas") == 1
            )

        wait_for(ready, 90, "echo never ready:\n" + _tail(tmp_path / "node-a.log"))
        assert "joined as system:node:host-a" in (tmp_path / "node-a.log").read_text()

        # Its sidecar has its config from xDS over TLS: ready, and listed by the control plane.
        (record,) = (state / "instances" / "default").glob("echo-*/instance.json")
        admin_port = json.loads(record.read_text())["ports"]["admin"]
        done = a.run(["curl", "-sS", "-o", "/dev/stdout", "-w", " %{http_code}",
                      f"http://127.0.0.1:{admin_port}/ready"])  # fmt: skip
        assert done.stdout.endswith(" 200"), done.stdout + done.stderr
        wait_for(lambda: "echo-" in run_cli(admin_env, "proxy-status"), 30, "no sidecar connected")

        # The node reads the Secret its Workload references (the app started
        # with it), and no other; it may not list them.
        ca = str(state / "pki" / "ca.crt")
        secrets = f"{server}/api/v1/namespaces/default/secrets"
        pki = state / "pki"
        mine = ["--cacert", ca, "--cert", str(pki / "node-client.crt")]
        mine += ["--key", str(pki / "node-client.key")]
        for url, code in [(f"{secrets}/echo-db", 200), (f"{secrets}/unreferenced", 403),
                          (secrets, 403)]:  # fmt: skip
            done = a.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *mine, url])
            assert done.stdout == str(code), (url, done.stdout, done.stderr)

        # A sampled call into its sidecar: the span reaches the control plane
        # from host a with the workload's token (the API is HTTPS there).
        inbound = json.loads(record.read_text())["ports"]["inbound"]["http"]
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        traceparent = f"traceparent: 00-{trace_id}-00f067aa0ba902b7-01"
        done = b.run(["curl", "-sS", "-H", traceparent, f"http://{a.address}:{inbound}/"])
        assert done.stdout == "ok", done.stdout + done.stderr

        def traced() -> bool:
            done = subprocess.run(
                ["curl", "-sS", "--cacert", str(data / "api-ca.crt"), "-H",
                 f"Authorization: Bearer {admin_token}", f"{server}/api/traces/{trace_id}"],
                capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            return '"spans"' in done.stdout and "echo.default" in done.stdout

        wait_for(traced, 20, "no span from host a's sidecar")

        # Nothing on host a holds the admin token.
        for path in [*state.rglob("*"), *(tmp_path / "host-a").rglob("*")]:
            if path.is_file():
                assert admin_token not in path.read_text(errors="replace"), path

        # Host b: a stolen bootstrap token reads no Secret; expired and absent ones are 401.

        def status(*headers: str) -> tuple[int, str]:
            args = ["curl", "-sS", "--cacert", ca, *headers, secrets]
            done = b.run(args)
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            return int(answer.get("code", 200)), str(answer.get("message", ""))

        code, message = status("-H", f"Authorization: Bearer {token}")
        assert code == 403 and f'User "system:bootstrap:{token.split(".")[0]}"' in message
        expired = create_bootstrap_token(data, 1, now=time.time() - 10)
        assert status("-H", f"Authorization: Bearer {expired}")[0] == 401
        assert status()[0] == 401
    finally:
        if agent is not None:
            stop_process(agent)
        stop_leftovers(tmp_path / "node-a")
        stop_process(plane)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""
