"""The Secrets the control plane serves over SDS (`kubernetes://NAME`, what a
Gateway's or a DestinationRule's credentialName names), beside the
sidecar's own workload certificate.

An SDS update is checked whole before anything changes, as every xDS update
is (config.py): a certificate that is not PEM, a key that is not PEM or does
not match its certificate, a certificate that has expired or is not valid
yet, a trust bundle with no certificate: the update is NACKed with a message
naming the Secret, and the last good Secrets keep serving. Contents are
never logged; /config_dump shows a private key as Envoy does, redacted.

The TLS contexts (tls.py) read `SecretSet`: the workload certificate's
`default` and `ROOTCA` and these, under one version that goes up when
either changes, so a changed Secret makes new contexts for new handshakes
while established connections keep theirs.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf import json_format

from pilotfish.proxy import xds_types
from pilotfish.proxy.tls import FILE_CERT, FILE_ROOT, TlsSettings

if TYPE_CHECKING:  # sds.py brings gRPC and cryptography, which a sidecar
    # without a workload certificate never loads (docs/benchmarks.md, idle memory)
    from pilotfish.proxy.sds import WorkloadCertificates

DEFAULT, ROOTCA = "default", "ROOTCA"  # istio-agent's resource names
SECRETS_DUMP = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"
REDACTED = b"[redacted]"  # what Envoy's config_dump shows for a private key


# Served by the sidecar itself, or read from files: never asked of the control plane.
LOCAL_NAMES = frozenset({DEFAULT, ROOTCA})


class SecretError(ValueError):
    """A Secret the proxy refuses; the message names it."""


def wanted_names(settings: Iterable[TlsSettings]) -> frozenset[str]:
    """The SDS names TLS contexts refer to that the control plane serves."""
    return frozenset(
        name
        for s in settings
        for name in (s.certificate, s.validation)
        if name and name not in LOCAL_NAMES and not name.startswith((FILE_CERT, FILE_ROOT))
    )


def check_secrets(secrets: Iterable[Secret], now: datetime.datetime | None = None) -> None:
    from pilotfish.ca.credentials import check_bundle, check_certificate_and_key  # cryptography

    for secret in secrets:
        try:
            if secret.HasField("tls_certificate"):
                tls = secret.tls_certificate
                chain, key = tls.certificate_chain.inline_bytes, tls.private_key.inline_bytes
                check_certificate_and_key(chain, key, now)
            elif secret.HasField("validation_context"):
                check_bundle(secret.validation_context.trusted_ca.inline_bytes)
            else:
                raise ValueError("neither a tls_certificate nor a validation_context")
        except ValueError as e:
            raise SecretError(f"Secret {secret.name}: {e}") from None


class SecretSet:
    """The workload certificate's secrets (if any) and those from SDS."""

    def __init__(
        self,
        workload: WorkloadCertificates | None,
        served: Callable[[], tuple[int, Mapping[str, Secret]]],
    ) -> None:
        self.workload = workload
        self.served = served  # (version, secrets) of the last good SDS update

    def __repr__(self) -> str:
        return f"<SecretSet version={self.version}>"

    @property
    def version(self) -> int:
        return (self.workload.version if self.workload else 0) + self.served()[0]

    def secrets(self) -> dict[str, Secret]:
        own = self.workload.secrets() if self.workload else {}
        return {**self.served()[1], **own}

    def config_dumps(self) -> list[dict[str, Any]]:
        """For /config_dump: none when the proxy has no TLS secrets at all."""
        return [self.config_dump()] if self.workload or self.served()[1] else []

    def config_dump(self) -> dict[str, Any]:
        """Envoy's SecretsConfigDump: the workload's, then the served ones, keys redacted."""
        dump = self.workload.config_dump() if self.workload else {}
        dump.setdefault("@type", SECRETS_DUMP)
        active = dump.setdefault("dynamicActiveSecrets", [])
        version, served = self.served()
        for name in sorted(served):
            shown = Secret()
            shown.CopyFrom(served[name])
            if shown.HasField("tls_certificate"):
                shown.tls_certificate.private_key.inline_bytes = REDACTED
            active.append({"name": name, "versionInfo": str(version), "secret": _as_json(shown)})
        return dump


def _as_json(secret: Secret) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(secret)
    return {"@type": xds_types.SECRET, **out}
