"""The sidecar's SDS secrets without sockets: what the CA's answer becomes
(Secrets default and ROOTCA), Envoy's SecretsConfigDump with the key
redacted, an answer for another key refused, and `proxy-config secret`'s
table, column for column as istioctl prints it."""

from __future__ import annotations

import asyncio
import base64
import datetime
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

from pilotfish.ca.cacerts import self_signed
from pilotfish.ca.identity import SpiffeId
from pilotfish.ca.workload import CertDetails, csr_for, key_pem, load_chain, new_key
from pilotfish.cli.identity import secret_table
from pilotfish.proxy.bootstrap import parse_bootstrap
from pilotfish.proxy.sds import IssueError, WorkloadCertificates, _checked

ID = "spiffe://cluster.local/ns/shop/sa/web"


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorkloadCertificates, list[str]]:
    ca = self_signed(tmp_path_factory.mktemp("data"), "cluster.local")
    key = new_key()
    chain = ca.sign(csr_for(key, ID), SpiffeId.parse(ID), requested_seconds=3600)
    certificates = WorkloadCertificates(["127.0.0.1:1"], ID, Path("/nonexistent"))
    certificates.current = _checked(chain, key, None)
    return certificates, chain


def test_the_secrets_are_named_as_istio_agent_names_them(
    issued: tuple[WorkloadCertificates, list[str]],
) -> None:
    certificates, chain = issued
    secrets = certificates.secrets()
    assert set(secrets) == {"default", "ROOTCA"}
    default = secrets["default"].tls_certificate
    assert default.certificate_chain.inline_bytes.decode() == chain[0]  # the root goes to ROOTCA
    assert default.private_key.inline_bytes == key_pem(certificates.current.key)  # type: ignore[union-attr]
    assert secrets["ROOTCA"].validation_context.trusted_ca.inline_bytes.decode() == chain[-1]


def test_the_config_dump_redacts_the_private_key_as_envoy_does(
    issued: tuple[WorkloadCertificates, list[str]],
) -> None:
    certificates, _ = issued
    dump = certificates.config_dump()
    assert dump["@type"] == "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"
    default = next(s for s in dump["dynamicActiveSecrets"] if s["name"] == "default")
    key = default["secret"]["tlsCertificate"]["privateKey"]["inlineBytes"]
    assert base64.b64decode(key) == b"[redacted]"
    assert default["versionInfo"] == "1" and default["lastUpdated"]
    assert "PRIVATE KEY" not in str(dump)
    # the live secret is untouched by the dump
    assert (
        b"PRIVATE KEY" in certificates.secrets()["default"].tls_certificate.private_key.inline_bytes
    )


def test_an_answer_for_another_key_is_refused(
    issued: tuple[WorkloadCertificates, list[str]],
) -> None:
    _, chain = issued
    with pytest.raises(IssueError, match="the CA's certificate is not for this sidecar's key"):
        _checked(chain, new_key(), None)
    with pytest.raises(IssueError, match="empty certificate chain"):
        _checked([], new_key(), None)


def test_proxy_config_secret_prints_istioctls_columns(
    issued: tuple[WorkloadCertificates, list[str]],
) -> None:
    certificates, chain = issued
    leaf, root = (CertDetails.of(c) for c in load_chain(chain))
    now = leaf.not_before + datetime.timedelta(seconds=1)
    lines = secret_table(certificates.config_dump(), now).splitlines()

    def stamp(moment: datetime.datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    assert [line.split("   ")[0] for line in lines] == ["RESOURCE NAME", "default", "ROOTCA"]
    assert lines[0].split() == (
        [
            "RESOURCE",
            "NAME",
            "TYPE",
            "STATUS",
            "VALID",
            "CERT",
            "SERIAL",
            "NUMBER",
            "NOT",
            "AFTER",
            "NOT",
            "BEFORE",
        ]
    )
    assert lines[1].split()[1:] == [
        "Cert", "Chain", "ACTIVE", "true", leaf.serial, stamp(leaf.not_after), stamp(leaf.not_before)
    ]  # fmt: skip
    assert lines[2].split()[1:] == [
        "CA", "ACTIVE", "true", root.serial, stamp(root.not_after), stamp(root.not_before)
    ]  # fmt: skip
    later = leaf.not_after + datetime.timedelta(seconds=1)
    assert secret_table(certificates.config_dump(), later).splitlines()[1].split()[4] == "false"


def test_a_missing_token_file_is_reported_and_retried(tmp_path: Path) -> None:
    certificates = WorkloadCertificates(["127.0.0.1:1"], ID, tmp_path / "istio-token")

    async def briefly() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(certificates.run(), 0.3)

    asyncio.run(briefly())
    assert certificates.last_error.startswith(f"cannot read the token file {tmp_path}/istio-token")
    assert certificates.current is None and certificates.secrets() == {}


def test_the_data_plane_side_imports_nothing_of_the_agent_api_or_control_plane() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pilotfish.proxy.sds, pilotfish.ca.workload, pilotfish.ca.protos; "
        "print(sorted(m for m in sys.modules if m.startswith(("
        "'pilotfish.agent', 'pilotfish.api', 'pilotfish.controlplane', 'pilotfish.config'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _bootstrap(metadata: dict[str, str]) -> Bootstrap:
    xds = {"socket_address": {"address": "127.0.0.1", "port_value": 15010}}
    return parse_bootstrap(
        {
            "node": {"id": "sidecar~127.0.0.1~a.shop~shop.svc.cluster.local", "metadata": metadata},
            "dynamic_resources": {
                "ads_config": {"grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}
            },
            "static_resources": {
                "clusters": [
                    {
                        "name": "xds-grpc",
                        "load_assignment": {
                            "cluster_name": "xds-grpc",
                            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": xds}}]}],
                        },
                    }
                ]
            },
        }
    )


def test_the_sidecars_identity_comes_from_its_node_metadata(tmp_path: Path) -> None:
    from pilotfish.proxy.process import workload_certificates

    token = tmp_path / "token"
    made = workload_certificates(_bootstrap({"NAMESPACE": "shop"}), token)
    assert (made.spiffe_id, made.ca_targets) == (
        "spiffe://cluster.local/ns/shop/sa/default",
        ("127.0.0.1:15010",),
    )
    made = workload_certificates(
        _bootstrap({"NAMESPACE": "shop", "SERVICE_ACCOUNT": "web"}),
        token,
    )
    assert made.spiffe_id == "spiffe://cluster.local/ns/shop/sa/web"
    with pytest.raises(SystemExit, match=r"needs the workload's node\.metadata\.NAMESPACE"):
        workload_certificates(_bootstrap({}), token)
    with pytest.raises(SystemExit, match="service account 'a/b' is not a valid name"):
        workload_certificates(
            _bootstrap({"NAMESPACE": "shop", "SERVICE_ACCOUNT": "a/b"}),
            token,
        )
