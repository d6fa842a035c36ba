"""A static bootstrap with an mTLS listener, no control plane: the TLS
contexts name istio-agent's file-backed SDS secrets (`file-cert:`,
`file-root:`), and curl is the peer. A client certificate from the trusted
CA gets through; none, or plaintext, gets no HTTP answer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Backend,
    env_without_proxy,
    free_port,
    listener,
    route,
    static_cluster,
    vhost,
)

from pilotfish.ca.cacerts import self_signed
from pilotfish.ca.identity import SpiffeId
from pilotfish.ca.workload import csr_for, key_pem, new_key, pem

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def issue(ca: Any, directory: Path, account: str) -> tuple[Path, Path]:
    key = new_key()
    identity = f"spiffe://cluster.local/ns/default/sa/{account}"
    chain = ca.sign(csr_for(key, identity), SpiffeId.parse(identity), requested_seconds=3600)
    cert, key_file = directory / f"{account}.pem", directory / f"{account}.key"
    cert.write_text("".join(chain))
    key_file.write_bytes(key_pem(key))
    return cert, key_file


def sds(name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}


def curl_status(*args: str) -> tuple[int, bytes]:
    done = subprocess.run(
        ["curl", "-s", "-S", "--max-time", "5", "-o", "-", "-w", "%{http_code}", *args],
        capture_output=True,
        timeout=15,
        env=env_without_proxy(),
    )
    return done.returncode, done.stdout


def test_an_mtls_listener_from_files_wants_a_client_certificate(
    tmp_path: Path, start_proxy: Any, make_backend: Any
) -> None:
    ca = self_signed(tmp_path / "ca", "cluster.local")
    root = tmp_path / "root.pem"
    root.write_text(pem(ca.root))
    server, client = issue(ca, tmp_path, "server"), issue(ca, tmp_path, "client")
    backend: Backend = make_backend("app")
    port = free_port()
    config = listener("inbound", port, [vhost("all", ["*"], [route("app")])], inbound=True)
    chain = config["filter_chains"][0]
    chain["filter_chain_match"] = {"transport_protocol": "tls"}
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_CONTEXT,
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [sds(f"file-cert:{server[0]}~{server[1]}")],
                "combined_validation_context": {
                    "default_validation_context": {},
                    "validation_context_sds_secret_config": sds(f"file-root:{root}"),
                },
            },
        },
    }
    config["listener_filters"] = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            },
        }
    ]
    start_proxy([config], [static_cluster("app", [backend.port])])
    url = f"https://127.0.0.1:{port}/"
    # -k: the certificate names a SPIFFE ID (a URI), not the host curl dials
    code, body = curl_status("-k", "--cert", str(client[0]), "--key", str(client[1]), url)
    assert (code, body[-3:]) == (0, b"200"), body
    assert backend.count == 1
    code, body = curl_status("-k", url)  # no client certificate
    assert code != 0 and not body.endswith(b"200")
    code, body = curl_status(f"http://127.0.0.1:{port}/")  # plaintext: no chain for it
    assert code in (52, 56) and body in (b"", b"000")
    assert backend.count == 1


def test_a_tls_listener_forwards_x_forwarded_proto_https(
    tmp_path: Path, start_proxy: Any, make_backend: Any
) -> None:
    """Envoy's connection manager adds x-forwarded-proto from the downstream
    connection: https over TLS (a gateway's server certificate, no client
    one), http in plaintext; one the client sent is kept either way."""
    ca = self_signed(tmp_path / "ca", "cluster.local")
    server = issue(ca, tmp_path, "gateway")
    backend: Backend = make_backend("app")
    tls_port, plain_port = free_port(), free_port()
    # require_tls ALL (a Gateway's httpsRedirect) redirects plaintext only
    strict = {**vhost("strict", ["strict.example"], [route("app")]), "require_tls": "ALL"}
    hosts = [strict, vhost("all", ["*"], [route("app")])]
    secure = listener("https", tls_port, hosts)
    secure["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_CONTEXT,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [sds(f"file-cert:{server[0]}~{server[1]}")],
                "alpn_protocols": ["h2", "http/1.1"],
            },
        },
    }
    plain = listener("http", plain_port, hosts)
    start_proxy([secure, plain], [static_cluster("app", [backend.port])])

    def proto(url: str, version: str, *args: str) -> str:
        """The x-forwarded-proto the backend got, asking in HTTP `version`."""
        done = subprocess.run(
            ["curl", "-s", "-S", "-k", "--max-time", "5", "-w", "\n%{http_version}", *args, url],
            capture_output=True, timeout=15, env=env_without_proxy(), check=True,
        )  # fmt: skip
        body, _, used = done.stdout.rpartition(b"\n")
        assert used.decode() == version, done.stdout
        value: str = json.loads(body)["headers"]["x-forwarded-proto"]
        return value

    https, http = f"https://127.0.0.1:{tls_port}/echo", f"http://127.0.0.1:{plain_port}/echo"
    assert proto(https, "1.1", "--http1.1") == "https"
    assert proto(https, "2", "--http2") == "https"
    assert proto(http, "1.1") == "http"
    assert proto(http, "2", "--http2-prior-knowledge") == "http"
    kept = ("--http1.1", "-H", "x-forwarded-proto: http")  # the client's own is kept
    assert proto(https, "1.1", *kept) == "http"
    assert proto(https, "1.1", "--http1.1", "-H", "host: strict.example") == "https"
    code, body = curl_status("-H", "host: strict.example", http)
    assert (code, body[-3:]) == (0, b"301"), body
    assert backend.count == 6
