"""The REST API over TLS with the user's own certificate (--tls-cert-file,
--tls-private-key-file): curl verifies it against the CA that signed it and
refuses it without; plain HTTP gets no answer; the client library trusts it
through SSL_CERT_FILE; bad flags or files stop the start with a clear error."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.etcd_server import Certs, make_certs

from pilotfish.cli.main import main as cli
from pilotfish.client import Client
from pilotfish.controlplane.api_tls import ApiTls
from pilotfish.controlplane.main import ControlPlane

VIRTUAL_SERVICES = "/apis/networking.istio.io/v1/namespaces/default/virtualservices"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pki"))  # server: IP:127.0.0.1, DNS:localhost


@pytest.fixture
def plane(tmp_path: Path, certs: Certs) -> Iterator[ControlPlane]:
    running = ControlPlane.open(
        tmp_path / "data",
        "127.0.0.1:0",
        tmp_path / "config.yaml",
        api_tls=ApiTls(certs.server_cert, certs.server_key),
    )
    running.server.start()
    yield running
    running.close()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20
    )


def test_curl_verifies_the_certificate_and_reads_with_the_token(
    plane: ControlPlane, certs: Certs
) -> None:
    assert plane.server.url.startswith("https://127.0.0.1:")
    token = (plane.data_dir / "token").read_text().strip()
    done = curl(
        "--cacert", str(certs.ca), "-H", f"Authorization: Bearer {token}",
        plane.server.url + VIRTUAL_SERVICES,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"kind":"VirtualServiceList"' in done.stdout.replace(" ", "")
    refused = curl(plane.server.url + VIRTUAL_SERVICES)  # the system's CAs: not this one
    assert refused.returncode == 60, refused.stderr  # curl: peer certificate cannot be verified
    plain = curl(plane.server.url.replace("https://", "http://") + VIRTUAL_SERVICES)
    assert plain.returncode != 0 and "VirtualServiceList" not in plain.stdout


def test_the_client_trusts_the_ca_named_by_ssl_cert_file(
    plane: ControlPlane, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = (plane.data_dir / "token").read_text().strip()
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    client = Client(plane.server.url, token, timeout=10)
    client.register_instance({"name": "web-0", "address": "10.0.0.5", "ports": {"http": 8080}})
    assert [i["name"] for i in client.instances()] == ["web-0"]


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--tls-cert-file", "c.pem"], "--tls-cert-file needs --tls-private-key-file too"),
        (["--tls-private-key-file", "k.pem"], "--tls-private-key-file needs --tls-cert-file too"),
        (["--tls-cert-file", "nope.pem", "--tls-private-key-file", "k.pem"], "no such file"),
        (["--tls-cert-file", "{ca}", "--tls-private-key-file", "{client_key}"], "matching key"),
    ],
)
def test_bad_tls_flags_stop_the_start_with_a_clear_error(
    tmp_path: Path,
    certs: Certs,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    flags: list[str],
    error: str,
) -> None:
    files = {"ca": certs.ca, "client_key": certs.client_key}
    argv = [flag.format(**files) for flag in flags]
    data = tmp_path / "data"
    code = cli(["controlplane", "--data-dir", str(data), "--listen", "127.0.0.1:0", *argv])
    assert code == 1
    assert error in capsys.readouterr().err + caplog.text  # printed, or logged at start-up
    assert not (data / "token").exists(), "nothing was started or written"
