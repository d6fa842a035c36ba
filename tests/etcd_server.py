"""A real etcd (Debian's etcd-server) for tests: ephemeral ports, its own data
directory, optionally TLS with client certificates made by openssl.

etcd is required, never skipped: `scripts/setup --test` installs it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.agent.mesh_harness import free_port

from pilotfish.api.errors import ApiError
from pilotfish.store.etcd_client import EtcdClient, Tls, message

MISSING = (
    "etcd is not installed: the store tests run every test against a real etcd too. "
    "Install it with `scripts/setup --test` (Debian package etcd-server)."
)


def etcd_binary() -> str:
    found = shutil.which("etcd")
    if found is None:
        raise RuntimeError(MISSING)
    return found


@dataclass
class Certs:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_tls(self) -> Tls:
        return Tls(
            self.ca.read_bytes(), self.client_cert.read_bytes(), self.client_key.read_bytes()
        )


def make_certs(where: Path) -> Certs:
    where.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=where)

    key = ("-newkey", "rsa:2048", "-nodes", "-days", "1")
    openssl(
        "req", "-x509", *key, "-subj", "/CN=test-etcd-ca", "-keyout", "ca.key", "-out", "ca.pem"
    )
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (where / f"{name}.ext").write_text(extension + "\n")
        openssl(
            "req",
            "-new",
            *key[:3],
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        )  # fmt: skip
    return Certs(
        where / "ca.pem",
        where / "server.pem",
        where / "server.key",
        where / "client.pem",
        where / "client.key",
    )


@dataclass
class EtcdServer:
    data_dir: Path
    certs: Certs | None = None
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'etcds' if self.certs else 'etcd'}://{self.endpoint}"

    def client(self) -> EtcdClient:
        return EtcdClient([self.endpoint], self.certs.client_tls() if self.certs else None)

    def command(self) -> list[str]:
        scheme = "https" if self.certs else "http"
        client_url = f"{scheme}://{self.endpoint}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        command = [
            etcd_binary(),
            "--name=test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
            "--logger=zap",
            "--log-level=error",
        ]
        if self.certs:
            command += [
                "--client-cert-auth",
                f"--trusted-ca-file={self.certs.ca}",
                f"--cert-file={self.certs.server_cert}",
                f"--key-file={self.certs.server_key}",
            ]
        return command

    def start(self) -> EtcdServer:
        log = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.process = subprocess.Popen(
            self.command(), stdout=log.open("ab"), stderr=subprocess.STDOUT
        )
        client = self.client()
        deadline = time.monotonic() + 20
        try:
            while True:
                assert self.process.poll() is None, f"etcd exited: {log.read_text()[-3000:]}"
                try:
                    client.call("Range", message("RangeRequest", key=b"/ready"))
                    return self
                except ApiError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"etcd not ready: {log.read_text()[-3000:]}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=15)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
