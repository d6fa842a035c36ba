"""The CA across control-plane replicas sharing one etcd: given the same CA
(the same `--cacerts DIR`, or the same self-signed `DATA_DIR/ca/` copied to
each), two replicas issue certificates that chain to the same root, which
openssl verifies; two replicas that each made their own root do not."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from tests.ca.pki import write_cacerts
from tests.etcd_server import EtcdServer

from pilotfish.ca import protos
from pilotfish.ca.workload import csr_for, new_key
from pilotfish.client import Client
from pilotfish.controlplane.identity import CaOptions
from pilotfish.controlplane.main import ControlPlane
from pilotfish.store.backends import StoreOptions

WORKLOAD = {
    "apiVersion": "pilotfish.dev/v1alpha1",
    "kind": "Workload",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"labels": {"app": "web"}, "serviceAccountName": "web", "command": ["true"]},
}
WEB = "spiffe://cluster.local/ns/shop/sa/web"
SHARED = ("token", "sa-token-key")  # what every replica is given (docs/multi-host.md)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd").start()
    yield server
    server.stop()


def replica(where: Path, etcd: EtcdServer, ca: CaOptions) -> ControlPlane:
    plane = ControlPlane.open(
        where / "data",
        "127.0.0.1:0",
        where / "config.yaml",
        "127.0.0.1:0",
        ca,
        StoreOptions(url=etcd.url),
    )
    plane.server.start()
    return plane


def issue(plane: ControlPlane) -> list[str]:
    """A certificate for WEB from this replica's CA, as a sidecar asks for it."""
    assert plane.ads is not None
    token = (plane.data_dir / "token").read_text().strip()
    with grpc.insecure_channel(f"127.0.0.1:{plane.ads.port}") as channel:
        call = channel.unary_unary(
            protos.METHOD_PATH,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=protos.IstioCertificateResponse.FromString,
        )
        request = protos.IstioCertificateRequest(csr=csr_for(new_key(), WEB))
        metadata = [("authorization", f"Bearer {token}")]
        return list(call(request, metadata=metadata, timeout=10).cert_chain)


def verified_by_openssl(chain: list[str], root: str, where: Path) -> str:
    (where / "root.pem").write_text(root)
    (where / "leaf.pem").write_text(chain[0])
    (where / "between.pem").write_text("".join(chain[1:-1]) or root)
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", "root.pem", "-untrusted", "between.pem", "leaf.pem"],
        cwd=where,
        capture_output=True,
        text=True,
    )
    return done.stdout + done.stderr


def two_replicas(
    tmp_path: Path, etcd: EtcdServer, ca: CaOptions, *, copy_ca: bool
) -> tuple[ControlPlane, ControlPlane]:
    first = replica(tmp_path / "a", etcd, ca)
    (tmp_path / "b" / "data").mkdir(parents=True)
    for name in SHARED:
        shutil.copy2(first.data_dir / name, tmp_path / "b" / "data" / name)
    if copy_ca:
        shutil.copytree(first.data_dir / "ca", tmp_path / "b" / "data" / "ca")
    token = (first.data_dir / "token").read_text().strip()
    Client(first.server.url, token).apply(WORKLOAD)
    return first, replica(tmp_path / "b", etcd, ca)


@pytest.mark.parametrize("plugged", [True, False], ids=["cacerts", "self-signed-copied"])
def test_two_replicas_issue_certificates_chaining_to_the_same_root(
    tmp_path: Path, etcd: EtcdServer, plugged: bool
) -> None:
    ca = CaOptions(cacerts=write_cacerts(tmp_path / "cacerts")) if plugged else CaOptions()
    first, second = two_replicas(tmp_path, etcd, ca, copy_ca=not plugged)
    try:
        chains = [issue(first), issue(second)]
    finally:
        first.close()
        second.close()
    assert chains[0][-1] == chains[1][-1]  # the one root both hand out as the trust bundle
    leaves = [x509.load_pem_x509_certificate(c[0].encode()) for c in chains]
    assert leaves[0].serial_number != leaves[1].serial_number  # each replica signed its own
    for i, chain in enumerate(chains):
        (tmp_path / f"v{i}").mkdir()
        assert verified_by_openssl(chain, chains[0][-1], tmp_path / f"v{i}") == "leaf.pem: OK\n"


def test_replicas_that_each_made_their_own_root_do_not_trust_each_other(
    tmp_path: Path, etcd: EtcdServer
) -> None:
    first, second = two_replicas(tmp_path, etcd, CaOptions(), copy_ca=False)
    try:
        chains = [issue(first), issue(second)]
    finally:
        first.close()
        second.close()
    assert chains[0][-1] != chains[1][-1]
    (tmp_path / "v").mkdir()
    assert "leaf.pem: OK" not in verified_by_openssl(chains[1], chains[0][-1], tmp_path / "v")
