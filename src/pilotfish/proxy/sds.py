"""The sidecar's own workload certificate, served to itself as SDS.

istio-agent, beside Envoy in the pod, makes the key, sends the CSR to
istiod's CA and serves the result to Envoy over SDS as two `Secret`
resources: `default` (the certificate chain and key) and `ROOTCA` (the
trust bundle). pilotfish's sidecar is both processes in one, so it does the
same in-process: the key is made here (in memory, never written, never
sent), the CSR goes to the CA with the token from `--ca-token-file` (read
again for every request, as the agent rereads its projected token), and the
two Secrets are kept here for the listeners and /config_dump (Envoy's
SecretsConfigDump, the private key redacted as Envoy redacts it).

Renewal at half-life with 1% jitter, as Istio's; a failed request is tried
again with back-off while the current certificate keeps being used.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from envoy.admin.v3.config_dump_pb2 import SecretsConfigDump
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf import json_format

from pilotfish.ca import protos
from pilotfish.ca.workload import (
    WorkloadKey,
    csr_for,
    key_pem,
    load_chain,
    new_key,
    pem,
    renew_at,
)
from pilotfish.proxy.sds_secrets import DEFAULT, REDACTED, ROOTCA, SECRETS_DUMP
from pilotfish.proxy.xds_channel import PLAINTEXT, ControlPlaneChannel

log = logging.getLogger("pilotfish.proxy.sds")
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0
CALL_TIMEOUT_S = 10.0


class IssueError(Exception):
    """A certificate could not be had; the message says why."""


@dataclass(frozen=True)
class Issued:
    chain: tuple[x509.Certificate, ...]  # leaf first, root last
    key: WorkloadKey
    version: int
    updated: datetime.datetime

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1]


class WorkloadCertificates:
    def __init__(
        self,
        ca_targets: Sequence[str],
        spiffe_id: str,
        token_file: Path,
        on_issued: Callable[[Issued], None] | None = None,
        channel: ControlPlaneChannel = PLAINTEXT,
    ) -> None:
        self.ca_targets = tuple(ca_targets)  # the control-plane replicas, the last good first
        self.spiffe_id = spiffe_id
        self.token_file = token_file
        self.on_issued = on_issued  # e.g. write the files a proxyless gRPC workload reads
        self.channel = channel  # over TLS as the ADS stream, when the bootstrap says so
        self.current: Issued | None = None
        self.ready = asyncio.Event()
        self.last_error = ""

    def __repr__(self) -> str:
        return f"WorkloadCertificates({self.spiffe_id!r}, version={self.version})"

    @property
    def version(self) -> int:
        """Goes up with every certificate: TLS contexts are made again when it does."""
        return self.current.version if self.current else 0

    async def run(self) -> None:
        """Keep a valid certificate until cancelled."""
        delay = RETRY_FIRST_S
        while True:
            try:
                self.current = await self._issue()
            except IssueError as e:
                self.last_error = str(e)
                log.warning("workload certificate for %s: %s", self.spiffe_id, e)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay, self.last_error = RETRY_FIRST_S, ""
            if self.on_issued is not None:
                self.on_issued(self.current)
            self.ready.set()
            leaf = self.current.leaf
            log.info(
                "workload certificate for %s: serial %x, valid until %s",
                self.spiffe_id,
                leaf.serial_number,
                leaf.not_valid_after_utc.isoformat(),
            )
            wait = renew_at(leaf) - datetime.datetime.now(datetime.UTC)
            await asyncio.sleep(max(wait.total_seconds(), 0.0))

    async def _issue(self) -> Issued:
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise IssueError(f"cannot read the token file {self.token_file}: {e.strerror}") from e
        key = await asyncio.to_thread(new_key)  # RSA generation would stall the data path
        request = protos.IstioCertificateRequest(csr=csr_for(key, self.spiffe_id))
        for attempt, target in enumerate(self.ca_targets):
            try:
                response = await self._call(target, request, token)
            except grpc.aio.AioRpcError as e:
                last = attempt == len(self.ca_targets) - 1
                if e.code() != grpc.StatusCode.UNAVAILABLE or last:
                    raise IssueError(f"the CA at {target}: {e.code().name}: {e.details()}") from e
                continue  # that replica is down: the next one
            self.ca_targets = (target, *(t for t in self.ca_targets if t != target))
            return _checked(list(response.cert_chain), key, self.current)
        raise AssertionError("unreachable: at least one CA address")

    async def _call(
        self, target: str, request: protos.IstioCertificateRequest, token: str
    ) -> protos.IstioCertificateResponse:
        async with self.channel.open(target) as channel:
            call = channel.unary_unary(
                protos.METHOD_PATH,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=protos.IstioCertificateResponse.FromString,
            )
            response: protos.IstioCertificateResponse = await call(
                request,
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=CALL_TIMEOUT_S,
            )
            return response

    def secrets(self) -> dict[str, Secret]:
        """The SDS resources, as istio-agent names them; none before the first issue."""
        if self.current is None:
            return {}
        issued = self.current
        chain = b"".join(pem(c).encode() for c in issued.chain[:-1] or issued.chain)
        default = Secret(name=DEFAULT)
        default.tls_certificate.certificate_chain.inline_bytes = chain
        default.tls_certificate.private_key.inline_bytes = key_pem(issued.key)
        root = Secret(name=ROOTCA)
        root.validation_context.trusted_ca.inline_bytes = pem(issued.root).encode()
        return {DEFAULT: default, ROOTCA: root}

    def config_dump(self) -> dict[str, Any]:
        """Envoy's SecretsConfigDump of the active secrets, private key redacted."""
        dump = SecretsConfigDump()
        for name, secret in self.secrets().items():
            if secret.HasField("tls_certificate"):
                secret.tls_certificate.private_key.inline_bytes = REDACTED
            active = dump.dynamic_active_secrets.add(name=name)
            active.version_info = str(self.current.version if self.current else 0)
            if self.current is not None:
                active.last_updated.FromDatetime(self.current.updated)
            active.secret.Pack(secret)
        return {"@type": SECRETS_DUMP, **json_format.MessageToDict(dump)}


def _checked(pems: list[str], key: WorkloadKey, previous: Issued | None) -> Issued:
    """The CA's answer, if it is a chain for our key."""
    try:
        chain = load_chain(pems)
    except ValueError as e:
        raise IssueError(f"the CA's answer is not a PEM certificate chain: {e}") from e
    if not chain:
        raise IssueError("the CA answered with an empty certificate chain")
    leaf_key = chain[0].public_key()
    if not isinstance(leaf_key, rsa.RSAPublicKey) or (
        leaf_key.public_numbers() != key.public_key().public_numbers()
    ):
        raise IssueError("the CA's certificate is not for this sidecar's key")
    version = previous.version + 1 if previous else 1
    return Issued(tuple(chain), key, version, datetime.datetime.now(datetime.UTC))
