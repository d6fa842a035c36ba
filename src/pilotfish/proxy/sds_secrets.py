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
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf import json_format

from pilotfish.proxy import xds_types
from pilotfish.proxy.sds import REDACTED, SECRETS_DUMP, WorkloadCertificates
from pilotfish.proxy.tls import FILE_CERT, FILE_ROOT, TlsSettings

# Served by the sidecar itself, or read from files: never asked of the control plane.
LOCAL_NAMES = frozenset({"default", "ROOTCA"})


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
    now = now or datetime.datetime.now(datetime.UTC)
    for secret in secrets:
        try:
            _check(secret, now)
        except SecretError as e:
            raise SecretError(f"Secret {secret.name}: {e}") from None


def _check(secret: Secret, now: datetime.datetime) -> None:
    if secret.HasField("tls_certificate"):
        tls = secret.tls_certificate
        chain = _certificates(tls.certificate_chain.inline_bytes, "certificate_chain")
        try:
            key = serialization.load_pem_private_key(tls.private_key.inline_bytes, password=None)
        except (ValueError, TypeError):
            raise SecretError("private_key: not an unencrypted PEM private key") from None
        if _spki(key.public_key()) != _spki(chain[0].public_key()):
            raise SecretError("private_key does not match the certificate")
        _check_period(chain[0], now)
    elif secret.HasField("validation_context"):
        _certificates(secret.validation_context.trusted_ca.inline_bytes, "trusted_ca")
    else:
        raise SecretError("neither a tls_certificate nor a validation_context")


def _certificates(data: bytes, field: str) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SecretError(f"{field}: not a PEM certificate") from None
    if not found:
        raise SecretError(f"{field}: no certificate")
    return found


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _check_period(cert: x509.Certificate, now: datetime.datetime) -> None:
    serial = f"serial {cert.serial_number:x}"
    if now >= cert.not_valid_after_utc:
        raise SecretError(
            f"the certificate ({serial}) expired on {cert.not_valid_after_utc.isoformat()}"
        )
    if now < cert.not_valid_before_utc:
        raise SecretError(
            f"the certificate ({serial}) is not valid before "
            f"{cert.not_valid_before_utc.isoformat()}"
        )


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
