"""Issue 20: off loopback, node agents join with a bootstrap token and then
use their own certificate; the REST API is HTTPS by default there.

A control plane bound to every interface (not loopback) serves HTTPS with a
certificate from its mesh CA; curl verifies it with the CA the control plane
wrote for its local clients. A bootstrap token may only ask for a node
certificate; an expired one authenticates no one. `join` pins the CA by its
public key's hash, gets a certificate for system:node:NAME, and that
certificate (presented by curl and by the client library) then allows what
the node's agent needs and nothing more.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pilotfish.agent.join import JoinError, NodeCredentials, csr_body, join, request_certificate
from pilotfish.api.errors import Forbidden, Invalid, Unauthorized
from pilotfish.api.kinds import registry
from pilotfish.ca.pin import ca_cert_hash
from pilotfish.cli.main import main as cli
from pilotfish.client import Client
from pilotfish.config import load_client_config
from pilotfish.controlplane.api_tls import ROOT_FILE, ApiTls
from pilotfish.controlplane.bootstrap_tokens import BOOTSTRAP_TOKENS_FILE, create_bootstrap_token
from pilotfish.controlplane.main import ControlPlane

SECRETS = "/api/v1/namespaces/{ns}/secrets"
WORKLOAD = registry().resolve("Workload")
VIRTUAL_SERVICE = registry().resolve("VirtualService")


def workload(name: str, node: str, namespace: str = "default", account: str = "web") -> Any:
    return {
        "apiVersion": "pilotfish.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "labels": {"app": name},
            "nodeName": node,
            "serviceAccountName": account,
            "command": ["true"],
            "ports": [{"name": "http", "port": 8080}],
            "env": [{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
        },
    }


def secret(namespace: str, name: str = "db") -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"password": "hunter2"},
    }


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """Off loopback (every interface), with the mesh CA on."""
    running = ControlPlane.open(
        tmp_path / "data", "0.0.0.0:0", tmp_path / "config.yaml", xds_listen="127.0.0.1:0"
    )
    running.server.start()
    admin = Client(running.server.url, token(running), ca_file=str(root_file(running)))
    admin.apply(workload("web", "host-a"))
    admin.apply(workload("other", "host-b", "elsewhere", "other"))
    for namespace in ("default", "elsewhere"):
        admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        admin.apply(secret(namespace))
    admin.apply(secret("default", "unreferenced"))  # no Workload names it
    yield running
    running.close()


def token(plane: ControlPlane) -> str:
    return (plane.data_dir / "token").read_text().strip()


def root_file(plane: ControlPlane) -> Path:
    return plane.data_dir / ROOT_FILE


def pin(plane: ControlPlane) -> str:
    assert plane.ca is not None
    return ca_cert_hash(plane.ca.authority.root)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20
    )


def create(data_dir: Path, *flags: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli(["token", "create", "--bootstrap", "--data-dir", str(data_dir), *flags]) == 0
    return out.getvalue().strip()


# -- bootstrap tokens --------------------------------------------------------------------


def test_bootstrap_tokens_are_kubeadms_shape_kept_hashed_listed_and_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = create(tmp_path, "--ttl", "2h", "--description", "for host-a")
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", made)
    token_id, secret_part = made.split(".")
    stored = tmp_path / BOOTSTRAP_TOKENS_FILE
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert secret_part not in stored.read_text()  # hashed
    assert cli(["token", "list", "--data-dir", str(tmp_path)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA", "GROUPS"]
    assert row.split()[:4] == [f"{token_id}.<secret>", "1h", row.split()[2], "authentication"]
    assert "for host-a" in row
    assert cli(["token", "delete", token_id, "--data-dir", str(tmp_path)]) == 0
    assert f'bootstrap token "{token_id}" deleted' in capsys.readouterr().out
    assert json.loads(stored.read_text()) == {}


def test_bad_bootstrap_flags_are_refused_and_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["token", "create", "--bootstrap", "--data-dir", str(tmp_path)]
    assert cli([*base, "--ttl", "soon"]) == 1
    assert "--ttl:" in capsys.readouterr().err
    assert cli([*base, "named"]) == 1
    assert "a bootstrap token has no name" in capsys.readouterr().err
    assert cli([*base, "--print-join-command"]) == 1  # no CA in this data dir
    assert "no CA certificate" in capsys.readouterr().err
    assert not (tmp_path / BOOTSTRAP_TOKENS_FILE).exists()


def test_a_stolen_bootstrap_token_cannot_read_secrets_and_an_expired_one_is_401(
    plane: ControlPlane,
) -> None:
    url, ca = plane.server.url, str(root_file(plane))
    stolen = create(plane.data_dir)
    thief = Client(url, stolen, ca_file=ca)
    with pytest.raises(Forbidden) as refused:
        thief.list(registry().resolve("Secret"), "default")
    user = f"system:bootstrap:{stolen.split('.')[0]}"
    assert refused.value.message == (
        f'secrets is forbidden: User "{user}" cannot list resource "secrets" in API group "" '
        'in the namespace "default"'
    )
    with pytest.raises(Forbidden):
        thief.create(workload("evil", "host-a"))
    expired = create_bootstrap_token(plane.data_dir, 1, now=time.time() - 10)
    with pytest.raises(Unauthorized):
        Client(url, expired, ca_file=ca).create_csr({"kind": "CertificateSigningRequest"})


# -- TLS by default off loopback ---------------------------------------------------------


def test_off_loopback_the_api_is_https_with_a_certificate_from_the_mesh_ca(
    plane: ControlPlane, tmp_path: Path
) -> None:
    assert plane.server.url.startswith("https://127.0.0.1:")
    path = plane.server.url + SECRETS.format(ns="default")
    done = curl(
        "--cacert", str(root_file(plane)), "-H", f"Authorization: Bearer {token(plane)}", path
    )
    assert done.returncode == 0 and '"kind":"SecretList"' in done.stdout, done.stderr
    assert curl(path).returncode == 60  # the system's roots do not know the mesh CA
    plain = curl(path.replace("https://", "http://"))
    assert plain.returncode != 0 or "SecretList" not in plain.stdout
    config = load_client_config(path=tmp_path / "config.yaml")
    assert config.certificate_authority == str(root_file(plane))


def test_plaintext_off_loopback_is_refused_unless_asked_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["controlplane", "--data-dir", str(tmp_path / "d"), "--listen", "0.0.0.0:0"]
    assert cli([*argv, "--xds-port", "-1"]) == 1
    assert "would be plaintext off loopback" in caplog.text
    assert "--api-plaintext-off-loopback" in caplog.text
    assert not (tmp_path / "d").exists()  # refused before anything was written
    plane = ControlPlane.open(
        tmp_path / "p",
        "0.0.0.0:0",
        tmp_path / "c.yaml",
        api_tls=ApiTls(plaintext_off_loopback=True),
    )
    try:
        assert plane.server.url.startswith("http://")
        assert "serves plaintext off loopback" in caplog.text  # said loudly
    finally:
        plane.close()


# -- joining -----------------------------------------------------------------------------


def test_join_refuses_a_ca_that_is_not_the_pinned_one(plane: ControlPlane, tmp_path: Path) -> None:
    bootstrap = create(plane.data_dir)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(JoinError, match="is not the one pinned"):
        join(tmp_path / "node", plane.server.url, bootstrap, wrong, "host-a")
    assert not (tmp_path / "node" / "pki" / "node-client.crt").exists()


def test_a_joined_node_proves_itself_with_its_certificate_and_may_do_its_own_work_only(
    plane: ControlPlane, tmp_path: Path
) -> None:
    bootstrap = create(plane.data_dir)
    credentials = join(tmp_path / "node", plane.server.url, bootstrap, pin(plane), "host-a")
    assert stat.S_IMODE(credentials.key_file.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(credentials.cert_file.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=system:node:host-a,O=system:nodes"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # a client, never a server
    node = credentials.client(plane.server.url)
    # What its agent does: read Workloads and the Secrets its own reference, register, mint tokens.
    names = {w["metadata"]["name"] for w in node.list(WORKLOAD, None)["items"]}
    assert names == {"web", "other"}
    assert node.get(registry().resolve("Secret"), "db", "default")["data"]
    registration = {"name": "web-0", "workload": "web", "address": "10.0.0.5", "ports": {"http": 1}}
    assert node.register_instance(registration)["name"] == "web-0"
    assert node.create_token("default", "web", 600)["status"]["token"]
    gateway = node.create_token("istio-system", "istio-ingressgateway-service-account", 600)
    assert gateway["status"]["token"]  # `pilotfish node --gateway` runs on any node
    # Nothing else: another node's namespace, Workload and identity; any config write.
    user = '"system:node:host-a"'
    with pytest.raises(Forbidden, match=user):
        node.get(registry().resolve("Secret"), "db", "elsewhere")  # another node's Workload's
    with pytest.raises(Forbidden) as refused:
        node.get(registry().resolve("Secret"), "unreferenced", "default")
    assert refused.value.message == (
        f'secrets "unreferenced" is forbidden: User {user} cannot get resource "secrets" '
        'in API group "" in the namespace "default"'
    )
    with pytest.raises(Forbidden, match=user):
        node.list(registry().resolve("Secret"), "default")  # by name only, as the Node authorizer
    with pytest.raises(Forbidden, match="no Workload of that name is scheduled to this node"):
        node.register_instance({**registration, "name": "x-0", "workload": "other"})
    with pytest.raises(Forbidden):
        node.create_token("elsewhere", "other", 600)
    with pytest.raises(Forbidden):
        node.apply(workload("evil", "host-a"))
    with pytest.raises(JoinError, match="may only request a certificate for itself"):
        request_certificate(node, "host-b", NodeCredentials(tmp_path / "theft"))


def test_curl_with_the_node_certificate_is_the_node_and_without_it_nobody(
    plane: ControlPlane, tmp_path: Path
) -> None:
    credentials = join(
        tmp_path / "n", plane.server.url, create(plane.data_dir), pin(plane), "host-a"
    )
    tls = ["--cacert", str(credentials.ca_file)]
    mine = ["--cert", str(credentials.cert_file), "--key", str(credentials.key_file)]
    path = plane.server.url + SECRETS.format(ns="elsewhere") + "/db"
    refused = json.loads(curl(*tls, *mine, path).stdout)
    assert refused["code"] == 403 and 'User "system:node:host-a"' in refused["message"]
    allowed = json.loads(curl(*tls, *mine, plane.server.url + SECRETS.format(ns="default") + "/db").stdout)
    assert allowed["kind"] == "Secret"


def test_a_restarted_agent_keeps_its_certificate_and_needs_no_token(
    plane: ControlPlane, tmp_path: Path
) -> None:
    first = join(tmp_path / "n", plane.server.url, create(plane.data_dir), pin(plane), "host-a")
    before = first.cert_file.read_bytes()
    again = join(tmp_path / "n", plane.server.url, "", pin(plane), "host-a")
    assert again.cert_file.read_bytes() == before
    # Renewal: the node asks with its own certificate, and gets a new one.
    request_certificate(again.client(plane.server.url), "host-a", again)
    assert again.cert_file.read_bytes() != before
    assert os.path.exists(again.key_file)


def test_the_cli_verifies_the_api_with_certificate_authority_as_kubectl(
    plane: ControlPlane,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PILOTFISH_CONFIG", str(tmp_path / "elsewhere.yaml"))  # no saved CA
    monkeypatch.setenv("PILOTFISH_TOKEN", token(plane))
    argv = ["get", "workloads", "--server", plane.server.url, "-o", "name"]
    assert cli(argv) == 1
    assert "cannot verify the control plane's certificate" in capsys.readouterr().err
    assert cli([*argv, "--certificate-authority", str(root_file(plane))]) == 0
    assert "workload.pilotfish.dev/web" in capsys.readouterr().out
    assert "PILOTFISH_CERTIFICATE_AUTHORITY" not in os.environ  # for that command only


def test_bad_csrs_are_invalid_and_sign_nothing(plane: ControlPlane) -> None:
    bootstrap = Client(plane.server.url, create(plane.data_dir), ca_file=str(root_file(plane)))
    key = ec.generate_private_key(ec.SECP256R1())
    good = csr_body("host-a", key)
    with pytest.raises(Invalid, match=re.escape("spec.signerName: Unsupported value")):
        bootstrap.create_csr({**good, "spec": {**good["spec"], "signerName": "example.com/x"}})
    with pytest.raises(Invalid, match=re.escape("spec.request: Invalid value: not a base64 PEM")):
        bootstrap.create_csr({**good, "spec": {**good["spec"], "request": "bm90IGEgY3Ny"}})
    with pytest.raises(Invalid, match=re.escape('spec.usages: Unsupported value: ["server auth"]')):
        bootstrap.create_csr({**good, "spec": {**good["spec"], "usages": ["server auth"]}})
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "system:admin")])
    pem = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    request = base64.b64encode(pem.public_bytes(serialization.Encoding.PEM)).decode()
    with pytest.raises(
        Invalid, match=re.escape('the subject must be "CN=system:node:NAME, O=system:nodes"')
    ):
        bootstrap.create_csr({**good, "spec": {**good["spec"], "request": request}})
    signed = bootstrap.create_csr(good)
    assert signed["status"]["conditions"][0]["type"] == "Approved"
    cert = x509.load_pem_x509_certificate(base64.b64decode(signed["status"]["certificate"]))
    assert cert.subject.rfc4514_string() == "CN=system:node:host-a,O=system:nodes"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # a client, never a server


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--token", "abcdef.0123456789abcdef"], "--join needs --ca-cert-hash sha256:HEX"),
        (["--ca-cert-hash", "md5:00"], 'invalid CA certificate hash "md5:00"'),
        (["--ca-cert-hash", "sha256:" + "0" * 64], "--join needs a bootstrap token"),
    ],
)
def test_bad_join_flags_are_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], error: str
) -> None:
    argv = ["node", "--join", "https://127.0.0.1:1", "--state-dir", str(tmp_path / "n"), *flags]
    assert cli(argv) == 1
    assert error in capsys.readouterr().err


def test_a_joining_agent_dials_xds_over_tls_on_each_control_planes_host() -> None:
    from pilotfish.cli.node import _xds_of

    servers = "https://10.0.0.11:15080, https://[fd00::12]:15080"
    assert _xds_of(servers, 15012) == "10.0.0.11:15012,[fd00::12]:15012"


def test_a_joined_agent_stops_watching_what_it_may_not_watch(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """Every namespace's Secrets are not a node's to watch: the agent's watch
    thread ends at the 403 (its resync reads its own namespaces), instead of
    asking again every second."""
    from pilotfish.agent.bootstrap import XdsServer
    from pilotfish.agent.node import NodeAgent

    credentials = join(
        tmp_path / "n", plane.server.url, create(plane.data_dir), pin(plane), "host-a"
    )
    agent = NodeAgent(
        credentials.client(plane.server.url), "host-a", tmp_path / "s", XdsServer("x", 1)
    )
    stop = threading.Event()
    watcher = threading.Thread(target=agent._watch, args=("Secret", stop), daemon=True)
    watcher.start()
    watcher.join(5)
    alive = watcher.is_alive()
    stop.set()
    assert not alive


def test_a_joined_agent_reads_the_secrets_its_workloads_reference_and_no_others(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """The agent gets each referenced Secret by name (a node may not list
    them), so its Workload resolves; a reference to a missing one is left
    out, and resolving names it, as before."""
    from pilotfish.agent.bootstrap import XdsServer
    from pilotfish.agent.node import NodeAgent
    from pilotfish.agent.spec import SpecError, resolve

    credentials = join(
        tmp_path / "n", plane.server.url, create(plane.data_dir), pin(plane), "host-a"
    )
    agent = NodeAgent(
        credentials.client(plane.server.url), "host-a", tmp_path / "s", XdsServer("x", 1)
    )
    web = workload("web", "host-a")
    configs = agent._configs([web])
    assert set(configs["default"]) == {("Secret", "db")}
    assert resolve(web["spec"], {}, configs["default"]).env["DB"] == "hunter2"
    gone = {**web, "spec": {**web["spec"], "envFrom": [{"secretRef": {"name": "missing"}}]}}
    admin = Client(plane.server.url, token(plane), ca_file=str(root_file(plane)))
    admin.apply(gone)
    configs = agent._configs([gone])
    with pytest.raises(SpecError, match='Secret "missing" not found'):
        resolve(gone["spec"], {}, configs["default"])
